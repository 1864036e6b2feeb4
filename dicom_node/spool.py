"""The spool: received objects and produced results as files, written durably.

Layout under the spool folder::

    instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   received objects, as sent
    results/<job id>/<SOPInstanceUID>.dcm                    objects the node produced
    tmp/                                                     objects being received, partial writes
    unindexed/<receiver>/<receipt>.dcm                       received, answered, not yet indexed

A write of the node's own goes to ``tmp/``, is fsync'ed, renamed into place
(atomic on POSIX) and the directory is fsync'ed, so a file either exists
whole or not at all, even after ``kill -9`` or power loss.

A received object costs one sync instead (:meth:`Spool.receive`), as
Orthanc's does: the file streamed into ``tmp/`` is hard-linked into
``unindexed/`` (the receipt), renamed into place, and fsync'ed where it
lies. On a journaling file system (ext4, XFS, btrfs) that fsync commits the
file's new names with its data, so after it returns the object and its
receipt survive power loss; the index row is committed afterwards, in
groups, and the receipt removed once it is (:mod:`dicom_node.receive.indexer`).
What a crash left in ``unindexed/`` is indexed again at start-up. For a file
system that does not commit names with a file's data, ``storage.fsync_folders``
syncs the folders too.

UIDs become path components only after :func:`check_uid` accepted them: a
UID is digits and dots, nothing else, so no peer can steer a write outside
the spool (pynetdicom #823).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

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
    fsync_folders : bool
        Also flush the folders a received object's names are written in
        (:meth:`receive`), for file systems that do not commit a file's names
        with its data.
    """

    def __init__(self, root: Path, *, fsync: bool = True, fsync_folders: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.fsync_folders = fsync_folders
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.unindexed = self.root / "unindexed"
        self._root = self.root.resolve()
        os.chmod(self.root, 0o700)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> PurePosixPath:
        """Relative path of a received instance (UIDs must have passed :func:`check_uid`)."""
        return PurePosixPath("instances", study_uid, series_uid, f"{sop_uid}.dcm")

    def result_path(self, job_id: int, sop_uid: str) -> PurePosixPath:
        return PurePosixPath("results", str(int(job_id)), f"{sop_uid}.dcm")

    def absolute(self, relative: str | PurePosixPath) -> Path:
        """The absolute path of ``relative``; refuses one that leaves the spool.

        Lexical (``..`` and absolute paths), without a system call: the spool's
        own names come from checked UIDs and job ids, and nothing but the node
        writes links into it.
        """
        path = Path(os.path.normpath(self._root / relative))
        if not path.is_relative_to(self._root):
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

    def receipts(self, receiver: int) -> Path:
        """The folder of receiver ``receiver``'s receipts (created, and made durable, if missing)."""
        folder = self.unindexed / str(int(receiver))
        for parent in self._makedirs(folder):
            _fsync_dir(parent)
        return folder

    def start_writing(self, source: Path) -> None:
        """Ask the kernel to start writing ``source`` to disk now, without waiting.

        Called as a received object's checks begin, so that by the fsync of
        :meth:`receive` the data are mostly written and the sync waits for
        little more than the journal (~0.3 ms less per 512 KiB object here).
        Linux's ``sync_file_range``; elsewhere nothing.
        """
        if not self.fsync or _sync_file_range is None:
            return
        fd = os.open(source, os.O_RDONLY)
        try:
            _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)

    def receive(self, source: Path, relative: str | PurePosixPath, receipt: Path) -> Path:
        """Keep a received file: receipt, rename into place, one sync; return the absolute path.

        ``source`` is the file pynetdicom streamed into ``tmp/``; ``receipt``
        a new name in a :meth:`receipts` folder, hard-linked to the same
        data so that a crash before the index row is committed leaves the
        object findable (:func:`dicom_node.receive.indexer.recover`). The one
        fsync, of the file at its final name, comes last: on ext4, XFS and
        btrfs it commits the link and the rename with the data.
        """
        target = self.absolute(relative)
        created = self._makedirs(target.parent)
        fd = os.open(source, os.O_RDONLY)
        try:
            if os.fstat(fd).st_mode & 0o777 != 0o600:  # pynetdicom's temporary files are
                os.fchmod(fd, 0o600)  # already; a metadata change costs more than a look
            os.link(source, receipt)
            os.replace(source, target)
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            if not target.exists():  # the rename did not happen: no receipt for nothing
                receipt.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        if self.fsync and self.fsync_folders:
            for folder in {receipt.parent, target.parent, *created}:
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


def _libc_sync_file_range() -> Any:
    """glibc's ``sync_file_range`` (start writeback of a file's dirty pages), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
