"""``dicom-node train generic`` / ``evaluate generic``: seed 004's recipe on a hospital's images.

Seed 004 is a recipe, not a data set: a torchvision ResNet-18 with a new head,
cross-entropy, SGD lr 0.001 momentum 0.9, k-fold cross-validation, accuracy,
recall, F1 and the confusion matrix. This module runs it on a folder of
images (DICOM, or PNG / JPEG for a quick start) labelled by a CSV, and writes
a complete model card, so that a hospital never writes one by hand:

1. the labelled images are split, stratified by class (and grouped by
   patient when the CSV has a ``patient`` column), into a pool and a
   held-out test share;
2. k-fold cross-validation on the pool: one model per fold, each validated
   on its own fold; the out-of-fold predictions of all folds give the
   cross-validation metrics (pooled, bootstrap intervals over images);
3. the fold model with the lowest validation loss is kept and measured once
   on the held-out test images;
4. ``card.yaml`` and ``weights.pt`` are written: labels (with local codes to
   replace by SNOMED CT where one exists), the input spec, the full recipe,
   both reports, and the ``performance`` entries the node's results quote
   (per image, one per reported class).

Images are read exactly as the node reads them (:func:`pipelines.common.preprocess.display_image`
for DICOM), so training sees what inference will feed the model.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import pydicom
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from pipelines.card import (
    CodeSpec,
    ExplainerSpec,
    InputSpec,
    LabelPerformance,
    LabelSpec,
    ModelCard,
    load_card,
)
from pipelines.common.metrics import (
    binary_report,
    classification_report,
    labels_performance,
    rounded,
    write_metrics,
)
from pipelines.common.models import build_classifier, load_weights
from pipelines.common.preprocess import display_image, to_model_input
from pipelines.common.split import grouped_split
from pipelines.common.train import (
    TrainingRun,
    TrainOptions,
    horizontal_flip,
    predict,
    sgd,
    stratified_kfold,
)
from pipelines.generic.recipe import GenericRecipe

logger = logging.getLogger(__name__)

#: Suffixes read as plain pictures (greyscale); anything else is read as DICOM.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
LOCAL_SCHEME = "99DCMNODE"


class DataError(ValueError):
    """The images or the labels file cannot be used; the message says which and why."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str
    group: str


def read_labels(images_dir: Path, labels_csv: Path) -> list[LabelledImage]:
    """The CSV's rows (``file``, ``label``, optional ``patient``) whose files exist.

    Raises
    ------
    DataError
        If the CSV lacks a column, names a missing file, or has fewer than two classes.
    """
    images_dir, labels_csv = Path(images_dir), Path(labels_csv)
    if not labels_csv.is_file():
        raise DataError(f"labels file {labels_csv} does not exist")
    with open(labels_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataError(
            f"{labels_csv} needs a header with the columns file and label (optionally patient), "
            f"found {sorted(rows[0]) if rows else 'no rows'}"
        )
    items = []
    for number, row in enumerate(rows, start=2):
        path = images_dir / row["file"]
        if not path.is_file():
            raise DataError(f"{labels_csv} line {number}: {path} does not exist")
        label = row["label"].strip()
        if not label:
            raise DataError(f"{labels_csv} line {number}: empty label")
        items.append(LabelledImage(path, label, (row.get("patient") or "").strip() or str(path)))
    if len({item.label for item in items}) < 2:
        raise DataError(f"{labels_csv} has one class only; a classifier needs at least two")
    return items


def read_image(path: Path, spec: InputSpec) -> np.ndarray:
    """One image as the node sees it: float32 in [0, 1], (Rows, Columns)."""
    if path.suffix.lower() in PICTURE_SUFFIXES:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    return display_image(pydicom.dcmread(path), spec)


def _tensors(
    items: Sequence[LabelledImage], classes: Sequence[str], spec: InputSpec
) -> TensorDataset:
    x = to_model_input([read_image(item.path, spec) for item in items], spec)
    y = torch.tensor([classes.index(item.label) for item in items], dtype=torch.long)
    return TensorDataset(x, y)


def _probabilities(model: torch.nn.Module, data: TensorDataset) -> np.ndarray:
    logits, _ = predict(model, data.tensors[0], batch_size=64, device="cpu")
    return torch.softmax(logits, dim=1).numpy()


def classes_report(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """The seed's table (accuracy, recall, F1 per class) and each reported class (a key of
    ``thresholds``) one-vs-rest at its threshold, with bootstrap intervals over images."""
    per_class = {
        name: binary_report(
            (y == classes.index(name)).astype(int),
            probs[:, classes.index(name)],
            threshold,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for name, threshold in thresholds.items()
    }
    called = probs.argmax(axis=1)
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (y, called), 1)
    return {
        "unit": "image",
        "n": int(y.size),
        "report": classification_report(y, called, list(classes)),
        # rows: true class, columns: most probable class (each class one-vs-rest at its
        # threshold, with intervals, is in per_class)
        "confusion": {"classes": list(classes), "matrix": matrix.tolist()},
        "per_class": per_class,
    }


def _performance(report: dict[str, Any], split: str) -> list[LabelPerformance]:
    names = ("sensitivity", "specificity", "ppv", "f1", "accuracy", "roc_auc")
    return labels_performance(report, unit="image", split=split, names=names)


def train_generic(
    images_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    recipe: GenericRecipe | None = None,
    *,
    normal_label: str = "normal",
    **options: Unpack[TrainOptions],
) -> Path:
    """Cross-validate, keep the best fold, test once, write the card; return its path.

    ``options`` are the :class:`~pipelines.common.train.TrainOptions`.

    Raises
    ------
    DataError
        If the data cannot be read or are too few for the folds and the test share.
    """
    recipe = recipe or GenericRecipe()
    run = TrainingRun.start("generic", out_dir, seed=recipe.seed, **options)
    items = read_labels(Path(images_dir), Path(labels_csv))
    classes = sorted({item.label for item in items})
    reported = [c for c in classes if c != normal_label]
    pool, test = grouped_split(
        items,
        (1.0 - recipe.test_fraction, recipe.test_fraction),
        group=lambda item: item.group,
        classes=lambda item: [item.label] if item.label in reported else [],
        class_order=reported,
        seed=recipe.seed,
    )
    if not test or len(pool) < recipe.folds * len(classes):
        raise DataError(
            f"{len(items)} images give {len(pool)} for {recipe.folds}-fold cross-validation "
            f"and {len(test)} held out; label more images or lower --folds / --test-fraction"
        )
    spec = InputSpec(size=recipe.size, channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    data = _tensors(pool, classes, spec)
    test_data = _tensors(test, classes, spec)
    y_pool = data.tensors[1].numpy()
    run.log(
        f"{len(classes)} classes ({', '.join(classes)}); {len(pool)} images in "
        f"{recipe.folds} folds, {len(test)} held out"
    )

    out_of_fold = np.zeros((len(pool), len(classes)), dtype=np.float64)
    best: tuple[float, int, torch.nn.Module] | None = None
    folds_report = []
    for fold, (train_idx, val_idx) in enumerate(
        stratified_kfold(y_pool.tolist(), recipe.folds, seed=recipe.seed), start=1
    ):
        model = build_classifier(recipe.architecture, len(classes))
        train_set = TensorDataset(*(t[train_idx] for t in data.tensors))
        val_set = TensorDataset(*(t[val_idx] for t in data.tensors))
        result = run.fit(
            model,
            train_set,
            val_set,
            recipe,
            seed=recipe.seed + fold,
            folder=f"fold-{fold}",
            what=f"fold {fold}/{recipe.folds}",
            loss_fn=torch.nn.CrossEntropyLoss(),
            optimizer_factory=sgd(
                lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
            ),
            augment=horizontal_flip(recipe.hflip_probability) if recipe.hflip_probability else None,
        )
        model.cpu().eval()
        out_of_fold[val_idx] = _probabilities(model, val_set)
        val_loss = min(h.val_loss for h in result.history if h.val_loss is not None)
        folds_report.append({"fold": fold, "best_epoch": result.best_epoch, "val_loss": val_loss})
        run.log(
            f"fold {fold}/{recipe.folds}: best epoch {result.best_epoch}, "
            f"validation loss {val_loss:.4f}"
        )
        if best is None or val_loss < best[0]:
            best = (val_loss, fold, model)
    assert best is not None
    _, kept, model = best

    boot = {"n_bootstrap": recipe.bootstrap_resamples, "seed": recipe.seed}
    cuts = dict.fromkeys(reported, recipe.threshold)
    cross = classes_report(y_pool, out_of_fold, classes, cuts, **boot)
    held = classes_report(
        test_data.tensors[1].numpy(), _probabilities(model, test_data), classes, cuts, **boot
    )
    run.log(
        f"held-out test: accuracy {held['report']['accuracy']:.3f}; "
        + ", ".join(f"{c} recall {held['per_class'][c]['recall']['value']:.3f}" for c in reported)
    )
    return run.save(
        model,
        pipeline="generic",
        version="0.1.0",
        description=f"Seed 004 recipe ({recipe.architecture}) over {', '.join(classes)}.",
        architecture=recipe.architecture,
        labels=[
            LabelSpec(
                name=c,
                code=CodeSpec(value=c[:16], scheme=LOCAL_SCHEME, meaning=c),
                threshold=recipe.threshold,
                report=c in reported,
            )
            for c in classes
        ],
        input=spec,
        explainer=ExplainerSpec(method="gradcam", target_layer=recipe.target_layer, top_k=3),
        provenance=run.provenance(
            data=f"{len(items)} labelled images in {Path(images_dir).name} "
            f"({Path(labels_csv).name})",
            seed=recipe.seed,
            recipe={
                **dataclasses.asdict(recipe),
                "loss": "cross-entropy",
                "optimizer": "SGD momentum",
                "protocol": f"{recipe.folds}-fold cross-validation on the pool (pooled "
                "out-of-fold predictions), the fold with the lowest validation loss kept and "
                "tested once on the held-out share",
                "folds": folds_report,
                "kept_fold": kept,
                "train_seconds": round(time.perf_counter() - run.started, 1),
            },
        ),
        metrics=rounded({"cross_validation": cross, "held_out_test": held}),
        performance=_performance(cross, "cross_validation") + _performance(held, "held_out_test"),
    )


def evaluate_generic(
    model_dir: str | Path,
    images_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure a ``generic`` card's model on labelled images; write ``metrics.json``."""
    path = Path(model_dir)
    card: ModelCard = load_card(path / "card.yaml" if path.is_dir() else path)
    classes = [label.name for label in card.labels]
    items = read_labels(Path(images_dir), Path(labels_csv))
    unknown = sorted({item.label for item in items} - set(classes))
    if unknown:
        raise DataError(f"labels {unknown} are not among the card's classes {classes}")
    model = build_classifier(card.architecture, len(classes), in_channels=card.input.channels)
    load_weights(model, card)
    data = _tensors(items, classes, card.input)
    report = classes_report(
        data.tensors[1].numpy(),
        _probabilities(model, data),
        classes,
        {label.name: label.threshold for label in card.labels if label.report},
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    write_metrics(Path(out_dir), report, card)
    return report
