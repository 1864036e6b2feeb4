"""``dicom-node train hip-osteoporosis``: train seed 003's two models and write their card.

Data: DICOM radiographs, LabelImg VOC boxes of the femoral necks and the
labels CSV of ``dicom-node dataset pair-dexa`` (:mod:`pipelines.hip.data`).

Splits (always by patient, so no patient is on both sides):

* ``test_year`` (the study's temporal split: 2018-2021 to train and
  validate, 2022 to test): images whose Study Date is in that year are the
  held-out test, earlier years the training pool, later years are left out;
  without it a ``test_fraction`` of the patients is held out;
* ``folds`` >= 2: the study's K-fold cross-validation of the classifier over
  the pool's patients, stratified by label (:func:`pipelines.common.train.stratified_kfold`
  on patients); every fold is trained and reported, and the fold with the
  lowest validation loss is kept (the study kept its best run); otherwise one
  patient-grouped split with ``val_fraction`` for validation.

Localiser: torchvision Faster R-CNN with one class (:mod:`pipelines.hip.model`)
trained on the pool's VOC boxes (patients split ``val_fraction`` for
validation; the epoch whose necks overlap the truth best, mean IoU, is kept),
SGD with momentum and Nesterov, one-cycle learning rate, small rotations
with the boxes and brightness / contrast jitter.

Classifier, the study's recipe (defaults): ResNet-18 with one output,
BCEWithLogitsLoss, SGD lr 0.001 momentum 0.9, batch 5, 50 epochs,
StepLR(step 15, gamma 0.1), 224 x 224 crops of the true neck boxes (right
femurs mirrored), rotation within +-20 degrees and a brightness change of
+-5 grey levels of 255 (the study's PNG scale) on 30 % of the crops; the
epoch with the lowest validation loss is kept. Added for the node: shifts
(8 %) and zooms (10 %) of the crops, because the node classifies crops of
the localiser's boxes (set ``translate`` and ``zoom`` to 0 for the study's
recipe alone).

Reports: per fold and on the held-out test, the study's classification
report per class and the osteoporosis recall with a bootstrap 95 % interval;
on the test also the node's view (localiser crops) and the localiser's
recall and IoU (:mod:`pipelines.hip.evaluate`). Everything measured goes
into the card. Checkpoints go to ``<out>/train/`` after every epoch;
running the same command again resumes. CUDA is used when present.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Unpack

import numpy as np
import torch
from torch import nn

from pipelines.card import ExplainerSpec, InputSpec, LabelSpec, sha256_file
from pipelines.common.augment import (
    AugmentSpec,
    DetectionAugmentSpec,
    detection_augment,
    image_augment,
)
from pipelines.common.detector import collate, load_coco_pretrained, supported_detectors
from pipelines.common.metrics import label_performance, repeat_summary, rounded
from pipelines.common.models import supported_architectures
from pipelines.common.recipe import Recipe, one_of
from pipelines.common.split import grouped_split
from pipelines.common.train import (
    TrainingRun,
    TrainOptions,
    TrainResult,
    lr_schedule,
    optimizer,
    predict,
    sgd,
    steps_per_epoch,
    stratified_kfold,
)
from pipelines.hip.codes import DEXA_ADVICE, FEMORAL_NECK, LABEL, OSTEOPOROSIS, POSITIVE
from pipelines.hip.data import (
    CropDataset,
    HipDataError,
    HipItem,
    LocaliserDataset,
    index_hip_data,
)
from pipelines.hip.dexa import read_labels
from pipelines.hip.evaluate import (
    classification_summary,
    evaluate_items,
    format_report,
    format_summary,
    localiser_score,
    node_refusals,
    refusal_summary,
)
from pipelines.hip.model import (
    LOCALISER_FILE,
    PIPELINE,
    HipOptions,
    LocaliserOptions,
    build_localiser,
    build_osteoporosis_classifier,
)
from pipelines.hip.voc import read_voc_folder

logger = logging.getLogger(__name__)

#: The study's augmentation (rotation +-20 degrees; brightness +-5 of 255 on 30 % of the
#: crops) and, for the node, shifts of up to 8 % and zooms of up to 10 %: the study cropped
#: hand-drawn boxes, the node crops the localiser's, which are never framed exactly alike.
SEED_AUGMENT = AugmentSpec(
    hflip=0.0,
    rotation=20.0,
    brightness=5.0 / 255.0,
    contrast=0.0,
    noise=0.0,
    mixup_alpha=0.0,
    brightness_probability=0.3,
    translate=0.08,
    zoom=0.1,
)


@dataclass(frozen=True)
class LocaliserRecipe:
    """How the femoral-neck localiser is trained; written to the card."""

    architecture: str = "fasterrcnn_mobilenet_v3_large_fpn"
    #: shorter side of the localiser's input, pixels (the longer at most max_size)
    size: int = 512
    max_size: int = 683
    epochs: int = 20
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: "onecycle" (warm-up then cosine, per batch) or "constant"
    schedule: Literal["constant", "onecycle"] = "onecycle"
    augment: DetectionAugmentSpec = field(
        default_factory=lambda: DetectionAugmentSpec(rotation=5.0, brightness=0.1, contrast=0.1)
    )
    #: a box at or above this score is a neck (card options.localiser.score_threshold)
    score_threshold: float = 0.5
    #: further options.localiser settings (proposal counts, NMS...)
    options: dict[str, Any] = field(default_factory=dict)
    #: local torchvision COCO weights of the architecture; "" = from scratch
    pretrained: str = ""

    def __post_init__(self) -> None:
        one_of("localiser architecture", self.architecture, supported_detectors())
        one_of("localiser schedule", self.schedule, ("constant", "onecycle"))


@dataclass(frozen=True)
class HipRecipe(Recipe):
    """Every training choice (defaults: the study's); all of it is written to the card."""

    architecture: str = "resnet18"
    size: int = 224
    channels: int = 3
    epochs: int = 50
    batch_size: int = 5
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    step_size: int = 15
    gamma: float = 0.1
    augment: AugmentSpec = SEED_AUGMENT
    #: the neck box grows by this x its size on every side before cropping
    crop_margin: float = 0.15
    #: probability at or above which osteoporosis is reported
    threshold: float = 0.5
    #: K of the cross-validation (0 or 1: one validation split)
    folds: int = 0
    #: Study Date year held out as the test (the temporal split); None = by patient
    test_year: int | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.15
    explainer: str = "gradcam"
    target_layer: str = "layer4"
    heatmap_top_k: int = 1
    localiser: LocaliserRecipe = field(default_factory=LocaliserRecipe)

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("architecture", self.architecture, supported_architectures())
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f"folds must be 0 (one split) or at least 2, got {self.folds}")
        if not 0.0 < self.val_fraction < 1.0 or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in (0, 1) and test_fraction in [0, 1), got "
                f"{self.val_fraction} and {self.test_fraction}"
            )


def _by_group(
    items: Sequence[HipItem], fractions: Sequence[float], seed: int
) -> list[list[HipItem]]:
    """A patient-grouped split stratified by osteoporosis."""
    return grouped_split(
        items,
        fractions,
        group=lambda i: i.group,
        classes=lambda i: (POSITIVE,) if i.label else (),
        class_order=[POSITIVE],
        seed=seed,
    )


def _folds(
    items: Sequence[HipItem], k: int, seed: int
) -> list[tuple[list[HipItem], list[HipItem]]]:
    """K folds over patients (a patient's label: osteoporosis on any image), stratified."""
    groups: dict[str, int] = {}
    for item in items:
        groups[item.group] = max(groups.get(item.group, 0), item.label)
    names = sorted(groups)
    if len(names) < k:
        raise HipDataError(f"{len(names)} patient(s) cannot make {k} folds; use fewer folds")
    out = []
    for _, val_idx in stratified_kfold([groups[n] for n in names], k, seed=seed):
        val_groups = {names[i] for i in val_idx}
        out.append(
            (
                [i for i in items if i.group not in val_groups],
                [i for i in items if i.group in val_groups],
            )
        )
    return out


def _describe(items: Sequence[HipItem]) -> dict[str, Any]:
    years: dict[int, int] = defaultdict(int)
    for item in items:
        if item.year is not None:
            years[item.year] += 1
    return {
        "patients": len({i.group for i in items}),
        "images": len(items),
        "necks": sum(len(i.necks) for i in items),
        f"{POSITIVE}_necks": sum(len(i.necks) for i in items if i.label),
        "years": dict(sorted(years.items())),
    }


def _localiser_options(recipe: HipRecipe, sha256: str) -> LocaliserOptions:
    loc = recipe.localiser
    return LocaliserOptions.model_validate(
        {
            "architecture": loc.architecture,
            "weights": LOCALISER_FILE,
            "sha256": sha256,
            "size": loc.size,
            "max_size": max(loc.max_size, loc.size),
            "score_threshold": loc.score_threshold,
            "frozen_batchnorm": bool(loc.pretrained),
            **loc.options,
        }
    )


def train_localiser(
    train_items: Sequence[HipItem],
    val_items: Sequence[HipItem],
    recipe: HipRecipe,
    run: TrainingRun,
) -> tuple[nn.Module, TrainResult, LocaliserOptions]:
    """Train the one-class localiser; return it (best epoch), the run and its options."""
    loc = recipe.localiser
    spec = _localiser_options(recipe, "0" * 64)
    model = build_localiser(spec, trainable_layers=3 if loc.pretrained else None)
    if loc.pretrained:
        load_coco_pretrained(model, Path(loc.pretrained))
    train_set = LocaliserDataset(
        train_items, size=spec.size, max_size=spec.max_size, cache=recipe.cache
    )
    val_set = LocaliserDataset(
        val_items, size=spec.size, max_size=spec.max_size, cache=recipe.cache
    )
    steps = loc.epochs * steps_per_epoch(len(train_set), loc.batch_size)

    def train_step(model_: nn.Module, images: Any, targets: Any) -> torch.Tensor:
        return sum(model_(list(images), list(targets)).values())

    def validate(model_: nn.Module, val: Any, run_device: torch.device) -> tuple[None, float]:
        return None, localiser_score(model_, val, run_device, loc.score_threshold)

    run.log(
        f"training the localiser ({loc.architecture} at {spec.size} px) on "
        f"{len(train_set)} images, validating on {len(val_set)}"
    )
    result = run.fit(
        model,
        train_set,
        val_set,
        loc,
        seed=recipe.seed,
        folder="localiser",
        what="localiser",
        metric="val mean neck IoU",
        optimizer_factory=optimizer(
            "sgd",
            lr=loc.lr,
            momentum=loc.momentum,
            nesterov=True,
            weight_decay=loc.weight_decay,
            trainable_only=True,
        ),
        **lr_schedule(loc.schedule, lr=loc.lr, epochs=loc.epochs, steps=steps),
        augment=detection_augment(loc.augment),
        train_step=train_step,
        validate=validate,
        collate_fn=collate,
        maximize=True,
    )
    return model, result, spec


def train_classifier(
    train_items: Sequence[HipItem],
    val_items: Sequence[HipItem],
    recipe: HipRecipe,
    spec: InputSpec,
    run: TrainingRun,
    *,
    run_seed: int,
    tag: str,
    folder: str,
) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Train the classifier on the true neck crops of ``train_items``; return it (best epoch),
    the run and its validation summary."""
    torch.manual_seed(run_seed)
    model = build_osteoporosis_classifier(
        recipe.architecture, in_channels=recipe.channels, pretrained_path=recipe.pretrained or None
    )
    train_set = CropDataset(train_items, spec, margin=recipe.crop_margin, cache=recipe.cache)
    val_set = CropDataset(val_items, spec, margin=recipe.crop_margin, cache=recipe.cache)

    result = run.fit(
        model,
        train_set,
        val_set,
        recipe,
        seed=run_seed,
        folder=folder,
        what=tag,
        loss_fn=nn.BCEWithLogitsLoss(),
        optimizer_factory=sgd(
            lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        ),
        **lr_schedule(
            "step",
            lr=recipe.lr,
            epochs=recipe.epochs,
            step_size=recipe.step_size,
            gamma=recipe.gamma,
        ),
        augment=image_augment(recipe.augment, spec.mean, spec.std),
    )
    summary: dict[str, Any] = {}
    if len(val_set):
        logits, targets = predict(model, val_set, batch_size=32, device=run.torch_device)
        if targets is None:
            raise ValueError("the validation crops have no labels")
        probs = torch.sigmoid(logits[:, 0]).numpy()
        summary = classification_summary(
            targets[:, 0].numpy().astype(np.int64),
            probs,
            recipe.threshold,
            n_bootstrap=recipe.bootstrap_resamples,
            seed=recipe.seed,
        )
        run.log(f"{tag} validation ({len(val_set)} necks):\n{format_summary(summary)}")
    return model, result, summary


def _fold_numbers(summary: dict[str, Any], result: TrainResult) -> dict[str, float]:
    if not summary:
        return {}
    report = summary["report"]
    return {
        "accuracy": report["accuracy"],
        f"{POSITIVE}_precision": report[POSITIVE]["precision"],
        f"{POSITIVE}_recall": report[POSITIVE]["recall"],
        f"{POSITIVE}_f1": report[POSITIVE]["f1"],
        "val_loss": float("nan") if result.best_metric is None else float(result.best_metric),
    }


def train_hip(
    dicom_dir: str | Path,
    voc_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    recipe: HipRecipe | None = None,
    **options: Unpack[TrainOptions],
) -> Path:
    """Train both models, evaluate them and write ``<out_dir>/card.yaml``; return its path.

    ``<out_dir>`` gets ``weights.pt`` (the classifier), ``weights-localiser.pt`` and
    the card; ``train/`` below it holds the resumable checkpoints. ``options`` are the
    :class:`~pipelines.common.train.TrainOptions`.

    Raises
    ------
    HipDataError, pipelines.hip.voc.VocError, pipelines.hip.dexa.DexaError
        If the data cannot be read or are too few to split.
    """
    recipe = recipe or HipRecipe()
    run = TrainingRun.start("hip", out_dir, seed=recipe.seed, **options)
    out = run.out

    index = index_hip_data(dicom_dir, read_voc_folder(voc_dir), read_labels(labels_csv))
    run.log(index.summary())
    # the study's exclusions, as the node applies them: train and test on what it analyses
    refused = node_refusals(index.items, HipOptions(localiser=_localiser_options(recipe, "0" * 64)))
    items = [i for i in index.items if i.sop_instance_uid not in refused]
    if refused:
        run.log(
            f"left out {len(refused)} image(s) the node refuses: "
            f"{refusal_summary(refused)['reasons']}"
        )
    if recipe.test_year is not None:
        pool = [i for i in items if i.year is not None and i.year < recipe.test_year]
        test = [i for i in items if i.year == recipe.test_year]
        left = len(items) - len(pool) - len(test)
        run.log(
            f"temporal split: train on years before {recipe.test_year} ({len(pool)} images), "
            f"test on {recipe.test_year} ({len(test)} images)"
            + (f"; {left} later or undated image(s) left out" if left else "")
        )
    elif recipe.test_fraction > 0:
        pool, test = _by_group(
            items, (1.0 - recipe.test_fraction, recipe.test_fraction), recipe.seed
        )
    else:
        pool, test = list(items), []
    if len({i.group for i in pool}) < 2:
        raise HipDataError(
            f"{len({i.group for i in pool})} patient(s) to train on; at least 2 are needed "
            f"(more for meaningful metrics): {index.summary()}"
        )
    fit_part, val_part = _by_group(
        pool, (1.0 - recipe.val_fraction, recipe.val_fraction), recipe.seed
    )
    run_device = run.torch_device

    localiser, loc_result, loc_spec = train_localiser(fit_part, val_part, recipe, run)
    localiser.cpu()
    torch.save(localiser.state_dict(), out / LOCALISER_FILE)
    loc_spec = loc_spec.model_copy(update={"sha256": sha256_file(out / LOCALISER_FILE)})
    node_options = HipOptions(localiser=loc_spec, crop_margin=recipe.crop_margin)

    c = recipe.channels
    spec = InputSpec(size=recipe.size, channels=c, mean=[0.5] * c, std=[0.25] * c)
    runs = _folds(pool, recipe.folds, recipe.seed) if recipe.folds >= 2 else [(fit_part, val_part)]
    t_cls = time.perf_counter()
    best: tuple[float, int, nn.Module, TrainResult, dict[str, Any]] | None = None
    folds_report: list[dict[str, Any]] = []
    for k, (train_items, val_items) in enumerate(runs, start=1):
        tag = f"fold {k}/{len(runs)}" if len(runs) > 1 else "classifier"
        run.log(
            f"{tag}: training {recipe.architecture} at {recipe.size} px on "
            f"{sum(len(i.necks) for i in train_items)} necks of {len(train_items)} images"
        )
        model, result, summary = train_classifier(
            train_items,
            val_items,
            recipe,
            spec,
            run,
            run_seed=recipe.seed + k - 1,
            tag=tag,
            folder=f"fold-{k}-of-{len(runs)}" if len(runs) > 1 else "classifier",
        )
        loss = float("inf") if result.best_metric is None else float(result.best_metric)
        folds_report.append(
            {
                "fold": k,
                "train": _describe(train_items),
                "validation": _describe(val_items),
                "best_epoch": result.best_epoch,
                "numbers": _fold_numbers(summary, result),
                "history": result.history_rows(),
            }
        )
        if best is None or loss < best[0]:
            best = (loss, k, model, result, summary)
    assert best is not None
    _, best_fold, model, result, val_summary = best
    classifier_seconds = time.perf_counter() - t_cls
    metrics: dict[str, Any] = {}
    if len(runs) > 1:
        numbers = [f["numbers"] for f in folds_report if f["numbers"]]
        metrics["cross_validation"] = {
            "folds": len(runs),
            "kept_fold": best_fold,
            "per_fold": [{"fold": f["fold"], **f["numbers"]} for f in folds_report],
            "summary": repeat_summary(numbers) if numbers else {},
            "ci_method": "Student t interval of the mean over folds",
            "unit": "femoral neck",
        }
        summary_text = ", ".join(
            f"{key} {value['mean']:.3f} (sd {value['sd']:.3f})"
            for key, value in metrics["cross_validation"]["summary"].items()
        )
        run.log(f"{len(runs)}-fold cross-validation, mean over folds: {summary_text}")
        run.log(f"keeping fold {best_fold} (lowest validation loss)")
    metrics["validation"] = {
        **val_summary,
        "unit": "femoral neck",
        "localiser": {
            "mean_neck_iou": loc_result.best_metric,
            "best_epoch": loc_result.best_epoch,
        },
    }

    model.to(run_device)
    localiser.to(run_device)
    if test:
        report = evaluate_items(
            model,
            localiser,
            test,
            node_options,
            spec,
            recipe.threshold,
            run_device,
            n_bootstrap=recipe.bootstrap_resamples,
            seed=recipe.seed,
        )
        metrics["held_out_test"] = report
        what = f"Study Date in {recipe.test_year}" if recipe.test_year is not None else "patients"
        run.log(f"held-out test ({what}):\n{format_report(report)}")
    localiser.cpu()
    # what results quote: per true femoral neck, as the node decides (localiser, then
    # classifier; a neck it does not find is a neck it does not flag)
    performance = [
        label_performance(entry, label=LABEL, unit="femoral neck", split=split, n=entry["n"])
        for split, entry in (
            ("held_out_test", metrics.get("held_out_test", {}).get("end_to_end", {}).get("binary")),
            ("validation", metrics.get("validation", {}).get("binary")),
        )
        if entry
    ]

    card_path = run.save(
        model,
        pipeline=PIPELINE,
        version="0.1.0",
        description=(
            "Osteoporosis per femoral neck on hip / pelvis radiographs (seed 003): a Faster "
            "R-CNN finds each neck, a ResNet-18 classifies its crop (right femurs mirrored)."
        ),
        architecture=recipe.architecture,
        labels=[
            LabelSpec(
                name=LABEL,
                code=OSTEOPOROSIS,
                threshold=recipe.threshold,
                report=True,
                finding_site=FEMORAL_NECK,
                advice=DEXA_ADVICE,
            )
        ],
        input=spec,
        explainer=ExplainerSpec(
            method=recipe.explainer, target_layer=recipe.target_layer, top_k=recipe.heatmap_top_k
        ),
        provenance=run.provenance(
            data=(
                f"radiographs in {Path(dicom_dir).name}, VOC boxes in {Path(voc_dir).name}, "
                f"DEXA labels {Path(labels_csv).name}"
            ),
            generator="pipelines.hip.synth.write_hip_dataset",
            seed=recipe.seed,
            recipe={
                **dataclasses.asdict(recipe),
                "pretrained": bool(recipe.pretrained),
                "loss": "BCEWithLogitsLoss on the one output",
                "optimizer": "SGD momentum, StepLR",
                "selection": "epoch with the lowest validation loss; with folds, the fold with "
                "the lowest validation loss",
                "localiser_selection": "epoch with the highest mean neck IoU on validation",
                "excluded": refusal_summary(refused),
                "splits": {
                    "pool": _describe(pool),
                    "localiser_train": _describe(fit_part),
                    "localiser_validation": _describe(val_part),
                    "test": _describe(test),
                },
                "folds": folds_report,
                "kept_fold": best_fold,
                "best_epoch": result.best_epoch,
                "localiser_history": [
                    {
                        **row,
                        "val_mean_iou": None if h.val_metric is None else round(h.val_metric, 4),
                    }
                    for row, h in zip(loc_result.history_rows(), loc_result.history, strict=True)
                ],
                "device": result.device,
                "torch_threads": torch.get_num_threads(),
                "localiser_train_seconds": round(loc_result.seconds, 1),
                "classifier_train_seconds": round(classifier_seconds, 1),
            },
        ),
        metrics=rounded(metrics),
        performance=performance,
        options=node_options.model_dump(mode="json"),
    )
    # the runs are complete: their checkpoints would only make a rerun skip training
    for folder in [run.work / "localiser", *run.work.glob("fold-*")]:
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(run.work / "classifier", ignore_errors=True)
    return card_path
