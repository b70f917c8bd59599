"""The command line: thin modules that parse flags, call services and render results."""

from __future__ import annotations

from apstorage.cli.app import app
from apstorage.cli import admin, check_iam, files, lifecycle, migrate, presign, sweep, du  # noqa: F401  (register commands)

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="apstorage")
