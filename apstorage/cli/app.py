"""The Typer application and the one place errors become exit codes."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import typer

from apstorage import __version__
from apstorage.errors import ApStorageError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="apstorage",
    help="Administer where a workflow-automation platform's files live: "
    "the Postgres database, local disk, or S3-compatible object storage.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals hold DSNs and keys
    pretty_exceptions_enable=False,
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
    """Turn library errors into one line on stderr and their documented exit code.

    The settings are loaded (validated) first, so a configuration error is reported before
    anything runs, and a likely-misspelt AP_* variable is warned about once."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from apstorage.cli.output import Output

        try:
            from apstorage.config import load_settings

            for warning in load_settings().warnings:
                Output().warn(warning)
            return fn(*args, **kwargs)
        except ApStorageError as exc:
            Output().error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def run(args: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: the one error boundary.

    Click runs with ``standalone_mode=False`` so its usage errors (missing option, bad
    choice, no such command) come back here and are printed like every other error: one
    line, ``error: ...``, exit 2. Anything unexpected is one line too (exit 1), never a
    traceback: tracebacks can quote DSNs and keys."""
    from apstorage.cli.output import Output

    click = _click_exceptions()
    try:
        result = app(args=args, prog_name="apstorage", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `apstorage`: the help, as click shows it
            sys.stderr.write(exc.format_message() + "\n")
            return exc.exit_code
        message = exc.format_message().rstrip(".")
        message = message[:1].lower() + message[1:]
        where = exc.ctx.command_path if exc.ctx is not None else "apstorage"
        Output().error(message, f"see `{where} --help`")
        return exc.exit_code
    except click.ClickException as exc:
        Output().error(exc.format_message())
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):  # typer.Abort is click's (or Typer's own copy)
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except ApStorageError as exc:  # raised outside a command (a callback)
        Output().error(exc.message, exc.hint)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # a bug: one line, no traceback, no secret
        Output().error(
            f"internal error ({type(exc).__name__}): {exc}",
            "this is a bug in apstorage; please report it with the command you ran",
        )
        return 1


def _click_exceptions() -> Any:
    """The click that Typer runs on: Typer 0.28+ vendors its own copy (typer._click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older Typer: the click package itself
        from click import exceptions
    return exceptions


JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="Show what would be done; change nothing.")
