"""The index database in trouble: a locked SQLite file, a PostgreSQL restart under a running node.

An object answered Success is durable with its receipt and indexed as soon as the
database answers; once a receiver's index write failed, new objects are answered
out-of-resources (0xA700) with a log line; when the database is back the node
indexes what waited and stores again by itself, and the stages behind the receiver
(completion, jobs) carry on.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import text

from dicom_node.config import parse_config
from dicom_node.db import make_engine, migrate
from dicom_node.receive.scp import StorageSCP
from dicom_node.spool import Spool
from pipelines.common.phantoms import write_radiograph_study

from node import NODE_AET, TEST_AET, NodeProcess, node_config
from peers import free_port

LOCK_TIMEOUT = 1.0


def store(port: int, ds: pydicom.Dataset) -> int | None:
    ae = AE(ae_title=TEST_AET)
    ae.dimse_timeout = 120
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return getattr(assoc.send_c_store(ds), "Status", None)
    finally:
        assoc.release()


def store_with_retries(port: int, ds: pydicom.Dataset, tries: int = 20) -> int | None:
    """Store as a PACS does: an out-of-resources answer is retried, here every half second."""
    status = store(port, ds)
    for _ in range(tries - 1):
        if status != 0xA700:
            break
        time.sleep(0.5)
        status = store(port, ds)
    return status


@pytest.fixture
def sqlite_receiver(tmp_path: Path) -> Iterator[Any]:
    database = tmp_path / "index.db"
    port = free_port()
    url = f"sqlite:///{database}?timeout={LOCK_TIMEOUT}"
    config = parse_config(
        f"""
node: {{ae_title: {NODE_AET}, host: 127.0.0.1, port: {port},
        peers: [{{ae_title: {TEST_AET}, host: 127.0.0.1}}]}}
storage: {{spool: spool, database_url: "{url}", min_free_disk_mb: 0}}
""",
        tmp_path,
    )
    engine = make_engine(config.storage.database_url)
    migrate(engine)
    scp = StorageSCP(lambda: config, Spool(config.storage.spool), engine)
    scp.start()
    yield port, database, engine
    scp.stop()
    engine.dispose()


def test_a_locked_sqlite_index_is_out_of_resources_then_recovers(
    sqlite_receiver: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, database, engine = sqlite_receiver
    studies = [
        write_radiograph_study(tmp_path / "in", seed=5, index=i, lesion=False) for i in range(3)
    ]
    first, second, third = (pydicom.dcmread(s.path) for s in studies)

    def indexed() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM instances")).scalar_one())

    assert store(port, first) == 0x0000
    holder = sqlite3.connect(database, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock, e.g. a long migration
    try:
        t0 = time.monotonic()
        # durable with its receipt, so Success; its row waits for the lock
        assert store(port, second) == 0x0000

        def failing() -> bool:
            return any("index unavailable" in r.getMessage() for r in caplog.records)

        while not failing() and time.monotonic() - t0 < 30:
            time.sleep(0.02)
        assert failing()
        assert time.monotonic() - t0 >= LOCK_TIMEOUT * 0.9  # the indexer waited for the lock
        assert store(port, third) == 0xA700  # the index fails: new objects are refused
        assert indexed() == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    deadline = time.monotonic() + 30
    while indexed() < 2 and time.monotonic() < deadline:  # the waiting row, by itself
        time.sleep(0.1)
    assert indexed() == 2
    assert store(port, third) == 0x0000  # recovered by itself: the peer's retry is stored
    assert indexed() == 3


def test_a_postgresql_restart_under_a_running_node(
    tmp_path: Path, postgres_cluster_factory: Any, demo_card: Path
) -> None:
    cluster = postgres_cluster_factory()
    studies = [
        write_radiograph_study(tmp_path / "in", seed=6, index=i, lesion=bool(i % 2))
        for i in range(3)
    ]
    datasets = [pydicom.dcmread(s.path) for s in studies]
    config = node_config(
        tmp_path / "node", cluster.url, monitoring={"host": "127.0.0.1", "port": free_port()}
    )
    with NodeProcess(tmp_path / "node", config) as node:
        assert store(node.port, datasets[0]) == 0x0000
        assert node.get("/health")[0] == 200
        cluster.stop()
        # the first object may be answered (durable with its receipt, its row waiting); once
        # the receiver's index write failed, new objects are refused
        statuses = [store(node.port, datasets[1])]
        while statuses[-1] == 0x0000 and len(statuses) < 5:
            time.sleep(0.5)
            statuses.append(store(node.port, datasets[1]))
        assert statuses[-1] == 0xA700 and set(statuses) <= {0x0000, 0xA700}, statuses
        # the operators see it: health fails on the index, the metrics say the index is down
        status, body = node.get("/health")
        assert status == 503 and json.loads(body)["checks"]["index"]["ok"] is False
        assert b"\ndicom_node_index_up 0.0\n" in node.get("/metrics")[1]
        time.sleep(2)  # the completion, job and dispatch stages meet the outage too
        cluster.start()
        assert node.get("/health")[0] == 200
        # the peer's retries: each receiver process notices within a second that the index is back
        assert store_with_retries(node.port, datasets[1]) == 0x0000
        assert store_with_retries(node.port, datasets[2]) == 0x0000
        node.wait_for("SELECT count(*) FROM instances", 3, timeout=30)
        # the stages behind the receiver carry on: every study completes and is analysed
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'done'", 3, timeout=180)
        assert node.process is not None and node.process.poll() is None
        log = node.log_text()
    assert "index unavailable" in log
