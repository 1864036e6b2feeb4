"""Where a job's model runs: the engine interface and the local engine.

The runner (:mod:`dicom_node.jobs.runner`) owns a job from claim to
results; an engine only turns a job's series into a
:class:`~pipelines.base.PipelineResult`. Two engines exist:

``local`` (default)
    Pipelines load in the node's own process and stay warm between jobs;
    concurrent jobs of one model share forward passes
    (:class:`~dicom_node.jobs.batching.SharedForward`).
``ray``
    Replicas of each model stay warm on the worker nodes of a Ray cluster
    (:mod:`dicom_node.jobs.ray_engine`).

An engine raises :class:`EngineFailure` when it, not the job's input,
failed (a worker killed, a node lost, a timeout, the GPU out of memory):
the runner then queues the job again and counts the attempt. Anything else
it raises is the job's own error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dicom_node.config import Config, JobsSection, PipelineConfig
from dicom_node.jobs.batching import BatchStats, SharedForward
from pipelines import registry
from pipelines.base import AnyPipeline, PipelineResult, SeriesInput
from pipelines.card import ModelCard, load_card

log = logging.getLogger(__name__)

#: how many inputs a GPU batch may hold at most, whatever its memory
GPU_BATCH_CAP = 256


class EngineFailure(RuntimeError):
    """The engine failed to run a job (not the job's fault): the job is tried again."""


@dataclass
class Inference:
    """What an engine returns for one job."""

    result: PipelineResult
    card: ModelCard
    stats: BatchStats
    #: where it ran, for the log ("local cpu", "ray replica 1 of ich on 10.0.0.7 cuda")
    where: str


class Engine(Protocol):
    """What the runner needs of an engine."""

    kind: str

    def infer(
        self, job_id: int, name: str, spec: PipelineConfig, inputs: Sequence[SeriesInput]
    ) -> Inference:
        """Run pipeline ``name`` on one job's series (raises :class:`EngineFailure`)."""
        ...

    def unavailable(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        """The pipelines that cannot run now, each with why: their jobs wait as pending."""
        ...

    def preload(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        """Load every pipeline now; return the ones that failed, with the error."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"ok": bool, "kind": ...}``: the engine itself (the runner adds what waits)."""
        ...

    def close(self) -> None: ...


def gpu_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error (an engine failure, not the study's)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_batch_size(pipeline: AnyPipeline, jobs: JobsSection) -> int:
    """Inputs per forward pass on the pipeline's device.

    ``jobs.batch_size`` when set. Otherwise the card's batch size on a CPU
    (larger batches do not run faster there); on a GPU the card's batch
    scaled by the free memory, one card batch per 2 GiB free, up to
    :data:`GPU_BATCH_CAP` (the cards' batch sizes fit the 8 GiB cards the
    studies trained on, at about 2 GiB for inference).
    """
    if jobs.batch_size:
        return jobs.batch_size
    size = pipeline.batch_size
    if pipeline.device.type != "cuda":
        return size
    import torch

    free, _ = torch.cuda.mem_get_info(pipeline.device)
    scale = max(1, int(free // (2 << 30)))
    return max(size, min(GPU_BATCH_CAP, size * scale))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


class CardCache:
    """Cards by path, re-read (and their weights re-hashed) only when a file changed."""

    def __init__(self) -> None:
        self._cards: dict[Path, tuple[tuple[float, float], ModelCard]] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> ModelCard:
        with self._lock:
            card = self._cards.get(path)
            stamp = _mtime(path)
            if card is not None and card[0] == (stamp, _mtime(card[1].weights_path)):
                return card[1]
            loaded = load_card(path)
            self._cards[path] = ((stamp, _mtime(loaded.weights_path)), loaded)
            return loaded


def load_model(card: ModelCard, device: str, jobs: JobsSection) -> SharedForward:
    """Load a card's pipeline on ``device`` (``auto`` resolved here) behind a shared forward."""
    import torch

    started = time.monotonic()
    resolved = resolve_device(device)
    pipeline = registry.get(card.pipeline)(card, torch.device(resolved))
    batch = device_batch_size(pipeline, jobs)
    log.info(
        "loaded pipeline %s with model %s %s on %s in %.1f s (batch %d)",
        card.pipeline,
        card.name,
        card.version,
        resolved,
        time.monotonic() - started,
        batch,
    )
    readers = jobs.readers or (min(4, os.cpu_count() or 1) if resolved.startswith("cuda") else 1)
    amp = bool(card.options.get("amp", False))
    return SharedForward(pipeline, batch, jobs.batch_wait_ms / 1000, readers=readers, amp=amp)


class LocalEngine:
    """Pipelines in the node's own process, kept loaded by (card, device).

    A new version of a card (its weights' sha256 changed) loads beside the
    old one and takes the new jobs; the old one is dropped once its
    running jobs have finished.
    """

    kind = "local"

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self.card = CardCache()
        #: (card path, device) → (weights sha256, loaded model)
        self._models: dict[tuple[str, str], tuple[str, SharedForward]] = {}
        self._lock = threading.Lock()

    def model(self, spec: PipelineConfig) -> SharedForward:
        """The loaded model of a config entry (loaded on first use, then kept)."""
        card = self.card(spec.card)
        key = (str(spec.card), resolve_device(spec.device))
        with self._lock:  # one load at a time: two jobs of a new model load it once
            current = self._models.get(key)
            if current is None or current[0] != card.weights.sha256:
                if current is not None:  # a new version: jobs still on the old one finish there
                    current[1].close()
                current = (card.weights.sha256, load_model(card, spec.device, self._config().jobs))
                self._models[key] = current
            return current[1]

    def infer(
        self, job_id: int, name: str, spec: PipelineConfig, inputs: Sequence[SeriesInput]
    ) -> Inference:
        model = self.model(spec)
        try:
            result, stats = model.run(inputs)
        except Exception as exc:
            if gpu_out_of_memory(exc):
                raise EngineFailure(f"out of GPU memory: {str(exc).splitlines()[0]}") from exc
            raise
        return Inference(result, model.pipeline.card, stats, f"local {model.pipeline.device}")

    def unavailable(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        return {}

    def preload(self, pipelines: Mapping[str, PipelineConfig]) -> dict[str, str]:
        failed = {}
        for name, spec in pipelines.items():
            try:
                self.model(spec)
            except Exception as exc:  # noqa: BLE001 - reported per pipeline
                failed[name] = str(exc)
        return failed

    def health(self) -> dict[str, Any]:
        return {"ok": True, "kind": self.kind, "models_loaded": len(self._models)}

    def close(self) -> None:
        with self._lock:
            for _, model in self._models.values():
                model.close()
            self._models.clear()
