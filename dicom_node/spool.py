"""The spool: received objects and produced results as files, written durably.

Layout under the spool folder::

    instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   received objects, as sent
    results/<job id>/<SOPInstanceUID>.dcm                    objects the node produced
    tmp/                                                     objects being received, partial writes

A write goes to ``tmp/``, is fsync'ed, renamed into place (atomic on POSIX)
and the directory is fsync'ed, so a file either exists whole or not at all,
even after ``kill -9`` or power loss. UIDs become path components only after
:func:`check_uid` accepted them: a UID is digits and dots, nothing else, so
no peer can steer a write outside the spool (pynetdicom #823).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUIDError(ValueError):
    """A UID is missing or malformed (and so cannot name a file)."""


def check_uid(value: object, name: str) -> str:
    """Return ``value`` as a UID string, or raise :class:`InvalidUIDError`.

    Accepts 1-64 characters of digits and dots without leading zeros in a
    component (PS3.5 9.1). Trailing NUL/space padding is removed first.
    """
    text = str(value or "").rstrip("\x00 ")
    if not text:
        raise InvalidUIDError(f"{name} is missing")
    if len(text) > 64 or not UID_PATTERN.match(text):
        raise InvalidUIDError(f"{name} is not a valid UID ({_describe(text)})")
    return text


def _describe(text: str) -> str:
    """A malformed UID as the error message may show it: quoted while it looks like a UID.

    The rest is only counted: an element whose wrong length swallowed the
    elements after it carries them in its value, the patient's name among
    them, and the message goes to the log.
    """
    head = re.match(r"[0-9.]*", text)
    shown = head.group() if head else ""
    rest = text[len(shown) :]
    if len(shown) > 64:
        return f"{shown[:64]!r}... ({len(text)} characters)"
    if not rest:
        return repr(shown)
    return f"{shown!r} then {rest[0]!r} and {len(rest) - 1} more characters"


class Spool:
    """Durable file storage rooted at ``root``.

    Parameters
    ----------
    root : Path
        The spool folder; created if missing.
    fsync : bool
        Flush file and directory to disk before a write returns. Only
        benchmarks turn this off.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> PurePosixPath:
        """Relative path of a received instance (UIDs must have passed :func:`check_uid`)."""
        return PurePosixPath("instances", study_uid, series_uid, f"{sop_uid}.dcm")

    def result_path(self, job_id: int, sop_uid: str) -> PurePosixPath:
        return PurePosixPath("results", str(int(job_id)), f"{sop_uid}.dcm")

    def absolute(self, relative: str | PurePosixPath) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise InvalidUIDError(f"path {relative!s} leaves the spool")
        return path

    def write(self, relative: str | PurePosixPath, data: bytes | memoryview) -> Path:
        """Write ``data`` at ``relative`` atomically and durably; return the absolute path."""
        self.absolute(relative)  # refuse a path outside the spool before writing anything
        part = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            return self.adopt(part, relative)
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def adopt(self, source: Path, relative: str | PurePosixPath) -> Path:
        """Move a finished file from ``tmp/`` to ``relative``, durably; return the absolute path.

        ``source`` must be on the spool's file system (the receiver streams
        into ``tmp/``), so the move is a rename, not a copy.
        """
        target = self.absolute(relative)
        if self.fsync:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        created = self._makedirs(target.parent)
        os.chmod(source, 0o600)
        os.replace(source, target)
        if self.fsync:
            for folder in [target.parent, *created]:
                _fsync_dir(folder)
        return target

    def _makedirs(self, folder: Path) -> list[Path]:
        """Create ``folder`` and missing parents; return the parents of created folders."""
        missing = []
        current = folder
        while not current.exists():
            missing.append(current)
            current = current.parent
        if not missing:
            return []
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return [p.parent for p in missing]

    def free_mb(self) -> float:
        """Free space on the spool's file system in MiB."""
        return shutil.disk_usage(self.root).free / (1 << 20)

    def clean_tmp(self) -> int:
        """Remove partial writes and half-received objects left by a stop; return how many.

        Call only while no receiver runs (at start-up): everything in ``tmp/`` is unfinished.
        """
        removed = 0
        for part in self.tmp.iterdir():
            if part.is_file():
                part.unlink(missing_ok=True)
                removed += 1
        return removed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
