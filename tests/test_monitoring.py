"""The operators' HTTP endpoints of a running node: /health, /metrics, /status.

The node runs as a process with DCMTK ``storescu`` as the modality; the
figures are read back over HTTP as a probe or Prometheus would, and checked
against what was sent and what the index holds.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.common.phantoms import write_radiograph_study

from node import NODE_AET, TEST_AET, NodeProcess, node_config
from peers import free_port, storescu

pytestmark = pytest.mark.e2e


def metrics(node: NodeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, keyed by (name, sorted labels)."""
    status, body = node.get("/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def monitored_node(tmp_path: Path, database_url: str, **sections: Any) -> NodeProcess:
    workdir = tmp_path / "node"
    config = node_config(
        workdir, database_url, monitoring={"host": "127.0.0.1", "port": free_port()}, **sections
    )
    return NodeProcess(workdir, config)


def test_health_metrics_and_status_follow_a_study_through_the_node(
    tmp_path: Path, database_url: str, demo_card: Path
) -> None:
    node = monitored_node(tmp_path, database_url)
    images = [
        write_radiograph_study(tmp_path / "phantoms", seed=5150, index=i, lesion=i == 0).path
        for i in range(3)
    ]
    with node:
        status, body = node.get("/health")
        health = json.loads(body)
        assert status == 200, health
        assert health["status"] == "ok"
        assert health["checks"]["receivers"] == {"ok": True, "alive": 2, "configured": 2}
        assert health["checks"]["index"]["ok"] and health["checks"]["spool"]["ok"]

        before = metrics(node)
        assert before[("dicom_node_index_up", ())] == 1
        assert before[("dicom_node_indexed", (("object", "instances"),))] == 0
        assert before[("dicom_node_jobs", (("state", "pending"),))] == 0
        assert before[("dicom_node_receivers", (("state", "alive"),))] == 2

        # three studies (one image each) from DCMTK; the shadow fallback route runs the demo model
        result = storescu("127.0.0.1", node.port, images, called_ae=NODE_AET, calling_ae=TEST_AET)
        assert result.returncode == 0, result.stderr
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'done'", 3, timeout=120)

        after = metrics(node)
        assert after[("dicom_node_indexed", (("object", "instances"),))] == 3
        assert after[("dicom_node_indexed", (("object", "studies"),))] == 3
        assert after[("dicom_node_jobs", (("state", "done"),))] == 3
        assert after[("dicom_node_jobs", (("state", "failed"),))] == 0
        assert after[("dicom_node_jobs_finished_last_hour", ())] == 3
        assert after[("dicom_node_oldest_pending_job_age_seconds", ())] == 0
        # shadow route: results stay local, nothing is queued for delivery
        assert after[("dicom_node_deliveries", (("state", "pending"),))] == 0
        # a job waits at least the study's quiet period (2 s in the test config) before it is done
        latency_max = after[("dicom_node_job_latency_seconds_last_hour", (("stat", "max"),))]
        latency_mean = after[("dicom_node_job_latency_seconds_last_hour", (("stat", "mean"),))]
        assert 0 < latency_mean <= latency_max < 120
        assert (
            after[("dicom_node_spool_free_bytes", ())]
            > after[("dicom_node_spool_min_free_bytes", ())]
        )

        # /status needs a signed-in user; /health and /metrics are open to the monitoring network
        assert node.get("/status")[0] == 401
        node.add_user("watcher", "viewer")
        opener = node.sign_in("watcher")
        status, body = node.get("/status", opener=opener)
        assert status == 200
        report = json.loads(body)
        assert report["received"]["instances"] == 3
        assert report["jobs"] == {"done": 3}

        assert node.get("/nothing-here")[0] == 404
        # counts and UIDs only: the patient names (PHANTOM^<index>) are in no answer
        for path in ("/health", "/metrics", "/status"):
            assert b"PHANTOM" not in node.get(path, opener=opener)[1].upper()


def test_health_fails_and_names_the_spool_when_the_disk_is_below_the_watermark(
    tmp_path: Path, database_url: str
) -> None:
    """Below ``min_free_disk_mb`` the receivers refuse stores, so the node is not healthy."""
    free_mb = int(shutil.disk_usage(tmp_path).free / (1 << 20))
    storage = {
        "spool": str(tmp_path / "node" / "spool"),
        "database_url": database_url,
        "min_free_disk_mb": free_mb + 10_000,
    }
    node = monitored_node(tmp_path, database_url, storage=storage, pipelines={}, routes=[])
    with node:
        status, body = node.get("/health")
        health = json.loads(body)
        assert status == 503
        assert health["status"] == "failing"
        assert health["checks"]["spool"]["ok"] is False
        assert health["checks"]["spool"]["min_free_disk_mb"] == free_mb + 10_000
        assert health["checks"]["index"]["ok"] and health["checks"]["receivers"]["ok"]


def test_a_busy_monitoring_port_stops_the_start_with_a_clear_error(
    tmp_path: Path, database_url: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        workdir = tmp_path / "node"
        config = node_config(
            workdir,
            database_url,
            monitoring={"host": "127.0.0.1", "port": port},
            pipelines={},
            routes=[],
        )
        node = NodeProcess(workdir, config)
        serve = subprocess.run(
            [sys.executable, "-m", "dicom_node", "serve", "--config", str(node.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert serve.returncode == 2, serve.stderr
    assert f"monitoring cannot listen on 127.0.0.1:{port}" in serve.stderr
    assert "monitoring.port" in serve.stderr
