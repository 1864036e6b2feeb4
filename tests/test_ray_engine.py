"""The Ray engine against a real Ray cluster, with Orthanc as the PACS.

One cluster per module: a head started here (no CPUs of its own) and a
worker node in its own processes standing in for a GPU host by a custom
resource (``test_gpu``) that the node's config asks for instead of
``num_gpus``. The node runs ``engine: ray``; everything is on this machine.

What is shown: studies forwarded together come back exactly once each and
dciodvfy-clean, with slices of two CTs in one forward pass on the worker; a
``kill -9`` of the worker process holding a model mid-job retries the job
and its results arrive once; a stopped worker node leaves jobs pending (and
``/health`` and ``/metrics`` say so) until a worker node comes back; a
``kill -9`` of the node itself mid-flight loses nothing; a second copy of a
model starts while two jobs run and stops when idle (``max_replicas``); the
node outlives the loss of the cluster's head, which ends Ray's driver process
(the head-loss test runs last: it restarts the module's cluster).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from bench.ray_cluster import RayCluster, replica_pids
from pipelines.card import load_card
from pipelines.cxr.synth import write_cxr_dataset
from pipelines.ich.synth import write_head_ct_series

from crash import KINDS, Campaign, summary
from dicom_validation import dciodvfy_errors
from node import NodeProcess, node_config, pacs_node_config
from peers import Orthanc, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

GPU_HOST = {"test_gpu": 2}
#: one replica of each model per "GPU host" share, one CPU each (the worker node has 2)
RAY_RESOURCES = {"num_cpus": 1, "resources": {"test_gpu": 1}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    with RayCluster(tmp_path_factory.mktemp("ray")) as ray_cluster:
        ray_cluster.add_worker(GPU_HOST)
        yield ray_cluster


def _config(
    workdir: Path,
    database_url: str,
    node_port: int,
    pacs: Orthanc,
    cluster: RayCluster,
    *routes: str,
    **jobs: Any,
) -> dict[str, Any]:
    config = pacs_node_config(
        workdir,
        database_url,
        pacs,
        *routes,
        port=node_port,
        engine={
            "kind": "ray",
            "address": cluster.address,
            "namespace": f"test-{workdir.parent.name}",
            "token_file": str(cluster.token_file),
            "call_timeout_seconds": 300,
            "chunk_mb": 1,  # several chunks per CT: the streamed path is the one tested
        },
        jobs={"in_flight": 3, "max_attempts": 3, **jobs},
        monitoring={"host": "127.0.0.1", "port": free_port()},
    )
    for spec in config["pipelines"].values():
        spec["ray"] = RAY_RESOURCES
    return config


def _head_ct(folder: Path, index: int, n_slices: int = 12) -> list[Any]:
    return write_head_ct_series(
        folder, seed=9101, index=index, hemorrhages=("subdural",), n_slices=n_slices
    )


class _HeadCT:
    """One head CT that the PACS forwards to the node, and the results it must get back."""

    def __init__(self, folder: Path, index: int, card: Path) -> None:
        self.slices = _head_ct(folder, index)
        self.top_k = load_card(card).explainer.top_k
        self.study_id = ""

    def send(self, pacs: Orthanc) -> None:
        (self.study_id,) = _send(
            pacs, [s.path for s in self.slices], [self.slices[0].study_instance_uid]
        )

    def wait_for_results(self, pacs: Orthanc, node: NodeProcess, after: str) -> None:
        pacs.wait_for(
            lambda: len(pacs.study_instances(self.study_id)) >= len(self.slices) + 1 + self.top_k,
            timeout=300,
            message=f"results {after}\n{node.log_tail()}",
        )

    def assert_results_once(self, pacs: Orthanc) -> None:
        objects = _objects(pacs, self.study_id)
        assert len(objects["CT"]) == len(self.slices)
        assert len(objects["SR"]) == 1 and len(objects["OT"]) == self.top_k, "once, not twice"


class _OneCT:
    """A head CT for the PACS to forward, and the config of a node running ``head-ct`` on Ray."""

    def __init__(
        self, cluster: RayCluster, pacs: Orthanc, tmp_path: Path, card: Path, *args: Any
    ) -> None:
        self.cluster, self.pacs, self.card = cluster, pacs, card
        self.ct = _HeadCT(tmp_path / "ct", 3, card)
        self.workdir = tmp_path / "node"
        self._args = args  # database URL, node port

    def config(self, **jobs: Any) -> dict[str, Any]:
        database_url, node_port = self._args
        return _config(
            self.workdir, database_url, node_port, self.pacs, self.cluster, "head-ct", **jobs
        )


@pytest.fixture
def one_ct(
    cluster: RayCluster,
    pacs: Orthanc,
    node_port: int,
    tmp_path: Path,
    database_url: str,
    ich_demo_card: Path,
) -> _OneCT:
    return _OneCT(cluster, pacs, tmp_path, ich_demo_card, database_url, node_port)


def _objects(pacs: Orthanc, study_id: str) -> dict[str, list[pydicom.Dataset]]:
    objects: dict[str, list[pydicom.Dataset]] = {}
    for item in pacs.study_instances(study_id):
        ds = pydicom.dcmread(io.BytesIO(pacs.instance_file(item["ID"])))
        objects.setdefault(ds.Modality, []).append(ds)
    return objects


def _send(pacs: Orthanc, files: list[Path], study_uids: list[str]) -> list[str]:
    for path in files:
        pacs.upload(path)
    ids = [pacs.find_study(uid) for uid in study_uids]
    assert all(ids)
    summary = pacs.store_to_modality("node", [i for i in ids if i])
    assert summary.get("FailedInstancesCount", 0) == 0
    return [i for i in ids if i]


def test_studies_forwarded_together_share_batches_on_the_cluster_and_arrive_once(
    cluster: RayCluster,
    pacs: Orthanc,
    node_port: int,
    tmp_path: Path,
    database_url: str,
    ich_demo_card: Path,
    cxr_demo_card: Path,
) -> None:
    first, second = _head_ct(tmp_path / "ct1", 1), _head_ct(tmp_path / "ct2", 2)
    size = load_card(cxr_demo_card).input.size
    cxr = write_cxr_dataset(tmp_path / "cxr", n=8, seed=7101, size=size)
    image = next(i for i in cxr.images if i.findings)
    top_k = load_card(ich_demo_card).explainer.top_k
    workdir = tmp_path / "node"
    # a part-full batch waits up to 3 s for the other CT: they complete within a second or two
    config = _config(
        workdir, database_url, node_port, pacs, cluster, "head-ct", "chest-xr", batch_wait_ms=3000
    )
    with NodeProcess(workdir, config) as node:
        ids = _send(
            pacs,
            [s.path for s in first + second] + [image.path],
            [first[0].study_instance_uid, second[0].study_instance_uid, image.study_instance_uid],
        )
        expected = {ids[0]: len(first) + 1 + top_k, ids[1]: len(second) + 1 + top_k, ids[2]: 3}
        pacs.wait_for(
            lambda: all(len(pacs.study_instances(i)) >= n for i, n in expected.items()),
            timeout=400,
            message=f"results of all three studies in the PACS\n{node.log_tail()}",
        )
        done = node.query("SELECT detail FROM events WHERE kind = 'job-done' ORDER BY id")
        health = node.get("/health")
    for study_id, count in expected.items():
        objects = _objects(pacs, study_id)
        assert sum(len(v) for v in objects.values()) == count, "every result exactly once"
        (sr,) = objects["SR"]
        for ds in (sr, *objects["OT"]):
            assert dciodvfy_errors(ds) == [], ds.Modality
    details = [row[0] for row in done]
    assert all("ray replica" in d for d in details), details
    shared = [d for d in details if "ich" in d and re.search(r"[1-9]\d* shared with other", d)]
    assert len(shared) == 2, f"one forward pass held slices of both CTs: {details}"
    assert health[0] == 200


def test_a_killed_worker_process_retries_the_job_and_results_arrive_once(one_ct: _OneCT) -> None:
    ct, pacs, workdir = one_ct.ct, one_ct.pacs, one_ct.workdir
    # the lone CT's part-full batch waits 8 s for company: a window to kill its worker in
    config = one_ct.config(batch_wait_ms=8_000)
    with NodeProcess(workdir, config) as node:
        pids = wait_for(
            lambda: replica_pids(node.log_text(), "ich"),
            timeout=180,
            message=f"the ich replica started\n{node.log_tail()}",
        )
        ct.send(pacs)
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'running'", 1, timeout=60)
        wait_for(
            lambda: "ray::ModelReplica.infer" in _cmdline(pids[-1]),
            timeout=60,
            message="the replica runs the job",
        )
        os.kill(pids[-1], signal.SIGKILL)
        ct.wait_for_results(pacs, node, "after the retry")
        attempts, state = node.query("SELECT attempts, state FROM jobs")[0]
        retries = node.scalar("SELECT count(*) FROM events WHERE kind = 'job-retry'")
    assert (attempts, state) == (2, "done")
    assert retries == 1
    ct.assert_results_once(pacs)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_lost_worker_node_keeps_jobs_pending_until_a_node_comes_back(one_ct: _OneCT) -> None:
    ct, pacs, cluster, workdir = one_ct.ct, one_ct.pacs, one_ct.cluster, one_ct.workdir
    config = one_ct.config()
    for worker in cluster.workers:
        worker.stop()
    cluster.workers.clear()
    with NodeProcess(workdir, config) as node:
        ct.send(pacs)
        node.wait_for("SELECT count(*) FROM jobs", 1, timeout=60)
        wait_for(
            lambda: node.get("/health")[0] == 503,
            timeout=60,
            message="health reports the pipeline without a host",
        )
        body = node.get("/health")[1]
        assert b"no live Ray node has" in body and b"test_gpu" in body
        metrics = node.get("/metrics")[1].decode()
        assert 'dicom_node_pipeline_waiting{pipeline="ich"} 1.0' in metrics
        assert "dicom_node_inference_up 0.0" in metrics
        assert node.scalar("SELECT state FROM jobs") == "pending"
        assert node.scalar("SELECT attempts FROM jobs") == 0, "waiting is not a failed attempt"
        cluster.add_worker(GPU_HOST)
        ct.wait_for_results(pacs, node, "once a worker node is back")
        assert node.get("/health")[0] == 200
    ct.assert_results_once(pacs)


def test_replicas_start_while_jobs_run_and_stop_when_idle(one_ct: _OneCT, tmp_path: Path) -> None:
    """``replicas``..``max_replicas``: a second concurrent job starts a second copy
    (``target_jobs: 1``), which stops again after ``idle_seconds`` without a job."""
    first, pacs = one_ct.ct, one_ct.pacs
    second = _HeadCT(tmp_path / "ct2", 4, one_ct.card)
    config = one_ct.config(batch_wait_ms=3_000)
    config["pipelines"]["ich"]["ray"] = {
        **RAY_RESOURCES,
        "replicas": 1,
        "max_replicas": 2,
        "target_jobs": 1,
        "idle_seconds": 5,
    }
    with NodeProcess(one_ct.workdir, config) as node:
        wait_for(
            lambda: replica_pids(node.log_text(), "ich"),
            timeout=180,
            message=f"the ich replica started\n{node.log_tail()}",
        )
        assert _replicas(node) == 1, "replicas: 1 is kept warm"
        first.send(pacs)
        second.send(pacs)
        first.wait_for_results(pacs, node, "of the first CT")
        second.wait_for_results(pacs, node, "of the second CT")
        log = node.log_text()
        assert "2 job(s) running; starting replica 1 (2 of at most 2)" in log, node.log_tail()
        wait_for(
            lambda: "pipeline ich: replica 1 ready" in node.log_text(),
            timeout=180,
            message=f"the second replica loaded\n{node.log_tail()}",
        )
        wait_for(
            lambda: _replicas(node) == 1,
            timeout=60,
            message=f"the second replica stopped when idle\n{node.log_tail()}",
        )
        assert "pipeline ich: stopped replica 1, idle for" in node.log_text()
        assert "replica 2" not in node.log_text(), "never more than max_replicas"
    first.assert_results_once(pacs)
    second.assert_results_once(pacs)


def _replicas(node: NodeProcess) -> int:
    """How many ich replicas the node's /health lists."""
    health = json.loads(node.get("/health")[1])
    return len(health["checks"]["inference"]["replicas"].get("ich", []))


def test_the_node_killed_mid_flight_loses_nothing(one_ct: _OneCT) -> None:
    ct, pacs, workdir = one_ct.ct, one_ct.pacs, one_ct.workdir
    config = one_ct.config(batch_wait_ms=8_000)
    node = NodeProcess(workdir, config).start()
    try:
        ct.send(pacs)
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'running'", 1, timeout=120)
        node.kill()
        config["jobs"]["batch_wait_ms"] = 20
        node.write_config(config)
        node.start()
        ct.wait_for_results(pacs, node, "after the restart")
    finally:
        node.stop()
    ct.assert_results_once(pacs)


def test_check_config_names_an_unreachable_cluster_and_an_unhostable_pipeline(
    cluster: RayCluster, tmp_path: Path, database_url: str, ich_demo_card: Path
) -> None:
    workdir = tmp_path / "node"
    config = node_config(
        workdir,
        database_url,
        pipelines={
            "ich": {"card": str(ich_demo_card), "ray": RAY_RESOURCES},
            "big": {"card": str(ich_demo_card), "ray": {"resources": {"a100": 1}}},
        },
        routes=[{"name": "all", "fallback": True, "pipeline": "ich", "shadow": True}],
        engine={"kind": "ray", "address": cluster.address, "token_file": str(cluster.token_file)},
    )
    node = NodeProcess(workdir, config)
    done = node.cli("check-config")
    assert done.returncode != 0
    assert "pipelines.big.ray: no live Ray node has" in done.stderr and "a100" in done.stderr
    assert "pipelines.ich.ray" not in done.stderr
    config["engine"]["address"] = f"127.0.0.1:{free_port()}"
    node.write_config(config)
    done = node.cli("check-config")
    assert done.returncode != 0
    assert "engine.address: the Ray head at" in done.stderr and "cannot be reached" in done.stderr


def test_the_kill_9_campaign_holds_on_the_ray_engine(
    cluster: RayCluster, orthanc_factory: Any, demo_card: Path, tmp_path: Path
) -> None:
    """The crash campaign's rounds (a random kill and every crash point) with models on Ray:
    every confirmed instance stored and indexed, every study analysed, every result in the
    PACS exactly once."""
    pacs = orthanc_factory(aet="PACS")
    engine = {
        "kind": "ray",
        "address": cluster.address,
        "token_file": str(cluster.token_file),
        "ray": RAY_RESOURCES,
    }
    campaign = Campaign(tmp_path, f"sqlite:///{tmp_path / 'index.db'}", pacs, seed=7, engine=engine)
    try:
        for kind in KINDS:
            print(campaign.run(kind))
    finally:
        campaign.node.kill()
    figures = summary(campaign.rounds)
    assert figures["rounds"] == len(KINDS)
    assert "ray replica" in campaign.node.log_text()


#: Ray ends a driver that lost the head for this long (60 s by default): shorter, for the test
HEAD_TIMEOUT = {"RAY_gcs_rpc_server_reconnect_timeout_s": "5"}


def test_the_node_outlives_the_loss_of_the_clusters_head(one_ct: _OneCT) -> None:
    """Ray ends its driver process when the head is gone; the driver is a child of the node,
    so the node keeps receiving, its job waits as pending, and finishes once a head is back."""
    ct, pacs, cluster, workdir = one_ct.ct, one_ct.pacs, one_ct.cluster, one_ct.workdir
    config = one_ct.config(batch_wait_ms=8_000, max_attempts=5)
    node = NodeProcess(workdir, config)
    with node.start(env=HEAD_TIMEOUT):
        wait_for(
            lambda: replica_pids(node.log_text(), "ich"),
            timeout=180,
            message=f"the ich replica started\n{node.log_tail()}",
        )
        ct.send(pacs)
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'running'", 1, timeout=60)
        assert cluster.head is not None
        cluster.head.kill()
        for worker in cluster.workers:  # their raylets cannot outlive the head either
            worker.kill()
        cluster.workers.clear()
        assert node.process is not None
        wait_for(
            lambda: "the Ray driver process (pid" in node.log_text() or node.process.poll(),
            timeout=120,
            message=f"Ray ended the driver process\n{node.log_tail()}",
        )
        assert node.process.poll() is None, f"the node lives on\n{node.log_tail()}"
        assert node.echo(), "and still answers"
        node.wait_for("SELECT count(*) FROM jobs WHERE state = 'pending'", 1, timeout=60)
        wait_for(
            lambda: b"cannot be reached" in node.get("/health")[1],
            timeout=60,
            message="health says the head cannot be reached",
        )
        assert node.get("/health")[0] == 503
        cluster.start()
        cluster.add_worker(GPU_HOST)
        ct.wait_for_results(pacs, node, "once the head is back")
        attempts, state = node.query("SELECT attempts, state FROM jobs")[0]
        retry = node.scalar("SELECT detail FROM events WHERE kind = 'job-retry' ORDER BY id")
    assert state == "done" and attempts >= 2, (attempts, state)
    assert "lost" in retry or "Ray driver" in retry, retry
    ct.assert_results_once(pacs)
