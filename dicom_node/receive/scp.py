"""The Storage SCP: accept associations from known peers, make each object durable, then answer.

The C-STORE handler never decodes pixel data. pynetdicom streams the bytes
exactly as the peer sent them into a temporary file in the spool's ``tmp/``
(chunked receiving); the handler walks the data set's structure (tags and
lengths: is it whole, well-formed, are its Pixel Data as described?
:mod:`dicom_node.receive.check`), keeps only the header elements it indexes,
leaves a receipt, renames the file into place atomically and fsyncs it (one
sync: :meth:`dicom_node.spool.Spool.receive`), and then answers Success; its
index row is committed a few milliseconds later, in a group, by the
receiver's :class:`~dicom_node.receive.indexer.Indexer`, and a crash before
that is repaired at start-up from the receipt. Every failure becomes a named
DICOM status and one log line naming UIDs only; nothing raises into
pynetdicom. A transfer cut off by an abort leaves no partial file behind.

Statuses (PS3.4 Annex B.2.3):

==========  =========================================================
``0x0000``  Success
``0xA700``  Refused: Out of Resources — disk below the watermark, spool
            write failed, or the index is unavailable or too far behind
            (the objects already answered wait with their receipts). The
            peer should retry.
``0xA900``  Error: Data Set does not match SOP Class — a UID is missing
            or malformed, the header disagrees with the request (SOP
            Instance or SOP Class UID, presentation context), or the Pixel
            Data are missing from an image or do not match the Image Pixel
            module (fewer bytes than Rows x Columns x ... need).
``0xC000``  Error: Cannot understand — no data set, or not one well-formed
            data set in the negotiated transfer syntax (truncated, a length
            past the end, undefined length misused, garbage), or compressed
            Pixel Data declaring more decoded bytes than the node accepts
            (decompression bomb); see :mod:`dicom_node.receive.check`.
==========  =========================================================
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from dicom_node.config import Config
from dicom_node.db import utcnow
from dicom_node.faults import crash_point
from dicom_node.receive.check import (
    PIXEL_KEYWORDS,
    DataSetMismatchError,
    MalformedDataSetError,
    check_pixels,
    read_header,
)
from dicom_node.receive.index import record_release
from dicom_node.receive.indexer import HEADER_TAGS as INDEXED_TAGS
from dicom_node.receive.indexer import (
    Indexer,
    identify,
    receipt_name,
    received_instance,
    recover,
)
from dicom_node.receive.mpps import MppsSCP
from dicom_node.spool import UID_PATTERN, InvalidUIDError, Spool
from dicom_node.tls import server_context

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: elements kept from each received header (everything else is only walked over)
HEADER_TAGS = [*INDEXED_TAGS, *PIXEL_KEYWORDS]
#: seconds a closing association waits for its rows to be committed (a release completes
#: only what is indexed)
FLUSH_SECONDS = 10.0


class ReusePortServer(ThreadedAssociationServer):
    """An association server that shares its port with sibling receiver processes.

    ``SO_REUSEPORT`` lets the kernel spread incoming connections over several
    processes, each with its own GIL (pynetdicom runs associations as threads).
    """

    def server_bind(self) -> None:
        if self.socket is None:  # TCPServer.__init__ creates it before binding
            raise RuntimeError("the association server has no socket to bind")
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class SharedSocketServer(ThreadedAssociationServer):
    """An association server on a listening socket the main process opened for all receivers.

    Why not ``SO_REUSEPORT``: the kernel then picks a receiver by a hash of the
    peer's address and port, blind to load; 4 associations on 2 processes land
    3 or 4 on one process in 10 cases of 16, which then runs them on one GIL
    while the other idles (measured: one run in three at about half the rate).
    On one shared socket every receiver's accept thread competes for the next
    connection, and one with associations running waits a little per
    association before it tries (:data:`BUSY_DELAY`): the least busy wins, in
    a burst too. The socket is non-blocking, so a receiver that lost the race
    goes back to waiting, and stops promptly.
    """

    def __init__(self, *args: Any, listener: socket.socket, **kwargs: Any) -> None:
        self._listener = listener
        self._accepted: deque[float] = deque()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one TCPServer made: the shared one serves instead
        self.socket = self._listener
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # already listening: the main process did it

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Who accepts first wins. In a burst of connections every receiver is idle, and the
        # first to wake would take them all: a receiver with associations running waits a
        # little per association before it tries, so the one with fewest wins.
        # (an association starts its thread a moment after the accept: count recent accepts)
        now = time.monotonic()
        while self._accepted and now - self._accepted[0] > RECENT_ACCEPT_SECONDS:
            self._accepted.popleft()
        busy = max(len(self.ae.active_associations), len(self._accepted))
        if busy:
            time.sleep(min(BUSY_DELAY_MAX, BUSY_DELAY * busy))
        client, address = super().get_request()
        self._accepted.append(time.monotonic())
        # blocking, as pynetdicom's own server hands them over (its DUL keeps the timeouts);
        # a socket with a timeout would poll before every recv
        client.setblocking(True)
        return client, address


#: seconds a receiver waits per running association before it takes a new one (at most the
#: second figure): long enough for an idle sibling's accept to win, short against an association
BUSY_DELAY, BUSY_DELAY_MAX = 0.005, 0.05
#: an accept counts as a running association this long (its thread is not yet listed)
RECENT_ACCEPT_SECONDS = 0.5


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """The receivers' shared listening socket (see :class:`SharedSocketServer`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


@dataclass
class _AssocStats:
    stored: int = 0
    failed: int = 0
    duplicates: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    #: the id its instances are indexed with (the completion stage's release signal)
    association: str = field(default_factory=lambda: uuid.uuid4().hex)


class StorageSCP:
    """The receiving side of the node.

    Parameters
    ----------
    config : callable returning Config
        Called on each association so that peer-list edits apply without a restart.
    spool : Spool
        Where objects are written.
    engine : Engine
        The index database.
    on_signal : callable, optional
        Called when a study may be complete (see below).
    receiver : int
        This receiver's number: its receipts live in ``spool/unindexed/<receiver>/``.
    """

    def __init__(
        self,
        config: Callable[[], Config],
        spool: Spool,
        engine: Engine,
        on_signal: Callable[[], None] | None = None,
        receiver: int = 0,
    ) -> None:
        self._config = config
        self.spool = spool
        self.engine = engine
        self.receipts = spool.receipts(receiver)
        self.indexer = Indexer(engine)
        #: called when a study may be complete: a ``complete_on_release`` peer's release or a
        #: COMPLETED MPPS was recorded (the receiver process wakes completion with it)
        self.on_signal = on_signal
        self.mpps = MppsSCP(engine, on_completed=on_signal)
        #: per association; weak, because pynetdicom ends some associations without an event (a
        #: malformed DIMSE message kills its DUL): their entries go with the association object
        self._stats: weakref.WeakKeyDictionary[Any, _AssocStats] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.server: ThreadedAssociationServer | None = None

    @property
    def config(self) -> Config:
        return self._config()

    # --- association level ------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        """Reject associations from (AE title, address) pairs not in ``node.peers``."""
        primitive = event.assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip() if primitive else ""
        address = event.assoc.requestor.address
        if not self.config.node.allows(calling, address):
            log.warning(
                "rejected association from calling AE %r at %s: not in node.peers", calling, address
            )
            # rejected-permanent, service-user, calling-AE-title-not-recognized
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            # as pynetdicom's own reject path: let the DUL send the A-ASSOCIATE-RJ before the
            # socket closes, or the peer only sees an abort
            event.assoc.kill()

    def _on_rejected(self, event: evt.Event) -> None:
        """pynetdicom refused an association itself: log what it counted (the limit's cause).

        pynetdicom refuses "transient, local limit exceeded" when more
        acceptor association *threads* are alive than ``node.max_associations``;
        threads of associations that are ending still count. The states say
        whether that is what happened.
        """
        assoc = event.assoc
        if not assoc.is_acceptor:
            return
        others = [a for a in assoc.ae.active_associations if a.is_acceptor and a is not assoc]
        states = Counter(
            "established"
            if a.is_established
            else "released"
            if a.is_released
            else "aborted"
            if a.is_aborted
            else "negotiating"
            for a in others
        )
        log.warning(
            "refused an association from %s at %s: %d other acceptor thread(s) alive (%s), "
            "node.max_associations %d; a peer retries a transient refusal",
            assoc.requestor.ae_title,
            assoc.requestor.address,
            len(others),
            ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none",
            assoc.ae.maximum_associations,
        )

    def _on_established(self, event: evt.Event) -> None:
        with self._lock:
            self._stats[event.assoc] = _AssocStats()
        refused = event.assoc.rejected_contexts
        if refused:
            # the peer cannot send these objects on this association: say which and why
            requestor = event.assoc.requestor
            log.info(
                "association from %s at %s: refused %d presentation context(s): %s",
                requestor.ae_title,
                requestor.address,
                len(refused),
                "; ".join(
                    f"{_printable(str(cx.abstract_syntax))} with "
                    f"{', '.join(_printable(str(ts)) for ts in cx.transfer_syntax)}: {cx.status}"
                    for cx in refused
                ),
            )

    def _on_acse(self, event: evt.Event) -> None:
        """A peer asks to release: commit its objects' rows before the answer goes out.

        pynetdicom answers an A-RELEASE-RQ right after this notification, so a
        peer whose release returned (and the completion stage, which sees the
        release) finds every object of the association indexed. Bounded: an
        index that fails or lags lets the release go, the rows wait with
        their receipts.
        """
        primitive = getattr(event, "primitive", None)
        if not isinstance(primitive, A_RELEASE) or primitive.result is not None:
            return
        with self._lock:
            stats = self._stats.get(event.assoc)
        if stats is not None and stats.stored:
            self.indexer.flush(FLUSH_SECONDS)

    def _on_closed(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        cut_off = _discard_partial(event.assoc)
        if cut_off is not None:
            log.warning(
                "association from %s at %s ended while receiving %s: partial data set discarded",
                requestor.ae_title,
                requestor.address,
                cut_off,
            )
        with self._lock:
            stats = self._stats.pop(event.assoc, None)
        if stats is None:
            return
        # its rows first: the duplicates are counted, and a release completes only what is indexed
        flushed = not stats.stored or self.indexer.flush(FLUSH_SECONDS)
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        if how == "released" and stats.stored and flushed:
            self._released(event, stats)
        log.info(
            "association from %s at %s %s: %d stored (%d duplicates), %d refused %s",
            requestor.ae_title,
            requestor.address,
            how,
            stats.stored,
            stats.duplicates,
            stats.failed,
            {f"0x{k:04X}": v for k, v in stats.statuses.items()} if stats.statuses else "",
        )

    def _released(self, event: evt.Event, stats: _AssocStats) -> None:
        """Record the release of a peer that sends whole studies, and wake completion.

        Only for a ``complete_on_release`` peer: its studies are complete once
        the settle time passed. Should this write fail (or the association's
        rows not be committed in time), the quiet timers still complete the
        studies: nothing waits on it but speed.
        """
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip()
        peer = self.config.node.peer(calling, str(requestor.address))
        if peer is None or not peer.complete_on_release:
            return
        try:
            with self.engine.begin() as connection:
                record_release(connection, stats.association, calling, utcnow())
        except Exception as exc:  # noqa: BLE001 - the quiet timers complete the study instead
            log.warning("association release from %s not recorded: %s", calling, _oneline(exc))
            return
        if self.on_signal is not None:
            self.on_signal()

    # --- C-ECHO / C-STORE ---------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            stats = self._stats.get(event.assoc)
        status = self._store(event, stats)
        with self._lock:
            if stats is not None:
                if status == SUCCESS:
                    stats.stored += 1
                else:
                    stats.failed += 1
                    stats.statuses[status] = stats.statuses.get(status, 0) + 1
        return status

    def _counted(self, stats: _AssocStats | None) -> Callable[[bool], None] | None:
        """What the indexer calls with whether an instance was new: copies are counted."""
        if stats is None:
            return None

        def indexed(new: bool) -> None:
            if not new:
                with self._lock:
                    stats.duplicates += 1

        return indexed

    def _store(self, event: evt.Event, stats: _AssocStats | None) -> int:
        # the peer's UID, printable: it names the object in the log lines before it is checked
        request_sop = _printable(str(_store_request(event).AffectedSOPInstanceUID or ""))
        calling = event.assoc.requestor.ae_title.strip()
        node = self.config.storage
        free = self.spool.free_mb()
        if free < node.min_free_disk_mb:
            log.error(
                "refused %s from %s: %.0f MiB free on the spool disk, below min_free_disk_mb=%d",
                request_sop,
                calling,
                free,
                node.min_free_disk_mb,
            )
            return OUT_OF_RESOURCES
        trouble = self.indexer.trouble()
        if trouble is not None:
            log.error("refused %s from %s: %s", request_sop, calling, trouble)
            return OUT_OF_RESOURCES
        # pynetdicom wrote the object, as received, to a file in the spool's tmp/; a C-STORE
        # request whose command says no data set follows has none (dataset_path is None)
        path = event.dataset_path
        if path is None:
            log.error("refused %s from %s: the request has no data set", request_sop, calling)
            return CANNOT_UNDERSTAND
        received = Path(path)
        self.spool.start_writing(received)  # the disk works while the checks run
        syntax = event.context.transfer_syntax
        try:
            header = read_header(received, syntax, HEADER_TAGS)
            size = received.stat().st_size
            identity = identify(header)
            mismatch = _request_mismatch(event, identity.sop_class_uid, identity.sop_instance_uid)
            if mismatch:
                raise InvalidUIDError(mismatch)
            check_pixels(header, identity.sop_class_uid, syntax)
        except (InvalidUIDError, DataSetMismatchError) as exc:
            log.error("refused %s from %s: %s", request_sop, calling, exc)
            return DATASET_MISMATCH
        except MalformedDataSetError as exc:
            log.error("refused %s from %s: %s", request_sop, calling, exc)
            return CANNOT_UNDERSTAND
        except Exception as exc:  # noqa: BLE001 - any other parse failure
            log.error(
                "refused %s from %s: data set cannot be parsed: %s",
                request_sop,
                calling,
                _oneline(exc),
            )
            return CANNOT_UNDERSTAND
        association = stats.association if stats is not None else None
        address = str(event.assoc.requestor.address)
        at = utcnow()
        item = received_instance(
            identity,
            spool=self.spool,
            syntax=str(syntax),
            size=size,
            calling_ae_title=calling,
            source_address=address,
            received_at=at,
            association=association,
        )
        sop = identity.sop_instance_uid
        receipt = self.receipts / receipt_name(at, association, calling, address)
        try:
            self.spool.receive(received, item.path, receipt)
        except OSError as exc:
            log.error(
                "refused %s from %s: spool write failed: %s", sop, calling, exc.strerror or exc
            )
            return OUT_OF_RESOURCES
        crash_point("stored-before-index")
        self.indexer.submit(item, receipt, self._counted(stats))
        log.debug("stored %s (series %s) from %s", sop, item.series_instance_uid, calling)
        return SUCCESS

    # --- lifecycle ----------------------------------------------------------------------

    def make_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.maximum_pdu_size
        ae.maximum_associations = node.max_associations
        ae.network_timeout = node.network_timeout
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:  # always set in pynetdicom's list
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(ModalityPerformedProcedureStep, ALL_TRANSFER_SYNTAXES)
        return ae

    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACSE_RECV, self._on_acse),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            *self.mpps.handlers(),
        ]

    def start(self, listener: socket.socket | None = None) -> ThreadedAssociationServer:
        """Listen in a background thread; return the server.

        ``listener``: a listening socket shared with sibling receiver processes
        (:class:`SharedSocketServer`); without one, this process binds the port
        itself with ``SO_REUSEPORT``.

        Switches this process's pynetdicom to chunked receiving
        (``STORE_RECV_CHUNKED_DATASET``) with temporary files in the spool's
        ``tmp/``: each object streams to disk as its PDUs arrive, so memory
        stays bounded whatever the object's size, and the finished file is
        renamed into place instead of being copied. Both settings are
        process-wide (a receiver process does nothing else); :meth:`stop`
        restores them.
        """
        node = self.config.node
        recover(self.spool, self.engine, self.receipts)  # what this receiver's last run left
        self.indexer.start()
        self._saved = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.tmp)
        ae = self.make_ae()
        server = ae.make_server(
            (node.host, node.port),
            evt_handlers=self.handlers(),
            server_class=(
                functools.partial(SharedSocketServer, listener=listener)  # type: ignore[arg-type]
                if listener is not None
                else ReusePortServer
            ),
            ssl_context=server_context(node.tls) if node.tls is not None else None,
        )
        ae._servers.append(server)  # as AE.start_server does, so AE.shutdown() finds it
        thread = threading.Thread(target=server.serve_forever, name="storage-scp", daemon=True)
        thread.start()
        self.server = server
        log.info(
            "listening as %s on %s:%d%s (%d peers allowed)",
            node.ae_title,
            node.host,
            node.port,
            " with DICOM TLS" if node.tls is not None else "",
            len(node.peers),
        )
        return server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
            _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = self._saved
        self.indexer.stop()


def _oneline(exc: BaseException) -> str:
    if not str(exc):
        return type(exc).__name__
    text = str(exc).splitlines()[0][:300]
    return text if text.isprintable() else repr(text)


def _discard_partial(assoc: Any) -> str | None:
    """Remove the file of a data set still arriving when the association ended; name it.

    pynetdicom streams a data set into the spool's ``tmp/`` as it arrives and
    removes the file after the C-STORE handler. A transfer cut off by an abort,
    a dropped connection or a timeout never reaches the handler, and its
    partial file would stay in ``tmp/`` until the next start
    (:meth:`Spool.clean_tmp`). pynetdicom keeps the message being received as
    ``assoc.dimse.message``; its file is ``_data_set_file`` (private, so read
    defensively). Returns the request's SOP Instance UID (printable), or None
    when nothing was arriving.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return None
    try:
        partial.close()
        os.unlink(partial.name)
    except (OSError, ValueError):
        pass  # already gone; clean_tmp removes anything left at the next start
    command = getattr(message, "command_set", None)
    sop = command.get("AffectedSOPInstanceUID", "") if command is not None else ""
    return _printable(str(sop or ""))


def _printable(value: str, limit: int = 64) -> str:
    """``value`` as it may appear in a log line: a UID as is, anything else quoted and escaped.

    A peer chooses the request's UID; newlines or control characters in it must
    not forge log lines.
    """
    value = value.rstrip("\x00 ")
    if UID_PATTERN.match(value) and len(value) <= limit:
        return value
    return repr(value[:limit])


def _store_request(event: evt.Event) -> C_STORE:
    """The request of a C-STORE event (the only kind :meth:`StorageSCP._store` is bound to)."""
    request = event.request
    if not isinstance(request, C_STORE):
        raise TypeError(f"expected a C-STORE request, got {type(request).__name__}")
    return request


def _request_mismatch(event: evt.Event, sop_class: str, sop: str) -> str | None:
    """Why the data set's SOP Class and Instance UIDs disagree with the request; None if they agree.

    The presentation context says what the peer proposed to send, the request
    what it says it sends: a data set of another SOP class may not be what the
    peer meant, and would be indexed under the wrong class.
    """
    request = _store_request(event)
    request_sop = str(request.AffectedSOPInstanceUID or "").rstrip("\x00 ")
    if request_sop != sop:
        return f"data set SOP Instance UID {sop} differs from the request"
    request_class = str(request.AffectedSOPClassUID or "").rstrip("\x00 ")
    context_class = str(event.context.abstract_syntax)
    if sop_class != request_class or sop_class != context_class:
        return (
            f"data set SOP Class UID {sop_class} differs from the request ({_printable(request_class)}) "
            f"or the presentation context ({context_class})"
        )
    return None
