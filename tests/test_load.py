"""32 DCMTK storescu processes at once: every object stored once, no deadlock, memory bounded.

Runs on the index database the suite runs on (SQLite, then PostgreSQL in
``scripts/run-tests``).
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node import TEST_AET, NodeProcess, node_config
from peers import _children, pydicom_sample, storescu

pytestmark = pytest.mark.e2e

ASSOCIATIONS = 32
FILES_EACH = 4


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _tree_rss_mb(pid: int) -> dict[int, float]:
    pids = [pid, *_children(pid)]
    return {p: _rss_mb(p) for p in pids if Path(f"/proc/{p}").exists()}


def _write_batches(folder: Path) -> list[list[Path]]:
    """ASSOCIATIONS x FILES_EACH distinct CT objects in 8 studies."""
    template = pydicom.dcmread(pydicom_sample("CT_small.dcm"))
    studies = [generate_uid() for _ in range(8)]
    batches = []
    for a in range(ASSOCIATIONS):
        series = generate_uid()
        batch = []
        for k in range(FILES_EACH):
            template.StudyInstanceUID = studies[a % len(studies)]
            template.SeriesInstanceUID = series
            template.SOPInstanceUID = generate_uid()
            template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
            template.InstanceNumber = k + 1
            path = folder / f"{a:02d}-{k}.dcm"
            template.save_as(path, enforce_file_format=True)
            batch.append(path)
        batches.append(batch)
    return batches


def test_32_parallel_associations_all_stored(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "in").mkdir()
    batches = _write_batches(tmp_path / "in")
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        peers=[
            {"ae_title": TEST_AET, "host": "127.0.0.1"},
            {"ae_title": "STORESCU", "host": "127.0.0.1"},
        ],
    )
    # SO_REUSEPORT spreads connections by hash, not evenly: room for all 32 in each process
    config["node"].update({"receiver_processes": 2, "max_associations": ASSOCIATIONS})
    with NodeProcess(workdir, config) as node:
        assert node.process is not None
        before = _tree_rss_mb(node.process.pid)

        def send(batch: list[Path]) -> subprocess.CompletedProcess[str]:
            return storescu("127.0.0.1", node.port, batch, called_ae="DICOM_NODE", timeout=180)

        with ThreadPoolExecutor(ASSOCIATIONS) as pool:
            results = list(pool.map(send, batches))
        failed = [r.stderr[-300:] for r in results if r.returncode != 0]
        assert not failed, failed
        assert node.scalar("SELECT count(*) FROM instances") == ASSOCIATIONS * FILES_EACH
        assert node.scalar("SELECT count(DISTINCT study_instance_uid) FROM studies") == 8
        after = _tree_rss_mb(node.process.pid)
        assert node.echo()  # still serving
    # bounded memory: receiving streams to disk; 128 objects must not grow a process by much
    growth = {pid: after[pid] - before.get(pid, after[pid]) for pid in after}
    print(f"RSS MiB before {sorted(before.values())} after {sorted(after.values())}")
    assert max(growth.values()) < 150, (before, after)


def test_associations_spread_over_the_receivers_and_a_dead_one_refuses_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """The receivers share one listening socket: associations go to whichever is free, and
    while a killed receiver restarts the others take every connection."""
    import os
    import signal
    import time

    (tmp_path / "in").mkdir()
    batches = _write_batches(tmp_path / "in")
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        peers=[
            {"ae_title": "STORESCU", "host": "127.0.0.1"},
            {"ae_title": TEST_AET, "host": "127.0.0.1"},
        ],
    )
    config["node"]["receiver_processes"] = 2
    with NodeProcess(workdir, config) as node:
        assert node.process is not None

        def send(batch: list[Path]) -> subprocess.CompletedProcess[str]:
            return storescu("127.0.0.1", node.port, batch, called_ae="DICOM_NODE", timeout=180)

        with ThreadPoolExecutor(8) as pool:
            assert all(r.returncode == 0 for r in pool.map(send, batches[:8]))
        log = node.log_text()
        served = [
            log.count(f"receiver-{n} dicom_node.receive.scp: association from STORESCU")
            for n in (0, 1)
        ]
        print(f"associations per receiver: {served}")
        # a burst of 8 connections: the least busy receiver takes each (not all in one)
        assert sum(served) == 8 and min(served) >= 2, served

        receivers = [
            pid
            for pid in _children(node.process.pid)
            if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()
            and "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(receivers) == 2
        os.kill(receivers[0], signal.SIGKILL)
        # at once, before the supervisor restarts it: the other receiver answers every one
        assert all(node.echo() for _ in range(10))
        # the supervisor restarts it, and it serves again on the same socket
        deadline = time.monotonic() + 60

        def listening() -> int:  # two at the start, one more after the restart
            return node.log_text().count("dicom_node.receive.scp: listening as")

        while listening() < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "starting it again" in node.log_text() and listening() == 3
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, batches[8:16]))
        failed = [
            line
            for r in results
            if r.returncode != 0
            for line in (r.stdout + r.stderr).splitlines()
            if "Reject" in line or "Reason" in line or "F:" in line
        ]
        assert not failed, (failed, node.log_tail(200))
        assert node.scalar("SELECT count(*) FROM instances") == 16 * FILES_EACH
