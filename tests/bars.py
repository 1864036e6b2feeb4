"""Bars on the demo models' quality, and what each test measured against them.

A demo model is trained from scratch in minutes, and the same recipe and seed
give other weights on another CPU (:mod:`pipelines.common.codepath`): every
user's first test run is on a build nobody measured. So a bar is never set
from one build. ``python -m bench.demo_spread --tests`` builds the demos under
several CPU code paths and seeds and runs the ``demo_quality`` tests on each;
every :class:`Bar` says the worst value those builds gave and where its margin
comes from (README "Demo models on other machines"; ``docs/demo-spread.md``).

The rule: a lower bar is at or below the builds' mean minus three standard
deviations, rounded down to 0.05 (an upper bar: mean plus three, rounded up),
and never above the bar it had before. Where three standard deviations would
cross what an untrained model scores, the bar is a guard against that instead,
and its comment says so.

When ``DICOM_NODE_BARS_OUT`` names a file, :func:`check` appends every value it
measured there (one JSON object a line) before it asserts, so a build that
fails one bar still reports all of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

OUT_VARIABLE = "DICOM_NODE_BARS_OUT"


@dataclass(frozen=True)
class Bar:
    """A named lower (``>=``) or upper (``<=``) bound on a measured quality figure."""

    name: str
    bar: float
    op: Literal[">=", "<="] = ">="

    def passes(self, value: float) -> bool:
        return value >= self.bar if self.op == ">=" else value <= self.bar


def _record(bar: Bar, value: float, context: str) -> None:
    out = os.environ.get(OUT_VARIABLE)
    if not out:
        return
    entry = {"name": bar.name, "op": bar.op, "bar": bar.bar, "value": value, "context": context}
    with Path(out).open("a", encoding="utf-8") as sink:
        sink.write(json.dumps(entry) + "\n")


def check(*measured: tuple[Bar, float], context: str = "") -> None:
    """Record every ``(bar, value)``, then fail naming each bar the values miss."""
    for bar, value in measured:
        _record(bar, float(value), context)
    missed = [
        f"{bar.name}: measured {value:.3f}, bar {bar.op} {bar.bar:g}"
        for bar, value in measured
        if not bar.passes(float(value))
    ]
    assert not missed, "; ".join(missed) + (f" ({context})" if context else "")


def check_remeasured(entry: Any, measured: Mapping[str, Any], what: str) -> None:
    """A card's performance ``entry`` against a ``binary_report`` measured again on the same
    cases: same n+, sensitivity and specificity within one case. This CPU's kernels and the
    build's capped ones differ in the last bits, which may move one case across its
    threshold at most; an undefined value must stay undefined."""
    positives = measured["n_positive"]
    assert entry.n_positive == positives, what
    for metric, key, count in (
        ("sensitivity", "recall", positives),
        ("specificity", "specificity", entry.n - positives),
    ):
        value, again = entry.metrics[metric].value, measured[key]["value"]
        if value is None:
            assert np.isnan(again), (what, metric)
        else:
            assert again == pytest.approx(value, abs=1.0 / count + 1e-3), (what, metric)
