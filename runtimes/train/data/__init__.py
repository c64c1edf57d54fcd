"""Data sets shipped with the package (read with `importlib.resources`; see README.txt)."""
