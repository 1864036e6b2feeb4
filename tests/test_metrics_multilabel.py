"""Multi-label metrics and ROC plots, checked against scikit-learn and by hand.

scikit-learn is a test-only dependency: an independent implementation of the
same definitions, so that the node's numpy code is not only checked against
itself.
"""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from pipelines.common.metrics import (
    bootstrap_ci,
    f1_score,
    log_loss,
    multilabel_report,
    precision,
    recall,
    roc_auc,
    roc_curve,
    weighted_log_loss,
)
from pipelines.common.plots import roc_figure, save_roc_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_case(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and probabilities that rise with the label; ``ties`` rounds to 0.1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0.0, 1.0)
    return y, (np.round(p, 1) if ties else p)


CASES = [(seed, n, ties) for seed in (0, 1, 2) for n, ties in ((17, False), (300, True))]


# ---------------------------------------------------------------- log loss


@pytest.mark.parametrize(("seed", "n", "ties"), CASES)
def test_log_loss_matches_sklearn(seed: int, n: int, ties: bool) -> None:
    y, p = random_case(seed, n, ties)
    p = np.clip(p, 0.01, 0.99)  # away from the clipping, whose eps sklearn no longer exposes
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=[0, 1]), rel=1e-12)


def test_log_loss_by_hand_and_clipping() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # a certain wrong answer costs -ln(eps), not infinity; a certain right one costs ~eps
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-7))
    assert log_loss([1, 0], [0.0, 1.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(1e-7, rel=1e-6)
    assert math.isnan(log_loss([], []))


def test_log_loss_validates() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([1, 0], [1.2, 0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([1, 0], [np.nan, 0.1])
    with pytest.raises(ValueError, match="differ in shape"):
        log_loss([1, 0], [0.5])
    with pytest.raises(ValueError, match="eps"):
        log_loss([1, 0], [0.5, 0.5], eps=0.0)


# ---------------------------------------------------------------- weighted log loss


def test_weighted_log_loss_by_hand_2x3() -> None:
    y = [[1, 0, 0], [0, 1, 1]]
    p = [[0.9, 0.2, 0.1], [0.3, 0.6, 0.8]]
    w = [2.0, 1.0, 1.0]
    # case 0: BCE = -ln 0.9, -ln 0.8, -ln 0.9 = 0.1053605, 0.2231436, 0.1053605
    #         (2 * 0.1053605 + 0.2231436 + 0.1053605) / 4 = 0.1348063
    # case 1: BCE = -ln 0.7, -ln 0.6, -ln 0.8 = 0.3566749, 0.5108256, 0.2231436
    #         (2 * 0.3566749 + 0.5108256 + 0.2231436) / 4 = 0.3618298
    # mean over the two cases: (0.1348063 + 0.3618298) / 2 = 0.2483180
    case0 = (2 * -math.log(0.9) - math.log(0.8) - math.log(0.9)) / 4
    case1 = (2 * -math.log(0.7) - math.log(0.6) - math.log(0.8)) / 4
    assert case0 == pytest.approx(0.1348063, abs=1e-7)
    assert case1 == pytest.approx(0.3618298, abs=1e-7)
    assert weighted_log_loss(y, p, w) == pytest.approx((case0 + case1) / 2, rel=1e-12)
    assert weighted_log_loss(y, p, w) == pytest.approx(0.2483180, abs=1e-7)
    # only the ratios of the weights matter
    assert weighted_log_loss(y, p, [4, 2, 2]) == pytest.approx(weighted_log_loss(y, p, w))


def loop_weighted_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray, eps: float) -> float:
    total = 0.0
    for n in range(y.shape[0]):
        case = 0.0
        for k in range(y.shape[1]):
            q = min(max(float(p[n, k]), eps), 1.0 - eps)
            case += w[k] * -(math.log(q) if y[n, k] else math.log(1.0 - q))
        total += case / w.sum()
    return total / y.shape[0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weighted_log_loss_matches_a_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (40, 6))
    p = rng.random((40, 6))
    p[0, 0], p[1, 1] = 0.0, 1.0  # exercise the clipping
    w = np.array([2.0, 1, 1, 1, 1, 1])  # RSNA: "any" counts twice
    for eps in (1e-7, 1e-3):
        expected = loop_weighted_log_loss(y, p, w, eps)
        assert weighted_log_loss(y, p, w, eps=eps) == pytest.approx(expected, rel=1e-12)


def test_weighted_log_loss_equal_weights_is_flat_log_loss() -> None:
    rng = np.random.default_rng(5)
    y, p = rng.integers(0, 2, (30, 4)), rng.random((30, 4))
    assert weighted_log_loss(y, p, [1, 1, 1, 1]) == pytest.approx(log_loss(y.ravel(), p.ravel()))
    flat_sklearn = skm.log_loss(y.ravel(), np.clip(p.ravel(), 1e-7, 1 - 1e-7), labels=[0, 1])
    assert weighted_log_loss(y, p, [3, 3, 3, 3]) == pytest.approx(flat_sklearn)


def test_weighted_log_loss_validates() -> None:
    y, p = [[1, 0]], [[0.5, 0.5]]
    with pytest.raises(ValueError, match="one entry per label"):
        weighted_log_loss(y, p, [1, 1, 1])
    with pytest.raises(ValueError, match="not all zero"):
        weighted_log_loss(y, p, [0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_log_loss(y, p, [-1, 2])
    with pytest.raises(ValueError, match="two-dimensional"):
        weighted_log_loss([1, 0], [0.5, 0.5], [1, 1])
    assert math.isnan(weighted_log_loss(np.zeros((0, 2)), np.zeros((0, 2)), [1, 1]))


# ---------------------------------------------------------------- ROC


@pytest.mark.parametrize(("seed", "n", "ties"), CASES)
def test_roc_curve_matches_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = random_case(seed, n, ties)
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thr, sk_thr)
    assert thr[0] == np.inf and fpr[0] == 0.0 and tpr[0] == 0.0
    assert len(thr) == len(np.unique(s)) + 1  # ties collapse into one point
    # the trapezoidal area under the curve is the rank (Mann-Whitney) AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s), abs=1e-12)


def test_roc_curve_by_hand_with_a_tie() -> None:
    # scores 0.5 (pos), 0.5 (pos), 0.3 (neg), 0.1 (neg): the two 0.5 are one point
    fpr, tpr, thr = roc_curve([0, 1, 1, 0], [0.1, 0.5, 0.5, 0.3])
    assert thr.tolist() == [math.inf, 0.5, 0.3, 0.1]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 1.0, 1.0, 1.0]
    # a tie across classes is one diagonal step: pos 0.5 and neg 0.5 together
    fpr, tpr, _ = roc_curve([1, 0], [0.5, 0.5])
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]


def test_roc_curve_single_class_is_nan_like_sklearn() -> None:
    y, s = [1, 1, 1], [0.2, 0.7, 0.7]
    fpr, tpr, thr = roc_curve(y, s)
    with pytest.warns(UndefinedMetricWarning):
        sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    assert np.isnan(fpr).all() and np.isnan(sk_fpr).all()
    np.testing.assert_array_equal(tpr, sk_tpr)
    np.testing.assert_array_equal(thr, sk_thr)
    with pytest.raises(ValueError, match="nan"):
        roc_curve([0, 1], [0.1, np.nan])


@pytest.mark.parametrize(("seed", "n", "ties"), CASES)
def test_roc_auc_matches_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = random_case(seed, n, ties)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


# ---------------------------------------------------------------- decisions


@pytest.mark.parametrize(("seed", "n", "ties"), CASES)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_decision_metrics_match_sklearn(seed: int, n: int, ties: bool, threshold: float) -> None:
    y, s = random_case(seed, n, ties)
    pred = (s >= threshold).astype(int)  # with ties, many scores sit exactly on 0.3/0.5/0.8
    for ours, theirs in (
        (precision, skm.precision_score),
        (recall, skm.recall_score),
        (f1_score, skm.f1_score),
    ):
        assert ours(y, pred) == pytest.approx(theirs(y, pred, zero_division=np.nan), nan_ok=True)


def test_decision_metrics_undefined_like_sklearn() -> None:
    y, pred = [0, 0, 0], [0, 0, 0]
    assert math.isnan(precision(y, pred))
    assert math.isnan(skm.precision_score(y, pred, zero_division=np.nan))
    assert math.isnan(recall(y, pred))
    assert math.isnan(skm.recall_score(y, pred, zero_division=np.nan))


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_resamples_rows_of_2d_arrays() -> None:
    rng = np.random.default_rng(4)
    y, p = rng.integers(0, 2, (60, 3)), rng.random((60, 3))
    w = np.array([2.0, 1.0, 1.0])

    def wll(a: np.ndarray, b: np.ndarray) -> float:
        return weighted_log_loss(a, b, w)

    point, lo, hi = bootstrap_ci(wll, y, p, n=300, seed=7)
    # the same resamples drawn by hand: whole rows of both arrays with the same indices
    draws = np.random.default_rng(7).integers(0, 60, size=(300, 60))
    values = [weighted_log_loss(y[idx], p[idx], w) for idx in draws]
    assert point == pytest.approx(weighted_log_loss(y, p, w))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
    assert lo < point < hi
    assert bootstrap_ci(wll, y, p, n=300, seed=7) == (point, lo, hi)
    assert bootstrap_ci(wll, y, p, n=300, seed=8) != (point, lo, hi)


# ---------------------------------------------------------------- multilabel report

LABELS = ["any", "subdural", "epidural"]
# 8 cases x 3 labels
Y = np.array(
    [
        [1, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
        [0, 1, 0],
        [0, 0, 0],
        [0, 0, 0],
        [0, 0, 0],
        [1, 0, 0],
    ]
)
P = np.array(
    [
        [0.90, 0.4, 0.1],
        [0.80, 0.1, 0.2],
        [0.30, 0.4, 0.6],
        [0.70, 0.2, 0.1],
        [0.20, 0.3, 0.0],
        [0.10, 0.4, 0.3],
        [0.60, 0.0, 0.2],
        [0.55, 0.1, 0.1],
    ]
)
THRESHOLDS = [0.5, 0.4, 0.5]
# any (>= 0.5):      decisions 1 1 0 1 0 0 1 1 vs truth 1 1 1 0 0 0 0 1
#                    TP = 3 (cases 0, 1, 7), FN = 1 (case 2), FP = 2 (cases 3, 6)
#                    precision 3/5, recall 3/4, f1 6/9
#                    AUC: positives .9 .8 .3 .55 vs negatives .7 .2 .1 .6 -> 12/16
# subdural (>= 0.4): decisions 1 0 1 0 0 1 0 0 (0.4 is on the threshold) vs truth 0 0 1 1 0 0 0 0
#                    TP = 1 (case 2), FN = 1 (case 3), FP = 2 (cases 0, 5)
#                    precision 1/3, recall 1/2, f1 2/5
#                    AUC: positives .4 .2 vs negatives .4 .1 .3 .4 .0 .1
#                    -> (4 + 2 ties * 1/2) + 3 = 8 of 12 pairs
# epidural (>= 0.5): no positives; one call (case 2) -> precision 0/1, recall n/a, f1 0/1


def test_multilabel_report_by_hand() -> None:
    rep = multilabel_report(Y, P, LABELS, THRESHOLDS, [2, 1, 1], n_bootstrap=200, seed=3)
    assert set(rep) == {"n", "labels", "confidence", "ci_method", "per_label", "weighted_log_loss"}
    assert rep["n"] == 8 and rep["labels"] == LABELS
    assert rep["confidence"] == pytest.approx(0.95)
    assert "200 resamples, seed 3" in rep["ci_method"]
    assert list(rep["per_label"]) == LABELS
    expected = {
        "any": (4, 0.5, 3 / 5, 3 / 4, 6 / 9, 12 / 16),
        "subdural": (2, 0.4, 1 / 3, 1 / 2, 2 / 5, 8 / 12),
        "epidural": (0, 0.5, 0.0, math.nan, 0.0, math.nan),
    }
    for label, (n_pos, thr, prec, rec, f1, auc) in expected.items():
        entry = rep["per_label"][label]
        assert set(entry) == {"n_positive", "threshold", "precision", "recall", "f1", "roc_auc"}
        assert entry["n_positive"] == n_pos and entry["threshold"] == thr
        assert entry["precision"]["value"] == pytest.approx(prec)
        assert entry["recall"]["value"] == pytest.approx(rec, nan_ok=True)
        assert entry["f1"]["value"] == pytest.approx(f1)
        assert entry["roc_auc"]["value"] == pytest.approx(auc, nan_ok=True)
    # the label without positives has no recall or AUC, and so no interval either
    epidural = rep["per_label"]["epidural"]
    for key in ("recall", "roc_auc"):
        assert all(math.isnan(epidural[key][b]) for b in ("value", "ci_low", "ci_high"))
    wll = rep["weighted_log_loss"]
    assert wll["weights"] == {"any": 2.0, "subdural": 1.0, "epidural": 1.0}
    assert wll["value"] == pytest.approx(loop_weighted_log_loss(Y, P, np.array([2, 1, 1]), 1e-7))


def test_multilabel_report_matches_sklearn_and_bootstrap_ci() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, (120, 4))
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random((120, 4)), 0, 1), 2)
    labels = ["any", "a", "b", "c"]
    thresholds = {"any": 0.5, "a": 0.4, "b": 0.6, "c": 0.5}
    rep = multilabel_report(y, p, labels, thresholds, n_bootstrap=300, seed=5)
    for k, label in enumerate(labels):
        entry = rep["per_label"][label]
        pred = (p[:, k] >= thresholds[label]).astype(int)
        assert entry["precision"]["value"] == pytest.approx(skm.precision_score(y[:, k], pred))
        assert entry["recall"]["value"] == pytest.approx(skm.recall_score(y[:, k], pred))
        assert entry["f1"]["value"] == pytest.approx(skm.f1_score(y[:, k], pred))
        assert entry["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y[:, k], p[:, k]))
        # the intervals are bootstrap_ci's over the same cases with the same seed
        for key, fn, arg in (("recall", recall, pred), ("roc_auc", roc_auc, p[:, k])):
            ci = bootstrap_ci(fn, y[:, k], arg, n=300, seed=5)
            assert (entry[key]["value"], entry[key]["ci_low"], entry[key]["ci_high"]) == ci
        for key in ("precision", "recall", "f1", "roc_auc"):
            assert entry[key]["ci_low"] <= entry[key]["value"] <= entry[key]["ci_high"]
            assert entry[key]["ci_low"] < entry[key]["ci_high"]
    wll = rep["weighted_log_loss"]
    assert wll["weights"] == dict.fromkeys(labels, 1.0)  # default weights
    assert wll["value"] == pytest.approx(
        skm.log_loss(y.ravel(), np.clip(p.ravel(), 1e-7, 1 - 1e-7), labels=[0, 1])
    )
    assert wll["ci_low"] < wll["value"] < wll["ci_high"]


def test_multilabel_report_is_reproducible_and_plain() -> None:
    def report(seed: int) -> dict:
        return multilabel_report(Y, P, LABELS, THRESHOLDS, n_bootstrap=100, seed=seed)

    first = report(1)
    assert repr(first) == repr(report(1))  # repr: nan != nan, but prints the same
    assert repr(first) != repr(report(2))

    def plain(x: object) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return type(x) in (int, float, str)

    assert plain(first)


def test_multilabel_report_validates() -> None:
    with pytest.raises(ValueError, match="labels for 3 columns"):
        multilabel_report(Y, P, ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="distinct"):
        multilabel_report(Y, P, ["a", "a", "b"], 0.5)
    with pytest.raises(ValueError, match="one entry per label"):
        multilabel_report(Y, P, LABELS, [0.5, 0.5])
    with pytest.raises(ValueError, match="missing"):
        multilabel_report(Y, P, LABELS, 0.5, {"any": 2.0})
    with pytest.raises(ValueError, match="differ in shape"):
        multilabel_report(Y, P[:, :2], LABELS, 0.5)
    with pytest.raises(ValueError, match="two-dimensional"):
        multilabel_report(Y[:, 0], P[:, 0], ["any"], 0.5)


# ---------------------------------------------------------------- plots


def roc_curves(y: np.ndarray, p: np.ndarray, labels: list[str]) -> dict:
    curves = {}
    for k, label in enumerate(labels):
        fpr, tpr, _ = roc_curve(y[:, k], p[:, k])
        curves[label] = (fpr, tpr, roc_auc(y[:, k], p[:, k]))
    return curves


def test_save_roc_png_writes_a_png(tmp_path: Path) -> None:
    curves = roc_curves(Y, P, LABELS)  # "epidural" has no positives: AUC nan
    assert math.isnan(curves["epidural"][2])
    out = save_roc_png(curves, tmp_path / "cards" / "roc.png", title="Hemorrhage, test set")
    assert out == tmp_path / "cards" / "roc.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        assert img.width > 0 and img.height > 0
        assert img.info["dpi"] == pytest.approx((150, 150), abs=0.5)


def test_roc_figure_legend_marks_missing_curves() -> None:
    fig = roc_figure(roc_curves(Y, P, LABELS), title="t")
    ax = fig.axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["chance", "any (AUC 0.75)", "subdural (AUC 0.67)", "epidural (AUC n/a)"]
    epidural = [line for line in ax.get_lines() if line.get_label().startswith("epidural")]
    assert len(epidural) == 1 and len(epidural[0].get_xdata()) == 0  # no curve drawn
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "t"
    assert ax.get_aspect() == 1.0


def test_save_roc_png_from_threads(tmp_path: Path) -> None:
    curves = roc_curves(Y, P, LABELS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(
            pool.map(lambda i: save_roc_png(curves, tmp_path / f"{i}.png", title=str(i)), range(8))
        )
    assert all(path.read_bytes()[:8] == PNG_MAGIC for path in paths)


def test_plots_never_import_pyplot(tmp_path: Path) -> None:
    target = str(tmp_path / "x.png")
    code = (
        "import sys, numpy as np\n"
        "from pipelines.common.plots import save_roc_png\n"
        "diag = np.array([0.0, 1.0])\n"
        f"save_roc_png({{'a': (diag, diag, 0.5)}}, {target!r}, title='x')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    assert Path(target).read_bytes()[:8] == PNG_MAGIC
