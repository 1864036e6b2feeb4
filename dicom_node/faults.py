"""Crash points for the fault campaign (``tests/test_crash.py``, ``bench/crash.py``).

A ``kill -9`` from outside lands wherever the node happens to be; the
narrow windows that matter most — a file in the spool but not yet in the
index, a completion or a job's results not yet committed, half of a
delivery's objects sent — are too short to hit often by chance. With
``DICOM_NODE_CRASH_AT=<point>`` in its environment the node kills itself
with SIGKILL (the main process, and with it every receiver) the first time
it reaches that point, so the campaign can land in each window on purpose.
Unset (always, in production) a crash point is a comparison with ``None``.
"""

from __future__ import annotations

import os
import signal
import time

#: Every crash point, in the order data flows through the node.
CRASH_POINTS: tuple[str, ...] = (
    "stored-before-index",  # receiver: object and receipt in the spool, not yet answered
    "answered-before-index",  # receiver: objects answered Success, their index rows not committed
    "completion-before-commit",  # completion row and jobs written, transaction not committed
    "inference-done",  # the pipeline returned; nothing of the results written yet
    "results-before-commit",  # SR/SC files in the spool, their rows not committed
    "mid-dispatch",  # the first object of a delivery stored at the destination, the rest not
)

#: The main process's pid, set by ``dicom-node serve`` for the receivers it starts.
MAIN_PID_ENV = "DICOM_NODE_PID"
_TARGET = os.environ.get("DICOM_NODE_CRASH_AT") or None
if _TARGET is not None and _TARGET not in CRASH_POINTS:
    raise SystemExit(
        f"DICOM_NODE_CRASH_AT={_TARGET!r} is not a crash point; use one of {', '.join(CRASH_POINTS)}"
    )


def crash_point(name: str, *, delay: float = 0.0) -> None:
    """Die here, as ``kill -9`` of the whole node would, if ``DICOM_NODE_CRASH_AT`` names ``name``.

    ``delay`` seconds pass first: a point on a thread of its own (the indexer)
    lets the answers it races with reach the peer.
    """
    if _TARGET != name:
        return
    time.sleep(delay)
    main = int(os.environ.get(MAIN_PID_ENV, os.getpid()))
    os.kill(main, signal.SIGKILL)  # receivers follow through PR_SET_PDEATHSIG
    os.kill(os.getpid(), signal.SIGKILL)
