"""Logging set-up, done once per process.

Under systemd (``JOURNAL_STREAM`` set) lines carry no timestamp: journald
adds its own. Log lines name UIDs, AE titles and ids — never patient data.
"""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "INFO", *, process: str = "main") -> None:
    fmt = f"%(levelname)s {process} %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO/DEBUG; keep it to warnings
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is how a long job looks: not news
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # highdicom narrates every module it copies at INFO
    logging.getLogger("highdicom").setLevel(logging.WARNING)
