"""Object-detection metrics: the COCO summary and per-class AP50 with bootstrap intervals.

A detector's model card (the chest X-ray findings detector, later the hip
detector) quotes the standard COCO numbers, so that they compare with the
literature, and per-class AP50 with a 95 % interval, because a finding with
40 boxes in the test set has a wide one. The COCO summary is computed by
pycocotools itself (the reference implementation, no re-implementation to
drift from it); per-class AP50 is re-implemented here in numpy because its
bootstrap needs a thousand recomputations per class, which COCOeval cannot
do in reasonable time. The re-implementation follows ``COCOeval.evaluateImg``
and ``COCOeval.accumulate`` step by step and ``tests/test_detection_metrics.py``
checks that it equals pycocotools' per-class AP at IoU 0.5 to 1e-9.

Inputs
------
``gt`` is a COCO detection dict: ``images`` (``[{"id", ...}]``),
``annotations`` (``[{"id", "image_id", "category_id", "bbox": [x, y, w, h],
"area", "iscrowd"}]``; a missing ``area`` defaults to ``w * h`` and a missing
``iscrowd`` to 0) and ``categories`` (``[{"id", "name"}]``). ``detections``
is a COCO results list ``[{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}]``. Either may hold no boxes at all. Boxes are in pixels with
continuous coordinates: a box covers ``[x, x + w] x [y, y + h]`` and IoU has
no ``+ 1`` (the COCO convention, unlike PASCAL VOC's devkit).

Conventions shared with pycocotools: detections are evaluated per image and
class, at most the 100 highest-scoring ones of a class in an image
(``maxDets=100``); a crowd box (``iscrowd=1``) is not an object to find but a
region where detections are neither true nor false positives, and may absorb
any number of them (IoU with a crowd box is intersection over the
*detection's* area). Where a value is undefined (a class without ground-truth
boxes), it is ``nan`` here, never a made-up 0 or 1, as in
:mod:`pipelines.common.metrics`; pycocotools' ``-1`` sentinel is translated.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.common.metrics import bootstrap_ci

COCO_SUMMARY_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
"""Names of the 12 numbers of ``COCOeval.summarize()`` for boxes, in its order."""

MAX_DETS = 100
"""Detections kept per image and class, highest scores first (COCO's largest ``maxDets``)."""

_AREA_ALL = (0.0, 1e5**2)  # COCO's area range "all": objects outside it are ignored
_REC_THRS = np.linspace(0.0, 1.0, 101)  # the 101 recall levels of COCO's interpolated AP


@dataclass(frozen=True)
class CocoSummary:
    """What ``COCOeval.summarize()`` reports for boxes.

    Attributes
    ----------
    stats : dict of str to float
        The 12 numbers by :data:`COCO_SUMMARY_NAMES`; ``nan`` where
        pycocotools prints ``-1.000`` (no ground truth in that area range,
        e.g. ``AP_small`` when every finding is larger than 32 x 32 px).
    lines : list of str
        The 12 lines exactly as ``summarize()`` prints them.
    precision : np.ndarray, shape (10, 101, K, 4, 3)
        ``COCOeval.eval["precision"]``: interpolated precision per IoU
        threshold (0.50:0.05:0.95), recall level (0:0.01:1), category, area
        range (all, small, medium, large) and maxDets (1, 10, 100); ``-1`` for a
        category without ground truth, as pycocotools leaves it.
    category_ids : list of int
        The category of each index of the third axis of ``precision``.
    """

    stats: dict[str, float]
    lines: list[str]
    precision: np.ndarray = field(repr=False, compare=False)
    category_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ClassAP:
    """AP at IoU 0.5 of one category, with its bootstrap interval.

    Attributes
    ----------
    ap50 : float
        COCO's 101-point interpolated AP at IoU 0.5, area all, maxDets 100;
        ``nan`` without ground-truth boxes (recall is undefined).
    ci_low, ci_high : float
        Percentile bootstrap interval over images; ``nan`` with ``ap50``.
    n_gt : int
        Ground-truth boxes of the category, crowd boxes excluded (the
        denominator of recall).
    n_images : int
        Images with at least one such box: with few of them the interval is
        wide whatever ``n_gt`` is, since an image's boxes are resampled together.
    n_detections : int
        Detections of the category submitted, before the ``maxDets`` cut.
    """

    ap50: float
    ci_low: float
    ci_high: float
    n_gt: int
    n_images: int
    n_detections: int


# ------------------------------------------------------------------ input checks


@dataclass(frozen=True)
class _Boxes:
    """Boxes of one image and category, in input order."""

    xywh: np.ndarray  # (n, 4) float64
    score: np.ndarray  # (n,) detections only
    crowd: np.ndarray  # (n,) bool, ground truth only
    area: np.ndarray  # (n,) float64: given area (gt) or w * h (detections)


@dataclass(frozen=True)
class _Dataset:
    """Validated inputs, indexed the way COCOeval indexes them."""

    image_ids: list[Any]  # sorted, as COCOeval's params.imgIds
    categories: dict[int, str]  # id -> name, in gt["categories"] order
    gt: dict[tuple[int, int], _Boxes]  # (image index, category id) -> boxes
    dt: dict[tuple[int, int], _Boxes]
    n_detections: dict[int, int]  # category id -> detections submitted
    coco_gt: dict[str, Any] = field(repr=False)  # normalised copies for pycocotools
    coco_dt: list[dict[str, Any]] = field(repr=False)


def _bbox(value: Any, what: str) -> list[float]:
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"{what}: bbox must be 4 finite numbers [x, y, w, h], got {value!r}")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(
            f"{what}: bbox {value!r} has a negative width or height; boxes are COCO "
            "[x, y, w, h], convert [x1, y1, x2, y2] with w = x2 - x1, h = y2 - y1"
        )
    return box


def _field(record: Mapping[str, Any], key: str, what: str) -> Any:
    try:
        return record[key]
    except (KeyError, TypeError):
        raise ValueError(f"{what} has no {key!r}: {record!r}") from None


def _dataset(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> _Dataset:
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"gt is not a COCO detection dict: it has no {key!r} list")
    image_ids = [_field(img, "id", "gt image") for img in gt["images"]]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("gt['images'] has duplicate ids; every image needs its own id")
    image_ids = sorted(image_ids)
    image_index = {image_id: i for i, image_id in enumerate(image_ids)}
    categories: dict[int, str] = {}
    for cat in gt["categories"]:
        cat_id, name = _field(cat, "id", "gt category"), str(_field(cat, "name", "gt category"))
        if cat_id in categories or name in categories.values():
            raise ValueError(f"gt['categories'] repeats id {cat_id} or name {name!r}")
        categories[cat_id] = name

    gt_lists: dict[tuple[int, int], list[tuple[list[float], bool, float]]] = defaultdict(list)
    coco_anns, ann_ids = [], set()
    for k, ann in enumerate(gt["annotations"]):
        what = f"gt annotation {k}"
        ann_id = _field(ann, "id", what)
        # COCOeval stores matches as annotation ids with 0 meaning "unmatched"
        if not isinstance(ann_id, int | np.integer) or ann_id <= 0 or ann_id in ann_ids:
            raise ValueError(
                f"{what}: id must be a positive integer unique among the annotations, "
                f"got {ann_id!r} (pycocotools reads id 0 as 'no match'); number them 1, 2, ..."
            )
        ann_ids.add(ann_id)
        image_id, cat_id = _field(ann, "image_id", what), _field(ann, "category_id", what)
        if image_id not in image_index:
            raise ValueError(f"{what} refers to image_id {image_id!r}, not in gt['images']")
        if cat_id not in categories:
            raise ValueError(f"{what} refers to category_id {cat_id!r}, not in gt['categories']")
        box = _bbox(_field(ann, "bbox", what), what)
        area = float(ann.get("area", box[2] * box[3]))
        if not math.isfinite(area):
            raise ValueError(f"{what}: area must be finite, got {ann.get('area')!r}")
        crowd = bool(ann.get("iscrowd", 0))
        gt_lists[image_index[image_id], cat_id].append((box, crowd, area))
        coco_anns.append(
            {
                "id": int(ann_id),
                "image_id": image_id,
                "category_id": cat_id,
                "bbox": box,
                "area": area,
                "iscrowd": int(crowd),
            }
        )

    dt_lists: dict[tuple[int, int], list[tuple[list[float], float]]] = defaultdict(list)
    n_detections = dict.fromkeys(categories, 0)
    coco_dt = []
    for k, det in enumerate(detections):
        what = f"detection {k}"
        image_id, cat_id = _field(det, "image_id", what), _field(det, "category_id", what)
        if image_id not in image_index:
            raise ValueError(
                f"{what} refers to image_id {image_id!r}, not in gt['images']; "
                "evaluate detections on the images of the ground truth they are scored against"
            )
        if cat_id not in categories:
            raise ValueError(
                f"{what} has category_id {cat_id!r}, not in gt['categories'] "
                f"{sorted(categories)}; map the model's labels to the dataset's category "
                "ids (torchvision detectors reserve label 0 for the background)"
            )
        box = _bbox(_field(det, "bbox", what), what)
        score = float(_field(det, "score", what))
        if not math.isfinite(score):
            raise ValueError(f"{what}: score must be finite, got {det['score']!r}")
        dt_lists[image_index[image_id], cat_id].append((box, score))
        n_detections[cat_id] += 1
        coco_dt.append({"image_id": image_id, "category_id": cat_id, "bbox": box, "score": score})

    gt_boxes = {
        key: _Boxes(
            xywh=np.array([b for b, _, _ in rows], dtype=np.float64).reshape(-1, 4),
            score=np.zeros(0),
            crowd=np.array([c for _, c, _ in rows], dtype=bool),
            area=np.array([a for _, _, a in rows], dtype=np.float64),
        )
        for key, rows in gt_lists.items()
    }
    dt_boxes = {}
    for cell, rows in dt_lists.items():
        xywh = np.array([b for b, _ in rows], dtype=np.float64).reshape(-1, 4)
        dt_boxes[cell] = _Boxes(
            xywh=xywh,
            score=np.array([s for _, s in rows], dtype=np.float64),
            crowd=np.zeros(len(rows), dtype=bool),
            area=xywh[:, 2] * xywh[:, 3],
        )
    coco_gt = {
        "images": [dict(img) for img in gt["images"]],
        "annotations": coco_anns,
        "categories": [{"id": i, "name": n} for i, n in categories.items()],
    }
    return _Dataset(image_ids, categories, gt_boxes, dt_boxes, n_detections, coco_gt, coco_dt)


# ------------------------------------------------------------------ COCO summary


def _summary(data: _Dataset) -> CocoSummary:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress chatter
        # pycocotools writes into the dicts it is given: hand it copies
        coco_gt = COCO()
        coco_gt.dataset = {
            **data.coco_gt,
            "annotations": [dict(ann) for ann in data.coco_gt["annotations"]],
        }
        coco_gt.createIndex()
        if data.coco_dt:
            coco_dt = coco_gt.loadRes([dict(det) for det in data.coco_dt])
        else:  # loadRes cannot read an empty list: an empty result set is the same thing
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(data.coco_gt["images"]),
                "annotations": [],
                "categories": list(data.coco_gt["categories"]),
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.summarize()
    stats = {
        name: float("nan") if value == -1 else float(value)
        for name, value in zip(COCO_SUMMARY_NAMES, evaluator.stats, strict=True)
    }
    return CocoSummary(
        stats=stats,
        lines=printed.getvalue().splitlines(),
        precision=np.asarray(evaluator.eval["precision"]),
        category_ids=[int(c) for c in evaluator.params.catIds],
    )


def coco_summary(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> CocoSummary:
    """The standard COCO box evaluation, run by pycocotools, without its printing.

    Everything pycocotools prints goes to a buffer (``sys.stdout`` is
    redirected for the duration, so a print from another thread meanwhile is
    lost too); the 12 summary lines are kept in :attr:`CocoSummary.lines` for
    the caller to print. No detections at all give AP and AR 0 wherever there
    is ground truth (pycocotools' ``loadRes`` rejects an empty list; an empty
    result set is evaluated instead). The inputs are not modified.

    Raises
    ------
    ValueError
        Malformed input, or a detection on an image or of a category that the
        ground truth does not have (pycocotools would assert or silently skip).
    """
    return _summary(_dataset(gt, detections))


def mean_ap(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> float:
    """COCO AP@[.50:.95] (``stats[0]``), the number that picks the best training epoch.

    Quiet (see :func:`coco_summary`) and never ``nan``, so that ``>`` comparisons
    across epochs work: 0.0 without detections, and 0.0 too when the ground
    truth has no (non-crowd) box at all, where pycocotools reports -1 and AP
    is undefined; such a validation set cannot rank epochs, and every epoch
    then scores the same 0.0.
    """
    value = coco_summary(gt, detections).stats["AP"]
    return 0.0 if math.isnan(value) else value


# ------------------------------------------------------------------ AP50, own implementation


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU matrix (detections x gt) computed as pycocotools' ``bbIou`` does, operation for operation.

    Continuous coordinates; for a crowd box the union is the detection's area.
    """
    dx, dy, dw, dh = (dt[:, i, None] for i in range(4))
    gx, gy, gw, gh = (gt[None, :, i] for i in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    d_area, g_area = dw * dh, gw * gh
    union = np.where(crowd[None, :], d_area, d_area + g_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _match_image(gt: _Boxes | None, dt: _Boxes, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching in one image for one category (``COCOeval.evaluateImg``).

    Returns the scores and true-positive flags of the detections that count
    (the ``maxDets`` best by score, minus those COCO ignores: matched to a
    crowd box, or unmatched with an area outside ``[0, 1e10]``), best first.
    Dropping the ignored ones changes no AP: in ``accumulate`` they add
    neither a true nor a false positive, only repeat the previous PR point.
    """
    order = np.argsort(-dt.score, kind="mergesort")[:MAX_DETS]  # stable, as COCO
    boxes, scores, d_area = dt.xywh[order], dt.score[order], dt.area[order]
    n_dt = len(order)
    matched_gt = np.full(n_dt, -1)
    if gt is not None and len(gt.area):
        g_ignore = gt.crowd | (gt.area < _AREA_ALL[0]) | (gt.area > _AREA_ALL[1])
        g_order = np.argsort(g_ignore, kind="mergesort")  # ignored gt last
        ignore = g_ignore[g_order].tolist()
        crowd = gt.crowd[g_order].tolist()
        ious = _iou(boxes, gt.xywh[g_order], gt.crowd[g_order]).tolist()
        taken = [False] * len(ignore)
        threshold = min(iou_thr, 1 - 1e-10)
        for d, row in enumerate(ious):  # literally COCOeval.evaluateImg's loop
            best, m = threshold, -1
            for g, iou in enumerate(row):
                if taken[g] and not crowd[g]:
                    continue
                if m > -1 and not ignore[m] and ignore[g]:
                    break
                if iou < best:
                    continue
                best, m = iou, g
            if m > -1:
                matched_gt[d] = m
                taken[m] = True
        matched = matched_gt >= 0
        on_ignored = np.zeros(n_dt, dtype=bool)
        on_ignored[matched] = np.asarray(ignore, dtype=bool)[matched_gt[matched]]
    else:
        matched = np.zeros(n_dt, dtype=bool)
        on_ignored = matched
    outside = (d_area < _AREA_ALL[0]) | (d_area > _AREA_ALL[1])
    keep = ~(on_ignored | (~matched & outside))
    return scores[keep], matched[keep]


@dataclass(frozen=True)
class _ClassMatches:
    """Per-detection match results of one category over all images, cached for the bootstrap.

    Detections are in COCOeval.accumulate's order: images by id, each
    image's detections best first, then a stable sort by score, so that tied
    scores are ranked exactly as pycocotools ranks them.
    """

    score: np.ndarray  # (D,)
    tp: np.ndarray  # (D,) bool
    image: np.ndarray  # (D,) image index of each detection
    n_gt: np.ndarray  # (N,) non-ignored gt boxes per image


def _class_matches(data: _Dataset, cat_id: int, iou_thr: float) -> _ClassMatches:
    n_images = len(data.image_ids)
    n_gt = np.zeros(n_images, dtype=np.int64)
    scores, tps, images = [], [], []
    for i in range(n_images):
        gt, dt = data.gt.get((i, cat_id)), data.dt.get((i, cat_id))
        if gt is not None:
            n_gt[i] = np.count_nonzero(
                ~(gt.crowd | (gt.area < _AREA_ALL[0]) | (gt.area > _AREA_ALL[1]))
            )
        if dt is not None:
            s, tp = _match_image(gt, dt, iou_thr)
            scores.append(s)
            tps.append(tp)
            images.append(np.full(len(s), i, dtype=np.int64))
    if not scores:
        return _ClassMatches(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, np.int64), n_gt)
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="mergesort")
    return _ClassMatches(
        score[order], np.concatenate(tps)[order], np.concatenate(images)[order], n_gt
    )


def _pr_points(
    tp: np.ndarray, weight: np.ndarray | None, n_gt: float
) -> tuple[np.ndarray, np.ndarray]:
    """Recall and interpolated precision after each detection (as ``COCOeval.accumulate``).

    ``weight`` counts each detection that many times (its image's multiplicity
    in a bootstrap resample); ``None`` counts each once.
    """
    hits = tp.astype(np.float64) if weight is None else np.where(tp, weight, 0.0)
    misses = (~tp).astype(np.float64) if weight is None else np.where(tp, 0.0, weight)
    tp_sum, fp_sum = np.cumsum(hits), np.cumsum(misses)
    rc = tp_sum / n_gt
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    return rc, np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope, right to left


def _ap(matches: _ClassMatches, counts: np.ndarray | None = None) -> float:
    """101-point interpolated AP; ``counts[i]`` = copies of image ``i`` (bootstrap)."""
    if counts is None:
        n_gt, weight = float(matches.n_gt.sum()), None
    else:
        n_gt, weight = float(counts @ matches.n_gt), counts[matches.image].astype(np.float64)
    if n_gt == 0:
        return float("nan")
    rc, pr = _pr_points(matches.tp, weight, n_gt)
    q = np.zeros(len(_REC_THRS))
    idx = np.searchsorted(rc, _REC_THRS, side="left")
    found = idx < len(rc)  # recall levels never reached keep precision 0
    q[found] = pr[idx[found]]
    return float(np.mean(q))


def _class_aps(data: _Dataset, *, n_bootstrap: int, seed: int, alpha: float) -> dict[str, ClassAP]:
    n_images = len(data.image_ids)
    result = {}
    for cat_id, name in data.categories.items():
        matches = _class_matches(data, cat_id, 0.5)

        def ap_of_images(images: np.ndarray, n_gt: np.ndarray, m: _ClassMatches = matches) -> float:
            # bootstrap_ci hands over the resampled image indices; an image drawn
            # k times weighs its cached match results k times
            del n_gt  # its sum is counts @ m.n_gt
            return _ap(m, np.bincount(images, minlength=n_images))

        if matches.n_gt.sum() == 0:
            ap50 = lo = hi = float("nan")
        else:
            ap50, lo, hi = bootstrap_ci(
                ap_of_images,
                np.arange(n_images),
                matches.n_gt,
                n=n_bootstrap,
                seed=seed,
                alpha=alpha,
            )
        result[name] = ClassAP(
            ap50=ap50,
            ci_low=lo,
            ci_high=hi,
            n_gt=int(matches.n_gt.sum()),
            n_images=int(np.count_nonzero(matches.n_gt)),
            n_detections=data.n_detections[cat_id],
        )
    return result


def per_class_ap50(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, ClassAP]:
    """AP at IoU 0.5 of each category, with a percentile bootstrap interval over images.

    The point estimate is pycocotools' per-category AP at IoU 0.5, area
    "all", maxDets 100 (``COCOeval.eval["precision"][0, :, k, 0, 2].mean()``),
    recomputed here: per image, detections best first are greedily matched to
    the unmatched ground-truth box of highest IoU >= 0.5 (crowd boxes as COCO
    handles them), then precision is interpolated at the 101 recall levels
    0, 0.01, ..., 1 and averaged. The interval resamples *images* with
    replacement (an image's boxes stay together, as they are not independent)
    and recomputes AP from the cached matches of each image, so no resample
    re-runs the matching; resamples without a box of the category are
    dropped. Among detections of equal score, a resample ranks them by image
    order (pycocotools' own order depends on how the images are listed).
    Every category sees the same resamples (one ``seed``).

    Parameters
    ----------
    gt : dict
        COCO ground truth (see the module docstring).
    detections : sequence of dict
        COCO results; may be empty.
    n_bootstrap : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling, so that a card's interval is reproducible.
    alpha : float
        1 - confidence level (0.05 gives a 95 % interval).

    Returns
    -------
    dict of str to ClassAP
        By category name, in ``gt["categories"]`` order. A category without
        ground-truth boxes has ``ap50`` and its interval ``nan`` and
        ``n_gt`` 0 (pycocotools reports -1 and leaves it out of the mean).
    """
    return _class_aps(_dataset(gt, detections), n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)


def _curves(data: _Dataset, iou: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    curves = {}
    for cat_id, name in data.categories.items():
        matches = _class_matches(data, cat_id, iou)
        n_gt = float(matches.n_gt.sum())
        if n_gt == 0:
            curves[name] = (np.zeros(0), np.zeros(0))
            continue
        rc, pr = _pr_points(matches.tp, None, n_gt)
        top = pr[0] if len(pr) else 0.0
        curves[name] = (np.r_[0.0, rc], np.r_[top, pr])
    return curves


def precision_recall_curves(
    gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], iou: float = 0.5
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Precision-recall curve of each category, from the matching of :func:`per_class_ap50`.

    One point per counted detection in decreasing score order, preceded by
    the point at recall 0. Precision is COCO's *interpolated* precision (the
    best precision at this recall or beyond), so the curve never rises, and
    drawn as a step function (precision at recall ``r`` is that of the first
    point with recall >= ``r``) its area is the AP up to COCO's 101-level
    sampling.

    Parameters
    ----------
    gt, detections
        As for :func:`per_class_ap50`.
    iou : float
        IoU a detection needs with a ground-truth box to be a true positive.

    Returns
    -------
    dict of str to (recall, precision)
        By category name, in ``gt["categories"]`` order. Recall starts at 0 and
        never falls, ending at the recall reached by all detections. A category
        without detections gives ``([0], [0])``; one without ground-truth boxes
        two empty arrays (recall is undefined).
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    return _curves(_dataset(gt, detections), iou)


def f1_thresholds(
    gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], iou: float = 0.5
) -> dict[str, float | None]:
    """Per category, the score threshold with the best box F1 at ``iou`` (COCO matching).

    A box at or above the threshold is a true positive when it matches a
    ground-truth box of its category (:func:`per_class_ap50`'s matching), a
    false positive otherwise; a ground-truth box no kept box matches is a
    false negative. Duplicate boxes on one finding are false positives, so the
    threshold also keeps a detector from reporting one finding three times.
    Candidates are the detections' scores (a threshold between two tied
    scores is not possible); ties in F1 go to the higher threshold. Rounded
    down to 6 decimals so that the box that set it stays at or above it.

    Returns
    -------
    dict of str to float or None
        By category name; None for a category without ground-truth boxes or
        without detections (no threshold can be chosen from these data).
    """
    data = _dataset(gt, detections)
    out: dict[str, float | None] = {}
    for cat_id, name in data.categories.items():
        matches = _class_matches(data, cat_id, iou)
        n_gt = float(matches.n_gt.sum())
        if n_gt == 0 or matches.score.size == 0:
            out[name] = None
            continue
        tp = np.cumsum(matches.tp)
        kept = np.arange(1, matches.score.size + 1)
        f1 = 2.0 * tp / (kept + n_gt)
        # only the last detection of a run of tied scores is a possible cut
        last = np.r_[matches.score[1:] != matches.score[:-1], True]
        best = max(np.flatnonzero(last), key=lambda k: (f1[k], matches.score[k]))
        out[name] = math.floor(float(matches.score[best]) * 1e6) / 1e6
    return out


# ------------------------------------------------------------------ report


def _json_float(value: float) -> float | None:
    """nan is not JSON: null instead, so that any JSON reader accepts the report."""
    return None if math.isnan(value) else float(value)


def detection_report(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Everything a detector's model card records, as plain JSON-safe Python types.

    Returns
    -------
    dict
        ``{"n_images", "n_gt_boxes", "n_detections", "coco": {name: value},
        "coco_lines": [12 str], "confidence", "ci_method", "per_class": {name:
        {"category_id", "ap50", "ci_low", "ci_high", "n_gt", "n_images",
        "n_detections"}}}`` with ``coco`` keyed by :data:`COCO_SUMMARY_NAMES`
        and ``per_class`` as :func:`per_class_ap50`. Undefined values are
        ``None`` (``nan`` elsewhere in this module), so that ``json.dumps``
        writes standard JSON.
    """
    data = _dataset(gt, detections)
    summary = _summary(data)
    classes = _class_aps(data, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    ids = {name: cat_id for cat_id, name in data.categories.items()}
    return {
        "n_images": len(data.image_ids),
        "n_gt_boxes": sum(c.n_gt for c in classes.values()),
        "n_detections": len(data.coco_dt),
        "coco": {name: _json_float(value) for name, value in summary.stats.items()},
        "coco_lines": list(summary.lines),
        "confidence": 1.0 - alpha,
        "ci_method": f"percentile bootstrap over images, {n_bootstrap} resamples, seed {seed}",
        "per_class": {
            name: {
                "category_id": ids[name],
                "ap50": _json_float(c.ap50),
                "ci_low": _json_float(c.ci_low),
                "ci_high": _json_float(c.ci_high),
                "n_gt": c.n_gt,
                "n_images": c.n_images,
                "n_detections": c.n_detections,
            }
            for name, c in classes.items()
        },
    }


def format_detection_report(report: Mapping[str, Any]) -> str:
    """The report as the ``evaluate`` command prints it.

    The 12 COCO summary lines as pycocotools prints them, then a table of
    per-class AP50 with its interval and the counts that explain its width;
    ``n/a`` for a class without ground-truth boxes.
    """

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    classes = report["per_class"]
    width = max([len("class"), *(len(name) for name in classes)])
    level = f"{100 * report['confidence']:g} % CI"
    lines = list(report["coco_lines"])
    lines += [
        "",
        f"Per-class AP50 (IoU 0.50, area all, maxDets {MAX_DETS}); CI: {report['ci_method']}",
        f"{'class':<{width}}  {'AP50':>6}  {level:<16}  {'gt boxes':>8}  {'images':>6}",
    ]
    for name, c in classes.items():
        ci = "n/a" if c["ci_low"] is None else f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
        lines.append(
            f"{name:<{width}}  {number(c['ap50']):>6}  {ci:<16}  {c['n_gt']:>8}  {c['n_images']:>6}"
        )
    return "\n".join(lines)


def image_level_report(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    thresholds: Mapping[str, float],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per category, the image-level decision a detector's node makes: any box above threshold.

    An image is positive for a category when it has a ground-truth box of
    it, and called positive when a detection of it scores at or above the
    category's threshold; its score is its best detection's (0 without one).
    A detector's "absent" finding is about the whole image, so this is the
    unit its metrics must be read in.

    Returns
    -------
    dict
        ``{"unit": "image", "n", "per_class": {name: binary_report}}``.
    """
    from pipelines.common.metrics import binary_report

    data = _dataset(gt, detections)
    ids = [img["id"] for img in gt["images"]]
    where = {image_id: i for i, image_id in enumerate(ids)}
    per_class: dict[str, Any] = {}
    for cat_id, name in data.categories.items():
        truth = np.zeros(len(ids), dtype=np.int64)
        score = np.zeros(len(ids), dtype=np.float64)
        for ann in gt["annotations"]:
            if ann["category_id"] == cat_id:
                truth[where[ann["image_id"]]] = 1
        for det in detections:
            if det["category_id"] == cat_id and det["image_id"] in where:
                i = where[det["image_id"]]
                score[i] = max(score[i], float(det["score"]))
        per_class[name] = binary_report(
            truth, score, float(thresholds[name]), n_bootstrap=n_bootstrap, seed=seed
        )
    return {"unit": "image", "n": len(ids), "per_class": per_class}
