"""Ctrl-C and SIGTERM for long runs: a cooperative stop, then the summary, then exit 130.

The services stay plain Python: they take a ``threading.Event`` and check it between
batches (no new batch is claimed, uploads and deletes in flight finish, the batch in
hand commits). This module is the CLI side: while a run is going, SIGINT and SIGTERM set
that event instead of raising ``KeyboardInterrupt`` in the middle of a transaction. A
second signal means "now": the default behaviour comes back and ``KeyboardInterrupt``
is raised (the error boundary prints "interrupted" and exits 130).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    """The stop flag of one run and which signal set it (``exit_code``: 128 + signal,
    130 for Ctrl-C, as shells report it)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


STOPPING = "stopping: finishing the files in flight; {again} again to stop at once"


@contextmanager
def stop_on_signals() -> Iterator[Interrupt]:
    """Within the block, the first SIGINT/SIGTERM sets the returned ``Interrupt`` and says
    so on stderr; a second raises ``KeyboardInterrupt``. Outside the main thread (no
    signal handlers there) the flag is simply never set.

    The handler only writes a plain line to ``sys.stderr``: it may run in the middle of
    anything, an import included, so it must not build a Rich console."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return

    def handler(signum: int, frame: object) -> None:
        if interrupt.event.is_set():
            raise KeyboardInterrupt
        interrupt.signum = signum
        interrupt.event.set()
        try:
            again = "press Ctrl-C" if signum == signal.SIGINT else f"send {signal.Signals(signum).name}"
            sys.stderr.write("\n" + STOPPING.format(again=again) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    try:
        yield interrupt
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
