"""Binary classification metrics with bootstrap confidence intervals, in numpy.

Model cards report the metrics measured on held-out data, and a number from
a few hundred images is only honest with its uncertainty, so every metric
here can be wrapped by :func:`bootstrap_ci`. Implemented in numpy (no
scikit-learn dependency in the node) and checked against hand-computed values
in ``tests/test_metrics.py``.

Conventions: ``y_true`` holds 0/1 labels, ``y_pred`` 0/1 decisions and
``y_score`` continuous scores where higher means "more positive". A metric
whose denominator is zero (e.g. recall without positives) is ``nan`` rather
than a made-up 0 or 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _binary(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    return arr.astype(bool)


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    return t, p


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else float("nan")


def confusion_matrix(y_true: Any, y_pred: Any) -> np.ndarray:
    """2x2 counts ``[[TN, FP], [FN, TP]]`` (rows: truth 0/1, columns: prediction 0/1)."""
    t, p = _pair(y_true, y_pred)
    return np.array(
        [[np.sum(~t & ~p), np.sum(~t & p)], [np.sum(t & ~p), np.sum(t & p)]], dtype=np.int64
    )


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct decisions."""
    t, p = _pair(y_true, y_pred)
    return _ratio(int(np.sum(t == p)), t.size)


def precision(y_true: Any, y_pred: Any) -> float:
    """TP / (TP + FP): how often a positive call is right (positive predictive value)."""
    (_, fp), (_, tp) = confusion_matrix(y_true, y_pred)
    return _ratio(int(tp), int(tp + fp))


def recall(y_true: Any, y_pred: Any) -> float:
    """TP / (TP + FN), a.k.a. sensitivity: the fraction of true lesions found."""
    _, (fn, tp) = confusion_matrix(y_true, y_pred)
    return _ratio(int(tp), int(tp + fn))


sensitivity = recall


def specificity(y_true: Any, y_pred: Any) -> float:
    """TN / (TN + FP): the fraction of normal images left alone."""
    (tn, fp), _ = confusion_matrix(y_true, y_pred)
    return _ratio(int(tn), int(tn + fp))


def f1_score(y_true: Any, y_pred: Any) -> float:
    """Harmonic mean of precision and recall, 2TP / (2TP + FP + FN)."""
    (_, fp), (fn, tp) = confusion_matrix(y_true, y_pred)
    return _ratio(int(2 * tp), int(2 * tp + fp + fn))


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic.

    Equals the probability that a random positive scores higher than a random
    negative, ties counting one half (average ranks). ``nan`` when only one
    class is present.
    """
    t = _binary(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"y_true and y_score differ in shape: {t.shape} vs {s.shape}")
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average 1-based ranks: a run of c tied scores ending at rank k gets k - (c - 1) / 2
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def bootstrap_ci(
    metric_fn: MetricFn,
    y_true: Any,
    y_score_or_pred: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap confidence interval of a metric.

    Cases are resampled with replacement ``n`` times; resamples on which the
    metric is undefined (``nan``, e.g. no positives drawn) are dropped.

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(y_true, y)`` -> float, e.g. :func:`recall` or :func:`roc_auc`.
    y_true : array-like
        0/1 ground truth.
    y_score_or_pred : array-like
        Whatever ``metric_fn`` takes as its second argument.
    n : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling, so that a card's interval is reproducible.
    alpha : float
        1 - confidence level (0.05 gives a 95 % interval).

    Returns
    -------
    (point, lo, hi) : tuple of float
        The metric on all cases and the alpha/2, 1 - alpha/2 percentiles;
        ``lo`` = ``hi`` = ``nan`` when no resample gave a defined value.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t = np.asarray(y_true)
    y = np.asarray(y_score_or_pred)
    if t.shape[0] != y.shape[0]:
        raise ValueError(
            f"y_true and y_score_or_pred differ in length: {t.shape[0]} vs {y.shape[0]}"
        )
    point = float(metric_fn(t, y))
    if t.shape[0] == 0:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array(
        [metric_fn(t[idx], y[idx]) for idx in rng.integers(0, t.shape[0], size=(n, t.shape[0]))],
        dtype=np.float64,
    )
    values = values[~np.isnan(values)]
    if values.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return point, float(lo), float(hi)


def binary_report(
    y_true: Any,
    y_score: Any,
    threshold: float = 0.5,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The metrics a model card records, each with its bootstrap interval.

    Decisions are ``y_score >= threshold`` (the card's threshold rule).

    Returns
    -------
    dict
        ``{"n", "n_positive", "threshold", "confidence", "ci_method",
        "confusion_matrix": {"tn", "fp", "fn", "tp"}, "confusion_matrix_ci":
        {"tn": [lo, hi], ...}, "<metric>": {"value", "ci_low", "ci_high"}}`` for
        accuracy, precision, recall, specificity, f1 and roc_auc; plain Python
        types so that it can be written to YAML. A percentile bootstrap cannot
        vary a count that is zero in the sample (e.g. no false positives gives
        specificity [1, 1]); read such an interval with the rule of three
        (error rate below 3/n at 95 %).
    """
    t = _binary(y_true, "y_true").astype(np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    pred = (s >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(t, pred)
    report: dict[str, Any] = {
        "n": int(t.size),
        "n_positive": int(t.sum()),
        "threshold": float(threshold),
        "confidence": 1.0 - alpha,
        "ci_method": f"percentile bootstrap over cases, {n_bootstrap} resamples, seed {seed}",
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }
    cells: dict[str, list[float]] = {}
    for name, (i, j) in {"tn": (0, 0), "fp": (0, 1), "fn": (1, 0), "tp": (1, 1)}.items():

        def count(y: np.ndarray, p: np.ndarray, i: int = i, j: int = j) -> float:
            return float(confusion_matrix(y, p)[i, j])

        _, lo, hi = bootstrap_ci(count, t, pred, n=n_bootstrap, seed=seed, alpha=alpha)
        cells[name] = [lo, hi]
    report["confusion_matrix_ci"] = cells
    decisions: dict[str, MetricFn] = {
        "accuracy": accuracy,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1_score,
    }
    for name, fn in decisions.items():
        value, lo, hi = bootstrap_ci(fn, t, pred, n=n_bootstrap, seed=seed, alpha=alpha)
        report[name] = {"value": value, "ci_low": lo, "ci_high": hi}
    value, lo, hi = bootstrap_ci(roc_auc, t, s, n=n_bootstrap, seed=seed, alpha=alpha)
    report["roc_auc"] = {"value": value, "ci_low": lo, "ci_high": hi}
    return report
