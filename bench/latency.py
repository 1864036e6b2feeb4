"""Time to result: from the PACS's last instance to the results acknowledged by the PACS.

A real Orthanc (the PACS) forwards each study to the node (one association,
``store_to_modality``); the clock starts when Orthanc's store job returns
(its last instance acknowledged, the association released) and stops when
every result of the study's job is in Orthanc. From that the job's own time
(``jobs.finished_at - started_at``: reading, the model, building SR and SC)
is taken away: what is left is the node's waiting and handing on, which
``complete_on_release`` and the stages' wake-ups are there to shrink.

Cases (the shipped routes and demo models, on this machine's CPU):

* ``radiograph``: one chest radiograph study, the PACS marked ``complete_on_release``;
* ``head-ct``: a 40-slice head CT, the same;
* ``4 at once``: four radiograph studies forwarded at the same moment;
* ``quiet timers``: one radiograph from a peer not so marked, with the shipped quiet
  timers (``completion`` in config.yaml): the fallback, so admins can compare.

Run: ``.venv/bin/python -m bench.latency [--repeat 5]``; ``--smoke`` runs one
radiograph (CI runs it so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pipelines.cxr.synth import write_cxr_dataset
from pipelines.ich.synth import write_head_ct_series

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from node import NODE_AET, SHIPPED_CONFIG, NodeProcess, pacs_node_config  # noqa: E402
from peers import Orthanc, free_port  # noqa: E402


class Bench:
    """A PACS and a node, and the studies it forwards to the node."""

    def __init__(self, work: Path, *, on_release: bool) -> None:
        self.work = work
        self.port = free_port()
        self.pacs = Orthanc(
            work / "pacs", aet="PACS", modalities={"node": [NODE_AET, "127.0.0.1", self.port]}
        ).start()
        self.node = self._node(on_release)
        self.count = 0

    def _node(self, on_release: bool) -> NodeProcess:
        workdir = self.work / f"node-{'release' if on_release else 'quiet'}"
        shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
        config = pacs_node_config(
            workdir,
            f"sqlite:///{workdir / 'index.db'}",
            self.pacs,
            "chest-xr",
            "head-ct",
            port=self.port,
            # the shipped timers: what the quiet-timer fallback costs an admin who keeps them
            completion=shipped["completion"],
            dispatch={"poll_seconds": 1.0, "timeout_seconds": 30},
        )
        for peer in config["node"]["peers"]:
            peer["complete_on_release"] = on_release and peer["ae_title"] == self.pacs.aet
        return NodeProcess(workdir, config)

    def study(self, kind: str) -> tuple[str, int]:
        """Write one study of ``kind`` and upload it to the PACS; return (PACS id, instances)."""
        self.count += 1
        folder = self.work / "studies" / f"{kind}-{self.count}"
        if kind == "head-ct":
            slices = write_head_ct_series(
                folder, seed=7300, index=self.count, hemorrhages=("subdural",), n_slices=40
            )
            paths, uid = [s.path for s in slices], slices[0].study_instance_uid
        else:
            dataset = write_cxr_dataset(
                folder, n=1, seed=7400 + self.count, size=512, images_per_patient=1
            )
            paths = [i.path for i in dataset.images]
            uid = dataset.images[0].study_instance_uid
        for path in paths:
            self.pacs.upload(path)
        study_id = self.pacs.find_study(uid)
        assert study_id is not None
        return study_id, len(paths)

    def forward(self, studies: Sequence[tuple[str, int]]) -> list[dict[str, float]]:
        """Forward the studies at once; per study: seconds to results and the job's own time."""

        def one(study: tuple[str, int]) -> dict[str, float]:
            study_id, instances = study
            self.pacs.store_to_modality("node", [study_id])
            sent = time.monotonic()
            uid = self.pacs.study(study_id)["MainDicomTags"]["StudyInstanceUID"]
            job = _wait(lambda: self._done_job(uid), 600, f"job of {uid} done")
            results = self.node.scalar("SELECT count(*) FROM results WHERE job_id = :j", j=job)
            _wait(
                lambda: len(self.pacs.study_instances(study_id)) >= instances + results,
                600,
                "results in the PACS",
                interval=0.02,
            )
            back = time.monotonic() - sent
            started, finished = self.node.query(
                "SELECT started_at, finished_at FROM jobs WHERE id = :j", j=job
            )[0]
            own = (_time(finished) - _time(started)).total_seconds()
            return {"seconds": back, "job": own, "waiting": back - own}

        with ThreadPoolExecutor(len(studies)) as pool:
            return list(pool.map(one, studies))

    def _done_job(self, study_uid: str) -> int | None:
        rows = self.node.query(
            "SELECT id FROM jobs WHERE study_instance_uid = :s AND state = 'done' AND NOT shadow",
            s=study_uid,
        )
        return int(rows[0][0]) if rows else None

    def close(self) -> None:
        self.node.stop()
        self.pacs.kill()


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _wait(ready: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s")


def summarise(case: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "case": case,
        "studies": len(runs),
        "median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
        "median_job_seconds": round(statistics.median(r["job"] for r in runs), 2),
        "median_waiting_seconds": round(statistics.median(r["waiting"] for r in runs), 2),
        "max_waiting_seconds": round(max(r["waiting"] for r in runs), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="studies per case (default 5)")
    parser.add_argument("--smoke", action="store_true", help="one radiograph only (CI)")
    args = parser.parse_args(argv)
    figures = []
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        work = Path(tmp)
        bench = Bench(work, on_release=True)
        try:
            with bench.node.start(timeout=300):
                bench.forward([bench.study("radiograph")])  # warm: models loaded, caches
                if args.smoke:
                    runs = bench.forward([bench.study("radiograph")])
                    figures.append(summarise("radiograph, released", runs))
                else:
                    for case, kind, at_once in (
                        ("radiograph, released", "radiograph", 1),
                        ("40-slice head CT, released", "head-ct", 1),
                        ("4 radiographs at once, released", "radiograph", 4),
                    ):
                        runs = []
                        for _ in range(args.repeat):
                            runs += bench.forward([bench.study(kind) for _ in range(at_once)])
                        figures.append(summarise(case, runs))
                        print(json.dumps(figures[-1]), flush=True)
            if not args.smoke:
                bench.node = bench._node(on_release=False)
                with bench.node.start(timeout=300):
                    runs = bench.forward([bench.study("radiograph")])
                    figures.append(summarise("radiograph, quiet timers (shipped)", runs))
        finally:
            bench.close()
    print(json.dumps(figures, indent=2))
    print(f"{'case':36s} {'studies':>7s} {'to result':>10s} {'job':>7s} {'waiting':>8s}")
    for f in figures:
        print(
            f"{f['case']:36s} {f['studies']:7d} {f['median_seconds']:9.2f}s "
            f"{f['median_job_seconds']:6.2f}s {f['median_waiting_seconds']:7.2f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
