"""Running one job: pipeline in, DICOM results out, deliveries queued.

:func:`JobRunner.run` is a unit of work that takes a job id and reads and
writes only through the spool and the index, so it can move into separate
worker processes (or machines sharing them) without change. Pipelines are
kept loaded between jobs, keyed by (pipeline, card, device).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path, PurePosixPath

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
from dicom_node.jobs.tables import Job, JobState, Result, ResultKind
from dicom_node.receive import index
from dicom_node.results.algorithm import AlgorithmInfo
from dicom_node.results.sc import build_heatmap_sc, heatmap_series_instance_uid
from dicom_node.results.sr import build_sr
from dicom_node.spool import Spool
from pipelines import registry
from pipelines.base import AnyPipeline, PipelineInputError, PipelineResult, SeriesInput
from pipelines.card import ModelCard, card_state, load_card

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class JobRunner:
    """Runs pending jobs one after another, keeping pipelines loaded."""

    def __init__(
        self, config: Callable[[], Config], sessions: sessionmaker[Session], spool: Spool
    ) -> None:
        self._config = config
        self.sessions = sessions
        self.spool = spool
        self._pipelines: dict[tuple[str, str, str], AnyPipeline] = {}
        self._cards: dict[Path, tuple[tuple[float, float], ModelCard]] = {}

    def _card(self, path: Path) -> ModelCard:
        """The card at ``path``, re-read (and its weights re-hashed) only when a file changed."""
        card = self._cards.get(path)
        stamp = _mtime(path)
        if card is not None and card[0] == (stamp, _mtime(card[1].weights_path)):
            return card[1]
        loaded = load_card(path)
        self._cards[path] = ((stamp, _mtime(loaded.weights_path)), loaded)
        return loaded

    def pipeline(self, spec: PipelineConfig) -> AnyPipeline:
        """The loaded pipeline for a config entry (loaded on first use, then kept)."""
        import torch

        card = self._card(spec.card)
        device = resolve_device(spec.device)
        key = (card.pipeline, f"{spec.card}:{card.weights.sha256}", device)
        if key not in self._pipelines:
            started = time.monotonic()
            cls = registry.get(card.pipeline)
            self._pipelines[key] = cls(card, torch.device(device))
            log.info(
                "loaded pipeline %s with model %s %s on %s in %.1f s",
                card.pipeline,
                card.name,
                card.version,
                device,
                time.monotonic() - started,
            )
        return self._pipelines[key]

    def models_waiting(self) -> dict[str, str]:
        """Configured pipelines whose card is still being built, with what builds it.

        Their jobs stay pending (:func:`queue.claim_next` passes over them)
        and run once the card appears; a card that is simply missing is not
        waited for: its jobs fail with the loader's error.
        """
        waiting = {}
        for name, spec in self._config().pipelines.items():
            state, detail = card_state(spec.card)
            if state == "building":
                waiting[name] = detail
        return waiting

    def run_pending(self) -> int:
        """Run queued jobs until none is left that can run now; return how many ran."""
        ran = 0
        waiting = self.models_waiting()
        while (job_id := queue.claim_next(self.sessions, waiting=waiting)) is not None:
            self.run(job_id)
            ran += 1
        return ran

    def run(self, job_id: int) -> bool:
        """Run one claimed job; return True on success. Never raises."""
        started = time.monotonic()
        try:
            self._run(job_id)
        except PipelineInputError as exc:
            log.warning("job %d: nothing the pipeline can use: %s", job_id, exc)
            queue.fail(self.sessions, job_id, f"unusable input: {exc}")
            return False
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the worker
            log.exception("job %d failed", job_id)
            queue.fail(self.sessions, job_id, f"{type(exc).__name__}: {exc}")
            return False
        log.info("job %d done in %.1f s", job_id, time.monotonic() - started)
        return True

    def _run(self, job_id: int) -> None:
        config = self._config()
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            files = index.series_files(session, job.series_uids)
        spec = config.pipelines.get(job.pipeline)
        if spec is None:
            raise ValueError(f"pipeline {job.pipeline!r} is no longer configured")
        pipeline = self.pipeline(spec)
        inputs = [
            SeriesInput(uid, tuple(self.spool.absolute(p) for p in paths))
            for uid, paths in files.items()
            if paths
        ]
        result = pipeline.run(inputs)
        crash_point("inference-done")
        for name, reason in result.skipped:
            log.info("job %d: skipped %s: %s", job_id, name, reason)
        algorithm = AlgorithmInfo.from_card(pipeline.card, __version__)
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
                + (", shadow (kept locally)" if job.shadow else ""),
            )

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
        )
        outputs.append((ResultKind.SR, sr, self._write(job.id, sr)))
        sc_series = heatmap_series_instance_uid(job.key)
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
            )
            outputs.append((ResultKind.SC, sc, self._write(job.id, sc)))
        return outputs

    def _write(self, job_id: int, ds: Dataset) -> PurePosixPath:
        relative = self.spool.result_path(job_id, ds.SOPInstanceUID)
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        self.spool.write(relative, buffer.getvalue())
        return relative
