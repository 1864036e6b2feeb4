"""Engine benchmark: the engine's path against a bare forward, jobs per minute on Ray, cost growth.

All figures are ratios or sizes measured in one run, on this machine:

1. **Engine path vs bare forward** (this process, CPU, scoring path: no
   heatmaps): :class:`~dicom_node.jobs.batching.SharedForward` running a job
   (order, read, window, batched forward, findings) against the pipeline's
   forward stage alone on inputs already in memory, and against
   ``Pipeline.run``, taken in turns, for the seed architectures with random
   weights (speed does not depend on them): ICH ResNet-50 at 224 px on a
   40-slice 512 px head CT, and the Faster R-CNN R50-FPN at 800 px on chest
   radiographs. Target >= 0.9.
2. **Jobs per minute** of N queued head CTs (demo ICH model) through the Ray
   engine on a real cluster started here (a head and one worker node with
   2 CPUs): 1 replica vs 2 replicas (1 vs 2 worker processes, one CPU each),
   and with cross-study batching on (4 jobs in flight) vs off (1).
3. **Cost growth**: one head CT of 40, 300 and 1,000 slices on one replica,
   each in a fresh driver process: seconds, the node's peak memory, the
   worker's peak memory.

Run: ``.venv/bin/python -m bench.cluster`` (``--smoke``: tiny sizes, no seed
architectures; CI runs it so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench import best_of, status_mb
from bench.ray_cluster import RayCluster
from dicom_node.config import (
    Config,
    JobsSection,
    PipelineConfig,
    RayEngineSettings,
    RayResources,
)
from dicom_node.jobs.batching import SharedForward
from dicom_node.jobs.ray_engine import RayEngine
from pipelines.base import SeriesInput
from pipelines.card import load_card

REPO = Path(__file__).resolve().parent.parent
ICH_DEMO = REPO / "models" / "ich-demo" / "card.yaml"
CXR_DEMO = REPO / "models" / "cxr-demo" / "card.yaml"
HOST = {"bench_host": 2}


def _scoring(card_path: Path) -> Any:
    """The card's pipeline without heatmaps, on the CPU."""
    from pipelines import registry

    card = load_card(card_path)
    card = card.model_copy(update={"explainer": card.explainer.model_copy(update={"top_k": 0})})
    return registry.get(card.pipeline)(card, torch.device("cpu"))


def compare(pipeline: Any, series: SeriesInput, repeats: int) -> dict[str, float]:
    """Seconds for one job (best of ``repeats``, taken in turns so drift hits all alike).

    ``engine``: :class:`SharedForward` (what both engines run); ``run``:
    :meth:`Pipeline.run` alone; ``bare``: the pipeline's forward stage alone,
    in batches of the same size, on inputs already read and preprocessed in
    memory (nothing but the model).
    """
    shared = SharedForward(pipeline, pipeline.batch_size, 0.02)
    data = [item.data for item in pipeline.prepare([series]).inputs]
    size = pipeline.batch_size

    def bare() -> None:
        for i in range(0, len(data), size):
            pipeline.forward(data[i : i + size])

    ways = {
        "engine": lambda: shared.run([series]),
        "run": lambda: pipeline.run([series]),
        "bare": bare,
    }
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeats + 1):  # the first round warms up
        for name, way in ways.items():
            best[name] = min(best[name], best_of(way, 1))
    return best


def engine_vs_bare(root: Path, repeats: int, slices: int, images: int) -> list[dict[str, Any]]:
    """Part 1, for the seed architectures with random weights."""
    from bench import cxr as cxr_bench
    from bench import ich as ich_bench
    from pipelines.cxr.synth import write_cxr_dataset
    from pipelines.ich.synth import write_head_ct_series

    ct = write_head_ct_series(root / "ct", seed=5, index=0, n_slices=slices, size=512)
    data = write_cxr_dataset(root / "cxr", n=images, seed=7, size=1024)
    cases = (
        (
            ich_bench.seed_card(load_card(ICH_DEMO), root / "ich-r50"),
            SeriesInput("ct", tuple(s.path for s in ct)),
            "slices",
        ),
        (
            cxr_bench.seed_card(
                load_card(CXR_DEMO), root / "cxr-r50", "fasterrcnn_resnet50_fpn", 800
            ),
            SeriesInput("cxr", tuple(image.path for image in data.images)),
            "images",
        ),
    )
    rows = []
    for card_path, series, unit in cases:
        pipeline = _scoring(card_path)
        card = pipeline.card
        seconds = compare(pipeline, series, repeats)
        n = len(series.files)
        rows.append(
            {
                "model": f"{card.architecture}, {card.input.size} px",
                "unit": unit,
                **{name: n / took for name, took in seconds.items()},
            }
        )
    return rows


#: the series travel in chunks of this size in part 3 (the node's memory is bounded by it)
GROWTH_CHUNK_MB = 16


def _engine(
    address: str, token_file: Path, replicas: int, in_flight: int, chunk_mb: float = 16
) -> tuple[RayEngine, Config]:
    config = Config(
        pipelines={
            "ich": PipelineConfig(
                card=ICH_DEMO,
                device="cpu",
                ray=RayResources(num_cpus=1, resources={"bench_host": 1}, replicas=replicas),
            )
        },
        jobs=JobsSection(in_flight=in_flight),
        engine=RayEngineSettings(
            kind="ray", address=address, token_file=token_file, chunk_mb=chunk_mb
        ),
    )
    assert isinstance(config.engine, RayEngineSettings)
    return RayEngine(config.engine, lambda: config), config


def jobs_per_minute(
    cluster: RayCluster, studies: Sequence[SeriesInput], replicas: int, in_flight: int
) -> tuple[float, float]:
    """Part 2: (jobs per minute, share of forward passes held by several jobs)."""
    engine, config = _engine(cluster.address, cluster.token_file, replicas, in_flight)
    spec = config.pipelines["ich"]
    try:
        for number in range(replicas):  # warm: every replica loaded before the clock starts
            engine.infer(-1 - number, "ich", spec, studies[:1])
        todo = list(enumerate(studies))
        lock = threading.Lock()
        shared = [0, 0]

        def work() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    number, study = todo.pop()
                done = engine.infer(number, "ich", spec, [study])
                with lock:
                    shared[0] += done.stats.shared
                    shared[1] += done.stats.batches

        started = time.perf_counter()
        threads = [threading.Thread(target=work) for _ in range(in_flight)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - started
    finally:
        engine.close()
    return len(studies) / took * 60, shared[0] / max(1, shared[1])


class _Sampler(threading.Thread):
    """The largest private (RssAnon) and shared (RssShmem: object store pages) resident sizes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.anon = self.shmem = 0.0

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.anon = max(self.anon, status_mb("RssAnon"))
            self.shmem = max(self.shmem, status_mb("RssShmem"))


def growth_child(address: str, token_file: str, folder: str) -> None:
    """Part 3, in a fresh driver: one job of the series in ``folder``; prints JSON."""
    engine, config = _engine(address, Path(token_file), 1, 1, chunk_mb=GROWTH_CHUNK_MB)
    spec = config.pipelines["ich"]
    files = tuple(sorted(Path(folder).glob("*.dcm")))
    small = SeriesInput("warm", files[:4])
    engine.infer(-1, "ich", spec, [small])  # the replica loaded
    before = status_mb("RssAnon")
    sampler = _Sampler()
    sampler.start()
    started = time.perf_counter()
    engine.infer(1, "ich", spec, [SeriesInput("bench", files)])
    took = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    group = engine._groups["ich"]
    import ray

    worker = ray.get(group.replicas[0].handle.describe.remote())
    engine.close()
    print(
        json.dumps(
            {
                "slices": len(files),
                "seconds": took,
                "node_peak_mb": status_mb("VmHWM"),
                "node_private_growth_mb": sampler.anon - before,
                "node_shared_mb": sampler.shmem,
                "worker_peak_mb": worker.get("peak_rss_mb"),
            }
        )
    )


def growth(cluster: RayCluster, root: Path, sizes: Sequence[int]) -> list[dict[str, Any]]:
    from bench.ich import tall_series
    from pipelines.ich.synth import write_head_ct_series

    base = write_head_ct_series(root / "base", seed=6, index=0, n_slices=40)
    rows = []
    for n in sizes:
        folder = tall_series(base, root / f"tall-{n}", n)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.cluster",
                "--growth-child",
                cluster.address,
                str(cluster.token_file),
                str(folder),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if done.returncode != 0:
            raise RuntimeError(f"growth run of {n} slices failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def report_jobs_per_minute(cluster: RayCluster, root: Path, count: int, slices: int) -> None:
    """Part 2, printed: jobs per minute in three set-ups, and their ratios."""
    from pipelines.ich.synth import write_head_ct_series

    studies = [
        SeriesInput(
            f"study-{i}",
            tuple(
                s.path
                for s in write_head_ct_series(root / f"q{i}", seed=8, index=i, n_slices=slices)
            ),
        )
        for i in range(count)
    ]
    print(f"\n2. {count} queued head CTs of {slices} slices, Ray engine")
    figures = []
    for label, replicas, in_flight in (
        ("1 replica, batching on (4 in flight)", 1, 4),
        ("2 replicas, batching on (4 in flight)", 2, 4),
        ("1 replica, batching off (1 in flight)", 1, 1),
    ):
        per_minute, shared = jobs_per_minute(cluster, studies, replicas, in_flight)
        figures.append(per_minute)
        print(
            f"  {label:<40} {per_minute:7.1f} jobs/min  ({shared:.0%} of forward passes shared)",
            flush=True,
        )
    one, two, off = figures
    print(f"  2 vs 1 worker processes: {two / one:.2f}x; batching on vs off: {one / off:.2f}x")


def report_growth(cluster: RayCluster, root: Path, sizes: Sequence[int]) -> None:
    """Part 3, printed."""
    print(f"\n3. one head CT on one replica, fresh driver each, {GROWTH_CHUNK_MB} MB chunks")
    for row in growth(cluster, root, sizes):
        print(
            f"  {row['slices']:5d} slices {row['seconds']:6.1f} s; node: peak "
            f"{row['node_peak_mb']:4.0f} MB, private +{row['node_private_growth_mb']:.0f} MB "
            f"during the job, object store pages {row['node_shared_mb']:.0f} MB; worker peak "
            f"{row['worker_peak_mb']:4.0f} MB",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8, help="queued head CTs in part 2")
    parser.add_argument("--slices", type=int, default=24, help="slices per head CT in part 2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 300, 1000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no seed architectures")
    parser.add_argument(
        "--parts", type=int, nargs="+", default=[1, 2, 3], help="which parts to run"
    )
    parser.add_argument("--growth-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.growth_child:
        growth_child(*args.growth_child)
        return 0
    if args.smoke:
        args.studies, args.slices, args.sizes, args.repeats = 2, 4, [8], 1
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        if 1 in args.parts and not args.smoke:
            print("\n1. engine path (SharedForward, no heatmaps) vs bare batched forward, CPU")
            for row in engine_vs_bare(root, args.repeats, 40, 4):
                print(
                    f"  {row['model']:<36} engine {row['engine']:6.2f} {row['unit']}/s, "
                    f"Pipeline.run {row['run']:6.2f}, bare forward {row['bare']:6.2f}: "
                    f"engine/bare {row['engine'] / row['bare']:.2f}, "
                    f"engine/run {row['engine'] / row['run']:.2f}",
                    flush=True,
                )
        if not {2, 3} & set(args.parts):
            return 0
        with RayCluster(root) as cluster:
            cluster.add_worker(HOST, num_cpus=2)
            if 2 in args.parts:
                report_jobs_per_minute(cluster, root, args.studies, args.slices)
            if 3 in args.parts:
                report_growth(cluster, root, args.sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
