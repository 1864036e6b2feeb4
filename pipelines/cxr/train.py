"""``dicom-node train cxr-findings``: train the seed-001 detector from COCO data and write its card.

Recipe (the seed's, with what it leaves open written to the card):

* split by Patient ID into train / validation / held-out test (default
  70 / 15 / 15 % of the patients), stratified by each patient's rarest
  finding (:func:`pipelines.cxr.coco.split_by_patient`);
* input: the seed's log transform and simplest color balance
  (:mod:`pipelines.cxr.radiograph`), shorter side ``size`` pixels;
* model: torchvision Faster R-CNN, ResNet-50-FPN by default; with
  ``pretrained`` (a local file of torchvision's COCO weights: nothing is
  downloaded) the backbone's batch norm is frozen and the box predictor is
  new, as in the seed's transfer learning; otherwise everything trains from
  scratch;
* SGD, momentum 0.9 with Nesterov, lr 0.003, batch 4, 18 epochs, weight
  decay 1e-4 (the seed gives none; torchvision's reference recipe does),
  constant learning rate unless ``schedule`` says ``onecycle``;
* augmentation: rotation within +-5 degrees with the boxes rotated too, and
  brightness / contrast jitter (:func:`pipelines.common.augment.detection_augment`);
* the epoch with the best validation COCO mAP (AP@[.50:.95]) is kept;
* thresholds: per class, the box score with the best box F1 at IoU 0.5 on
  the validation images (a duplicate box on one finding counts as a false
  positive, so the node does not report one finding three times), at least
  the detector's candidate floor ``options.score_threshold``; 0.5 for a
  class without validation boxes;
* metrics: COCO summary, per-class AP50 with bootstrap 95 % intervals,
  on validation and held-out test images.

Checkpoints go to ``<out>/train/checkpoint.pt`` after every epoch; running the
same command again resumes. CUDA is used when present.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Unpack

import torch

from pipelines.card import (
    Estimate,
    ExplainerSpec,
    InputSpec,
    LabelPerformance,
    LabelSpec,
)
from pipelines.common.augment import DetectionAugmentSpec, detection_augment
from pipelines.common.detection_metrics import (
    detection_report,
    f1_thresholds,
    image_level_report,
    mean_ap,
)
from pipelines.common.metrics import label_performance, rounded
from pipelines.common.recipe import SplitRecipe, one_of
from pipelines.common.train import (
    TrainingRun,
    TrainOptions,
    lr_schedule,
    optimizer,
    steps_per_epoch,
)
from pipelines.cxr.coco import load_coco, split_by_patient
from pipelines.cxr.data import DetectionDataset, collate, predict_coco
from pipelines.cxr.labels import finding_code, finding_site
from pipelines.cxr.model import load_coco_pretrained, supported_detectors
from pipelines.cxr.pipeline import CxrOptions, detector_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CxrRecipe(SplitRecipe):
    """Every training choice; all of it is written to the card's provenance."""

    architecture: str = "fasterrcnn_resnet50_fpn"
    #: shorter side of the model input, pixels (torchvision's default)
    size: int = 800
    max_size: int = 1333
    epochs: int = 18
    batch_size: int = 4
    lr: float = 0.003
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    #: "constant" (the seed's) or "onecycle" (warm-up then cosine decay; for training from scratch)
    schedule: Literal["constant", "onecycle"] = "constant"
    augment: DetectionAugmentSpec = field(default_factory=DetectionAugmentSpec)
    #: backbone stages trained when fine-tuning (torchvision's default 3); None = all
    trainable_layers: int | None = None
    #: detector settings written to the card's options (see pipelines.cxr.pipeline)
    options: dict[str, Any] = field(default_factory=dict)
    explainer: str = "ablationcam"
    heatmap_top_k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("architecture", self.architecture, supported_detectors())
        one_of("schedule", self.schedule, ("constant", "onecycle"))


def card_options(recipe: CxrRecipe) -> CxrOptions:
    """The card ``options`` a recipe trains with (validated)."""
    return CxrOptions.model_validate(
        {
            "max_size": recipe.max_size,
            "frozen_batchnorm": bool(recipe.pretrained),
            **recipe.options,
        }
    )


def _describe(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, part in zip(("train", "validation", "test"), parts, strict=True):
        out[name] = {
            "patients": len({img["patient_id"] for img in part["images"]}),
            "images": len(part["images"]),
            "boxes": {
                cat["name"]: sum(1 for a in part["annotations"] if a["category_id"] == cat["id"])
                for cat in part["categories"]
            },
        }
    return out


def train_cxr(
    images_dir: str | Path,
    coco_json: str | Path,
    out_dir: str | Path,
    recipe: CxrRecipe | None = None,
    **options: Unpack[TrainOptions],
) -> Path:
    """Train, evaluate and write ``<out_dir>/card.yaml`` + ``weights.pt``; return the card path.

    ``images_dir`` holds the DICOM images that ``coco_json`` annotates
    (:mod:`pipelines.cxr.coco`; ``dicom-node dataset masks-to-coco`` makes one from
    binary masks); ``train/`` below ``out_dir`` holds the resumable checkpoint;
    ``recipe`` defaults to :class:`CxrRecipe`, the seed's; ``options`` are the
    :class:`~pipelines.common.train.TrainOptions`.

    Raises
    ------
    pipelines.cxr.coco.CocoError, DataSplitError
        If the annotations are invalid or the patients too few to split.
    """
    recipe = recipe or CxrRecipe()
    run = TrainingRun.start("cxr", out_dir, seed=recipe.seed, **options)

    images_dir = Path(images_dir)
    coco = load_coco(Path(coco_json), images_dir)
    parts = split_by_patient(coco, recipe.split, seed=recipe.seed, images_dir=images_dir)
    run.require_patients(
        [part["images"] for part in parts],
        len({image["patient_id"] for part in parts for image in part["images"]}),
    )
    split_info = _describe(parts)
    run.log_splits(split_info, "images")
    classes = [cat["name"] for cat in coco["categories"]]
    unknown = [c for c in classes if finding_site(c) is None]
    if unknown:
        logger.warning(
            "classes %s have no known SNOMED CT code: the card gets local 99DCMNODE codes; "
            "edit its labels to the hospital's codes",
            unknown,
        )
    settings = card_options(recipe)
    preprocessing = settings.preprocessing
    datasets = {
        key: DetectionDataset(
            part,
            images_dir,
            size=recipe.size,
            max_size=recipe.max_size,
            preprocessing=preprocessing,
            cache=recipe.cache,
        )
        for key, part in zip(("train", "val", "test"), parts, strict=True)
    }
    spec = InputSpec(size=recipe.size, channels=3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    model = detector_for(
        recipe.architecture,
        len(classes),
        spec,
        settings,
        trainable_layers=recipe.trainable_layers
        if recipe.trainable_layers is not None
        else (3 if recipe.pretrained else None),
    )
    if recipe.pretrained:
        load_coco_pretrained(model, Path(recipe.pretrained))
    steps = recipe.epochs * steps_per_epoch(len(datasets["train"]), recipe.batch_size)

    def train_step(model_: torch.nn.Module, images: Any, targets: Any) -> torch.Tensor:
        losses = model_(list(images), list(targets))
        return sum(losses.values())

    val_gt = parts[1]

    def validate(
        model_: torch.nn.Module, val_set: Any, run_device: torch.device
    ) -> tuple[float | None, float]:
        return None, mean_ap(val_gt, predict_coco(model_, val_set, run_device))

    run.log(
        f"training {recipe.architecture} at {recipe.size} px on "
        f"{len(datasets['train'])} images"
        + (" from COCO weights" if recipe.pretrained else " from scratch")
    )
    result = run.fit(
        model,
        datasets["train"],
        datasets["val"],
        recipe,
        seed=recipe.seed,
        metric="val mAP",
        optimizer_factory=optimizer(
            "sgd",
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
            trainable_only=True,
        ),
        **lr_schedule(recipe.schedule, lr=recipe.lr, epochs=recipe.epochs, steps=steps),
        augment=detection_augment(recipe.augment),
        train_step=train_step,
        validate=validate,
        collate_fn=collate,
        maximize=True,
    )

    run_device = run.torch_device
    detections = {
        key: predict_coco(model, datasets[key], run_device)
        for key in ("val", "test")
        if len(datasets[key])
    }
    chosen = f1_thresholds(parts[1], detections["val"])
    # never below the candidate floor; 0.5 where validation has no box of the class
    thresholds = [0.5 if t is None else max(t, settings.score_threshold) for t in chosen.values()]
    metrics: dict[str, Any] = {}
    performance: list[LabelPerformance] = []
    for key, split_name, part in (
        ("test", "held_out_test", parts[2]),
        ("val", "validation", parts[1]),
    ):
        if key not in detections:
            continue
        full = detection_report(
            part, detections[key], n_bootstrap=recipe.bootstrap_resamples, seed=recipe.seed
        )
        full.pop("coco_lines", None)
        metrics[split_name] = rounded(
            {**full, "unit": "box", "note": "COCO detection metrics over boxes"}
        )
        images = rounded(
            image_level_report(
                part,
                detections[key],
                dict(zip(classes, thresholds, strict=True)),
                n_bootstrap=recipe.bootstrap_resamples,
                seed=recipe.seed,
            )
        )
        metrics[split_name]["image"] = images
        performance.extend(_performance(metrics[split_name], images, split_name))
    if "held_out_test" in metrics:
        test = metrics["held_out_test"]
        run.log(
            f"held-out test: mAP {test['coco']['AP']}, AP50 {test['coco']['AP50']}; "
            + ", ".join(f"{c} AP50 {v['ap50']}" for c, v in test["per_class"].items())
        )

    return run.save(
        model,
        pipeline="cxr-findings",
        version="0.1.0",
        description=(
            "Chest radiograph findings detected with Faster R-CNN (seed 001): one box per "
            "finding, its score as the certainty."
        ),
        architecture=recipe.architecture,
        labels=[
            LabelSpec(
                name=c, code=finding_code(c), threshold=t, report=True, finding_site=finding_site(c)
            )
            for c, t in zip(classes, thresholds, strict=True)
        ],
        input=spec,
        explainer=ExplainerSpec(
            method=recipe.explainer, target_layer="backbone", top_k=recipe.heatmap_top_k
        ),
        provenance=run.provenance(
            data=f"COCO annotations {Path(coco_json).name} on DICOM images in {images_dir.name}",
            generator="pipelines.cxr.synth.write_cxr_dataset",
            seed=recipe.seed,
            recipe={
                **dataclasses.asdict(recipe),
                "pretrained": bool(recipe.pretrained),
                "loss": "torchvision Faster R-CNN losses (RPN objectness + box, classifier + box)",
                "optimizer": "SGD momentum, Nesterov" if recipe.nesterov else "SGD momentum",
                "selection": "epoch with the highest validation COCO mAP (AP@[.50:.95])",
                "thresholds": "per class, the box score with max box F1 (IoU 0.5) on validation",
                "splits": split_info,
                "best_epoch": result.best_epoch,
                "device": result.device,
                "train_seconds": round(result.seconds, 1),
                "history": [
                    {**row, "val_map": None if h.val_metric is None else round(h.val_metric, 4)}
                    for row, h in zip(result.history_rows(), result.history, strict=True)
                ],
            },
        ),
        metrics=metrics,
        performance=performance,
        options=settings.model_dump(mode="json"),
    )


def _performance(
    boxes: dict[str, Any], images: dict[str, Any], split: str
) -> list[LabelPerformance]:
    """Headline entries per class: AP50 per box (what a box is read with), and per image."""
    out = []
    for name, entry in boxes["per_class"].items():
        if int(entry["n_gt"]) == 0:  # no box of the class in this split: nothing measured
            continue
        out.append(
            LabelPerformance(
                label=name,
                unit="box",
                split=split,
                n=int(entry["n_gt"]),
                n_positive=None,  # every ground-truth box is a positive
                confidence=float(boxes["confidence"]),
                ci_method=str(boxes["ci_method"]),
                metrics={
                    "ap50": Estimate(
                        value=entry["ap50"], ci_low=entry["ci_low"], ci_high=entry["ci_high"]
                    )
                },
            )
        )
        out.append(
            label_performance(
                images["per_class"][name], label=name, unit="image", split=split, n=images["n"]
            )
        )
    return out
