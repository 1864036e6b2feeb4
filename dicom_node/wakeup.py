"""Stages that wake each other: a stage's work runs at once when the stage before it hands
something on, and on a timer as the safety net.

The receivers wake completion when a peer released its association, completion
wakes the job runner when it queued jobs, the runner wakes dispatch when a job's
results are in the outbox. Without the wake-ups every hand-over would wait up to
a poll interval; without the timer a lost wake-up (a crash between commit and
wake, a signal that did not arrive) would leave work waiting for the next one.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StageLoop:
    """Runs ``work`` in a thread of its own: when woken, and every ``interval()`` seconds.

    Parameters
    ----------
    name : str
        The thread's name (and the log's).
    work : callable
        One pass of the stage; an exception is logged and the loop goes on.
    interval : callable returning float
        Seconds between passes when nothing wakes the loop (read each time: a
        configuration reload applies).
    """

    def __init__(self, name: str, work: Callable[[], object], interval: Callable[[], float]):
        self.name = name
        self._work = work
        self._interval = interval
        self._cond = threading.Condition()
        self._due: list[float] = []  # a heap of monotonic times
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self, after: float = 0.0) -> None:
        """Run a pass now, or ``after`` seconds from now (each wake-up gets its pass)."""
        with self._cond:
            heapq.heappush(self._due, time.monotonic() + after)
            self._cond.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the pass in progress (up to ``timeout``) and run no more."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_pass = time.monotonic() + 1.0
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    due = min(next_pass, self._due[0]) if self._due else next_pass
                    if due <= now:
                        break
                    self._cond.wait(due - now)
                if self._stopping:
                    return
                now = time.monotonic()
                while self._due and self._due[0] <= now:  # one pass serves every wake-up due
                    heapq.heappop(self._due)
            try:
                next_pass = time.monotonic() + self._interval()
            except Exception:  # noqa: BLE001 - a config in flux: poll again soon
                next_pass = time.monotonic() + 1.0
            try:
                self._work()
            except Exception:  # noqa: BLE001 - the index may be down a while; the timer tries again
                log.exception("%s: pass failed; trying again", self.name)
