"""The command line: thin modules that parse flags, call services and render results."""

from __future__ import annotations

from apstorage.cli.app import app
# Registration order is the order `--help` lists the commands in.
from apstorage.cli import files, presign, migrate, sweep, du, lifecycle, check_iam, admin  # noqa: F401,E402,I001

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="apstorage")
