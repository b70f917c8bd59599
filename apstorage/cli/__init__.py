"""The command line: thin modules that parse flags, call services and render results.

Each command module registers its commands on ``app`` when imported. ``app`` (an attribute
of this package) has every command; ``main`` — the console script and ``python -m
apstorage`` — imports only the module of the command being run when the first argument
names one (each unused module costs start-up time: ~15 ms for all of them, measured on
``migrate-to-s3``), and every module for anything else (``--help``, ``--version``, shell
completion, a mistyped command, which click then names).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# Registration order is the order `--help` lists the commands in; each command's module.
COMMAND_MODULES: dict[str, str] = {
    "put": "files",
    "get": "files",
    "presign": "presign",
    "migrate-to-s3": "migrate",
    "sweep-expired": "sweep",
    "gc": "gc",
    "restore": "restore",
    "du": "du",
    "check-iam": "check_iam",
    "config": "admin",
    "init": "admin",
    "lifecycle": "lifecycle",
}

__all__ = ["app", "main", "COMMAND_MODULES"]

# The submodule ``apstorage.cli.app`` would shadow the attribute ``app`` (the Typer
# application, every command registered: ``__getattr__`` below). Imported here first, its
# name is then dropped: later imports of the submodule find it loaded and leave the
# package's attributes alone.
import apstorage.cli.app as _application  # noqa: E402

del app  # noqa: F821 - bound by the import above (a submodule is its package's attribute)


def _register(modules: list[str]) -> Any:
    for name in modules:
        importlib.import_module(f"apstorage.cli.{name}")
    return _application.app


def _all_modules() -> list[str]:
    return list(dict.fromkeys(COMMAND_MODULES.values()))


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole application: tests, the reference, completion
        application = _register(_all_modules())
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def modules_for(args: list[str]) -> list[str]:
    """The command modules a run with ``args`` (``sys.argv[1:]``) needs: the invoked
    command's alone when the first argument is a command's name, else all of them (shell
    completion runs the program with no arguments: every module)."""
    if args and args[0] in COMMAND_MODULES:
        return [COMMAND_MODULES[args[0]]]
    return _all_modules()


def main() -> None:
    from apstorage.cli.app import run

    _register(modules_for(sys.argv[1:]))
    _exit(run())


def _exit(code: object) -> None:
    """Exit without tearing the interpreter down, when that is safe.

    A normal exit deallocates every module's objects one by one — psycopg, botocore and
    the rest: ~110 ms measured after a migrate-to-s3 run, 6% of the benchmark, for memory
    the kernel frees anyway. So once the command has finished: streams are flushed and
    atexit handlers run, as a normal exit would, then ``os._exit``. Anything unusual —
    a non-integer code, another thread still running, a stream that cannot be flushed —
    takes the normal path.
    """
    import atexit
    import os
    import threading

    if not isinstance(code, (int, type(None))):
        raise SystemExit(code)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    atexit._run_exitfuncs()
    os._exit(code or 0)
