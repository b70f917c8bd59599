"""Total deadlines for blocking network calls: one daemon thread shuts a call's sockets down
once its deadline passes, so a peer that stalls or trickles ends the call with an error
instead of holding it forever (a socket timeout bounds one read; a byte every few seconds
never trips it).

Used by the S3 transport (``stores/s3_http.py``: an operation with all its attempts) and the
Postgres catalog (``catalog/postgres.py``: one statement, which a server that stopped
answering never times out itself). Standard library only.
"""

from __future__ import annotations

import heapq
import socket
import threading
import time


class Deadline:
    """A call's deadline (``seconds`` from now, monotonic) and the sockets it uses; they are
    shut down when it passes (``fire``). ``finish`` ends the call: says whether it fired."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            if self.fired:
                shutdown(sock)
            elif sock not in self.sockets:
                self.sockets.append(sock)

    def fire(self) -> None:
        with self.lock:
            self.fired = True
            for sock in self.sockets:
                shutdown(sock)

    def finish(self) -> bool:
        """The call is over: its sockets are no longer shut (they may carry the next call)
        and the watchdog drops it. True when it had fired first."""
        with self.lock:
            fired, self.fired = self.fired, True
            self.sockets.clear()
        return fired


def shutdown(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown: an SSLSocket's own would drop its state under its owner
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Watchdog:
    """One daemon thread firing deadlines as they pass (a finished one is dropped when its
    time comes: ``Deadline.finish`` marks it)."""

    def __init__(self, name: str = "apstorage-deadlines") -> None:
        self._name = name
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            self._order += 1
            sooner = not self._heap or deadline.at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.at, self._order, deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if sooner:  # the thread sleeps until the soonest deadline: wake it only for a sooner one
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].fired:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)[2].fire()


WATCHDOG = Watchdog()

__all__ = ["Deadline", "WATCHDOG", "Watchdog", "shutdown"]
