"""The receiver's indexer: rows committed in groups after Success, receipts removed once they are.

Runs on SQLite, and on PostgreSQL in the PostgreSQL pass (one statement per table for a group
must hold on both: a SOP Instance UID twice in a group may not update its row twice in one).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dicom_node.db import make_engine, migrate, utcnow
from dicom_node.receive.index import ReceivedInstance, index_instances
from dicom_node.receive.indexer import Indexer

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def item(
    sop: str, series: str = "1.2.3.1", study: str = "1.2.3", seconds: float = 0
) -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=sop,
        sop_class_uid=CT,
        series_instance_uid=series,
        study_instance_uid=study,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        body_part_examined="HEAD",
        series_description=None,
        path=f"instances/{study}/{series}/{sop}.dcm",
        size=100 + int(seconds),
        calling_ae_title="CT1",
        source_address="127.0.0.1",
        received_at=utcnow() + timedelta(seconds=seconds),
        association="a1",
    )


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_a_group_is_indexed_in_one_go_and_copies_are_counted(engine: Engine) -> None:
    with engine.begin() as conn:
        assert index_instances(conn, [item("1.1")]) == [True]
    group = [
        item("1.1", seconds=1),  # a copy of one indexed before
        item("1.2"),
        item("2.1", series="1.2.3.2"),  # a new series of the same study
        item("1.2", seconds=2),  # twice in the group: the later copy wins
        item("9.1", series="9.9.1", study="9.9"),  # a new study
        item("1.2", seconds=3),
    ]
    with engine.begin() as conn:
        assert index_instances(conn, group, known_series={"1.2.3.1"}) == [
            False,
            True,
            True,
            False,
            True,
            False,
        ]
    assert rows(engine, "SELECT sop_instance_uid, copies, size FROM instances ORDER BY 1") == [
        ("1.1", 2, 101),
        ("1.2", 3, 103),
        ("2.1", 1, 100),
        ("9.1", 1, 100),
    ]
    assert rows(engine, "SELECT series_instance_uid FROM series ORDER BY 1") == [
        ("1.2.3.1",),
        ("1.2.3.2",),
        ("9.9.1",),
    ]
    assert rows(engine, "SELECT study_instance_uid FROM studies ORDER BY 1") == [
        ("1.2.3",),
        ("9.9",),
    ]


def test_the_indexer_commits_what_queued_and_removes_the_receipts(
    engine: Engine, tmp_path: Path
) -> None:
    indexer = Indexer(engine)
    indexer.start()
    told: list[bool] = []
    receipts = []
    try:
        for n in range(50):
            receipt = tmp_path / f"r{n}.dcm"
            receipt.write_bytes(b"")
            receipts.append(receipt)
            sop = f"1.{n % 40}"  # ten copies among the fifty
            indexer.submit(item(sop, seconds=n), receipt, told.append)
        assert indexer.flush(30)
    finally:
        indexer.stop()
    assert rows(engine, "SELECT count(*), sum(copies) FROM instances") == [(40, 50)]
    assert sorted(told) == [False] * 10 + [True] * 40
    assert not any(r.exists() for r in receipts)
    assert indexer.trouble() is None


def test_a_failing_index_keeps_the_receipts_and_says_why(engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE instances"))
    indexer = Indexer(engine)
    indexer.start()
    receipt = tmp_path / "r.dcm"
    receipt.write_bytes(b"")
    try:
        indexer.submit(item("1.1"), receipt)
        assert not indexer.flush(10)  # gives up at once while the index fails
        trouble = indexer.trouble()
        assert trouble is not None and trouble.startswith("index unavailable: ")
        assert "instances" in trouble
    finally:
        indexer.stop(timeout=1)
    assert receipt.exists()  # the next start indexes it
