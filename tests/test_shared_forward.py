"""Jobs running at once on one model share its forward passes, and each gets its own results.

This is what the engines build on (``dicom_node.jobs.batching``): the local
engine runs ``jobs.in_flight`` jobs in threads, a Ray replica runs the calls
it gets at once, and in both their inputs meet in the same batches.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from test_generic_pipeline import write_test_card
from test_pipeline_stages import Recording, _job, _probabilities

from dicom_node.config import JobsSection, parse_config
from dicom_node.jobs import queue
from dicom_node.jobs.batching import SharedForward
from dicom_node.jobs.engine import device_batch_size
from pipelines.base import PipelineInputError, SeriesInput
from pipelines.card import load_card

CPU = torch.device("cpu")


@pytest.fixture
def recording(tmp_path: Path) -> Recording:
    return Recording(load_card(write_test_card(tmp_path / "card", top_k=1)), CPU)


def _in_threads(shared: SharedForward, jobs: list[SeriesInput]) -> list[object]:
    results: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = shared.run([jobs[i]])
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_jobs_meet_in_one_batch_and_get_exactly_their_results(
    recording: Recording, tmp_path: Path
) -> None:
    a, b = _job(tmp_path / "a", 21, 3), _job(tmp_path / "b", 22, 3)
    alone = {job.series_instance_uid: recording.run([job]) for job in (a, b)}
    recording.batches.clear()
    shared = SharedForward(recording, batch_size=6, max_wait=10.0)
    started = time.monotonic()
    results = _in_threads(shared, [a, b])
    took = time.monotonic() - started
    assert recording.batches == [6], "both jobs' three images went through one forward pass"
    assert took < 5.0, "a full batch runs at once, not after the wait bound"
    for job, (result, stats) in zip((a, b), results, strict=True):  # type: ignore[misc]
        assert _probabilities(result.findings) == pytest.approx(
            _probabilities(alone[job.series_instance_uid].findings), abs=1e-6
        )
        assert (stats.batches, stats.shared, stats.most_jobs) == (1, 1, 2)
    shared.close()


def test_a_part_full_batch_waits_the_bound_for_other_studies_then_runs(
    recording: Recording, tmp_path: Path
) -> None:
    job = _job(tmp_path / "a", 29, 3)
    recording.run([job])  # warm
    shared = SharedForward(recording, batch_size=8, max_wait=1.5)
    started = time.monotonic()
    result, stats = shared.run([job])
    took = time.monotonic() - started
    assert 1.5 <= took < 5.0, took
    assert stats.batches == 1 and len(result.findings) >= 3


def test_a_lone_job_waits_at_most_the_bound_and_batches_stay_full_size(
    recording: Recording, tmp_path: Path
) -> None:
    shared = SharedForward(recording, batch_size=4, max_wait=0.0)
    result, stats = shared.run([_job(tmp_path / "a", 23, 10)])
    assert len(result.findings) >= 10
    assert sum(recording.batches) == 10 and max(recording.batches) <= 4
    assert stats.shared == 0 and stats.batches == len(recording.batches)
    assert "0 shared" in stats.describe()


def test_one_jobs_bad_input_fails_that_job_only(recording: Recording, tmp_path: Path) -> None:
    bad = tmp_path / "not-dicom.dcm"
    bad.write_bytes(b"not a DICOM file")
    good = _job(tmp_path / "good", 24, 2)
    shared = SharedForward(recording, batch_size=8, max_wait=0.5)
    results = _in_threads(shared, [SeriesInput("1.2.3", (bad,)), good])
    assert isinstance(results[0], PipelineInputError)
    assert "not-dicom.dcm" in str(results[0])
    result, _ = results[1]  # type: ignore[misc]
    assert len(result.findings) >= 2


def test_a_closed_model_finishes_its_running_jobs_and_refuses_new_ones(
    recording: Recording, tmp_path: Path
) -> None:
    shared = SharedForward(recording, batch_size=2, max_wait=0.0)
    job = _job(tmp_path / "a", 25, 5)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(shared.run([job])))
    thread.start()
    time.sleep(0.05)
    shared.close()
    thread.join(60)
    assert outcome and len(outcome[0][0].findings) >= 5  # type: ignore[index]
    with pytest.raises(RuntimeError, match="unloaded"):
        shared.run([job])


def test_batch_size_is_the_cards_on_a_cpu_unless_configured(recording: Recording) -> None:
    assert device_batch_size(recording, JobsSection()) == recording.batch_size
    assert device_batch_size(recording, JobsSection(batch_size=3)) == 3


def test_engine_config_is_validated_with_key_names(tmp_path: Path) -> None:
    assert parse_config("engine: local\n", tmp_path).engine.kind == "local"
    config = parse_config(
        "engine: {kind: ray, address: '127.0.0.1:6379'}\n"
        "pipelines: {ich: {card: c.yaml, ray: {num_gpus: 0.5, resources: {gpu_host: 1}}}}\n",
        tmp_path,
    )
    assert config.pipelines["ich"].ray.demand() == {"CPU": 1, "GPU": 0.5, "gpu_host": 1}
    for text, message in (
        ("engine: {kind: ray}\n", "address: Field required"),
        ("engine: {kind: ray, address: head}\n", "is not host:port"),
        ("engine: cloud\n", "'local', 'ray'"),
        ("pipelines: {a: {card: c, ray: {resources: {GPU: 1}}}}\n", "with num_cpus / num_gpus"),
        ("pipelines: {a: {card: c, ray: {num_gpus: -1}}}\n", "pipelines.a.ray.num_gpus"),
        ("jobs: {in_flight: 0}\n", "jobs.in_flight"),
        (
            "pipelines: {a: {card: c, ray: {replicas: 2, max_replicas: 1}}}\n",
            r"pipelines.a.ray[\s\S]*max_replicas \(1\) is below replicas \(2\)",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            parse_config(text, tmp_path)


def test_an_engine_failure_queues_the_job_again_until_its_last_attempt(tmp_path: Path) -> None:
    from dicom_node.db import make_engine, migrate, session_factory, transaction
    from dicom_node.jobs.tables import Job, JobState
    from dicom_node.route.rules import Route

    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    route = Route(name="r", pipeline="p", fallback=True, shadow=True)
    with transaction(sessions) as session:
        job_id = queue.create_job(session, "1.2.3", 1, route, ["1.2.3.4"]).id
    for attempt in (1, 2):
        assert queue.claim_next(sessions) == job_id
        assert queue.retry(sessions, job_id, "worker lost", max_attempts=2) is (attempt < 2)
        with sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.attempts == attempt
            assert "worker lost" in (job.error or "")
    assert job.state == JobState.FAILED and "gave up after 2 attempts" in (job.error or "")
    assert queue.claim_next(sessions) is None


def test_parallel_readers_give_the_same_results_and_skip_reasons(
    recording: Recording, tmp_path: Path
) -> None:
    job = _job(tmp_path / "a", 26, 7)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM but not really")
    series = [SeriesInput(job.series_instance_uid, (*job.files[:3], bad, *job.files[3:]))]
    one, _ = SharedForward(recording, batch_size=2, max_wait=0.0).run(series)
    many, _ = SharedForward(recording, batch_size=2, max_wait=0.0, readers=3).run(series)
    assert _probabilities(many.findings) == pytest.approx(_probabilities(one.findings), abs=1e-6)
    assert [h.sop_instance_uid for h in many.heatmaps] == [h.sop_instance_uid for h in one.heatmaps]
    assert many.skipped == one.skipped and many.skipped[0][0] == "broken.dcm"
    with pytest.raises(ValueError, match="readers must be >= 1"):
        SharedForward(recording, batch_size=2, max_wait=0.0, readers=0)


def test_a_new_card_version_loads_beside_the_old_which_finishes_and_closes(tmp_path: Path) -> None:
    from dicom_node.config import Config, PipelineConfig
    from dicom_node.jobs.engine import LocalEngine

    card_path = write_test_card(tmp_path / "card", top_k=0, seed=1)
    config = Config(pipelines={"g": PipelineConfig(card=card_path, device="cpu")})
    engine = LocalEngine(lambda: config)
    first = engine.model(config.pipelines["g"])
    assert engine.model(config.pipelines["g"]) is first, "kept warm between jobs"
    write_test_card(tmp_path / "card", top_k=0, seed=2)  # retrained: new weights, new sha256
    second = engine.model(config.pipelines["g"])
    assert second is not first
    assert second.pipeline.card.weights.sha256 != first.pipeline.card.weights.sha256
    with pytest.raises(RuntimeError, match="unloaded"):
        first.run([_job(tmp_path / "a", 27, 1)])
    result = engine.infer(1, "g", config.pipelines["g"], [_job(tmp_path / "b", 28, 2)])
    assert result.card.weights.sha256 == second.pipeline.card.weights.sha256
    assert result.where == "local cpu" and result.stats.batches == 1
    engine.close()


def test_ray_placement_needs_one_live_node_with_every_resource_and_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dicom_node.config import RayEngineSettings
    from dicom_node.jobs.engine import EngineFailure
    from dicom_node.jobs.ray_engine import hostable, token_environment

    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"Alive": True, "Resources": {"CPU": 2.0, "gpu_host": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0, "gpu_host": 8.0}},
    ]
    assert hostable({"CPU": 4, "GPU": 0.5}, nodes)
    assert hostable({"CPU": 1, "gpu_host": 1}, nodes)
    assert not hostable({"GPU": 1, "gpu_host": 1}, nodes), "no single node has both"
    assert not hostable({"GPU": 2}, nodes), "the dead node does not count"
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    settings = RayEngineSettings(kind="ray", address="10.0.0.5:6379")
    with pytest.raises(EngineFailure, match="engine.token_file"):
        token_environment(settings)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    assert token_environment(settings) == {"RAY_AUTH_MODE": "token"}


def test_running_jobs_call_for_replicas_within_the_bounds() -> None:
    from dicom_node.config import RayResources
    from dicom_node.jobs.ray_engine import wanted_replicas

    fixed = RayResources(replicas=2)
    assert [wanted_replicas(n, fixed) for n in (0, 1, 5, 50)] == [2, 2, 2, 2]
    bounded = RayResources(replicas=1, max_replicas=3, target_jobs=2)
    assert [wanted_replicas(n, bounded) for n in (0, 1, 2, 3, 4, 5, 6, 60)] == [
        1,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
    ]


def test_the_ray_driver_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """A driver process started from a short-lived thread (an HTTP request's) keeps running
    after that thread ends (PR_SET_PDEATHSIG would kill it), and says why it cannot run."""
    from dicom_node.config import LiveConfig
    from dicom_node.jobs.driver import RayDriver

    from peers import free_port

    token = tmp_path / "token"
    token.write_text("x" * 32)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"engine: {{kind: ray, address: '127.0.0.1:{free_port()}', token_file: {token}}}\n"
        "pipelines: {g: {card: card.yaml}}\n"
    )
    live = LiveConfig(config)
    driver = RayDriver(live().engine, live)  # type: ignore[arg-type]
    answers: list[dict[str, str]] = []
    request = threading.Thread(target=lambda: answers.append(driver.unavailable(live().pipelines)))
    request.start()
    request.join(60)
    try:
        assert "cannot be reached" in answers[0]["g"], answers
        child = driver._child
        assert child is not None
        time.sleep(1.5)
        assert child.process.is_alive(), "the driver died with the thread that started it"
        assert "cannot be reached" in driver.unavailable(live().pipelines)["g"]
        assert driver._child is child, "the same driver answers"
    finally:
        driver.close()
    assert not child.process.is_alive()
