"""The echo domain's local tooling: the echo demo (demo.py)."""
