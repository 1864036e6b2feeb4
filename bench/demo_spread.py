"""How much do the demo models move from one machine to another? Build them as several would.

The demo builds are deterministic on one machine, not across CPUs: wider
vector kernels add in another order, and a short training from scratch turns
last-bit differences into different models. This benchmark builds every demo
under several CPU code paths (:mod:`pipelines.common.codepath`) and seeds, each
build in its own folder, then (``--tests``) runs the demo-quality tests on
each build, and reports the spread of every headline metric of the cards and
of every test bar's measured value, with the worst value seen and its margin.

    python -m bench.demo_spread --out /var/tmp/spread                 # build + report
    python -m bench.demo_spread --out /var/tmp/spread --tests         # ... and run the tests
    python -m bench.demo_spread --out /var/tmp/spread --report-only   # tables again

The build matrix is every ``--paths`` entry at seed 0, plus the first path at
each other ``--seeds`` entry: with the defaults, native/avx2/avx512-cnr at
seed 0 and native at seeds 1 and 2, five builds of each demo (about 3 hours of
one core for all six demos; ``--jobs`` builds run side by side, one thread each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.common import codepath
from pipelines.study import demo_models

ROOT = Path(__file__).resolve().parent.parent
#: the pytest marker of the tests whose outcome depends on the demo models' quality
MARKER = "demo_quality"


@dataclass(frozen=True)
class Build:
    """One build of the demo models: a code path and a seed, in its own folder."""

    path: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.path}-seed{self.seed}"


def matrix(paths: list[str], seeds: list[int]) -> list[Build]:
    """Every path at seed 0, and the first path at the other seeds."""
    builds = [Build(path, 0) for path in paths]
    builds += [Build(paths[0], seed) for seed in seeds if seed != 0]
    return builds


def _build_one(out: Path, build: Build, demo: str) -> dict[str, Any]:
    folder = out / build.name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{demo}.log"
    command = [
        sys.executable,
        "-m",
        "pipelines.demo",
        "--models-dir",
        str(folder),
        "--seed",
        str(build.seed),
        "--only",
        demo,
        "--jobs",
        "1",
        "--code-path",
        build.path,
    ]
    start = time.perf_counter()
    with log.open("a") as sink:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=codepath.environment(build.path),
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.perf_counter() - start
    status = "ok" if done.returncode == 0 else f"failed ({done.returncode}), see {log}"
    print(f"[spread] {build.name} {demo}: {status} in {seconds:.0f}s", flush=True)
    return {"build": build.name, "demo": demo, "seconds": round(seconds, 1), "status": status}


def build_all(out: Path, builds: list[Build], demos: list[str], jobs: int) -> list[dict[str, Any]]:
    """Build every demo of every build, ``jobs`` at a time: build by build, the longest first,
    so that the first builds are whole (and can be tested) while the later ones train."""
    tasks = [(b, d) for b in builds for d in demos if not (out / b.name / d / "card.yaml").exists()]
    tasks.sort(key=lambda task: (builds.index(task[0]), -demo_models()[task[1]][1].minutes))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda task: _build_one(out, *task), tasks))


def run_tests(out: Path, build: Build, extra: list[str]) -> int:
    """The demo-quality tests on one build; every bar's measured value goes to ``bars.jsonl``."""
    folder = out / build.name
    bars = folder / "bars.jsonl"
    bars.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DICOM_NODE_TEST_MODELS": str(folder),
        "DICOM_NODE_BARS_OUT": str(bars),
        "DICOM_NODE_TEST_DATABASE": "sqlite",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", MARKER]
    with (folder / "pytest.log").open("w") as sink:
        done = subprocess.run(
            command + extra, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False
        )
    tail = (folder / "pytest.log").read_text().strip().splitlines()[-1:]
    print(f"[spread] tests on {build.name}: {tail[0] if tail else done.returncode}", flush=True)
    return done.returncode


# -- the report -------------------------------------------------------------------------------


#: counts, settings and identifiers in a card's metrics: the same in every build, or no measure
_NOT_HEADLINE = {
    "ci_low",
    "ci_high",
    "n",
    "support",
    "threshold",
    "confidence",
    "category_id",
    "confusion_matrix",
    "macro avg",
    "weighted avg",
    "data",
}


def _headline(metrics: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every scalar metric of a card's ``metrics``: ``{"value": x, ...}`` leaves and numbers."""
    if isinstance(metrics, dict):
        if isinstance(metrics.get("value"), int | float) and not isinstance(metrics["value"], bool):
            yield prefix, float(metrics["value"])
            return
        for key, value in metrics.items():
            if key in _NOT_HEADLINE or key.startswith("n_"):
                continue
            yield from _headline(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(metrics, int | float) and not isinstance(metrics, bool):
        if metrics == metrics:  # NaN is no measurement
            yield prefix, float(metrics)


#: The figures models/README.md quotes for each demo, as ranges over the builds.
HEADLINES: dict[str, list[str]] = {
    "generic-demo": ["accuracy", "recall", "specificity", "roc_auc"],
    "ich-demo": [
        *(
            f"per_label.{label}.{metric}"
            for label in (
                "any",
                "epidural",
                "intraparenchymal",
                "intraventricular",
                "subarachnoid",
                "subdural",
            )
            for metric in ("roc_auc", "f1")
        ),
        "weighted_log_loss",
    ],
    "cxr-demo": [
        "coco.AP50",
        "coco.AP",
        "per_class.aortic_atherosclerosis_calcification.ap50",
        "per_class.lung_field_infiltration.ap50",
        "per_class.cardiac_hypertrophy.ap50",
    ],
    "ct-gb-contrast-demo": [
        "slice.accuracy",
        "slice.roc_auc",
        "series.accuracy",
        "series.sensitivity",
        "series.specificity",
    ],
    "hip-demo": [
        "localiser.recall_iou50",
        "localiser.mean_iou",
        "node.binary.accuracy",
        "node.binary.recall",
        "ground_truth_crops.binary.accuracy",
    ],
}
HEADLINES["ct-gb-noncontrast-demo"] = HEADLINES["ct-gb-contrast-demo"]


def headline_ranges(rows_by_demo: dict[str, list[dict[str, Any]]], n_builds: int) -> list[str]:
    """The compact table: each demo's headline figures as min-max over the builds."""
    lines = [
        f"| demo | held-out figure | range over {n_builds} builds | median |",
        "|---|---|---|---|",
    ]
    for demo, rows in rows_by_demo.items():
        by_name = {row["metric"].removeprefix("held_out_test."): row for row in rows}
        for name in HEADLINES.get(demo, []):
            row = by_name.get(name)
            if row is None or row["min"] is None:
                continue
            seen = sum(v is not None for v in row["values"])
            spread = (
                f"{row['min']:.2f}-{row['max']:.2f}"
                if row["min"] != row["max"]
                else (f"{row['min']:.2f}")
            )
            if seen != n_builds:
                spread += f" ({seen} builds)"
            lines.append(f"| {demo} | {name} | {spread} | {row['median']:.2f} |")
    return lines


def card_metrics(folder: Path, demo: str) -> dict[str, float]:
    """A build's card metrics (held-out test split, where the card has one) and its sha256."""
    card_file = folder / demo / "card.yaml"
    if not card_file.is_file():
        return {}
    card = yaml.safe_load(card_file.read_text())
    metrics = card.get("metrics", {})
    test = {k: v for k, v in metrics.items() if "test" in k} or metrics
    return dict(_headline(test))


def _sha(folder: Path, demo: str) -> str:
    card_file = folder / demo / "card.yaml"
    if not card_file.is_file():
        return "-"
    return str(yaml.safe_load(card_file.read_text())["weights"]["sha256"])[:12]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _rows(values: dict[str, dict[str, float]], names: Iterable[str]) -> list[dict[str, Any]]:
    keys = sorted({k for per in values.values() for k in per})
    rows = []
    for key in keys:
        seen = [values[b].get(key) for b in names]
        real = [v for v in seen if v is not None]
        rows.append(
            {
                "metric": key,
                "values": seen,
                "min": min(real) if real else None,
                "max": max(real) if real else None,
                "median": statistics.median(real) if real else None,
            }
        )
    return rows


def suggest(mean: float, sd: float, higher_is_better: bool, step: float = 0.05) -> float:
    """A bar three standard deviations of the builds beyond their mean, rounded outwards."""
    if higher_is_better:
        return math.floor((mean - 3 * sd) / step + 1e-9) * step
    return math.ceil((mean + 3 * sd) / step - 1e-9) * step


def report(out: Path, builds: list[Build], demos: list[str]) -> dict[str, Any]:
    """Tables of card metrics and test bars over the builds: ``report.md`` and ``report.json``."""
    names = [b.name for b in builds]
    lines = [
        "# Demo models under several CPU code paths and seeds",
        "",
        "Builds: " + ", ".join(f"`{n}`" for n in names),
        "",
    ]
    result: dict[str, Any] = {"builds": names, "demos": {}, "bars": []}
    all_rows = {
        demo: _rows({b.name: card_metrics(out / b.name, demo) for b in builds}, names)
        for demo in demos
    }
    lines += ["## Headline figures", "", *headline_ranges(all_rows, len(names)), ""]
    for demo in demos:
        rows = all_rows[demo]
        shas = {name: _sha(out / name, demo) for name in names}
        result["demos"][demo] = {"sha256": shas, "metrics": rows}
        lines += [f"## {demo}", "", "| metric | " + " | ".join(names) + " | min | max |"]
        lines.append("|---" * (len(names) + 3) + "|")
        lines.append("| weights sha256 | " + " | ".join(shas.values()) + " | | |")
        for row in rows:
            cells = " | ".join(_fmt(v) for v in row["values"])
            lines.append(f"| {row['metric']} | {cells} | {_fmt(row['min'])} | {_fmt(row['max'])} |")
        lines.append("")
    # the bars the tests measured on each build (tests/bars.py writes them)
    measured: dict[str, dict[str, dict[str, Any]]] = {}
    for b in builds:
        bars_file = out / b.name / "bars.jsonl"
        if bars_file.is_file():
            for line in bars_file.read_text().splitlines():
                entry = json.loads(line)
                measured.setdefault(entry["name"], {})[b.name] = entry
    if measured:
        lines += [
            "## Test bars: the value each test measured on each build",
            "",
            (
                "`suggested` is mean - 3 sd over the builds (+ 3 sd for an upper bound), "
                "rounded outwards to 0.05: where the bars are set from (tests/bars.py)."
            ),
            "",
            "| bar | bound | " + " | ".join(names) + " | worst | mean | sd | suggested | margin |",
            "|---" * (len(names) + 7) + "|",
        ]
        for name in sorted(measured):
            per = measured[name]
            first = next(iter(per.values()))
            higher = first["op"] in (">=", ">")
            seen = [per[n]["value"] if n in per else None for n in names]
            real = [v for v in seen if v is not None]
            worst = (min(real) if higher else max(real)) if real else None
            margin = None if worst is None else (worst - first["bar"]) * (1 if higher else -1)
            mean = statistics.fmean(real) if real else None
            sd = statistics.stdev(real) if len(real) > 1 else 0.0
            suggested = None if mean is None else suggest(mean, sd, higher)
            result["bars"].append(
                {
                    "name": name,
                    "op": first["op"],
                    "bar": first["bar"],
                    "values": seen,
                    "worst": worst,
                    "mean": mean,
                    "sd": sd,
                    "suggested": suggested,
                    "margin": margin,
                }
            )
            lines.append(
                f"| {name} | {first['op']} {first['bar']:g} | "
                + " | ".join(_fmt(v) for v in seen)
                + f" | {_fmt(worst)} | {_fmt(mean)} | {_fmt(sd)} | {_fmt(suggested)} "
                f"| {_fmt(margin)} |"
            )
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="one folder per build goes here")
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["native", "avx2", "avx512-cnr"],
        choices=list(codepath.CODE_PATHS),
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(demo_models()), help="these demos only")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tests", action="store_true", help="run the demo-quality tests on each")
    parser.add_argument(
        "--tests-only",
        action="store_true",
        help="no builds: run the tests on each whole build that has no bars.jsonl yet",
    )
    parser.add_argument("--report-only", action="store_true")
    args, pytest_args = parser.parse_known_args(argv)
    for path in args.paths:
        codepath.code_path(path)  # this CPU can take it, or a clear error now
    builds = matrix(args.paths, args.seeds)
    demos = list(args.only or demo_models())
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tests_only:
        for build in builds:
            whole = all((args.out / build.name / d / "card.yaml").is_file() for d in demos)
            if whole and not (args.out / build.name / "bars.jsonl").exists():
                run_tests(args.out, build, pytest_args)
    elif not args.report_only:
        start = time.perf_counter()
        timings = build_all(args.out, builds, demos, args.jobs)
        with (args.out / "timings.jsonl").open("a") as sink:
            for row in timings:
                sink.write(json.dumps(row) + "\n")
        print(f"[spread] builds done in {time.perf_counter() - start:.0f}s", flush=True)
        if args.tests:
            for build in builds:
                run_tests(args.out, build, pytest_args)
    report(args.out, builds, demos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
