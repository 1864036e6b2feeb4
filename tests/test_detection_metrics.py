"""Detection metrics, checked against pycocotools and by hand.

pycocotools is the reference: the COCO summary is pycocotools itself, and
the own AP50 (written for a fast bootstrap) must give pycocotools' per-class
AP at IoU 0.5 on random data built to hit the corner cases of COCO's
matching: images without boxes, false positives, duplicate detections, more
than 100 detections of a class in one image, tied scores, tied IoUs and crowd
boxes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipelines.common.detection_metrics import (
    COCO_SUMMARY_NAMES,
    ClassAP,
    coco_summary,
    detection_report,
    format_detection_report,
    mean_ap,
    per_class_ap50,
    precision_recall_curves,
)
from pipelines.common.plots import pr_figure, save_pr_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
AP_LINE = "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"
# pycocotools' precision is tp / (tp + fp + eps): a perfect detector scores 1 - 2e-16
PERFECT = pytest.approx(1.0, abs=1e-12)


def random_set(
    seed: int,
    n_images: int = 30,
    *,
    integer: bool = False,
    tied_scores: bool = False,
    crowd: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth and detections of a mediocre detector, three findings and one never present.

    ``integer`` rounds boxes to whole pixels (tied IoUs), ``tied_scores``
    rounds scores to 0.1, ``crowd`` marks some boxes as crowd regions. One
    image always gets 130 detections of one class (over COCO's maxDets 100).
    """
    rng = np.random.default_rng(seed)
    image_ids = [int(i) for i in rng.choice(10_000, size=n_images, replace=False)]  # unsorted
    categories = [{"id": 3, "name": "nodule"}, {"id": 1, "name": "effusion"}]
    categories += [{"id": 8, "name": "cardiomegaly"}, {"id": 5, "name": "pneumothorax"}]
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []

    def box(center: np.ndarray | None = None, size: np.ndarray | None = None) -> list[float]:
        if center is None:
            xywh = np.r_[rng.uniform(0, 400, 2), rng.uniform(8, 150, 2)]
        else:
            assert size is not None
            jitter = rng.normal(0.0, 0.12, 4) * np.r_[size, size]
            xywh = np.r_[center - size / 2, size] + jitter
            xywh[2:] = np.abs(xywh[2:])
        if integer:
            xywh = np.round(xywh / 4) * 4  # coarse grid: many exactly equal IoUs
        return [float(v) for v in xywh]

    def score(low: float, high: float) -> float:
        s = rng.uniform(low, high)
        return float(np.round(s, 1)) if tied_scores else float(s)

    def detect(image_id: int, cat_id: int, bbox: list[float], s: float) -> None:
        detections.append({"image_id": image_id, "category_id": cat_id, "bbox": bbox, "score": s})

    for image_id in image_ids:
        for cat in categories[:3]:  # "pneumothorax" never has a box
            for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 4])):
                bbox = box()
                iscrowd = int(crowd and rng.random() < 0.15)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cat["id"],
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": iscrowd,
                    }
                )
                center, size = np.r_[bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2], np.r_[bbox[2:]]
                if rng.random() < 0.75:
                    detect(image_id, cat["id"], box(center, size), score(0.3, 1.0))
                if rng.random() < 0.3:  # duplicate
                    detect(image_id, cat["id"], box(center, size), score(0.1, 0.9))
            for _ in range(rng.poisson(0.8)):  # false positives, also of "pneumothorax"
                detect(image_id, int(rng.choice([3, 1, 8, 5])), box(), score(0.0, 0.8))
    pile = annotations[0]  # more than maxDets detections of one class in one image
    center = np.r_[pile["bbox"][0] + pile["bbox"][2] / 2, pile["bbox"][1] + pile["bbox"][3] / 2]
    for _ in range(130):
        detect(
            pile["image_id"], pile["category_id"], box(center, np.r_[pile["bbox"][2:]]), score(0, 1)
        )
    order = rng.permutation(len(detections))  # results files are in no particular order
    gt = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": 512, "height": 512} for i in image_ids
        ],
        "annotations": annotations,
        "categories": categories,
    }
    return gt, [detections[i] for i in order]


def pycocotools_eval(gt: dict[str, Any], detections: list[dict[str, Any]]) -> COCOeval:
    """COCOeval run the documented way, on copies (pycocotools writes into its inputs)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def pycocotools_ap50(gt: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """Per-class AP at IoU 0.5, area all, maxDets 100 by pycocotools; nan for its -1."""
    evaluator = pycocotools_eval(gt, detections)
    names = {cat["id"]: cat["name"] for cat in gt["categories"]}
    precision = evaluator.eval["precision"][0, :, :, 0, 2]  # IoU .5, all recalls, area all, 100
    return {
        names[cat_id]: math.nan if precision[0, k] == -1 else float(precision[:, k].mean())
        for k, cat_id in enumerate(evaluator.params.catIds)
    }


def assert_same(a: dict[str, ClassAP], b: dict[str, ClassAP]) -> None:
    """Equal results, nan equal to nan (the class without boxes)."""
    np.testing.assert_equal(
        {name: astuple(c) for name, c in a.items()}, {name: astuple(c) for name, c in b.items()}
    )


def one_image(*boxes: list[float]) -> dict[str, Any]:
    return {
        "images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 100}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 7,
                "category_id": 1,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, b in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "nodule"}],
    }


def perfect(gt: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in gt["annotations"]
    ]


# ---------------------------------------------------------------- COCO summary


def test_perfect_detections_score_one_and_print_the_twelve_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gt, _ = random_set(0)
    summary = coco_summary(gt, perfect(gt))
    assert list(summary.stats) == list(COCO_SUMMARY_NAMES)
    for name in ("AP", "AP50", "AP75", "AR10", "AR100"):
        assert summary.stats[name] == PERFECT, name
    assert summary.stats["AR1"] < 1.0  # some images hold several boxes of a class
    assert len(summary.lines) == 12
    assert AP_LINE in summary.lines[0] and summary.lines[0].endswith("= 1.000")
    assert (
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]"
        in (summary.lines[11])
    )
    assert mean_ap(gt, perfect(gt)) == PERFECT
    assert all(c.ap50 == PERFECT for c in per_class_ap50(gt, perfect(gt)).values() if c.n_gt)
    assert capsys.readouterr().out == ""  # pycocotools' chatter is swallowed


def test_summary_is_pycocotools_summary() -> None:
    gt, dets = random_set(1, crowd=True)
    reference = pycocotools_eval(gt, dets)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reference.summarize()
    summary = coco_summary(gt, dets)
    assert summary.lines == printed.getvalue().splitlines()
    for name, value in zip(COCO_SUMMARY_NAMES, reference.stats, strict=True):
        assert (math.isnan(summary.stats[name]) and value == -1) or summary.stats[name] == value
    np.testing.assert_array_equal(summary.precision, reference.eval["precision"])
    assert summary.category_ids == sorted(cat["id"] for cat in gt["categories"])


def test_no_detections_score_zero_without_crashing() -> None:
    gt, _ = random_set(2)
    summary = coco_summary(gt, [])
    assert len(summary.lines) == 12
    assert summary.stats["AP"] == 0.0 and summary.stats["AR100"] == 0.0
    assert summary.lines[0] == f" {AP_LINE} = 0.000"
    assert mean_ap(gt, []) == 0.0
    classes = per_class_ap50(gt, [], n_bootstrap=50)
    assert classes["nodule"].ap50 == 0.0
    assert (classes["nodule"].ci_low, classes["nodule"].ci_high) == (0.0, 0.0)
    assert classes["nodule"].n_detections == 0
    recall, precision = precision_recall_curves(gt, [])["nodule"]
    assert recall.tolist() == [0.0] and precision.tolist() == [0.0]


def test_no_ground_truth_at_all_is_zero_for_mean_ap_and_nan_elsewhere() -> None:
    gt = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "nodule"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    assert math.isnan(coco_summary(gt, dets).stats["AP"])  # pycocotools: -1
    assert mean_ap(gt, dets) == 0.0
    assert math.isnan(per_class_ap50(gt, dets)["nodule"].ap50)
    empty = {"images": [], "annotations": [], "categories": []}
    assert mean_ap(empty, []) == 0.0
    assert detection_report(empty, [])["per_class"] == {}


def test_inputs_are_not_modified() -> None:
    gt, dets = random_set(3, crowd=True)
    before = copy.deepcopy((gt, dets))
    detection_report(gt, dets, n_bootstrap=20)
    precision_recall_curves(gt, dets)
    assert (gt, dets) == before


@pytest.mark.parametrize(
    ("what", "change", "message"),
    [
        ("detection", {"image_id": 999}, "not in gt\\['images'\\]"),
        ("detection", {"category_id": 0}, "background"),
        ("detection", {"bbox": [0, 0, -3, 4]}, "negative width"),
        ("detection", {"score": float("nan")}, "score must be finite"),
        ("annotation", {"id": 0}, "positive integer"),
        ("annotation", {"category_id": 42}, "not in gt\\['categories'\\]"),
    ],
)
def test_bad_input_is_rejected_with_a_hint(what: str, change: dict[str, Any], message: str) -> None:
    gt, dets = random_set(4, n_images=5)
    target = dets[0] if what == "detection" else gt["annotations"][0]
    target.update(change)
    with pytest.raises(ValueError, match=message):
        coco_summary(gt, dets)
    with pytest.raises(ValueError, match=message):
        per_class_ap50(gt, dets)


# ---------------------------------------------------------------- per-class AP50


@pytest.mark.parametrize(
    ("seed", "options"),
    [
        (10, {}),
        (11, {"integer": True}),
        (12, {"tied_scores": True}),
        (13, {"crowd": True}),
        (14, {"integer": True, "tied_scores": True, "crowd": True}),
        (15, {"n_images": 60}),
    ],
)
def test_ap50_equals_pycocotools(seed: int, options: dict[str, Any]) -> None:
    gt, dets = random_set(seed, **options)
    expected = pycocotools_ap50(gt, dets)
    got = per_class_ap50(gt, dets, n_bootstrap=20)
    assert list(got) == ["nodule", "effusion", "cardiomegaly", "pneumothorax"]  # gt order
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[name].ap50) and got[name].n_gt == 0
        else:
            assert got[name].ap50 == pytest.approx(value, abs=1e-9), name
    present = [value for value in expected.values() if not math.isnan(value)]
    assert len(present) == 3 and all(0.1 < v < 0.95 for v in present)  # a real check


def test_ap50_follows_coco_matching_rules_by_hand() -> None:
    gt = one_image([0, 0, 10, 10], [50, 50, 20, 20])
    dets = [
        # IoU exactly 0.5 (continuous coordinates: 50 / 100) is a match
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 5], "score": 0.9},
        # a duplicate of a matched box is a false positive
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},
        # IoU just below 0.5 is not
        {"image_id": 7, "category_id": 1, "bbox": [50, 50, 20, 9.9], "score": 0.7},
    ]
    # precision 1 up to recall 0.5, nothing beyond: 51 of 101 recall levels
    assert per_class_ap50(gt, dets)["nodule"].ap50 == pytest.approx(51 / 101 * 1.0, abs=1e-12)
    assert pycocotools_ap50(gt, dets)["nodule"] == pytest.approx(51 / 101, abs=1e-12)


def test_area_and_iscrowd_default_to_box_area_and_not_crowd() -> None:
    gt, dets = random_set(16, n_images=10)
    bare = copy.deepcopy(gt)
    for ann in bare["annotations"]:
        del ann["area"], ann["iscrowd"]
    assert coco_summary(bare, dets).lines == coco_summary(gt, dets).lines
    assert_same(
        per_class_ap50(bare, dets, n_bootstrap=10), per_class_ap50(gt, dets, n_bootstrap=10)
    )


def test_detections_on_crowd_regions_are_neither_right_nor_wrong() -> None:
    gt = one_image([0, 0, 10, 10], [40, 40, 50, 50])
    gt["annotations"][1]["iscrowd"] = 1
    dets = perfect({**gt, "annotations": gt["annotations"][:1]})
    dets += [  # three boxes inside the crowd region, all scored above the true positive
        {"image_id": 7, "category_id": 1, "bbox": [40 + 10 * k, 45, 10, 10], "score": 0.95}
        for k in range(3)
    ]
    result = per_class_ap50(gt, dets)["nodule"]
    assert result.ap50 == PERFECT
    assert (result.n_gt, result.n_images, result.n_detections) == (1, 1, 4)


def test_only_the_best_hundred_detections_of_an_image_count() -> None:
    gt = one_image([0, 0, 10, 10])
    miss = {"image_id": 7, "category_id": 1, "bbox": [60, 60, 10, 10]}
    dets = [{**miss, "score": 0.9}] * 100
    dets.append({"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5})
    assert per_class_ap50(gt, dets)["nodule"].ap50 == 0.0  # the hit is the 101st
    assert per_class_ap50(gt, dets[1:])["nodule"].ap50 > 0.0


def test_class_without_ground_truth_is_nan() -> None:
    gt, dets = random_set(5)
    result = per_class_ap50(gt, dets, n_bootstrap=20)["pneumothorax"]
    assert result.n_detections > 0
    assert math.isnan(result.ap50) and math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert (result.n_gt, result.n_images) == (0, 0)


def test_counts_describe_the_ground_truth() -> None:
    gt, dets = random_set(6, crowd=True)
    result = per_class_ap50(gt, dets, n_bootstrap=20)["effusion"]
    boxes = [a for a in gt["annotations"] if a["category_id"] == 1 and not a["iscrowd"]]
    assert result.n_gt == len(boxes)
    assert result.n_images == len({a["image_id"] for a in boxes})
    assert result.n_detections == sum(d["category_id"] == 1 for d in dets)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible() -> None:
    gt, dets = random_set(20, n_images=40)
    first = per_class_ap50(gt, dets, n_bootstrap=300, seed=1)
    assert_same(first, per_class_ap50(gt, dets, n_bootstrap=300, seed=1))
    other = per_class_ap50(gt, dets, n_bootstrap=300, seed=2)["nodule"]
    assert (other.ci_low, other.ci_high) != (first["nodule"].ci_low, first["nodule"].ci_high)
    for name, result in first.items():
        if name == "pneumothorax":
            continue
        assert result.ci_low <= result.ap50 <= result.ci_high, name
        assert result.ci_low < result.ci_high, name
    narrow = per_class_ap50(gt, dets, n_bootstrap=300, seed=1, alpha=0.5)["nodule"]
    assert first["nodule"].ci_low <= narrow.ci_low <= narrow.ci_high <= first["nodule"].ci_high


def test_bootstrap_interval_narrows_with_more_images() -> None:
    def width(n_images: int) -> float:
        gt, dets = random_set(21, n_images=n_images)
        result = per_class_ap50(gt, dets, n_bootstrap=400)["nodule"]
        return result.ci_high - result.ci_low

    small, large = width(25), width(400)
    assert large < 0.6 * small  # sqrt(25 / 400) = 0.25 in theory


# ---------------------------------------------------------------- curves, report, plot


def test_precision_recall_curves_are_monotone_and_end_where_the_detections_end() -> None:
    gt, dets = random_set(30)
    curves = precision_recall_curves(gt, dets)
    aps = per_class_ap50(gt, dets, n_bootstrap=20)
    levels = np.linspace(0.0, 1.0, 101)
    for name, (recall, precision) in curves.items():
        if name == "pneumothorax":
            assert recall.size == precision.size == 0
            continue
        assert recall[0] == 0.0 and precision[0] == precision.max()
        assert np.all(np.diff(recall) >= 0) and np.all(np.diff(precision) <= 0)
        assert np.all((precision >= 0) & (precision <= 1)) and recall[-1] <= 1.0
        # sampled as COCO samples it, the curve gives back the AP
        idx = np.searchsorted(recall, levels, side="left")
        sampled = np.where(idx < recall.size, precision[np.minimum(idx, recall.size - 1)], 0.0)
        assert sampled.mean() == pytest.approx(aps[name].ap50, abs=1e-12)
    recall, precision = precision_recall_curves(gt, perfect(gt))["nodule"]
    assert recall[-1] == 1.0 and precision.min() == PERFECT


def test_stricter_iou_lowers_recall() -> None:
    gt, dets = random_set(31)
    loose = precision_recall_curves(gt, dets, iou=0.3)["nodule"][0][-1]
    strict = precision_recall_curves(gt, dets, iou=0.75)["nodule"][0][-1]
    assert strict < loose
    with pytest.raises(ValueError, match="iou must be"):
        precision_recall_curves(gt, dets, iou=0.0)


def test_report_is_json_and_formats_as_the_cli_prints_it() -> None:
    gt, dets = random_set(40)
    report = detection_report(gt, dets, n_bootstrap=100, seed=3)
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # plain JSON, no NaN
    assert report["coco_lines"] == coco_summary(gt, dets).lines
    assert report["per_class"]["pneumothorax"]["ap50"] is None
    nodule = report["per_class"]["nodule"]
    expected = per_class_ap50(gt, dets, n_bootstrap=100, seed=3)["nodule"]
    assert (nodule["ap50"], nodule["ci_low"], nodule["n_gt"]) == (
        expected.ap50,
        expected.ci_low,
        expected.n_gt,
    )
    assert report["n_detections"] == len(dets) and report["n_images"] == len(gt["images"])
    text = format_detection_report(report)
    lines = text.splitlines()
    assert lines[:12] == report["coco_lines"] and AP_LINE in text
    assert "95 % CI" in text and "100 resamples, seed 3" in text
    row = next(line for line in lines if line.startswith("nodule "))
    assert f"{nodule['ap50']:.3f}" in row
    assert f"[{nodule['ci_low']:.3f}, {nodule['ci_high']:.3f}]" in row
    assert row.split()[-2:] == [str(nodule["n_gt"]), str(nodule["n_images"])]
    assert next(line for line in lines if line.startswith("pneumothorax")).split()[1:3] == [
        "n/a",
        "n/a",
    ]


def test_save_pr_png_writes_a_png(tmp_path: Path) -> None:
    gt, dets = random_set(50)
    aps = per_class_ap50(gt, dets, n_bootstrap=20)
    curves = {name: (*pr, aps[name].ap50) for name, pr in precision_recall_curves(gt, dets).items()}
    out = save_pr_png(curves, tmp_path / "cards" / "pr.png", title="Findings, test set")
    assert out == tmp_path / "cards" / "pr.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        assert img.info["dpi"] == pytest.approx((150, 150), abs=0.5)
    ax = pr_figure(curves, title="t").axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[0] == f"nodule (AP50 {aps['nodule'].ap50:.2f})"
    assert legend[-1] == "pneumothorax (AP50 n/a)"
    assert ax.get_lines()[0].get_drawstyle() == "steps-pre"
    assert ax.get_title() == "t" and ax.get_xlabel().startswith("Recall")


def test_f1_thresholds_pick_the_best_box_f1_and_punish_duplicates() -> None:
    from pipelines.common.detection_metrics import f1_thresholds

    images = [{"id": i, "file_name": f"{i}.dcm", "width": 100, "height": 100} for i in (1, 2, 3)]
    gt = {
        "images": images,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [10, 10, 20, 20],
                "area": 400,
                "iscrowd": 0,
            }
            for i in (1, 2, 3)
        ],
    }
    hit = {"category_id": 1, "bbox": [10, 10, 20, 20]}
    dets = [
        {**hit, "image_id": 1, "score": 0.9},
        {**hit, "image_id": 2, "score": 0.8},
        {**hit, "image_id": 2, "score": 0.3},  # a duplicate of image 2's box: a false positive
        {**hit, "image_id": 3, "score": 0.2},
    ]
    # cut at 0.9: F1 2/4; at 0.8: 4/5; at 0.3: 4/6; at 0.2: 6/7 -> 0.2 (all three found)
    assert f1_thresholds(gt, dets)["a"] == pytest.approx(0.2)
    dets[3]["score"] = 0.25
    dets[2]["score"] = 0.26  # the duplicate now outranks the third hit: 6/7 at 0.25 still best
    assert f1_thresholds(gt, dets)["a"] == pytest.approx(0.25)
    del dets[3]  # without the third hit: 0.8 (F1 0.8) beats 0.26 (F1 4/6)
    assert f1_thresholds(gt, dets)["a"] == pytest.approx(0.8)
    assert f1_thresholds(gt, dets)["b"] is None  # no ground truth, no detections
