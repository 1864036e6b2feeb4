"""Index received objects off the answer's path, in groups; index again what a crash left behind.

Why: committing each object's index row before answering Success cost a synced
commit per object (the database's fsync, on top of the file's), and the
SQLAlchemy round trip on the path a single-association sender waits on. The
receiver now answers once the object is durable with its *receipt*, a hard
link in ``spool/unindexed/<receiver>/`` (:meth:`dicom_node.spool.Spool.receive`),
and hands the row to an :class:`Indexer`: a thread of the receiver process
that commits whatever has queued in one transaction, then removes those
receipts. A receipt outlives its row only by the time a commit takes, and a
receipt whose row was never committed (``kill -9``, power loss, a database
outage) is indexed by :func:`recover` when the node or the receiver starts
again. So an object answered Success is never lost, and the index learns of it
a few milliseconds later than the peer.

A receipt's name carries what the data set cannot say about its arrival: the
time, the association, the calling AE title and the peer's address.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from dicom_node.faults import crash_point
from dicom_node.receive.check import Header, plain_text, read_header
from dicom_node.receive.index import (
    ReceivedInstance,
    index_instance,
    index_instances,
    is_indexed,
)
from dicom_node.spool import Spool, check_uid

log = logging.getLogger(__name__)

#: The header elements the index keeps (and the character set that decodes them).
HEADER_TAGS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "AccessionNumber",
)
#: Rows waiting beyond which the receiver refuses new objects (0xA700) until the index catches up.
MAX_WAITING = 2000
#: Seconds the indexer lets rows gather after a commit: fewer, larger transactions under load.
GROUP_SECONDS = 0.05
#: The most rows one transaction commits.
GROUP_MAX = 500
#: The longest wait between two tries of a failed commit: the receiver refuses objects until
#: one succeeds, so a database back from an outage is noticed within this many seconds.
RETRY_SECONDS = 1.0
#: Series whose study and series rows this process wrote: their instances need one statement.
KNOWN_SERIES = 4096


@dataclass(frozen=True)
class Identity:
    """What the index keeps of a header: the UIDs (checked) and the routing text."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    body_part_examined: str | None
    series_description: str | None
    accession_number: str | None = None


def identify(header: Header) -> Identity:
    """Read and check what the index keeps from ``header``.

    Raises
    ------
    dicom_node.spool.InvalidUIDError
        A UID is missing or malformed.
    dicom_node.receive.check.DataSetMismatchError
        A text value holds control characters (its length is wrong).
    """
    return Identity(
        sop_class_uid=check_uid(header.text("SOPClassUID"), "SOP Class UID"),
        sop_instance_uid=check_uid(header.text("SOPInstanceUID"), "SOP Instance UID"),
        study_instance_uid=check_uid(header.text("StudyInstanceUID"), "Study Instance UID"),
        series_instance_uid=check_uid(header.text("SeriesInstanceUID"), "Series Instance UID"),
        modality=_clip(plain_text(header, "Modality"), 16),
        body_part_examined=_clip(plain_text(header, "BodyPartExamined"), 64),
        series_description=_clip(plain_text(header, "SeriesDescription"), 64),
        accession_number=_clip(plain_text(header, "AccessionNumber"), 16),
    )


def received_instance(
    identity: Identity,
    *,
    spool: Spool,
    syntax: str,
    size: int,
    calling_ae_title: str,
    source_address: str | None,
    received_at: datetime,
    association: str | None,
) -> ReceivedInstance:
    """The index row of an object: its identity and the facts of its arrival."""
    return ReceivedInstance(
        sop_instance_uid=identity.sop_instance_uid,
        sop_class_uid=identity.sop_class_uid,
        series_instance_uid=identity.series_instance_uid,
        study_instance_uid=identity.study_instance_uid,
        transfer_syntax_uid=syntax,
        modality=identity.modality,
        body_part_examined=identity.body_part_examined,
        series_description=identity.series_description,
        path=str(
            spool.instance_path(
                identity.study_instance_uid,
                identity.series_instance_uid,
                identity.sop_instance_uid,
            )
        ),
        size=size,
        calling_ae_title=calling_ae_title,
        source_address=source_address,
        received_at=received_at,
        association=association,
        accession_number=identity.accession_number,
    )


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    return value.strip()[:limit] or None


# --- receipts -------------------------------------------------------------------------------


def receipt_name(
    received_at: datetime, association: str | None, calling_ae_title: str, address: str | None
) -> str:
    """A unique receipt file name that records the arrival (see :func:`read_receipt_name`).

    The AE title and address are hex-encoded: a peer chooses its AE title, and a
    name must stay one path component.
    """
    micros = round(received_at.timestamp() * 1_000_000)
    return (
        "_".join(
            (
                str(micros),
                association or "-",
                calling_ae_title.encode().hex() or "-",
                (address or "").encode().hex() or "-",
                uuid.uuid4().hex[:8],
            )
        )
        + ".dcm"
    )


def read_receipt_name(name: str) -> tuple[datetime, str | None, str, str | None]:
    """(received at, association, calling AE title, address) from a :func:`receipt_name`."""
    micros, association, ae, address, _unique = name.removesuffix(".dcm").split("_")
    return (
        datetime.fromtimestamp(int(micros) / 1_000_000, UTC),
        None if association == "-" else association,
        "" if ae == "-" else bytes.fromhex(ae).decode(errors="replace"),
        None if address == "-" else bytes.fromhex(address).decode(errors="replace"),
    )


def recover(spool: Spool, engine: Engine, folder: Path) -> int:
    """Index the objects whose receipts a stop left in ``folder``; return how many were indexed.

    Call only while no receiver writes to ``folder``. For each receipt: put
    the file back at its name in ``instances/`` if the rename was lost, index
    it unless its row was committed after all, and remove the receipt. A
    receipt that cannot be read (it was checked before Success, so this means
    a damaged disk) is kept and logged: an operator decides.
    """
    if not folder.is_dir():
        return 0
    indexed = 0
    for receipt in sorted(folder.glob("*.dcm")):
        try:
            at, association, calling, address = read_receipt_name(receipt.name)
            syntax = read_file_meta_info(receipt).TransferSyntaxUID
            identity = identify(read_header(receipt, syntax, HEADER_TAGS))
        except Exception as exc:  # noqa: BLE001 - keep it, say so, go on with the others
            log.error("receipt %s cannot be read, kept for an operator: %s", receipt, exc)
            continue
        item = received_instance(
            identity,
            spool=spool,
            syntax=str(syntax),
            size=receipt.stat().st_size,
            calling_ae_title=calling,
            source_address=address,
            received_at=at,
            association=association,
        )
        target = spool.absolute(item.path)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.link(receipt, target)
        with engine.begin() as connection:
            if not is_indexed(connection, item.sop_instance_uid):
                index_instance(connection, item)
                indexed += 1
        receipt.unlink()
    if indexed:
        log.warning("indexed %d object(s) a stop left unindexed in %s", indexed, folder)
    return indexed


# --- the indexer thread ---------------------------------------------------------------------


@dataclass
class _Waiting:
    item: ReceivedInstance
    receipt: Path
    #: told whether the instance was new (False: a copy of one indexed before)
    on_indexed: Callable[[bool], None] | None


class Indexer:
    """Commits received objects' index rows in groups, in a thread of the receiver process.

    Parameters
    ----------
    engine : Engine
        The index database.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiting: deque[_Waiting] = deque()
        self._cond = threading.Condition()
        self._submitted = 0
        self._committed = 0
        self._stop = False
        self._hurry = False
        #: why the last commit failed (None while the index answers)
        self._trouble: str | None = None
        self._known_series: OrderedDict[str, None] = OrderedDict()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="indexer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what waits (for up to ``timeout`` seconds), then end the thread.

        Rows still waiting after that keep their receipts: the next start indexes them.
        """
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self,
        item: ReceivedInstance,
        receipt: Path,
        on_indexed: Callable[[bool], None] | None = None,
    ) -> None:
        """Queue ``item``'s row; ``receipt`` is removed once it is committed."""
        with self._cond:
            self._waiting.append(_Waiting(item, receipt, on_indexed))
            self._submitted += 1
            self._cond.notify_all()

    def trouble(self) -> str | None:
        """Why new objects must be refused now (the index fails, or too much waits); or None."""
        with self._cond:
            if self._trouble is not None:
                return f"index unavailable: {self._trouble}"
            if len(self._waiting) >= MAX_WAITING:
                return f"index behind: {len(self._waiting)} objects wait to be indexed"
        return None

    def flush(self, timeout: float) -> bool:
        """Wait until every row submitted before this call is committed; False on timeout,
        or at once while the index fails (the rows wait with their receipts)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._hurry = True
            self._cond.notify_all()
            while self._committed < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop or self._trouble is not None:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._stop)
                if not self._waiting:
                    return
                group = [self._waiting[i] for i in range(min(GROUP_MAX, len(self._waiting)))]
            crash_point("answered-before-index", delay=0.5)
            try:
                new = self._commit(group)
            except Exception as exc:  # noqa: BLE001 - keep the rows and their receipts, try again
                backoff = min(max(2 * backoff, 0.25), RETRY_SECONDS)
                self._failed(exc, len(group))
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, backoff)
                    if self._stop:
                        return
                continue
            backoff = 0.0
            for waiting, is_new in zip(group, new, strict=True):
                waiting.receipt.unlink(missing_ok=True)
                if waiting.on_indexed is not None:
                    waiting.on_indexed(is_new)
            with self._cond:
                for _ in group:
                    self._waiting.popleft()
                self._committed += len(group)
                if self._trouble is not None:
                    log.warning("index available again: %d waiting object(s) indexed", len(group))
                self._trouble = None
                self._cond.notify_all()
                # let the next group gather: new rows do not end the pause, a flush does
                self._cond.wait_for(lambda: self._hurry or self._stop, GROUP_SECONDS)
                self._hurry = False

    def _failed(self, exc: Exception, count: int) -> None:
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        with self._cond:
            first = self._trouble is None
            self._trouble = text
        if first:
            log.error(
                "index unavailable: %d received object(s) wait with their receipts, new ones "
                "are refused until it answers: %s",
                count,
                text,
            )

    def _commit(self, group: Sequence[_Waiting]) -> list[bool]:
        """One transaction for the group; whether each instance was new.

        A series this process indexed before needs only the instance row; if
        retention has since removed the series row, the group is written again
        with every study and series row.
        """
        try:
            return self._write(group, trust_known=True)
        except IntegrityError:
            for waiting in group:
                self._known_series.pop(waiting.item.series_instance_uid, None)
        return self._write(group, trust_known=False)

    def _write(self, group: Sequence[_Waiting], *, trust_known: bool) -> list[bool]:
        items = [waiting.item for waiting in group]
        with self.engine.begin() as connection:
            new = index_instances(
                connection, items, known_series=self._known_series if trust_known else ()
            )
        for waiting in group:
            self._known_series[waiting.item.series_instance_uid] = None
            self._known_series.move_to_end(waiting.item.series_instance_uid)
        while len(self._known_series) > KNOWN_SERIES:
            self._known_series.popitem(last=False)
        return new
