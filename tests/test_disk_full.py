"""The disk runs full under the real node: refuse with 0xA700, keep delivering, clean up, recover.

The spool lives on a small tmpfs (needs root to mount; CI runs as root). A
study whose results cannot be delivered yet (destination down) must survive
the emergency cleanup; once it is delivered it is the oldest finished study
and the cleanup deletes it, which brings the disk back above the watermark
and the node accepts objects again - with no one touching it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE

from pipelines.common.phantoms import write_radiograph_study

from node import NODE_AET, TEST_AET, NodeProcess, node_config

pytestmark = pytest.mark.e2e

MIN_FREE_MB = 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def store(port: int, path: Path) -> int | None:
    """C-STORE one file; the response status (None when there was no response)."""
    ds = pydicom.dcmread(path)
    ae = AE(ae_title=TEST_AET)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return getattr(assoc.send_c_store(ds), "Status", None)
    finally:
        assoc.release()


def fill(disk: Path, leave_mb: float) -> Path:
    """Write a ballast file so that ``leave_mb`` MiB stay free on ``disk``."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    size = int(free - leave_mb * (1 << 20))
    with open(ballast, "wb") as fh:
        fh.truncate(0)
        chunk = b"\xff" * (1 << 20)
        while size > 0:
            size -= fh.write(chunk[: min(size, len(chunk))])
    return ballast


def test_full_disk_refuses_keeps_delivering_and_emergency_cleanup_recovers(
    tmp_path: Path, small_disk: Path, database_url: str, storescp_factory: Any, demo_card: Path
) -> None:
    dest = storescp_factory(aet="RESULTS", start=False)  # down for now
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        destinations={"pacs": {"ae_title": "RESULTS", "host": "127.0.0.1", "port": dest.port}},
        routes=[{"name": "all", "fallback": True, "pipeline": "generic", "destinations": ["pacs"]}],
    )
    config["storage"].update(
        spool=str(small_disk / "spool"),
        min_free_disk_mb=MIN_FREE_MB,
        retention={"keep_days": None, "settle_seconds": 0, "interval_seconds": 1},
    )
    config["dispatch"]["retry"] = {
        "initial_seconds": 0.5,
        "multiplier": 1,
        "max_seconds": 0.5,
        "max_attempts": 1000,
    }
    first = write_radiograph_study(tmp_path / "in", seed=91, index=0, lesion=True)
    second = write_radiograph_study(tmp_path / "in", seed=91, index=1, lesion=False)
    with NodeProcess(workdir, config) as node:
        assert store(node.port, first.path) == 0x0000
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'done'", 1, timeout=120)
        node.wait_for("SELECT count(*) FROM results", 2, timeout=30)  # SR + heatmap, undelivered
        spooled = sum(p.stat().st_size for p in (small_disk / "spool").rglob("*") if p.is_file())
        # below the watermark by less than the first study holds
        fill(small_disk, MIN_FREE_MB - spooled / 2 / (1 << 20))
        assert shutil.disk_usage(small_disk).free / (1 << 20) < MIN_FREE_MB

        # refused, out of resources; the first study is kept: its results are not delivered yet
        assert store(node.port, second.path) == 0xA700
        assert node.scalar("SELECT count(*) FROM instances") == 1
        time.sleep(3)  # three retention passes
        assert node.scalar("SELECT count(*) FROM events WHERE stage = 'retention'") == 0
        assert len(list((small_disk / "spool" / "instances").rglob("*.dcm"))) == 1

        # the destination returns: delivering goes on at a full disk, then the cleanup runs
        dest.start()
        node.wait_for("SELECT count(*) FROM deliveries WHERE state = 'done'", 1, timeout=60)
        node.wait_for(
            "SELECT count(*) FROM events WHERE stage = 'retention' AND kind = 'emergency'",
            1,
            timeout=30,
        )
        assert node.scalar("SELECT count(*) FROM instances") == 0
        assert not list((small_disk / "spool" / "instances").rglob("*.dcm"))
        assert shutil.disk_usage(small_disk).free / (1 << 20) >= MIN_FREE_MB

        # accepted again, by itself
        assert store(node.port, second.path) == 0x0000
        assert node.scalar("SELECT count(*) FROM instances") == 1
        log = node.log_text()
    assert "below min_free_disk_mb" in log and "retention (emergency): deleted study" in log
    delivered = [pydicom.dcmread(p, stop_before_pixels=True) for p in dest.received()]
    assert {ds.StudyInstanceUID for ds in delivered} == {first.study_instance_uid}
    assert len(delivered) == 2
