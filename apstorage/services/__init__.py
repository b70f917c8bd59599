"""Services: what each command does, as plain Python (no typer, no rendering)."""
