"""The camera domain's local tooling: simulated cameras (sim.py) and the camera demo (demo.py)."""
