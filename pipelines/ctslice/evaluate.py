"""``dicom-node evaluate ct-slice-classifier``: the study's table, per slice and per series.

Seed 000 reports, per model, accuracy, sensitivity (recall of the positive
class), specificity (recall of the negative class), FPR, FNR, precision of
each class (PPV, NPV) and F1 of each class
(:data:`pipelines.common.metrics.STUDY_METRICS`). "Positive" is any
reported label (``report: true``, e.g. ``cholecystitis``) and "negative"
the others (``normal``), so a K-class card gets the same binary table plus a
per-class report.

Two units are measured:

* **slice**: the study's unit; a slice is called positive when a reported
  label's probability reaches its threshold;
* **series**: what the node reports; the slice probabilities of each series
  are aggregated with the card's rule (``options.aggregation``) and the
  series is called positive when an aggregated reported label reaches its
  threshold; a series is truly positive when one of its slices is.

Each metric comes with a percentile-bootstrap 95 % interval over the cases
of its unit (slices, or series). Slices of one patient are correlated, so
the slice-level interval is narrower than the truth; the series-level one
is the honest one. The model is run exactly as the node runs it (the
pipeline's own ordering, reading and scoring, :meth:`CtSliceClassifier.score_series`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base import SeriesInput
from pipelines.card import CARD_FILE, CardError, load_card
from pipelines.common.aggregate import aggregate
from pipelines.common.metrics import (
    STUDY_METRICS,
    bootstrap_ci,
    classification_report,
    confusion_matrix,
    model_identity,
    roc_auc,
    roc_curve,
    rounded,
    study_metrics,
    write_metrics,
)
from pipelines.common.plots import save_roc_png
from pipelines.common.train import resolve_device
from pipelines.ctslice.data import DataError, LabelledSlice

logger = logging.getLogger(__name__)

#: How each metric is printed in the study's table.
METRIC_NAMES: dict[str, str] = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (Recall P)",
    "specificity": "Specificity (Recall N)",
    "fpr": "False Positive Rate",
    "fnr": "False Negative Rate",
    "ppv": "Precision (P)",
    "npv": "Precision (N)",
    "f1_positive": "F1(P)",
    "f1_negative": "F1(N)",
}


class _StudyMetrics:
    """:func:`study_metrics` of each bootstrap resample, computed once for all nine metrics.

    :func:`bootstrap_ci` draws the same resamples for every metric (same
    seed), so the table of one resample is kept and each metric reads its
    entry, instead of recounting the confusion matrix nine times.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, bytes], dict[str, float]] = {}

    def metric(self, name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        def fn(y_true: np.ndarray, y_pred: np.ndarray) -> float:
            key = (y_true.tobytes(), y_pred.tobytes())
            if key not in self._cache:
                self._cache[key] = study_metrics(y_true, y_pred)
            return self._cache[key][name]

        return fn


def study_report(
    y_true: Any,
    y_pred: Any,
    y_score: Any | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The study's metrics of 0/1 decisions, each with a percentile-bootstrap 95 % interval.

    Returns
    -------
    dict
        ``{"n", "n_positive", "confusion_matrix": {"tn", "fp", "fn", "tp"},
        "<metric>": {"value", "ci_low", "ci_high"}}`` for every metric of
        :data:`STUDY_METRICS` (and ``roc_auc`` when ``y_score`` is given);
        plain Python types, ``nan`` where undefined.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(t, p)
    report: dict[str, Any] = {
        "n": int(t.size),
        "n_positive": int(t.sum()),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "ci_method": f"percentile bootstrap over cases, {n_bootstrap} resamples, seed {seed}",
    }
    table = _StudyMetrics()
    for name in STUDY_METRICS:
        value, lo, hi = bootstrap_ci(table.metric(name), t, p, n=n_bootstrap, seed=seed)
        report[name] = {"value": value, "ci_low": lo, "ci_high": hi}
    if y_score is not None:
        value, lo, hi = bootstrap_ci(roc_auc, t, np.asarray(y_score), n=n_bootstrap, seed=seed)
        report["roc_auc"] = {"value": value, "ci_low": lo, "ci_high": hi}
    return report


def decisions(
    probabilities: np.ndarray, reported: Sequence[int], thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(positive call, positive score) per row of (N, labels) probabilities.

    A row is positive when a reported label reaches its threshold; its score
    (for ROC curves) is the largest reported probability.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    cut = np.asarray([thresholds[i] for i in reported])
    chosen = probs[:, list(reported)]
    calls = np.asarray((chosen >= cut).any(axis=1), dtype=np.int64)
    return calls, chosen.max(axis=1)


def series_probabilities(
    probabilities: np.ndarray, series: Sequence[str], how: str, k: int
) -> tuple[list[str], np.ndarray]:
    """Aggregate (N, labels) slice probabilities per series; returns (series ids, (S, labels))."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, uid in enumerate(series):
        rows[uid].append(i)
    ids = sorted(rows)
    probs = np.asarray(probabilities)
    matrix = np.stack([aggregate(probs[rows[uid]], how, k) for uid in ids])
    return ids, matrix


def slice_and_series_report(
    probabilities: np.ndarray,
    targets: np.ndarray,
    series: Sequence[str],
    labels: Sequence[str],
    reported: Sequence[int],
    thresholds: Sequence[float],
    *,
    aggregation: str,
    k: int,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The study's table per slice and per series, and a per-class report per slice.

    Parameters
    ----------
    probabilities : numpy.ndarray
        (N, labels) softmax probabilities of N slices.
    targets : numpy.ndarray
        (N,) true class index of each slice.
    series : sequence of str
        The series of each slice.
    labels, reported, thresholds
        The card's label names, the indices of the reported ones and every
        label's threshold.
    aggregation, k
        The card's series rule (:func:`pipelines.common.aggregate.aggregate`).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    truth = np.isin(targets, list(reported)).astype(np.int64)
    called, score = decisions(probs, reported, thresholds)
    slice_level = study_report(truth, called, score, n_bootstrap=n_bootstrap, seed=seed)
    ids, series_probs = series_probabilities(probs, series, aggregation, k)
    by_series: dict[str, int] = defaultdict(int)
    for uid, positive in zip(series, truth, strict=True):
        by_series[uid] = max(by_series[uid], int(positive))
    series_truth = np.array([by_series[uid] for uid in ids], dtype=np.int64)
    series_called, series_score = decisions(series_probs, reported, thresholds)
    series_level = study_report(
        series_truth, series_called, series_score, n_bootstrap=n_bootstrap, seed=seed
    )
    series_level["aggregation"] = (
        f"{aggregation} (k={k})" if aggregation == "top_k_mean" else aggregation
    )
    per_class = classification_report(targets, probs.argmax(axis=1), list(labels))
    return {
        "slice": {**slice_level, "unit": "slice"},
        "series": {**series_level, "unit": "series"},
        "per_class": {**per_class, "unit": "slice"},
        "_curves": {
            "slice": (truth, score),
            "series": (series_truth, series_score),
        },
    }


def format_study_table(columns: Mapping[str, Mapping[str, Any]], *, digits: int = 3) -> str:
    """The study's table: one row per metric, one column per report, ``value (lo-hi)``.

    ``columns`` maps a column title to a report of :func:`study_report`, or to
    a :func:`pipelines.common.metrics.repeat_summary` (``mean`` instead of ``value``).
    """
    width = max(len(v) for v in METRIC_NAMES.values())

    def cell(entry: Mapping[str, Any] | None) -> str:
        if not entry:
            return "n/a"
        value = entry.get("value", entry.get("mean"))
        lo, hi = entry.get("ci_low"), entry.get("ci_high")

        def f(v: Any) -> str:
            return (
                "nan"
                if v is None or (isinstance(v, float) and math.isnan(v))
                else f"{v:.{digits}f}"
            )

        return f"{f(value)} ({f(lo)}-{f(hi)})"

    cells = {
        title: [cell(report.get(m)) for m in STUDY_METRICS] for title, report in columns.items()
    }
    widths = {t: max(len(t), *(len(c) for c in cs)) for t, cs in cells.items()}
    lines = [f"{'':<{width}}  " + "  ".join(f"{t:>{widths[t]}}" for t in cells)]
    for i, metric in enumerate(STUDY_METRICS):
        row = "  ".join(f"{cells[t][i]:>{widths[t]}}" for t in cells)
        lines.append(f"{METRIC_NAMES[metric]:<{width}}  {row}")
    return "\n".join(lines)


def _group_series(slices: Sequence[LabelledSlice]) -> dict[str, list[LabelledSlice]]:
    out: dict[str, list[LabelledSlice]] = defaultdict(list)
    for s in slices:
        out[s.series].append(s)
    return dict(sorted(out.items()))


def evaluate_ct_slices(
    model: str | Path,
    slices: Sequence[LabelledSlice],
    out_dir: str | Path,
    *,
    device: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the card's model as the node does on labelled slices; write metrics.json and roc.png.

    Parameters
    ----------
    model : str or Path
        The model folder (with ``card.yaml``) or the card.
    slices : sequence of LabelledSlice
        From :func:`pipelines.ctslice.data.read_slice_csv` or ``read_class_dir``;
        every label must be one of the card's.

    The returned metrics are those written to ``metrics.json``. A card of another
    pipeline raises :class:`CardError`; a slice whose label the card lacks, or
    slices none of which can be scored, raise :class:`DataError`.
    """
    import torch

    from pipelines.ctslice.pipeline import PIPELINE_NAME, CtSliceClassifier

    card_path = Path(model) / CARD_FILE if Path(model).is_dir() else Path(model)
    card = load_card(card_path)
    if card.pipeline != PIPELINE_NAME:
        raise CardError(f"{card_path} is a {card.pipeline!r} model, not a {PIPELINE_NAME} model")
    names = [label.name for label in card.labels]
    unknown = sorted({s.label for s in slices} - set(names))
    if unknown:
        raise DataError(
            f"the data have label(s) {', '.join(unknown)} that card {card.name!r} does not "
            f"know ({', '.join(names)})"
        )
    scoring = card.model_copy(update={"explainer": card.explainer.model_copy(update={"top_k": 0})})
    pipeline = CtSliceClassifier(scoring, torch.device(str(resolve_device(device))))
    probs, targets, series = [], [], []
    skipped: list[tuple[str, str]] = []
    for uid, members in _group_series(slices).items():
        scored = pipeline.score_series(SeriesInput(uid, tuple(s.path for s in members)), skipped)
        label_of = {s.path.resolve(): s.label for s in members}
        for item, p in zip(scored.slices, scored.probabilities, strict=True):
            probs.append(p)
            targets.append(names.index(label_of[item.path.resolve()]))
            series.append(uid)
    if not probs:
        raise DataError(f"none of the {len(slices)} slices could be scored: {skipped[:5]}")
    if skipped:
        logger.warning("%d file(s) were skipped, e.g. %s", len(skipped), skipped[:3])
    reported = [i for i, label in enumerate(card.labels) if label.report]
    thresholds = [label.threshold for label in card.labels]
    report = slice_and_series_report(
        np.stack(probs),
        np.array(targets),
        series,
        names,
        reported,
        thresholds,
        aggregation=pipeline.options.aggregation,
        k=pipeline.options.aggregation_k,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    curves = report.pop("_curves")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = rounded({"card": str(card_path), "skipped": len(skipped), **report})
    metrics["model"] = model_identity(card)
    write_metrics(out, metrics, card)
    roc = {}
    for unit, (truth, score) in curves.items():
        if 0 < truth.sum() < truth.size:
            fpr, tpr, _ = roc_curve(truth, score)
            roc[unit] = (fpr, tpr, roc_auc(truth, score))
    if roc:
        save_roc_png(roc, out / "roc.png", title=f"{card.name}: reported labels vs the rest")
    return metrics


def format_report(metrics: Mapping[str, Any]) -> str:
    """The study's table (slice and series columns) and the per-class report, as text."""
    from pipelines.common.metrics import format_classification_report

    sl, se = metrics["slice"], metrics["series"]
    lines = [
        (
            f"{metrics['model']['name']}: {sl['n']} slices ({sl['n_positive']} positive) in "
            f"{se['n']} series ({se['n_positive']} positive); series rule {se['aggregation']}"
        ),
        "",
        format_study_table({"slice": metrics["slice"], "series": metrics["series"]}),
        "",
        format_classification_report(metrics["per_class"]),
    ]
    return "\n".join(lines)
