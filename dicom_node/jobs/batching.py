"""Forward passes shared by the jobs that run on one loaded model at the same time.

A pipeline's stages (:mod:`pipelines.base`) let an engine schedule them:
each job prepares its own inputs in its own thread, and one thread per
loaded model takes inputs from every job running on it and runs them
through :meth:`Pipeline.forward` together. Two head CTs that arrive
together then share forward passes instead of queueing behind each other,
which is what keeps a GPU busy (and a CPU's large matrix products
efficient).

A batch runs when it is full, or when it has waited long enough for more:
up to :data:`STALL_SECONDS` while a running job is reading its next input,
else ``max_wait`` (``jobs.batch_wait_ms``) for inputs of other jobs, one
still ordering its series or one about to start. Each job keeps at most two batches of inputs in flight (one
on a CPU without spare cores), so memory stays bounded however long its
series.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from pipelines.base import (
    AnyPipeline,
    ModelInput,
    PipelineResult,
    Prepared,
    Scored,
    SeriesInput,
    UnusableInput,
)

log = logging.getLogger(__name__)

#: the longest a batch waits for the next input of a job that is reading its inputs
STALL_SECONDS = 1.0


def _spare_cores(pipeline: AnyPipeline) -> bool:
    """Whether reading can run beside the model without slowing it (a GPU, or idle cores)."""
    import torch

    return pipeline.device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()


@dataclass
class BatchStats:
    """The forward passes one job's inputs went through."""

    batches: int = 0
    #: of those, how many also held inputs of another job
    shared: int = 0
    #: the largest number of jobs one of its batches held
    most_jobs: int = 0

    def describe(self) -> str:
        if not self.batches:
            return "no forward pass"
        return f"{self.batches} forward pass(es), {self.shared} shared with other jobs" + (
            f" (up to {self.most_jobs} jobs in one)" if self.shared else ""
        )


@dataclass
class _Job:
    token: int
    stats: BatchStats = field(default_factory=BatchStats)
    #: still handing over inputs (the batcher may wait for more of them)
    feeding: bool = True
    #: inputs handed over whose outputs it has not taken yet
    waiting: int = 0
    #: inputs handed over so far
    submitted: int = 0


@dataclass
class _Item:
    job: _Job
    data: Any
    future: Future[Any]
    at: float


class SharedForward:
    """Runs jobs on one loaded pipeline, batching the inputs of concurrent jobs together.

    Parameters
    ----------
    pipeline : Pipeline
        The loaded pipeline (one model on one device).
    batch_size : int
        Inputs per forward pass at most.
    max_wait : float
        Seconds a part-full batch waits for inputs of other jobs.
    readers : int
        Threads reading and preprocessing each job's units. One is the
        pipeline's own read-ahead (:meth:`Pipeline.prepare`); more keep a GPU
        busy when decoding one file takes longer than the model's share of it.
    amp : bool
        Run forward passes under CUDA autocast (float16); only on a GPU, and
        only when the card says its model tolerates it (``options.amp``).
    """

    def __init__(
        self,
        pipeline: AnyPipeline,
        batch_size: int,
        max_wait: float,
        *,
        readers: int = 1,
        amp: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers}")
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.max_wait = max(0.0, max_wait)
        self.readers = readers
        self.amp = amp and pipeline.device.type == "cuda"
        #: inputs a job hands over before it waits for its first output: two batches when
        #: reading can overlap the model (a GPU, or spare cores), else one (reading and the
        #: model would fight for the same cores: slower than taking turns)
        self.ahead = batch_size * (2 if _spare_cores(pipeline) else 1)
        self._lock = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._jobs: dict[int, _Job] = {}
        self._tokens = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the jobs' side ---------------------------------------------------------------------

    def run(self, series: Sequence[SeriesInput]) -> tuple[PipelineResult, BatchStats]:
        """Prepare, score (sharing batches) and interpret one job; safe from many threads.

        Raises
        ------
        PipelineInputError
            If nothing of the job could be used (from :meth:`Pipeline.finish`).
        """
        job = self._register()
        in_flight: deque[tuple[Any, Future[Any]]] = deque()
        try:
            prepared = self._prepare(series)
            scored: Scored[Any, Any] = Scored(prepared.series, skipped=prepared.skipped)
            for item in prepared.inputs:
                in_flight.append((item.ref, self._submit(job, item.data)))
                while len(in_flight) >= self.ahead:
                    self._take(job, scored, in_flight)
            self._done_feeding(job)
            while in_flight:
                self._take(job, scored, in_flight)
        finally:
            self._unregister(job)
        return self.pipeline.finish(scored), job.stats

    def _prepare(self, series: Sequence[SeriesInput]) -> Prepared[Any, Any]:
        if self.readers == 1:
            return self.pipeline.prepare(series)
        skipped: list[tuple[str, str]] = []
        units = self.pipeline.units(series, skipped)
        return Prepared(tuple(series), self._read(units, skipped), skipped)

    def _read(
        self, units: Sequence[Any], skipped: list[tuple[str, str]]
    ) -> Iterator[ModelInput[Any, Any]]:
        """Load units with :attr:`readers` threads, in order, at most two batches ahead."""
        pipeline = self.pipeline
        with ThreadPoolExecutor(self.readers, thread_name_prefix="reader") as pool:
            window: deque[tuple[Any, Future[ModelInput[Any, Any]]]] = deque()
            source = iter(units)
            while True:
                for unit in source:
                    window.append((unit, pool.submit(pipeline.load, unit)))
                    if len(window) >= 2 * self.batch_size:
                        break
                if not window:
                    return
                unit, future = window.popleft()
                try:
                    yield future.result()
                except UnusableInput as exc:
                    pipeline.skip(skipped, exc.ident or pipeline.unit_name(unit), str(exc))

    def _take(
        self, job: _Job, scored: Scored[Any, Any], in_flight: deque[tuple[Any, Future[Any]]]
    ) -> None:
        ref, future = in_flight[0]
        if not future.done():
            with self._lock:
                job.waiting = len(in_flight)
                self._lock.notify_all()
        output = future.result()
        in_flight.popleft()
        scored.refs.append(ref)
        scored.outputs.append(output)

    def _register(self) -> _Job:
        with self._lock:
            if self._closed:
                raise RuntimeError("this model has been unloaded; run the job again")
            job = _Job(next(self._tokens))
            self._jobs[job.token] = job
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"forward-{self.pipeline.card.name}", daemon=True
                )
                self._thread.start()
            return job

    def _submit(self, job: _Job, data: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._queue.append(_Item(job, data, future, time.monotonic()))
            job.waiting = 0
            job.submitted += 1
            self._lock.notify_all()
        return future

    def _done_feeding(self, job: _Job) -> None:
        with self._lock:
            job.feeding = False
            self._lock.notify_all()

    def _unregister(self, job: _Job) -> None:
        with self._lock:
            self._jobs.pop(job.token, None)
            self._lock.notify_all()

    # -- the model's side -------------------------------------------------------------------

    def _wait_bound(self) -> float:
        """How long the batch being formed may wait for more inputs, from its first one.

        A running job already handing over its inputs (and not waiting for
        its own queued ones) is reading its next input: the batch waits for it
        up to :data:`STALL_SECONDS`, since its inputs come as fast as they can
        be read. Otherwise the batch waits ``max_wait`` for inputs of other
        jobs: one still ordering its series, or a study completing at the
        same moment whose job has not started yet.
        """
        queued = {id(item.job) for item in self._queue}
        reading = any(
            job.feeding and job.submitted and not (job.waiting and id(job) in queued)
            for job in self._jobs.values()
        )
        return max(self.max_wait, STALL_SECONDS) if reading else self.max_wait

    def _next_batch(self) -> list[_Item] | None:
        with self._lock:
            while not self._queue:
                if self._closed and not self._jobs:
                    return None
                self._lock.wait()
            while len(self._queue) < self.batch_size:
                left = self._queue[0].at + self._wait_bound() - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            jobs = {id(item.job): item.job for item in batch}
            for job in jobs.values():
                job.stats.batches += 1
                job.stats.most_jobs = max(job.stats.most_jobs, len(jobs))
                if len(jobs) > 1:
                    job.stats.shared += 1
            try:
                with self.pipeline.model_lock, self._autocast():
                    outputs = self.pipeline.forward([item.data for item in batch])
                if len(outputs) != len(batch):
                    raise RuntimeError(
                        f"{type(self.pipeline).__name__}.forward returned {len(outputs)} outputs "
                        f"for {len(batch)} inputs"
                    )
            except BaseException as exc:  # noqa: BLE001 - every job of the batch gets the error
                for item in batch:
                    item.future.set_exception(exc)
                continue
            for item, output in zip(batch, outputs, strict=True):
                item.future.set_result(output)

    def _autocast(self) -> AbstractContextManager[Any]:
        if not self.amp:
            return nullcontext()
        import torch

        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def close(self) -> None:
        """Take no new job; the forward thread ends once the jobs still running have finished."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
