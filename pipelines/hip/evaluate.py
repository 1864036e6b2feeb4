"""``dicom-node evaluate hip-osteoporosis``: a trained card on labelled, boxed radiographs.

Two views of the same model, both printed as the study's classification
report (precision, recall, F1 and support per class, accuracy, macro and
weighted averages) plus the osteoporosis recall with a bootstrap 95 %
interval:

* **ground-truth crops**: the classifier on the hand-drawn neck boxes, the
  study's own setting;
* **the node**: the localiser finds the necks and the classifier runs on its
  crops, exactly as :mod:`pipelines.hip.pipeline` does
  (:func:`~pipelines.hip.pipeline.find_necks`,
  :func:`~pipelines.hip.pipeline.classify_crops`). A neck counts as found
  when the localiser's box of that side overlaps the true one with IoU >=
  0.5; the classification is scored on the found necks and the localiser
  separately: neck recall at IoU 0.5 (bootstrap interval over necks), mean
  IoU (0 for a missed neck), boxes without a true neck of their side, and
  AP50 of all candidate boxes (:func:`pipelines.common.detection_metrics.per_class_ap50`,
  bootstrap over images);
* **end to end**: what a radiologist gets, per true neck: the node's call on
  that side, and no call (not flagged) where the localiser found no neck
  there. A neck the localiser misses counts against sensitivity here, where
  the found-necks view above leaves it out; the card quotes this view.

The unit is one femoral neck (one side of one image), as the study counted
left and right femurs; intervals resample necks, so the two necks of an image
are treated as independent (they share a patient: read the interval as a
lower bound on the uncertainty).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from pipelines.card import CardError, InputSpec, load_card
from pipelines.common.detection_metrics import per_class_ap50
from pipelines.common.detector import detect
from pipelines.common.metrics import (
    binary_report,
    bootstrap_ci,
    classification_report,
    format_classification_report,
    model_identity,
    rounded,
    write_metrics,
)
from pipelines.common.radiograph import RadiographError
from pipelines.common.train import resolve_device
from pipelines.hip.codes import CLASSES, NECK_CLASS, POSITIVE
from pipelines.hip.data import CropDataset, HipDataError, HipItem, LocaliserDataset, index_hip_data
from pipelines.hip.dexa import read_labels
from pipelines.hip.model import PIPELINE, HipOptions
from pipelines.hip.pipeline import (
    HipOsteoporosis,
    NeckSearch,
    Prepared,
    classify_crops,
    find_necks,
    neck_boxes,
    prepare_radiograph,
)
from pipelines.hip.quality import exclusion_reason
from pipelines.hip.voc import read_voc_folder

Box4 = tuple[float, float, float, float]


def iou(a: Box4, b: Box4) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (continuous coordinates)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localiser_score(
    localiser: FasterRCNN,
    dataset: LocaliserDataset,
    device: torch.device | str,
    score_threshold: float,
    *,
    batch_size: int = 4,
) -> float:
    """Mean IoU of every true neck with the neck the node would keep on its side (0 if none).

    The localiser's selection metric in training: it rewards finding each
    neck once, on the right side, with a tight box, which is what the
    classifier's crop depends on.
    """
    values: list[float] = []
    localiser.to(device)
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        prepared = [dataset.prepared(i) for i in indices]
        detections = detect(localiser, [image for image, _ in prepared], device)
        for i, (_, scale), detection in zip(indices, prepared, detections, strict=True):
            item = dataset.items[i]
            found, _ = neck_boxes(
                detection,
                scale,
                item.shape,
                score_threshold,
                flipped=item.flipped,
                laterality=item.laterality,
            )
            for side, truth in item.necks.items():
                values.append(iou(found[side][0], truth) if side in found else 0.0)
    return float(np.mean(values)) if values else 0.0


def _prepared(item: HipItem, options: HipOptions) -> Prepared:
    """``item`` read and prepared for the localiser, as the node prepares it."""
    try:
        return prepare_radiograph(item.path, options.localiser)
    except RadiographError as exc:
        raise HipDataError(f"an image cannot be used: {exc}") from None


def node_refusals(items: Sequence[HipItem], options: HipOptions) -> dict[str, str]:
    """The images the node refuses before its models run, by SOP Instance UID, with the reason.

    Seed 003 excluded radiographs with metal implants and of poor quality
    (:mod:`pipelines.hip.quality`); the node refuses them with the card's
    ``options.exclusions``. Training leaves them out before it splits, and
    :func:`run_node` (evaluation) as it reads, so that the card's metrics are
    measured on what the node analyses.

    Raises
    ------
    HipDataError
        If an image cannot be read.
    """
    if not options.exclusions.enabled:
        return {}
    refused: dict[str, str] = {}
    for item in items:
        reason = exclusion_reason(_prepared(item, options).image, options.exclusions)
        if reason is not None:
            refused[item.sop_instance_uid] = reason
    return refused


def refusal_summary(refused: dict[str, str]) -> dict[str, Any]:
    """What a card or metrics.json says of the images left out: how many, for which reasons."""
    reasons = Counter(reason.split(" (")[0] for reason in refused.values())
    return {"images": len(refused), "reasons": dict(sorted(reasons.items()))}


def run_node(
    localiser: FasterRCNN,
    classifier: nn.Module,
    items: Sequence[HipItem],
    options: HipOptions,
    spec: InputSpec,
    device: torch.device | str,
) -> tuple[dict[str, str], list[tuple[HipItem, NeckSearch, np.ndarray]]]:
    """What the node does with every item: the ones it refuses (the study's exclusions, by
    SOP Instance UID, with the reason), and for the others, in order, the necks it finds and
    their probabilities (localiser, crops, classifier). Each image is read once.

    Raises
    ------
    HipDataError
        If an image cannot be read.
    """
    refused: dict[str, str] = {}
    out: list[tuple[HipItem, NeckSearch, np.ndarray]] = []
    batch = options.batch_size
    for start in range(0, len(items), batch):
        kept: list[tuple[HipItem, Prepared]] = []
        for item in items[start : start + batch]:
            prepared = _prepared(item, options)
            reason = exclusion_reason(prepared.image, options.exclusions)
            if reason is None:
                kept.append((item, prepared))
            else:
                refused[item.sop_instance_uid] = reason
        searches = find_necks(localiser, [p for _, p in kept], device, options) if kept else []
        for (item, _), search in zip(kept, searches, strict=True):
            probs = classify_crops(
                classifier, [n.crop for n in search.necks], spec, device, batch_size=batch
            )
            out.append((item, search, probs))
    return refused, out


def classification_summary(
    y_true: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """The study's classification report and the card's binary metrics (bootstrap intervals)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    predicted = (p >= threshold).astype(np.int64)
    return {
        "report": classification_report(y, predicted, CLASSES),
        "binary": binary_report(y, p, threshold, n_bootstrap=n_bootstrap, seed=seed),
    }


def _coco(runs: Sequence[tuple[HipItem, NeckSearch, np.ndarray]]) -> tuple[dict, list]:
    gt: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": NECK_CLASS}],
    }
    detections: list[dict[str, Any]] = []
    for image_id, (item, search, _) in enumerate(runs, start=1):
        gt["images"].append({"id": image_id})
        for x0, y0, x1, y1 in item.necks.values():
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for (x0, y0, x1, y1), score in zip(search.boxes, search.scores, strict=True):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
    return gt, detections


def evaluate_items(
    classifier: nn.Module,
    localiser: FasterRCNN,
    items: Sequence[HipItem],
    options: HipOptions,
    spec: InputSpec,
    threshold: float,
    device: torch.device | str,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Both views of the module docstring on ``items`` (plain types, for a card or JSON).

    Images the node refuses (:func:`run_node`) are left out of both views
    and counted in ``excluded``.

    Raises
    ------
    HipDataError
        If an image cannot be read, or the node refuses every one.
    """
    refused, runs = run_node(localiser, classifier, items, options, spec, device)
    items = [item for item, _, _ in runs]
    if not items:
        raise HipDataError(
            f"the node refuses all {len(refused)} image(s) (the study's exclusions): "
            f"{refusal_summary(refused)['reasons']}"
        )
    crops = CropDataset(items, spec, margin=options.crop_margin)
    truth_crops = [crop for i in range(len(items)) for crop in crops.crops(i).values()]
    y_necks = crops.targets()
    probs = classify_crops(classifier, truth_crops, spec, device, batch_size=options.batch_size)
    report: dict[str, Any] = {
        "unit": "femoral neck",
        "note": "one femoral neck is one side of one image",
        "data": {
            "images": len(items),
            "necks": len(y_necks),
            POSITIVE: int(y_necks.sum()),
        },
        "excluded": refusal_summary(refused),
        "ground_truth_crops": classification_summary(
            y_necks, probs, threshold, n_bootstrap=n_bootstrap, seed=seed
        ),
    }

    found_iou, found_y, found_p, extra = [], [], [], 0
    # per true neck: its label and the node's call on that side (no neck found there = 0)
    every_y: list[int] = []
    every_p: list[float] = []
    for item, search, node_probs in runs:
        kept = {neck.side: (neck, p) for neck, p in zip(search.necks, node_probs, strict=True)}
        for side, truth in item.necks.items():
            overlap = iou(kept[side][0].box, truth) if side in kept else 0.0
            found_iou.append(overlap)
            every_y.append(item.label)
            every_p.append(float(kept[side][1]) if side in kept else 0.0)
            if overlap >= 0.5:
                found_y.append(item.label)
                found_p.append(float(kept[side][1]))
        extra += sum(
            1
            for side, (neck, _) in kept.items()
            if side not in item.necks or iou(neck.box, item.necks[side]) < 0.5
        )
    ious = np.asarray(found_iou, dtype=np.float64)
    hit = (ious >= 0.5).astype(np.int64)
    recall, lo, hi = bootstrap_ci(
        lambda t, _: float(np.mean(t)) if len(t) else float("nan"),
        hit,
        hit,
        n=n_bootstrap,
        seed=seed,
    )
    gt, detections = _coco(runs)
    ap = per_class_ap50(gt, detections, n_bootstrap=n_bootstrap, seed=seed)[NECK_CLASS]
    report["localiser"] = {
        "necks": int(ious.size),
        "found_iou50": int(hit.sum()),
        "recall_iou50": {"value": recall, "ci_low": lo, "ci_high": hi},
        "mean_iou": float(ious.mean()) if ious.size else float("nan"),
        "wrong_boxes": int(extra),
        "images_without_neck": sum(1 for _, search, _ in runs if not search.necks),
        "ap50": {"value": ap.ap50, "ci_low": ap.ci_low, "ci_high": ap.ci_high},
        "score_threshold": options.localiser.score_threshold,
    }
    report["node"] = (
        classification_summary(found_y, found_p, threshold, n_bootstrap=n_bootstrap, seed=seed)
        if found_y
        else {"report": None, "binary": None}
    )
    report["end_to_end"] = classification_summary(
        every_y, every_p, threshold, n_bootstrap=n_bootstrap, seed=seed
    )
    return rounded(report)


def evaluate_hip(
    model_dir: str | Path,
    dicom_dir: str | Path,
    voc_dir: str | Path,
    labels_csv: str | Path,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    test_year: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` (its ``card.yaml``, or the card itself).

    The card is loaded as the node loads it (sha256 of both weights files);
    with ``test_year`` only radiographs whose Study Date is in that year are
    used; with ``out_dir`` the report is written there as ``metrics.json``.

    Raises
    ------
    pipelines.card.CardError
        If the card is not a ``hip-osteoporosis`` card or does not verify.
    HipDataError, pipelines.hip.voc.VocError, pipelines.hip.dexa.DexaError
        If the data cannot be used or nothing is left to evaluate.
    """
    card_path = Path(model_dir) / "card.yaml" if Path(model_dir).is_dir() else Path(model_dir)
    card = load_card(card_path)
    if card.pipeline != PIPELINE:
        raise CardError(f"{card_path} is a {card.pipeline!r} card, not {PIPELINE}")
    run_device = resolve_device(device)
    pipeline = HipOsteoporosis(card, run_device)
    index = index_hip_data(dicom_dir, read_voc_folder(voc_dir), read_labels(labels_csv))
    items = [i for i in index.items if test_year is None or i.year == test_year]
    if not items:
        raise HipDataError(
            f"nothing to evaluate: {index.summary()}"
            + (f"; none from {test_year}" if test_year is not None else "")
        )
    report = evaluate_items(
        pipeline.classifier,
        pipeline.localiser,
        items,
        pipeline.options,
        card.input,
        pipeline.label.threshold,
        run_device,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    report["model"] = model_identity(card)
    report["selection"] = index.summary() + (
        f"; Study Date in {test_year}" if test_year is not None else ""
    )
    if out_dir is not None:
        write_metrics(Path(out_dir), report, card)
    return report


def format_summary(summary: dict[str, Any] | None) -> str:
    """A :func:`classification_summary` as the study printed it, plus the recall interval."""
    if not summary or summary.get("report") is None:
        return "(no necks)"
    recall = summary["binary"]["recall"]
    return (
        format_classification_report(summary["report"])
        + f"\n{POSITIVE} recall {recall['value']:.2f} "
        f"(95 % CI {recall['ci_low']:.2f}-{recall['ci_high']:.2f}, bootstrap over necks)"
    )


def format_report(report: dict[str, Any]) -> str:
    """The CLI's text: the model, the localiser, and the three classification reports."""
    loc = report["localiser"]
    rec = loc["recall_iou50"]
    lines = []
    if "model" in report:
        lines.append(
            f"{report['model']['name']} {report['model']['version']}: {report['selection']}"
        )
    lines += [
        (
            f"{report['data']['images']} images, {report['data']['necks']} femoral necks "
            f"({report['data'][POSITIVE]} {POSITIVE})"
        ),
        (
            f"localiser: {loc['found_iou50']}/{loc['necks']} necks found at IoU >= 0.5 "
            f"(recall {rec['value']:.2f}, 95 % CI {rec['ci_low']:.2f}-{rec['ci_high']:.2f}), "
            f"mean IoU {loc['mean_iou']:.2f}, {loc['wrong_boxes']} wrong box(es), "
            f"AP50 {loc['ap50']['value']:.2f}"
        ),
        "",
        "classification report, ground-truth neck boxes (the study's setting):",
        format_summary(report["ground_truth_crops"]),
        "",
        "classification report, the node (necks found by the localiser):",
        format_summary(report["node"]),
        "",
        "classification report, end to end (every true neck; no neck found = not flagged):",
        format_summary(report["end_to_end"]),
    ]
    return "\n".join(lines)
