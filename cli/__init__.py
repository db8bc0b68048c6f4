"""Command-line interface: thin Typer commands that hand overrides to Hydra (see cli/main.py)."""
