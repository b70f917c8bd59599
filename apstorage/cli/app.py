"""The Typer application and the one place errors become exit codes."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from apstorage import __version__
from apstorage.errors import ApStorageError

F = TypeVar("F", bound=Callable[..., Any])


class _Command(TyperCommand):
    """A command whose usage line names a required argument as ``PATH``, the way click
    and every man page write it, not Typer 0.28's ``{PATH}``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


def _plain_usage(group: TyperGroup) -> None:
    for command in group.commands.values():
        if isinstance(command, TyperGroup):
            _plain_usage(command)
        elif type(command) is TyperCommand:
            command.__class__ = _Command


class _Root(TyperGroup):
    """The root command group. Flags click refuses before a command runs (an unknown
    flag, a value out of range) are usage errors (exit 2) that never reach
    ``handle_errors``; with ``--json`` they too leave the error document on stdout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_usage(self)

    def make_context(self, info_name: Any, args: list[str], parent: Any = None, **extra: Any) -> Any:
        wants_json = _wants_json(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["apstorage.json"] = wants_json
        return ctx

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # typer's own click: its UsageError carries exit_code 2
            if ctx.meta.get("apstorage.json") and getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
                _json_error(*_usage_message(exc), 2)
            raise


def _wants_json(args: list[str]) -> bool:
    """The command line asks for ``--json`` (decided before click parses it, so an error
    click or the program raises on the way still leaves the JSON document)."""
    return "--json" in args


def _usage_message(exc: Any) -> tuple[str, str]:
    """A click usage error as apstorage words it: (message, hint)."""
    message = exc.format_message().rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "apstorage"
    return message, f"see `{where} --help`"


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
    """The one error boundary of a command: a library error becomes one line on stderr
    and its documented exit code, and with ``--json`` (the command's ``json_out``) also
    one ``{"error": {"message", "hint", "exitCode"}}`` document on stdout.

    The settings are loaded (validated) first, so a configuration error is reported before
    anything runs, and a likely-misspelt AP_* variable is warned about once. A command
    with ``--metrics-file`` that fails there still leaves its metrics file (exit code,
    last success carried over), so monitoring sees the failure."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from apstorage.cli.output import Output

        json_mode = bool(kwargs.get("json_out"))
        try:
            try:
                from apstorage.config import load_settings

                for warning in load_settings().warnings:
                    Output().warn(warning)
            except ApStorageError as exc:
                _metrics_before_start(fn, kwargs.get("metrics_file"), exc.exit_code)
                raise
            return fn(*args, **kwargs)
        except ApStorageError as exc:
            Output(json_mode).fail(exc.message, exc.hint, exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            Output(json_mode).fail("interrupted", None, 130)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def _metrics_before_start(fn: Callable[..., Any], path: str | None, exit_code: int) -> None:
    """The metrics file of a run that failed before its command started (``sweep_expired``
    for ``sweep_expired_cmd``). Best effort: the error itself is what gets reported."""
    if not path:
        return
    from apstorage.metrics import RunMetrics

    metrics = RunMetrics(path, fn.__name__.removesuffix("_cmd"))
    try:
        metrics.check_writable()
        metrics.write(exit_code=exit_code)
    except ApStorageError:
        pass


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
        Output().error(*_usage_message(exc))
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
        Output(_wants_json(sys.argv[1:] if args is None else list(args))).fail(
            *_internal_error(exc), 1
        )
        return 1


def _internal_error(exc: BaseException) -> tuple[str, str]:
    """A bug's (message, hint): ``internal error (TypeError): what it said``, or just
    ``internal error (MemoryError)`` when it said nothing. Known secrets are blanked here,
    since the JSON document is not printed through the console that blanks them."""
    from apstorage.config import scrub

    detail = scrub(str(exc).strip())
    message = f"internal error ({type(exc).__name__})" + (f": {detail}" if detail else "")
    return message, "this is a bug in apstorage; please report it with the command you ran"


def _click_exceptions() -> Any:
    """The click that Typer runs on: Typer 0.28+ vendors its own copy (typer._click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older Typer: the click package itself
        from click import exceptions
    return exceptions


JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="Show what would be done; change nothing.")
QUIET_OPTION = typer.Option(
    False, "--quiet", "-q", help="Print nothing but failures (for cron: the log stays empty unless something failed)."
)
VERBOSE_OPTION = typer.Option(
    False, "--verbose", "-v", help="Also say what the run found out about the stores (e.g. the bucket's versioning state)."
)
METRICS_OPTION = typer.Option(
    None, "--metrics-file", metavar="PATH",
    help="Also write this run's figures to PATH in the Prometheus text format, replaced "
    "atomically (for node_exporter's textfile collector).",
)
