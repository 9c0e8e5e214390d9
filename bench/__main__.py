"""`python -m bench [--only NAME] [--set KEY=VALUE] ...`: `objectflow bench` on its own."""

from bench.cli import main

main()
