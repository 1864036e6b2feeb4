"""``dicom-node evaluate cxr-findings``: a trained detector on COCO-annotated images.

Prints the standard COCO summary (the twelve AP / AR lines the seed quotes,
computed by pycocotools) and per-class AP50 with a bootstrap 95 % interval
over images, and writes them as JSON with a PNG of the precision-recall
curves. The model is loaded exactly as the node loads it (card, weights
sha256, options) and every image goes through the node's reading and
preprocessing, so the numbers describe what the node reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.card import CardError, load_card
from pipelines.common.detection_metrics import (
    detection_report,
    format_detection_report,
    per_class_ap50,
    precision_recall_curves,
)
from pipelines.common.metrics import model_identity, write_metrics
from pipelines.common.plots import save_pr_png
from pipelines.common.train import resolve_device
from pipelines.cxr.coco import load_coco
from pipelines.cxr.data import DetectionDataset, predict_coco
from pipelines.cxr.pipeline import ChestFindings


def evaluate_cxr(
    model_dir: str | Path,
    images_dir: str | Path,
    coco_json: str | Path,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` (its ``card.yaml``, or the card itself).

    With ``out_dir``, writes ``metrics.json`` and ``precision_recall.png`` there.

    Raises
    ------
    pipelines.card.CardError
        If the card is not a ``cxr-findings`` card or its classes differ from
        the COCO categories (by name, in order).
    pipelines.cxr.coco.CocoError
        If the annotations are invalid.
    """
    card_path = Path(model_dir) / "card.yaml" if Path(model_dir).is_dir() else Path(model_dir)
    card = load_card(card_path)
    if card.pipeline != "cxr-findings":
        raise CardError(f"{card_path} is a {card.pipeline!r} card, not cxr-findings")
    images_dir = Path(images_dir)
    coco = load_coco(Path(coco_json), images_dir)
    classes = [cat["name"] for cat in coco["categories"]]
    labels = [label.name for label in card.labels]
    if classes != labels:
        raise CardError(
            f"the COCO categories {classes} are not the card's labels {labels} (same names, "
            "same order); the detector's class k is the card's k-th label"
        )
    run_device = resolve_device(device)
    pipeline = ChestFindings(card, run_device)
    dataset = DetectionDataset(
        coco,
        images_dir,
        size=card.input.size,
        max_size=pipeline.options.max_size,
        preprocessing=pipeline.options.preprocessing,
    )
    detections = predict_coco(
        pipeline.model, dataset, run_device, batch_size=pipeline.options.batch_size
    )
    report = detection_report(coco, detections, n_bootstrap=n_bootstrap, seed=seed)
    report["model"] = model_identity(card)
    report["data"] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
    if out_dir is not None:
        out = write_metrics(Path(out_dir), report, card).parent
        curves = precision_recall_curves(coco, detections)
        aps = per_class_ap50(coco, detections, n_bootstrap=1)
        save_pr_png(
            {k: (*curves[k], aps[k].ap50) for k in curves},
            out / "precision_recall.png",
            title=f"{card.name}: precision-recall at IoU 0.5",
        )
        report["files"] = [str(out / "metrics.json"), str(out / "precision_recall.png")]
    return report


def format_report(report: dict[str, Any]) -> str:
    """The CLI's text: the model, the COCO lines and the per-class table."""
    head = (
        f"{report['model']['name']} {report['model']['version']} on "
        f"{report['data']['images']} images / {report['data']['annotations']} boxes"
    )
    return head + "\n" + format_detection_report(report)
