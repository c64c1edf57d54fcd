"""CLI commands, one module per command family; `cli.py` registers them on the typer app.

Modules here import only light libraries at module level: torch, onnxruntime and friends
are imported inside the command bodies, so `check` and `inspect` stay fast.
"""
