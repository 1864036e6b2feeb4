"""Binary classification metrics with bootstrap confidence intervals, in numpy.

Model cards report the metrics measured on held-out data, and a number from
a few hundred images is only honest with its uncertainty, so every metric
here can be wrapped by :func:`bootstrap_ci`. Implemented in numpy (no
scikit-learn dependency in the node) and checked against hand-computed values
in ``tests/test_metrics.py`` and against scikit-learn, as an independent
implementation used only by the tests, in ``tests/test_metrics_multilabel.py``.

Conventions: ``y_true`` holds 0/1 labels, ``y_pred`` 0/1 decisions,
``y_score`` continuous scores where higher means "more positive" and
``y_prob`` probabilities in [0, 1]. Multi-label data (one model output per
finding, e.g. the hemorrhage subtypes of a head CT) is an ``(N, K)`` array,
one row per case and one column per label. A metric
whose denominator is zero (e.g. recall without positives) is ``nan`` rather
than a made-up 0 or 1.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipelines.card import ModelCard

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _binary(y: Any, name: str, ndim: int = 1) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != ndim:
        dims = {1: "one", 2: "two"}.get(ndim, str(ndim))
        raise ValueError(f"{name} must be {dims}-dimensional, got shape {arr.shape}")
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


def roc_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic: one point per distinct score.

    The point for threshold ``t`` counts the cases with ``y_score >= t`` as
    positive. Thresholds are the distinct scores in decreasing order, preceded
    by ``+inf`` so that the curve starts at (0, 0); cases with equal scores
    fall on the same side of every threshold, so a run of ties is one point
    (a diagonal step), never an arbitrary staircase. Same convention as
    scikit-learn's ``roc_curve(..., drop_intermediate=False)``.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        0/1 ground truth.
    y_score : array-like, shape (N,)
        Scores, higher meaning more positive; ``nan`` is rejected.

    Returns
    -------
    fpr, tpr, thresholds : np.ndarray
        False and true positive rates at each threshold (non-decreasing, ending
        at 1) and the thresholds themselves (decreasing, ``thresholds[0]`` =
        ``inf``). ``fpr`` is all ``nan`` without negatives and ``tpr`` all
        ``nan`` without positives. The area under ``(fpr, tpr)`` by the
        trapezoidal rule equals :func:`roc_auc`.
    """
    t = _binary(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"y_true and y_score differ in shape: {t.shape} vs {s.shape}")
    if np.isnan(s).any():
        raise ValueError("y_score contains nan")
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    # index of the last case of each run of equal scores (the lowest score last)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, np.int64)
    tps = np.r_[0, np.cumsum(t)[last]].astype(np.float64)
    fps = np.r_[0, last + 1 - tps[1:]].astype(np.float64)
    thresholds = np.r_[np.inf, s[last]]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def _probabilities(y_prob: Any, shape: tuple[int, ...], name: str = "y_prob") -> np.ndarray:
    p = np.asarray(y_prob, dtype=np.float64)
    if p.shape != shape:
        raise ValueError(f"y_true and {name} differ in shape: {shape} vs {p.shape}")
    if p.size and not ((p >= 0.0) & (p <= 1.0)).all():  # also rejects nan
        raise ValueError(f"{name} must contain probabilities in [0, 1]")
    return p


def _cross_entropy(t: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    """Element-wise binary cross-entropy in nats, ``p`` clipped to [eps, 1 - eps]."""
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    p = np.clip(p, eps, 1.0 - eps)
    return -np.where(t, np.log(p), np.log1p(-p))


def log_loss(y_true: Any, y_prob: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log) of predicted probabilities.

    ``-mean(y log p + (1 - y) log(1 - p))`` with ``p`` clipped to
    ``[eps, 1 - eps]``, so that a confident wrong answer costs ``-log(eps)``
    (about 16.1 for the default) instead of infinity. ``nan`` for no cases.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        0/1 ground truth.
    y_prob : array-like, shape (N,)
        Predicted probability of the positive class, in [0, 1].
    eps : float
        Clipping bound, in (0, 0.5).
    """
    t = _binary(y_true, "y_true")
    p = _probabilities(y_prob, t.shape)
    if t.size == 0:
        return float("nan")
    return float(np.mean(_cross_entropy(t, p, eps)))


def _label_weights(weights: Any, k: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,):
        raise ValueError(f"weights must have one entry per label ({k}), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w


def weighted_log_loss(y_true: Any, y_prob: Any, weights: Any, eps: float = 1e-7) -> float:
    """Label-weighted multi-label log loss (the RSNA Intracranial Hemorrhage metric).

    For N cases and K labels with weights ``w_k``::

        BCE[n, k] = -(y[n, k] log p[n, k] + (1 - y[n, k]) log(1 - p[n, k]))
        loss      = (1 / N) sum_n ( sum_k w_k BCE[n, k] / sum_k w_k )

    i.e. the weighted mean over labels of each case's binary cross-entropy,
    averaged over cases (natural log, ``p`` clipped to ``[eps, 1 - eps]``).
    The RSNA 2019 challenge used K = 6 (``any``, epidural, intraparenchymal,
    intraventricular, subarachnoid, subdural) with weight 2 for ``any`` and 1
    for each subtype. With all weights equal it is :func:`log_loss` of the
    flattened arrays. ``nan`` for no cases.

    Parameters
    ----------
    y_true : array-like, shape (N, K)
        0/1 ground truth, one column per label.
    y_prob : array-like, shape (N, K)
        Predicted probabilities, in [0, 1].
    weights : array-like, shape (K,)
        Non-negative label weights, not all zero; only their ratios matter.
    eps : float
        Clipping bound, in (0, 0.5).
    """
    t = _binary(y_true, "y_true", ndim=2)
    p = _probabilities(y_prob, t.shape)
    w = _label_weights(weights, t.shape[1])
    if t.shape[0] == 0:
        return float("nan")
    per_case = _cross_entropy(t, p, eps) @ w / w.sum()
    return float(np.mean(per_case))


def bootstrap_ci(
    metric_fn: MetricFn,
    y_true: Any,
    y_score_or_pred: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Any = None,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap confidence interval of a metric.

    Cases are resampled with replacement ``n`` times; resamples on which the
    metric is undefined (``nan``, e.g. no positives drawn) are dropped. With
    ``groups`` (one key per case, e.g. the patient), whole groups are
    resampled: the cases of one patient are not independent, and resampling
    them one by one would make the interval too narrow.

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(y_true, y)`` -> float, e.g. :func:`recall` or :func:`roc_auc`.
    y_true : array-like
        0/1 ground truth, one entry per case: ``(N,)`` or, for multi-label
        metrics, ``(N, K)``. Resampling draws whole cases, i.e. indexes the
        first axis of both arrays with the same indices, so the labels of a
        case stay together.
    y_score_or_pred : array-like
        Whatever ``metric_fn`` takes as its second argument, with the same
        first dimension as ``y_true``.
    n : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling, so that a card's interval is reproducible.
    alpha : float
        1 - confidence level (0.05 gives a 95 % interval).
    groups : array-like, optional
        One key per case; the unit of resampling (default: each case).

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
    if groups is None:
        draws = list(rng.integers(0, t.shape[0], size=(n, t.shape[0])))
    else:
        keys = np.asarray(groups)
        if keys.shape[0] != t.shape[0]:
            raise ValueError(f"groups has {keys.shape[0]} keys for {t.shape[0]} cases")
        members = [np.flatnonzero(keys == key) for key in dict.fromkeys(keys.tolist())]
        draws = [
            np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
            for _ in range(n)
        ]
    values = np.array([metric_fn(t[idx], y[idx]) for idx in draws], dtype=np.float64)
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
    groups: Any = None,
) -> dict[str, Any]:
    """The metrics a model card records, each with its bootstrap interval.

    Decisions are ``y_score >= threshold`` (the card's threshold rule).
    ``groups`` (one key per case, e.g. the patient) makes the bootstrap
    resample whole groups (see :func:`bootstrap_ci`).

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
        "ci_method": (
            f"percentile bootstrap over {'cases' if groups is None else 'patients'}, "
            f"{n_bootstrap} resamples, seed {seed}"
        ),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }
    cells: dict[str, list[float]] = {}
    for name, (i, j) in {"tn": (0, 0), "fp": (0, 1), "fn": (1, 0), "tp": (1, 1)}.items():

        def count(y: np.ndarray, p: np.ndarray, i: int = i, j: int = j) -> float:
            return float(confusion_matrix(y, p)[i, j])

        _, lo, hi = bootstrap_ci(
            count, t, pred, n=n_bootstrap, seed=seed, alpha=alpha, groups=groups
        )
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
        value, lo, hi = bootstrap_ci(
            fn, t, pred, n=n_bootstrap, seed=seed, alpha=alpha, groups=groups
        )
        report[name] = {"value": value, "ci_low": lo, "ci_high": hi}
    value, lo, hi = bootstrap_ci(
        roc_auc, t, s, n=n_bootstrap, seed=seed, alpha=alpha, groups=groups
    )
    report["roc_auc"] = {"value": value, "ci_low": lo, "ci_high": hi}
    return report


def _per_label(value: Any, labels: list[str], name: str) -> list[float]:
    """A scalar, a sequence in label order or a ``{label: value}`` mapping, as a list."""
    if isinstance(value, Mapping):
        missing = [lab for lab in labels if lab not in value]
        extra = [key for key in value if key not in labels]
        if missing or extra:
            raise ValueError(f"{name} do not match the labels: missing {missing}, unknown {extra}")
        return [float(value[lab]) for lab in labels]
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return [float(arr)] * len(labels)
    if arr.shape != (len(labels),):
        raise ValueError(
            f"{name} must have one entry per label ({len(labels)}), got shape {arr.shape}"
        )
    return [float(x) for x in arr]


def multilabel_report(
    y_true: Any,
    y_prob: Any,
    labels: Sequence[str],
    thresholds: Any,
    weights: Any = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Per-label metrics and the weighted log loss of a multi-label model.

    Decisions are ``y_prob[:, k] >= thresholds[k]``. Every interval is a
    percentile bootstrap over cases (rows) with the same ``seed``, hence the
    same resamples for every label and metric: reproducible, and the labels
    of a case are never separated. Resamples on which a metric is undefined
    are dropped (see :func:`bootstrap_ci`).

    Parameters
    ----------
    y_true : array-like, shape (N, K)
        0/1 ground truth, one column per label.
    y_prob : array-like, shape (N, K)
        Predicted probabilities, in [0, 1].
    labels : sequence of str
        The K label names, distinct, in column order.
    thresholds : float, sequence of K floats or mapping label -> float
        Decision threshold of each label (a float applies to all).
    weights : None, sequence of K floats or mapping label -> float
        Label weights of :func:`weighted_log_loss`; ``None`` weighs all 1.
    n_bootstrap : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.
    alpha : float
        1 - confidence level.

    Returns
    -------
    dict
        ``{"n", "labels", "confidence", "ci_method", "per_label": {label:
        {"n_positive", "threshold", "precision", "recall", "f1", "roc_auc"}},
        "weighted_log_loss"}``, each metric a ``{"value", "ci_low", "ci_high"}``
        dict and ``weighted_log_loss`` also carrying ``"weights": {label: w}``;
        plain Python types so that it can be written to YAML. Undefined values
        (e.g. recall and roc_auc of a label without positives) are ``nan``.
    """
    t = _binary(y_true, "y_true", ndim=2).astype(np.int64)
    p = _probabilities(y_prob, t.shape)
    names = [str(label) for label in labels]
    if len(names) != t.shape[1]:
        raise ValueError(f"{len(names)} labels for {t.shape[1]} columns")
    if len(set(names)) != len(names):
        raise ValueError(f"labels must be distinct, got {names}")
    cut = _per_label(thresholds, names, "thresholds")
    if any(np.isnan(cut)):
        raise ValueError(f"thresholds must not be nan, got {cut}")
    weight_list = _per_label(1.0 if weights is None else weights, names, "weights")
    w = _label_weights(weight_list, len(names))

    def ci(metric_fn: MetricFn, y: np.ndarray, q: np.ndarray) -> dict[str, float]:
        value, lo, hi = bootstrap_ci(metric_fn, y, q, n=n_bootstrap, seed=seed, alpha=alpha)
        return {"value": value, "ci_low": lo, "ci_high": hi}

    def wll(y: np.ndarray, q: np.ndarray) -> float:
        return weighted_log_loss(y, q, w)

    per_label: dict[str, Any] = {}
    for k, name in enumerate(names):
        pred = (p[:, k] >= cut[k]).astype(np.int64)
        entry: dict[str, Any] = {"n_positive": int(t[:, k].sum()), "threshold": cut[k]}
        for metric, fn in {"precision": precision, "recall": recall, "f1": f1_score}.items():
            entry[metric] = ci(fn, t[:, k], pred)
        entry["roc_auc"] = ci(roc_auc, t[:, k], p[:, k])
        per_label[name] = entry
    return {
        "n": int(t.shape[0]),
        "labels": names,
        "confidence": 1.0 - alpha,
        "ci_method": f"percentile bootstrap over cases, {n_bootstrap} resamples, seed {seed}",
        "per_label": per_label,
        "weighted_log_loss": {
            **ci(wll, t, p),
            "weights": {name: float(x) for name, x in zip(names, w, strict=True)},
        },
    }


#: The metric table of seed 000 (CT gallbladder), in the study's column order.
STUDY_METRICS: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "fpr",
    "fnr",
    "ppv",
    "npv",
    "f1_positive",
    "f1_negative",
)


def study_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Seed 000's metric table for one run of 0/1 decisions (keys: :data:`STUDY_METRICS`).

    The negative class gets its own precision (NPV) and F1 because the study
    reports both classes; ``fpr`` = 1 - specificity and ``fnr`` = 1 -
    sensitivity. Undefined entries (no positives, no negative calls...) are
    ``nan``.
    """
    (tn, fp), (fn, tp) = (map(int, row) for row in confusion_matrix(y_true, y_pred))
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "fpr": _ratio(fp, tn + fp),
        "fnr": _ratio(fn, tp + fn),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1_positive": _ratio(2 * tp, 2 * tp + fp + fn),
        "f1_negative": _ratio(2 * tn, 2 * tn + fn + fp),
    }


def repeat_summary(
    runs: Sequence[Mapping[str, float]], alpha: float = 0.05
) -> dict[str, dict[str, float]]:
    """Mean and Student-t confidence interval of each metric over repeated training runs.

    Seed 000 retrains its chosen setting 40 times and reports every metric as
    mean with a 95 % interval; the spread is that of the training runs (seed,
    initialisation, shuffling), not of the test cases, so the interval is the
    t interval of the mean of the runs, ``mean +- t(1 - alpha/2, n-1) * sd / sqrt(n)``.
    Runs where a metric is ``nan`` are left out of that metric (its ``n`` says
    how many counted); with one run the interval is ``nan``.

    Returns
    -------
    dict
        ``{metric: {"mean", "sd", "ci_low", "ci_high", "n"}}`` for every key of
        the runs, in the first run's order.
    """
    from scipy.stats import t as student_t

    if not runs:
        raise ValueError("repeat_summary needs at least one run")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    out: dict[str, dict[str, float]] = {}
    for name in runs[0]:
        values = np.array([float(run[name]) for run in runs], dtype=np.float64)
        values = values[~np.isnan(values)]
        n = int(values.size)
        mean = float(values.mean()) if n else float("nan")
        sd = float(values.std(ddof=1)) if n > 1 else float("nan")
        half = float(student_t.ppf(1.0 - alpha / 2.0, n - 1) * sd / math.sqrt(n)) if n > 1 else 0.0
        lo, hi = (mean - half, mean + half) if n > 1 else (float("nan"), float("nan"))
        out[name] = {"mean": mean, "sd": sd, "ci_low": lo, "ci_high": hi, "n": n}
    return out


def classification_report(y_true: Any, y_pred: Any, labels: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, accuracy, macro and weighted averages.

    The layout of scikit-learn's ``classification_report(output_dict=True)``,
    which seed 003 printed, computed here so the node needs no scikit-learn.
    ``y_true`` and ``y_pred`` hold class indices into ``labels``. A class
    nobody predicted has precision ``nan`` (scikit-learn warns and shows 0);
    averages skip ``nan``.
    """
    t = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(y_pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    k = len(labels)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k):
        raise ValueError(f"class indices must be in [0, {k - 1}] for labels {list(labels)}")
    report: dict[str, Any] = {}
    rows = []
    for i, label in enumerate(labels):
        tp = int(np.sum((t == i) & (p == i)))
        support = int(np.sum(t == i))
        predicted = int(np.sum(p == i))
        row = {
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, support),
            "f1": _ratio(2 * tp, support + predicted),
            "support": support,
        }
        report[label] = row
        rows.append(row)
    report["accuracy"] = _ratio(int(np.sum(t == p)), int(t.size))
    supports = np.array([r["support"] for r in rows], dtype=np.float64)
    for average in ("macro avg", "weighted avg"):
        entry: dict[str, Any] = {}
        for key in ("precision", "recall", "f1"):
            values = np.array([r[key] for r in rows], dtype=np.float64)
            ok = ~np.isnan(values)
            weights = np.ones_like(values) if average == "macro avg" else supports
            total = float(weights[ok].sum())
            entry[key] = float((values[ok] * weights[ok]).sum() / total) if total else float("nan")
        entry["support"] = int(t.size)
        report[average] = entry
    return report


def format_classification_report(report: Mapping[str, Any], digits: int = 2) -> str:
    """:func:`classification_report` as the text table scikit-learn prints."""
    names = [
        k
        for k, row in report.items()
        if isinstance(row, Mapping) and k not in ("macro avg", "weighted avg")
    ]
    width = max(len(n) for n in [*names, "weighted avg"])
    header = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"

    def line(name: str, row: Mapping[str, Any]) -> str:
        cells = (f"{row[k]:>9.{digits}f}" for k in ("precision", "recall", "f1"))
        return f"{name:>{width}} {' '.join(cells)} {row['support']:>9}"

    total = report["macro avg"]["support"]
    lines = [header, "", *(line(n, report[n]) for n in names), ""]
    lines.append(
        f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:>9.{digits}f} {total:>9}"
    )
    lines += [line(a, report[a]) for a in ("macro avg", "weighted avg")]
    return "\n".join(lines)


def choose_thresholds(y_true: np.ndarray, y_prob: np.ndarray) -> list[float]:
    """Per label, the probability threshold with the highest F1 on (validation) data.

    Candidates are the observed probabilities; ties go to the higher
    threshold (fewer false positives). 0.5 for a label without positives.
    """
    out = []
    for k in range(y_true.shape[1]):
        t, p = y_true[:, k], y_prob[:, k]
        if t.sum() == 0:
            out.append(0.5)
            continue
        best, best_f1 = 0.5, -1.0
        for candidate in np.unique(p):
            f1 = f1_score(t, (p >= candidate).astype(np.int64))
            if not np.isnan(f1) and f1 >= best_f1:
                best, best_f1 = float(candidate), f1
        # rounded down: the slice that set the threshold must stay at or above it
        out.append(math.floor(best * 1e6) / 1e6)
    return out


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats rounded to ``digits`` in nested dicts / lists (metrics written to a card)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


METRICS_FILE = "metrics.json"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null`` and NumPy scalars and arrays as plain Python.

    JSON has no NaN: a literal ``NaN`` (Python's default) is refused by strict
    readers (``jq``, browsers, most languages). An undefined metric (e.g.
    sensitivity without a positive case) is ``null`` instead.
    """
    if isinstance(value, np.generic | np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def model_identity(card: ModelCard) -> dict[str, str]:
    """How a metrics report names the model it measured: name, version, weights sha256."""
    return {"name": card.name, "version": card.version, "sha256": card.weights.sha256}


def write_metrics(out_dir: Path, report: dict[str, Any], card: ModelCard) -> Path:
    """Write an evaluation's ``metrics.json``: one shape for every study, always valid JSON.

    The file is the report's own keys plus ``model`` (name, version and
    weights sha256 of the card evaluated) and ``evaluated_at`` (UTC, ISO
    8601); non-finite numbers are ``null`` (:func:`json_safe`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        **report,
        "model": model_identity(card),
        "evaluated_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
    path = out / METRICS_FILE
    path.write_text(json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    return path


#: Where each headline metric (:data:`pipelines.card.MetricName`) sits in a
#: :func:`binary_report` or a :func:`multilabel_report` label entry.
_REPORT_KEYS: dict[str, str] = {
    "sensitivity": "recall",
    "specificity": "specificity",
    "ppv": "precision",
    "f1": "f1",
    "accuracy": "accuracy",
    "roc_auc": "roc_auc",
}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, 4) if math.isfinite(number) else None


def label_performance(
    report: Mapping[str, Any],
    *,
    label: str,
    unit: str,
    split: str,
    n: int,
    names: Sequence[str] = ("sensitivity", "specificity", "ppv", "roc_auc"),
    confidence: float = 0.95,
    ci_method: str = "",
    threshold: float | None = None,
) -> Any:
    """A card's :class:`pipelines.card.LabelPerformance` from one label's report.

    ``report`` is a :func:`binary_report` or one ``per_label`` entry of
    :func:`multilabel_report`; ``names`` are the headline metrics to quote
    (those the report lacks are left out), found under their own name or
    the report's (``recall`` for sensitivity, ``precision`` for PPV).
    ``threshold``, ``confidence`` and ``ci_method`` are used when the report
    does not say. Undefined values become ``None``.
    """
    from pipelines.card import Estimate, LabelPerformance

    metrics = {}
    for name in names:
        entry = report.get(name)
        if not isinstance(entry, Mapping):
            entry = report.get(_REPORT_KEYS.get(name, name))
        if isinstance(entry, Mapping):
            metrics[name] = Estimate(
                value=_finite(entry.get("value")),
                ci_low=_finite(entry.get("ci_low")),
                ci_high=_finite(entry.get("ci_high")),
            )
    threshold = report.get("threshold", threshold)
    return LabelPerformance.model_validate(
        {
            "label": label,
            "unit": unit,
            "split": split,
            "n": n,
            "n_positive": report.get("n_positive"),
            "threshold": None if threshold is None else float(threshold),
            "confidence": float(report.get("confidence", confidence)),
            "ci_method": str(report.get("ci_method", ci_method)),
            "metrics": metrics,
        }
    )


def labels_performance(
    report: Mapping[str, Any],
    *,
    unit: str,
    split: str,
    names: Sequence[str] = ("sensitivity", "specificity", "ppv", "roc_auc"),
) -> list[Any]:
    """:func:`label_performance` of every label of a report with ``n`` and ``per_label``
    (or ``per_class``) entries: a card's headline entries for one split and unit."""
    per_label = report["per_label"] if "per_label" in report else report["per_class"]
    return [
        label_performance(entry, label=name, unit=unit, split=split, n=report["n"], names=names)
        for name, entry in per_label.items()
    ]
