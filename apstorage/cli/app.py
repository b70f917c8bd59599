"""The Typer application and the one place errors become exit codes."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import typer
from typer.core import TyperGroup

from apstorage import __version__
from apstorage.errors import ApStorageError

F = TypeVar("F", bound=Callable[..., Any])


class _Root(TyperGroup):
    """The root command group. Flags click refuses before a command runs (an unknown
    flag, a value out of range) are usage errors (exit 2) that never reach
    ``handle_errors``; with ``--json`` they too leave the error document on stdout."""

    def make_context(self, info_name: Any, args: list[str], parent: Any = None, **extra: Any) -> Any:
        wants_json = "--json" in args
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["apstorage.json"] = wants_json
        return ctx

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # typer's own click: its UsageError carries exit_code 2
            if ctx.meta.get("apstorage.json") and getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
                _json_error(exc.format_message(), "see --help for the accepted flags", 2)
            raise


def _json_error(message: str, hint: str | None, exit_code: int) -> None:
    import json

    doc = {"error": {"message": message, "hint": hint, "exitCode": exit_code}}
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


app = typer.Typer(
    cls=_Root,
    name="apstorage",
    help="Administer where a workflow-automation platform's files live: "
    "the Postgres database, local disk, or S3-compatible object storage.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals hold DSNs and keys
    # Plain help: typer.rich_utils costs ~130 ms of imports (markdown-it, rich.syntax);
    # bench/startup.py holds `--help` to a quarter of `aws --version`.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"apstorage {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Administer where a workflow-automation platform's files live: the Postgres
    database, local disk, or S3-compatible object storage."""


def handle_errors(fn: F) -> F:
    """The one error boundary: a library error becomes one line on stderr and its
    documented exit code, and with ``--json`` (the command's ``json_out``) also one
    ``{"error": {"message", "hint", "exitCode"}}`` document on stdout."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApStorageError as exc:
            from apstorage.cli.output import Output

            Output(bool(kwargs.get("json_out"))).fail(exc.message, exc.hint, exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            from apstorage.cli.output import Output

            Output(bool(kwargs.get("json_out"))).fail("interrupted", None, 130)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="Show what would be done; change nothing.")
QUIET_OPTION = typer.Option(
    False, "--quiet", "-q", help="Print nothing but failures (for cron: the log stays empty unless something failed)."
)
METRICS_OPTION = typer.Option(
    None, "--metrics-file", metavar="PATH",
    help="Also write this run's figures to PATH in the Prometheus text format, replaced "
    "atomically (for node_exporter's textfile collector).",
)
