"""Running jobs: pipeline in (through an engine), DICOM results out, deliveries queued.

:class:`JobRunner` keeps ``jobs.in_flight`` worker threads of its own (not
the scheduler's, which drives completion, dispatch and monitoring), each
claiming the oldest pending job, handing its series to the engine
(:mod:`dicom_node.jobs.engine`) and writing its results through the spool
and the index. The index stays the truth: a job is claimed, finished and
failed in the ``jobs`` table, and an engine failure (a worker killed, a
node lost, a timeout) queues it again with the attempt counted, until
``jobs.max_attempts``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from io import BytesIO
from pathlib import PurePosixPath

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import __version__
from dicom_node.config import Config, PipelineConfig
from dicom_node.db import transaction, utcnow
from dicom_node.dispatch import outbox
from dicom_node.events import record
from dicom_node.faults import crash_point
from dicom_node.jobs import queue
from dicom_node.jobs.engine import Engine, EngineFailure, LocalEngine
from dicom_node.jobs.tables import Job, JobState, Result, ResultKind
from dicom_node.receive import index
from dicom_node.results.algorithm import AlgorithmInfo
from dicom_node.results.sc import build_heatmap_sc, heatmap_series_instance_uid, label_units
from dicom_node.results.sr import build_notice_sr, build_sr
from dicom_node.spool import Spool
from pipelines.base import PipelineInputError, PipelineResult, SeriesInput
from pipelines.card import card_state, load_card

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
#: seconds an idle worker thread waits before it looks for work again (a wake-up comes sooner)
IDLE_POLL_SECONDS = 0.5


class JobRunner:
    """Claims pending jobs and runs them on an engine, several at once."""

    def __init__(
        self,
        config: Callable[[], Config],
        sessions: sessionmaker[Session],
        spool: Spool,
        engine: Engine | None = None,
    ) -> None:
        self._config = config
        self.sessions = sessions
        self.spool = spool
        self.engine: Engine = engine if engine is not None else LocalEngine(config)
        #: called after a job's results are committed (the node wakes dispatch with it)
        self.on_done: Callable[[], None] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- what may run ---------------------------------------------------------------------

    def models_waiting(self) -> dict[str, str]:
        """Configured pipelines that cannot run now, with why; their jobs stay pending.

        A card still being built waits for its builder; with the Ray engine, a
        pipeline no live node can host waits for one (a worker node stopped).
        A card that is simply missing is not waited for: its jobs fail with
        the loader's error.
        """
        pipelines = self._config().pipelines
        return self._waiting(pipelines, self.engine.unavailable(pipelines))

    @staticmethod
    def _waiting(
        pipelines: Mapping[str, PipelineConfig], unavailable: Mapping[str, str]
    ) -> dict[str, str]:
        waiting = {}
        for name, spec in pipelines.items():
            state, detail = card_state(spec.card)
            if state == "building":
                waiting[name] = detail
        for name, why in unavailable.items():
            waiting.setdefault(name, why)
        return waiting

    def inference_health(self) -> dict[str, object]:
        """The engine's health and the pipelines whose jobs wait, with why (``/health``).

        Not ok when the engine cannot run a pipeline now (a model still being
        built is not a failure: its jobs wait for it).
        """
        pipelines = self._config().pipelines
        unavailable = self.engine.unavailable(pipelines)
        health = dict(self.engine.health())
        health["ok"] = bool(health["ok"]) and not unavailable
        health["waiting"] = self._waiting(pipelines, unavailable)
        return health

    # -- worker threads -------------------------------------------------------------------

    def start(self, threads: int | None = None) -> None:
        """Start the worker threads (``jobs.in_flight`` of them by default)."""
        count = threads or self._config().jobs.in_flight
        for number in range(count):
            thread = threading.Thread(target=self._work, name=f"job-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Look for work now (a job was queued)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Let running jobs finish (up to ``timeout``), take no new one, and close the engine.

        A job still running after the timeout is cut off like a crash would:
        it is queued again at the next start.
        """
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self._threads.clear()
        self.engine.close()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_pending(stop=self._stop)
            except Exception:  # noqa: BLE001 - the index may be down for a while; keep trying
                log.exception("job worker: cannot read the queue; trying again")
                ran = 0
            if not ran:
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()

    def run_pending(self, stop: threading.Event | None = None) -> int:
        """Run queued jobs until none is left that can run now; return how many ran."""
        ran = 0
        while stop is None or not stop.is_set():
            job_id = queue.claim_next(self.sessions, waiting=self.models_waiting())
            if job_id is None:
                break
            self.run(job_id)
            ran += 1
        return ran

    # -- one job --------------------------------------------------------------------------

    def run(self, job_id: int) -> bool:
        """Run one claimed job; return True on success. Never raises."""
        started = time.monotonic()
        try:
            where = self._run(job_id)
        except PipelineInputError as exc:
            log.warning("job %d: nothing the pipeline can use: %s", job_id, exc)
            words = str(exc).split("; check the route", 1)[0]
            self._not_analysed(job_id, words, fail=f"unusable input: {exc}")
            return False
        except EngineFailure as exc:
            if self._stop.is_set():
                # the stop closed the engine under it: not the job's attempt; left running,
                # it is queued again at the next start (queue.recover)
                log.info("job %d: cut off by the stop; it runs again at the next start", job_id)
                return False
            attempts = self._config().jobs.max_attempts
            again = queue.retry(self.sessions, job_id, str(exc), attempts, fail_last=False)
            log.warning(
                "job %d: engine failed (%s); %s",
                job_id,
                exc,
                "queued again" if again else "failed for good after its last attempt",
            )
            if not again:
                self._not_analysed(
                    job_id,
                    f"the model could not run ({attempts} attempts)",
                    fail=f"{exc} (gave up after {attempts} attempts)",
                )
            return False
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the worker
            log.exception("job %d failed", job_id)
            self._not_analysed(
                job_id,
                f"the analysis failed ({type(exc).__name__}); the node's operators see job "
                f"{job_id} in its status",
                fail=f"{type(exc).__name__}: {exc}",
            )
            return False
        log.info("job %d done in %.1f s (%s)", job_id, time.monotonic() - started, where)
        if self.on_done is not None:
            self.on_done()
        return True

    def _run(self, job_id: int) -> str:
        config = self._config()
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            files = index.series_files(session, job.series_uids)
        spec = config.pipelines.get(job.pipeline)
        if spec is None:
            raise ValueError(f"pipeline {job.pipeline!r} is no longer configured")
        inputs = [
            SeriesInput(uid, tuple(self.spool.absolute(p) for p in paths))
            for uid, paths in files.items()
            if paths
        ]
        inference = self.engine.infer(job_id, job.pipeline, spec, inputs)
        result = inference.result
        crash_point("inference-done")
        for name, reason in result.skipped:
            log.info("job %d: skipped %s: %s", job_id, name, reason)
        algorithm = AlgorithmInfo.from_card(inference.card, __version__)
        outputs = self._build(job, result, algorithm, inputs)
        with transaction(self.sessions) as session:
            now = utcnow()
            for kind, ds, relative in outputs:
                session.merge(
                    Result(
                        sop_instance_uid=ds.SOPInstanceUID,
                        job_id=job.id,
                        sop_class_uid=ds.SOPClassUID,
                        kind=kind,
                        path=str(relative),
                        created_at=now,
                    )
                )
            crash_point("results-before-commit")
            if not job.shadow:
                outbox.enqueue(session, job.id, job.destinations)
            db_job = session.get(Job, job.id)
            assert db_job is not None
            db_job.state = JobState.DONE
            db_job.finished_at = now
            db_job.error = None
            record(
                session,
                "jobs",
                "job-done",
                str(job.id),
                f"{len(result.findings)} findings, {len(outputs)} objects"
                + (", shadow (kept locally)" if job.shadow else "")
                + f"; {inference.where}; {inference.stats.describe()}",
            )
        return f"{inference.where}, {inference.stats.describe()}"

    def _build(
        self, job: Job, result: PipelineResult, algorithm: AlgorithmInfo, inputs: list[SeriesInput]
    ) -> list[tuple[str, Dataset, PurePosixPath]]:
        """Turn findings and heatmaps into SR and SC objects written to the spool."""
        referenced = {uid for f in result.findings for uid in f.source_sop_instance_uids}
        headers = []
        for series in inputs:
            for path in series.files:
                header = dcmread(path, stop_before_pixels=True)
                if not referenced or header.SOPInstanceUID in referenced:
                    headers.append(header)
        if not headers:
            raise PipelineInputError("no source image to attach results to")
        outputs: list[tuple[str, Dataset, PurePosixPath]] = []
        sr = build_sr(
            result.findings,
            headers,
            algorithm,
            job_key=job.key,
            series_number=SR_SERIES_NUMBER,
            not_analysed=result.skipped,
        )
        outputs.append((ResultKind.SR, sr, self._write(job.id, sr)))
        sc_series = heatmap_series_instance_uid(job.key)
        units = label_units(result.findings)
        for number, heatmap in enumerate(result.heatmaps, start=1):
            source = dcmread(heatmap.source)
            sc = build_heatmap_sc(
                source,
                heatmap.array,
                algorithm,
                job_key=job.key,
                series_instance_uid=sc_series,
                series_number=SC_SERIES_NUMBER,
                instance_number=number,
                label=heatmap.label,
                annotations=heatmap.annotations,
                unit=units.get(heatmap.label),
            )
            outputs.append((ResultKind.SC, sc, self._write(job.id, sc)))
        return outputs

    def _not_analysed(self, job_id: int, reason: str, *, fail: str | None = None) -> None:
        """Send the study an SR saying the AI did not analyse it, and why (never silence).

        With ``fail``, the job is failed with that error in the same
        transaction. The SR has the UIDs the job's result would have had, so
        a later successful run replaces it. Without a readable source header
        there is nothing to attach it to: the job only fails.
        """
        with self.sessions() as session:
            job = session.get(Job, job_id)
            files = index.series_files(session, job.series_uids) if job else {}
        notice = None
        if job is not None:
            try:
                notice = self._notice(job, reason, files)
            except Exception as exc:  # noqa: BLE001 - the job still fails, with its own error
                log.error("job %d: no not-analysed SR: %s", job_id, exc)
        with transaction(self.sessions) as session:
            if notice is not None:
                ds, relative = notice
                session.merge(
                    Result(
                        sop_instance_uid=ds.SOPInstanceUID,
                        job_id=job_id,
                        sop_class_uid=ds.SOPClassUID,
                        kind=ResultKind.SR,
                        path=str(relative),
                        created_at=utcnow(),
                    )
                )
                if job is not None and not job.shadow:
                    outbox.enqueue(session, job_id, job.destinations)
                record(session, "jobs", "job-not-analysed", str(job_id), reason[:500])
            if fail is not None:
                queue.mark_failed(session, job_id, fail)
        if notice is not None:
            log.info("job %d: sent a not-analysed SR (%s)", job_id, reason)
            if self.on_done is not None:
                self.on_done()

    def _notice(
        self, job: Job, reason: str, files: Mapping[str, list[str]]
    ) -> tuple[Dataset, PurePosixPath] | None:
        headers = []
        for paths in files.values():
            for path in paths:
                try:
                    headers.append(dcmread(self.spool.absolute(path), stop_before_pixels=True))
                except Exception:  # noqa: BLE001 - an unreadable file is not evidence
                    continue
        if not headers:
            return None
        spec = self._config().pipelines.get(job.pipeline)
        try:
            assert spec is not None
            algorithm = AlgorithmInfo.from_card(load_card(spec.card), __version__)
        except Exception:  # noqa: BLE001 - a model that cannot load still gets its notice
            algorithm = AlgorithmInfo(
                name=job.pipeline[:64],
                version="unavailable",
                pipeline=job.pipeline[:64],
                weights_sha256="0" * 64,
                for_diagnostic_use=False,
                software_version=__version__,
            )
        ds = build_notice_sr(
            reason, headers, algorithm, job_key=job.key, series_number=SR_SERIES_NUMBER
        )
        return ds, self._write(job.id, ds)

    def _write(self, job_id: int, ds: Dataset) -> PurePosixPath:
        relative = self.spool.result_path(job_id, ds.SOPInstanceUID)
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        self.spool.write(relative, buffer.getvalue())
        return relative
