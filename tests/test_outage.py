"""A destination outage: studies keep arriving, results wait with backoff, all arrive afterwards.

The destination (DCMTK storescp) is down while three studies are processed;
the node must retry with the configured backoff, not in a busy loop (the
attempt counts are bounded by the policy over the outage), and deliver
everything, exactly once per object, when the destination returns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pipelines.common.phantoms import write_radiograph_study

from node import TEST_AET, NodeProcess, node_config
from peers import storescu

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 12.0
RETRY = {"initial_seconds": 0.5, "multiplier": 2, "max_seconds": 4, "max_attempts": 12}


def _max_attempts_within(seconds: float) -> int:
    """Attempts the policy allows in ``seconds`` (plus the one that succeeds, plus slack for polling)."""
    elapsed, attempts = 0.0, 1
    while True:
        delay = min(
            RETRY["max_seconds"], RETRY["initial_seconds"] * RETRY["multiplier"] ** (attempts - 1)
        )
        if elapsed + delay > seconds:
            return attempts + 2
        elapsed += delay
        attempts += 1


def test_results_wait_out_an_outage_with_backoff_and_all_arrive(
    tmp_path: Path, database_url: str, storescp_factory: Any, demo_card: Path
) -> None:
    dest = storescp_factory(aet="RESULTS", start=False)  # down
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        destinations={"pacs": {"ae_title": "RESULTS", "host": "127.0.0.1", "port": dest.port}},
        routes=[{"name": "all", "fallback": True, "pipeline": "generic", "destinations": ["pacs"]}],
    )
    config["dispatch"]["retry"] = RETRY
    studies = [
        write_radiograph_study(tmp_path / "in", seed=77, index=i, lesion=bool(i % 2))
        for i in range(3)
    ]
    with NodeProcess(workdir, config) as node:
        t0 = time.monotonic()
        for study in studies:
            done = storescu(
                "127.0.0.1", node.port, [study.path], called_ae="DICOM_NODE", calling_ae=TEST_AET
            )
            assert done.returncode == 0, done.stderr
        # every study's results are queued and failing while the destination is down
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'done'", 3, timeout=120)
        node.wait_for("SELECT min(attempts) FROM deliveries", 1, timeout=60)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - t0)))
        assert node.scalar("SELECT count(*) FROM deliveries WHERE state = 'done'") == 0
        outage = time.monotonic() - t0
        dest.start()
        node.wait_for(
            "SELECT count(*) FROM deliveries WHERE state = 'done'",
            node.scalar("SELECT count(*) FROM deliveries"),
            timeout=60,
        )
        attempts = [row[0] for row in node.query("SELECT attempts FROM deliveries")]
        assert node.scalar("SELECT count(*) FROM deliveries WHERE state = 'dead'") == 0
    print(f"outage {outage:.1f} s: attempts per delivery {sorted(attempts)}")
    # backoff, not a busy loop: no delivery tried more often than the policy allows
    assert max(attempts) <= _max_attempts_within(outage + 5), (attempts, outage)
    assert min(attempts) >= 2  # each was refused at least once, then delivered
    received = [pydicom.dcmread(p, stop_before_pixels=True) for p in dest.received()]
    by_study = {s.study_instance_uid: 0 for s in studies}
    for ds in received:
        by_study[ds.StudyInstanceUID] += 1
    assert all(n >= 2 for n in by_study.values()), by_study  # an SR and a heatmap each
    uids = [ds.SOPInstanceUID for ds in received]
    assert len(uids) == len(set(uids))  # nothing delivered twice
