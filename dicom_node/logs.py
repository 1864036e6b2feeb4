"""Logging set-up, done once per process.

Under systemd (``JOURNAL_STREAM`` set) lines carry no timestamp: journald
adds its own. Log lines name UIDs, AE titles and ids — never patient data.
"""

from __future__ import annotations

import logging
import os
import re
import sys

# C0 controls and DEL, except tab: a peer-supplied value (a UID, an AE title, a
# pynetdicom error quoting a malformed element) must not start a forged line
# or send terminal escapes to whoever reads the log.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def escape_controls(text: str) -> str:
    """``text`` with line breaks and other control characters written as escapes (``\\n``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OneLineFormatter(logging.Formatter):
    """Every record's message on one line, whichever library logged it.

    Our own code already quotes what peers send; this also covers
    pynetdicom's, pydicom's and SQLAlchemy's messages. Tracebacks stay
    multi-line: they are the node's, and readable only that way.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().formatMessage(record))


def setup_logging(level: str = "INFO", *, process: str = "main") -> None:
    fmt = f"%(levelname)s {process} %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO/DEBUG; keep it to warnings
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is how a long job looks: not news
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # highdicom narrates every module it copies at INFO
    logging.getLogger("highdicom").setLevel(logging.WARNING)
