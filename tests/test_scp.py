"""The Storage SCP in process, over real DICOM on loopback: statuses for what it cannot keep.

Success only once the object is durable in the spool with its receipt (its index
row follows, and a crash before it is repaired from the receipt); out-of-resources
when the disk is below the watermark or the index is unavailable; data-set errors for objects
whose UIDs are missing, malformed or would name a path outside the spool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import text
from sqlalchemy.orm import Session

from dicom_node.config import Config, parse_config
from dicom_node.db import make_engine, migrate
from dicom_node.receive.scp import StorageSCP
from dicom_node.spool import Spool

from peers import free_port, pydicom_sample


class Receiver:
    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        min_free_disk_mb: int = 0,
        max_associations: int = 16,
    ) -> None:
        self.port = free_port()
        self.config: Config = parse_config(
            f"""
node: {{ae_title: DICOM_NODE, host: 127.0.0.1, port: {self.port},
        max_associations: {max_associations},
        peers: [{{ae_title: MODALITY, host: 127.0.0.1}}]}}
storage: {{spool: spool, database_url: "{database_url}", min_free_disk_mb: {min_free_disk_mb}}}
""",
            tmp_path,
        )
        self.engine = make_engine(database_url)
        migrate(self.engine)
        self.spool = Spool(self.config.storage.spool)
        self.scp = StorageSCP(lambda: self.config, self.spool, self.engine)
        self.scp.start()

    def store(self, ds: pydicom.Dataset, calling: str = "MODALITY") -> int | None:
        ae = AE(ae_title=calling)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOM_NODE")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        return getattr(status, "Status", None)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM instances")).scalar_one())

    def files(self) -> list[Path]:
        return [p for p in (self.spool.root / "instances").rglob("*") if p.is_file()]


@pytest.fixture
def receiver(tmp_path: Path, database_url: str) -> Iterator[Receiver]:
    r = Receiver(tmp_path, database_url)
    yield r
    r.scp.stop()
    r.engine.dispose()


def ct(**changes: Any) -> pydicom.Dataset:
    ds = pydicom.dcmread(pydicom_sample("CT_small.dcm"))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_success_means_in_spool_and_indexed(receiver: Receiver) -> None:
    ds = ct()
    assert receiver.store(ds) == 0x0000
    assert receiver.count() == 1
    (path,) = receiver.files()
    assert path.name == f"{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(path).PixelData == ds.PixelData  # the bytes as sent


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"StudyInstanceUID": None}, 0xA900),
        ({"SeriesInstanceUID": "../../../../tmp/evil"}, 0xA900),
        ({"StudyInstanceUID": "1.2.3/../../x"}, 0xA900),
        ({"SeriesInstanceUID": "1.2.abc"}, 0xA900),
    ],
)
def test_missing_or_malformed_uids_are_refused_and_nothing_escapes(
    receiver: Receiver, tmp_path: Path, changes: dict[str, Any], status: int
) -> None:
    assert receiver.store(ct(**changes)) == status
    assert receiver.count() == 0
    assert receiver.files() == []
    assert not list(tmp_path.parent.glob("**/evil*"))


def test_a_series_retention_removed_is_indexed_again(receiver: Receiver) -> None:
    """The receiver remembers series it indexed; retention may delete them since."""
    from datetime import timedelta

    from dicom_node.db import utcnow
    from dicom_node.receive.index import forget_study

    first = ct()
    assert receiver.store(first) == 0x0000
    with receiver.engine.begin() as conn, Session(bind=conn) as session:
        forget_study(
            session,
            first.StudyInstanceUID,
            through_id=10**9,
            received_before=utcnow() + timedelta(seconds=1),
        )
        session.flush()
    assert receiver.count() == 0
    second = ct(SOPInstanceUID=first.SOPInstanceUID + ".2")  # same series, new instance
    assert receiver.store(second) == 0x0000
    assert receiver.count() == 1
    with receiver.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM series")).scalar_one() == 1


def test_disk_below_watermark_is_out_of_resources(tmp_path: Path, database_url: str) -> None:
    r = Receiver(tmp_path, database_url, min_free_disk_mb=10**9)  # more than any disk has
    try:
        assert r.store(ct()) == 0xA700
        assert r.count() == 0 and r.files() == []
    finally:
        r.scp.stop()


def test_index_unavailable_keeps_what_was_answered_and_refuses_the_rest(receiver: Receiver) -> None:
    """Success means durable with a receipt; the row follows. While the index fails, what was
    answered waits with its receipt, new objects are refused (0xA700), and once the index
    answers again the waiting ones are indexed by themselves."""
    from dicom_node.receive.tables import Instance

    with receiver.engine.begin() as conn:
        conn.execute(text("DROP TABLE instances"))
    first, second = ct(), ct(SOPInstanceUID="1.2.826.0.1.3680043.2.1125.77.1")
    assert receiver.store(first) == 0x0000  # answered before the row's commit failed
    assert receiver.store(second) == 0xA700  # the index failed meanwhile: refused
    receipts = list(receiver.scp.receipts.iterdir())
    assert len(receipts) == 1 and receipts[0].stat().st_nlink == 2  # the file, kept twice
    assert [p.name for p in receiver.files()] == [f"{first.SOPInstanceUID}.dcm"]
    with receiver.engine.begin() as conn:
        Instance.__table__.create(conn)
    deadline = time.monotonic() + 30
    while receiver.count() < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.count() == 1
    assert not list(receiver.scp.receipts.iterdir())
    assert receiver.store(second) == 0x0000  # the peer's retry
    assert receiver.count() == 2


def test_a_crash_before_the_index_commit_is_repaired_from_the_receipt(
    tmp_path: Path, database_url: str
) -> None:
    """What a stop left unindexed (a receipt, the rename perhaps lost) is indexed at start."""
    from dicom_node.receive.indexer import read_receipt_name

    r = Receiver(tmp_path, database_url)
    try:
        ds = ct()
        assert r.store(ds) == 0x0000
        (path,) = r.files()
        with r.engine.connect() as conn:
            association = conn.execute(text("SELECT association FROM instances")).scalar_one()
    finally:
        r.scp.stop()
    # as a kill -9 before the commit leaves it: the receipt, no row; and as a power loss
    # that kept the receipt but not the rename: no file at its name either
    receipt = (
        r.spool.receipts(0)
        / f"1765000000000000_{association}_{b'MODALITY'.hex()}_{b'127.0.0.1'.hex()}_0.dcm"
    )
    os.link(path, receipt)
    path.unlink()
    with r.engine.begin() as conn:
        conn.execute(text("DELETE FROM instances"))
    again = StorageSCP(lambda: r.config, r.spool, r.engine)
    again.start()
    try:
        assert r.count() == 1
        with r.engine.connect() as conn:
            row = conn.execute(
                text("SELECT calling_ae_title, association, path FROM instances")
            ).one()
        assert row == ("MODALITY", association, str(path.relative_to(r.spool.root)))
        assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
        assert not receipt.exists()
    finally:
        again.stop()
        r.engine.dispose()
    at, _, calling, address = read_receipt_name(receipt.name)
    assert (at.year, calling, address) == (2025, "MODALITY", "127.0.0.1")


def test_receipt_names_keep_any_ae_title_in_one_path_component() -> None:
    from dicom_node.db import utcnow
    from dicom_node.receive.indexer import read_receipt_name, receipt_name

    now = utcnow()
    name = receipt_name(now, None, "../ODD_AE é", None)
    assert "/" not in name
    at, association, calling, address = read_receipt_name(name)
    assert abs((at - now).total_seconds()) < 1e-5
    assert (association, calling, address) == (None, "../ODD_AE é", None)


def test_unknown_calling_ae_is_rejected_at_association(receiver: Receiver) -> None:
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="DICOM_NODE")
    assert assoc.is_rejected
    assert receiver.count() == 0


def test_an_association_over_the_limit_is_refused_and_the_log_says_what_was_counted(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = Receiver(tmp_path, database_url, max_associations=1)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    first = ae.associate("127.0.0.1", r.port, ae_title="DICOM_NODE")
    try:
        assert first.is_established
        with caplog.at_level("WARNING", logger="dicom_node.receive.scp"):
            second = ae.associate("127.0.0.1", r.port, ae_title="DICOM_NODE")
            assert second.is_rejected
            deadline = time.monotonic() + 5
            while "refused an association" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "1 other acceptor thread(s) alive (1 established)" in caplog.text
        assert "node.max_associations 1" in caplog.text
    finally:
        first.release()
        r.scp.stop()
        r.engine.dispose()


def test_peer_list_edits_apply_to_new_associations(receiver: Receiver) -> None:
    ae = AE(ae_title="NEWPACS")
    ae.add_requested_context(CTImageStorage)
    assert ae.associate("127.0.0.1", receiver.port, ae_title="DICOM_NODE").is_rejected
    node = receiver.config.node
    peers = [*node.peers, node.peers[0].model_copy(update={"ae_title": "NEWPACS"})]
    receiver.config = receiver.config.model_copy(
        update={"node": node.model_copy(update={"peers": peers})}
    )
    assert receiver.store(ct(), calling="NEWPACS") == 0x0000
