"""One warm copy of a model on a Ray worker: the actor the Ray engine calls.

It runs on the worker node, in a Ray worker process: it needs the
``dicom-node`` package installed there (the same version as the node) and
nothing else of the node's: no database, no spool, no shared disk. The node
sends it the card and weights once (through Ray's object store) and then,
per job, the series' files in chunks (:meth:`ModelReplica.receive`, one
call per chunk); it writes them to a private temporary folder, runs the
pipeline (:meth:`ModelReplica.infer`), removes the files, and returns the
findings and heatmap arrays. The node builds and stores the SR and SC
itself.

Several calls run at once (``max_concurrency``); their inputs share forward
passes (:class:`~dicom_node.jobs.batching.SharedForward`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from dicom_node.config import JobsSection
from dicom_node.jobs.batching import BatchStats
from dicom_node.jobs.engine import load_model
from pipelines.base import PipelineResult, SeriesInput
from pipelines.card import load_card

log = logging.getLogger(__name__)

#: (series UID, how many files) per series, in the order of the chunks' files
Layout = Sequence[tuple[str, int]]


#: a job's files left this long without a call (the node restarted) are removed
STALE_JOB_SECONDS = 3600.0


class IncompleteTransfer(RuntimeError):
    """A job's files did not all reach this replica (it restarted while they came)."""


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), MiB; None where /proc has none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def file_name(number: int) -> str:
    """The name of a job's ``number``-th file on the worker (the node maps it back)."""
    return f"{number:06d}.dcm"


def file_number(path: Path | PurePosixPath) -> int:
    """The inverse of :func:`file_name`."""
    return int(path.stem)


class ModelReplica:
    """A loaded pipeline on a worker (wrapped with ``ray.remote`` by the engine).

    Parameters
    ----------
    card_files : list of (relative path, bytes)
        The card and its weights, as laid out beside each other on the node.
    card_name : str
        The card file's relative path among them.
    device : str
        ``auto``, ``cpu`` or ``cuda[:N]``, resolved on the worker.
    jobs : JobsSection
        Batch size and wait bound of the shared forward passes.
    """

    def __init__(
        self,
        card_files: list[tuple[str, bytes]],
        card_name: str,
        device: str,
        jobs: JobsSection,
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.folder = Path(tempfile.mkdtemp(prefix="dicom-node-model-"))
        for relative, data in card_files:
            target = self.folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.model = load_model(load_card(self.folder / card_name), device, jobs)
        self.jobs = self.folder / "jobs"
        self.jobs.mkdir()

    def describe(self) -> dict[str, Any]:
        """Where this replica runs: host, pid, device and batch size (for the node's log)."""
        pipeline = self.model.pipeline
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(pipeline.device),
            "batch_size": self.model.batch_size,
            "model": f"{pipeline.card.name} {pipeline.card.version}",
            "peak_rss_mb": _peak_rss_mb(),
        }

    def receive(self, transfer: str, first: int, files: list[bytes]) -> int:
        """Store files ``first``, ``first + 1``, ... of a transfer; return how many it has now.

        The node sends a series chunk by chunk, one call each, so the object
        store holds one chunk of it at a time however long the series. Each
        attempt at a job is a transfer of its own (``<job id>.<random>``), so
        an attempt the node gave up on never touches its retry's files.
        """
        folder = self.jobs / _safe(transfer)
        if first == 0:
            shutil.rmtree(folder, ignore_errors=True)
            self._sweep()
        folder.mkdir(parents=True, exist_ok=True)
        for number, data in enumerate(files, start=first):
            (folder / file_name(number)).write_bytes(data)
        return first + len(files)

    def _sweep(self) -> None:
        """Remove the files of jobs the node stopped sending long ago (it was restarted)."""
        for folder in self.jobs.iterdir():
            try:
                if time.time() - folder.stat().st_mtime > STALE_JOB_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    def infer(self, transfer: str, layout: Layout) -> tuple[PipelineResult, BatchStats]:
        """Run one job on the files :meth:`receive` stored for it, then remove them.

        Raises
        ------
        IncompleteTransfer
            If the files are not all here (this process restarted meanwhile): the node
            sends the job again.
        """
        folder = self.jobs / _safe(transfer)
        try:
            expected = sum(count for _, count in layout)
            found = len(list(folder.glob("*.dcm"))) if folder.is_dir() else 0
            if found != expected:
                raise IncompleteTransfer(f"job {transfer}: {found} of {expected} files arrived")
            series, first = [], 0
            for uid, count in layout:
                files = tuple(folder / file_name(i) for i in range(first, first + count))
                series.append(SeriesInput(uid, files))
                first += count
            result, stats = self.model.run(series)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        # the node knows the files by number: heatmaps name theirs, not this folder's
        result.heatmaps = [
            dataclasses.replace(h, source=Path(h.source.name)) for h in result.heatmaps
        ]
        return result, stats

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


def _safe(transfer: str) -> str:
    """A transfer key as a folder name (the node makes them; refuse anything else)."""
    if not transfer or not all(c.isalnum() or c in "._-" for c in transfer) or ".." in transfer:
        raise ValueError(f"not a transfer key: {transfer!r}")
    return transfer
