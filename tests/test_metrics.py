"""Metrics against values computed by hand (written out in the comments)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipelines.common.metrics import (
    accuracy,
    binary_report,
    bootstrap_ci,
    confusion_matrix,
    f1_score,
    precision,
    recall,
    roc_auc,
    sensitivity,
    specificity,
)

# 10 cases: truth 1 1 1 1 0 0 0 0 0 0, decisions 1 1 1 0 1 0 0 0 0 0
# -> TP=3, FN=1, FP=1, TN=5
Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
Y_PRED = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]


def test_confusion_matrix_layout() -> None:
    assert confusion_matrix(Y_TRUE, Y_PRED).tolist() == [[5, 1], [1, 3]]


def test_decision_metrics_by_hand() -> None:
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(8 / 10)
    assert precision(Y_TRUE, Y_PRED) == pytest.approx(3 / 4)
    assert recall(Y_TRUE, Y_PRED) == pytest.approx(3 / 4)
    assert sensitivity is recall
    assert specificity(Y_TRUE, Y_PRED) == pytest.approx(5 / 6)
    # 2TP / (2TP + FP + FN) = 6 / 8
    assert f1_score(Y_TRUE, Y_PRED) == pytest.approx(6 / 8)


def test_undefined_metrics_are_nan() -> None:
    assert math.isnan(recall([0, 0], [0, 1]))
    assert math.isnan(precision([1, 0], [0, 0]))
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_roc_auc_by_hand() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(3 / 4)
    # a tie counts one half: positive 0.5 vs negatives 0.5 and 0.2 -> (0.5 + 1) / 2
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0
    assert roc_auc([1, 0], [0.1, 0.9]) == 0.0


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(y, s) == pytest.approx(pairwise)


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        accuracy([0, 2], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])


def test_bootstrap_ci_brackets_point_and_is_reproducible() -> None:
    point, lo, hi = bootstrap_ci(accuracy, Y_TRUE, Y_PRED, n=500, seed=1)
    assert point == pytest.approx(0.8)
    assert 0.0 <= lo <= point <= hi <= 1.0
    assert lo < hi
    assert bootstrap_ci(accuracy, Y_TRUE, Y_PRED, n=500, seed=1) == (point, lo, hi)


def test_bootstrap_ci_of_a_constant_metric_is_degenerate() -> None:
    y = [0, 1, 0, 1]
    assert bootstrap_ci(accuracy, y, y, n=50) == (1.0, 1.0, 1.0)


def test_bootstrap_ci_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 4000):
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, y, 1 - y)
        _, lo, hi = bootstrap_ci(accuracy, y, pred, n=300, seed=0)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3


def test_binary_report_thresholds_scores() -> None:
    scores = [0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.3, 0.4, 0.0, 0.45]
    rep = binary_report(Y_TRUE, scores, threshold=0.5, n_bootstrap=100)
    assert rep["confusion_matrix"] == {"tn": 5, "fp": 1, "fn": 1, "tp": 3}
    assert rep["accuracy"]["value"] == pytest.approx(0.8)
    assert rep["n"] == 10 and rep["n_positive"] == 4
    for cell, count in rep["confusion_matrix"].items():
        lo, hi = rep["confusion_matrix_ci"][cell]
        assert lo <= count <= hi
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc"):
        assert rep[key]["ci_low"] <= rep[key]["value"] <= rep[key]["ci_high"]


def test_every_study_writes_metrics_as_strict_json_in_one_shape(tmp_path: Path) -> None:
    """An undefined metric (no positive case: NaN) is null, never the literal NaN that strict
    JSON readers refuse; NumPy values are plain numbers; the card is named the same way."""
    import json

    from pipelines.card import CodeSpec, LabelSpec, ModelCard, Provenance, WeightsSpec
    from pipelines.common.metrics import write_metrics

    card = ModelCard(
        name="m",
        pipeline="generic",
        version="1.2",
        architecture="resnet18",
        labels=[LabelSpec(name="a", code=CodeSpec(value="1", scheme="SCT", meaning="A"))],
        weights=WeightsSpec(file="w.pt", sha256="ab" * 32),
        provenance=Provenance(synthetic=True, data="none"),
    )
    report = {
        "sensitivity": {"value": float("nan"), "ci": [np.float32(0.25), float("inf")]},
        "confusion": np.array([[3, 1], [0, 2]]),
        "n": np.int64(6),
    }
    path = write_metrics(tmp_path / "eval", report, card)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    saved = json.loads(path.read_text(), parse_constant=refuse)
    assert saved["sensitivity"] == {"value": None, "ci": [0.25, None]}
    assert saved["confusion"] == [[3, 1], [0, 2]] and saved["n"] == 6
    assert saved["model"] == {"name": "m", "version": "1.2", "sha256": "ab" * 32}
    assert saved["evaluated_at"].endswith("+00:00")
