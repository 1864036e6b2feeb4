"""The metric tables of seeds 000 and 003, checked against scikit-learn and scipy by hand.

Seed 000 reports nine metrics as mean and 95 % CI over 40 retrainings; seed
003 prints scikit-learn's classification report. The node computes both in
numpy; scikit-learn (test-only) is the independent implementation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from pipelines.common.metrics import (
    STUDY_METRICS,
    classification_report,
    format_classification_report,
    repeat_summary,
    study_metrics,
)


def test_study_metrics_by_hand() -> None:
    # TN 3, FP 1, FN 2, TP 4
    y_true = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
    m = study_metrics(y_true, y_pred)
    assert list(m) == list(STUDY_METRICS)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["fpr"] == pytest.approx(1 / 4)
    assert m["fnr"] == pytest.approx(2 / 6)
    assert m["ppv"] == pytest.approx(4 / 5)
    assert m["npv"] == pytest.approx(3 / 5)
    assert m["f1_positive"] == pytest.approx(8 / 11)
    assert m["f1_negative"] == pytest.approx(6 / 9)


def test_study_metrics_agree_with_sklearn_on_random_runs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = rng.integers(0, 2, 50)
        p = np.where(rng.random(50) < 0.8, t, 1 - t)
        m = study_metrics(t, p)
        assert m["sensitivity"] == pytest.approx(skm.recall_score(t, p))
        assert m["specificity"] == pytest.approx(skm.recall_score(t, p, pos_label=0))
        assert m["npv"] == pytest.approx(skm.precision_score(t, p, pos_label=0))
        assert m["f1_negative"] == pytest.approx(skm.f1_score(t, p, pos_label=0))
        assert m["f1_positive"] == pytest.approx(skm.f1_score(t, p))


def test_undefined_entries_are_nan_not_made_up() -> None:
    m = study_metrics([0, 0, 0], [0, 0, 0])
    assert math.isnan(m["sensitivity"]) and math.isnan(m["fnr"]) and math.isnan(m["ppv"])
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0


def test_repeat_summary_is_the_t_interval_of_the_mean() -> None:
    runs = [{"accuracy": a, "sensitivity": s} for a, s in [(0.9, 1.0), (0.8, 0.5), (1.0, 0.75)]]
    out = repeat_summary(runs)
    acc = out["accuracy"]
    # mean 0.9, sd 0.1, t(0.975, 2) = 4.302653
    assert acc["mean"] == pytest.approx(0.9)
    assert acc["sd"] == pytest.approx(0.1)
    assert acc["ci_low"] == pytest.approx(0.9 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    assert acc["ci_high"] == pytest.approx(0.9 + 4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    assert acc["n"] == 3 and list(out) == ["accuracy", "sensitivity"]


def test_repeat_summary_skips_undefined_runs_and_one_run_has_no_interval() -> None:
    out = repeat_summary([{"ppv": float("nan")}, {"ppv": 0.5}, {"ppv": 0.7}])
    assert out["ppv"]["n"] == 2 and out["ppv"]["mean"] == pytest.approx(0.6)
    single = repeat_summary([{"ppv": 0.5}])["ppv"]
    assert single["mean"] == 0.5 and math.isnan(single["ci_low"]) and math.isnan(single["sd"])
    with pytest.raises(ValueError, match="at least one run"):
        repeat_summary([])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_report_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = ["normal/osteopenia", "osteoporosis"]
    t = rng.integers(0, 2, 40)
    p = np.where(rng.random(40) < 0.7, t, 1 - t)
    ours = classification_report(t, p, labels)
    theirs = skm.classification_report(t, p, target_names=labels, output_dict=True)
    for name in [*labels, "macro avg", "weighted avg"]:
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours[name][key] == pytest.approx(theirs[name][sk_key]), (name, key)
        assert ours[name]["support"] == theirs[name]["support"]
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
    text = format_classification_report(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_text = skm.classification_report(t, p, target_names=labels)
    # same numbers in the same rows as scikit-learn's printout
    ours_rows = [line.split()[-4:] for line in text.splitlines() if line.strip()][1:]
    sk_rows = [line.split()[-4:] for line in sk_text.splitlines() if line.strip()][1:]
    assert ours_rows == sk_rows


def test_classification_report_rejects_indices_outside_the_labels() -> None:
    with pytest.raises(ValueError, match="class indices"):
        classification_report([0, 2], [0, 1], ["a", "b"])
