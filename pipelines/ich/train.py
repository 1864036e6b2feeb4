"""``dicom-node train ich``: train the seed-002 model from RSNA-format data and write its card.

Recipe (the seed's, with the choices it leaves open written to the card):

* split by patient (by study when Patient ID is missing) into train /
  validation / held-out test (default 70 / 15 / 15 %), positives and
  negatives spread evenly;
* input: brain / subdural / bone windows at ``size`` pixels, normalised with
  the per-channel mean / std of the training split;
* augmentation: horizontal flip, rotation, brightness / contrast jitter,
  Gaussian noise, Mixup alpha 0.2 (:mod:`pipelines.common.augment`);
* loss: binary cross-entropy per label weighted as the RSNA metric
  (``any`` 2, others 1); AdamW with a cosine learning-rate schedule (the seed
  names no optimizer); the epoch with the lowest validation loss is kept;
* thresholds: per label, the one that maximises F1 on the validation
  slices (0.5 when the validation split has no positive of that label);
* metrics: per-label precision, recall, F1, ROC AUC and the weighted log
  loss with bootstrap 95 % intervals on validation and held-out test slices.

Checkpoints go to ``<out>/train/checkpoint.pt`` after every epoch; running the
same command again resumes. CUDA is used when present.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import torch

from pipelines.card import ExplainerSpec, LabelPerformance, LabelSpec
from pipelines.common.augment import AugmentSpec, image_augment
from pipelines.common.metrics import choose_thresholds, multilabel_report, rounded
from pipelines.common.recipe import SplitRecipe
from pipelines.common.train import TrainingRun, TrainOptions, lr_schedule, optimizer
from pipelines.ich.data import (
    LabelledSlice,
    SliceDataset,
    channel_statistics,
    index_folder,
    read_labels,
    split_by_group,
)
from pipelines.ich.evaluate import study_performance, study_report
from pipelines.ich.labels import BRAIN, CODES, LABELS, LOSS_WEIGHTS
from pipelines.ich.model import ICHNet, WeightedBCE
from pipelines.ich.pipeline import IchOptions, TTASpec, air_fill, score_dataset
from pipelines.ich.slices import input_spec

logger = logging.getLogger(__name__)


def default_target_layer(backbone: str) -> str:
    """Grad-CAM layer of a backbone inside :class:`~pipelines.ich.model.ICHNet`."""
    return "backbone.features.-1" if backbone.startswith("efficientnet") else "backbone.layer4"


@dataclass(frozen=True)
class IchRecipe(SplitRecipe):
    """Every training choice; all of it is written to the card's provenance."""

    backbone: str = "resnet50"
    size: int = 224
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    z_features: int = 64
    hidden: int = 512
    dropout: float = 0.3
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    #: Grad-CAM layer; "" = the backbone's last block
    target_layer: str = ""
    heatmap_top_k: int = 3
    #: test-time augmentation (the seed's: average over flips and rotations), used to
    #: score validation and test and written to the card, so the node scores the same way
    tta_hflip: bool = True
    tta_rotations: tuple[float, ...] = (-10.0, 10.0)

    @property
    def tta(self) -> TTASpec:
        return TTASpec(hflip=self.tta_hflip, rotations=list(self.tta_rotations))


def _describe(parts: Sequence[Sequence[LabelledSlice]]) -> dict[str, Any]:
    out = {}
    for name, part in zip(("train", "validation", "test"), parts, strict=True):
        y = np.array([s.labels for s in part]).reshape(-1, len(LABELS))
        out[name] = {
            "patients": len({s.group for s in part}),
            "slices": len(part),
            "positives": {label: int(y[:, i].sum()) for i, label in enumerate(LABELS)},
        }
    return out


def train_ich(
    dicom_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    recipe: IchRecipe | None = None,
    **options: Unpack[TrainOptions],
) -> Path:
    """Train, evaluate and write ``<out_dir>/card.yaml`` + ``weights.pt``; return the card path.

    ``dicom_dir`` and ``labels_csv`` are RSNA-format data (:mod:`pipelines.ich.data`);
    ``train/`` below ``out_dir`` holds the resumable checkpoint; ``recipe`` defaults to
    :class:`IchRecipe`; ``options`` are the :class:`~pipelines.common.train.TrainOptions`.

    Raises
    ------
    DataError, DataSplitError
        If the data cannot be read or are too few to split.
    """
    recipe = recipe or IchRecipe()
    run = TrainingRun.start("ich", out_dir, seed=recipe.seed, **options)

    labels = read_labels(labels_csv)
    slices = index_folder(dicom_dir, labels)
    parts = split_by_group(slices, recipe.split, seed=recipe.seed)
    train_part, val_part, test_part = parts
    run.require_patients(parts, len({s.group for s in slices}))
    split_info = _describe(parts)
    run.log_splits(split_info, "slices")

    mean, std = channel_statistics(train_part, recipe.size, seed=recipe.seed)
    spec = input_spec(recipe.size, mean, std)
    run.log(f"normalisation mean {mean} std {std}")
    datasets = {
        name_: SliceDataset(part, spec, cache=recipe.cache)
        for name_, part in (("train", train_part), ("val", val_part), ("test", test_part))
    }
    model = ICHNet(
        recipe.backbone,
        len(LABELS),
        z_features=recipe.z_features,
        hidden=recipe.hidden,
        dropout=recipe.dropout,
        pretrained_path=recipe.pretrained or None,
    )
    weights = torch.tensor([LOSS_WEIGHTS[label] for label in LABELS])

    run.log(f"training {recipe.backbone} at {recipe.size} px on {len(train_part)} slices")
    result = run.fit(
        model,
        datasets["train"],
        datasets["val"],
        recipe,
        seed=recipe.seed,
        loss_fn=WeightedBCE(weights),
        optimizer_factory=optimizer("adamw", lr=recipe.lr, weight_decay=recipe.weight_decay),
        **lr_schedule("cosine", lr=recipe.lr, epochs=recipe.epochs),
        augment=image_augment(recipe.augment, mean, std),
    )

    run_device = run.torch_device
    tta = recipe.tta
    fill = air_fill(mean, std)
    probs = {
        k: score_dataset(
            model,
            datasets[k],
            batch_size=2 * recipe.batch_size,
            device=run_device,
            tta=tta,
            fill=fill,
        )
        for k in ("val", "test")
        if len(datasets[k])
    }
    thresholds = choose_thresholds(datasets["val"].targets(), probs["val"])
    loss_weights = [LOSS_WEIGHTS[label] for label in LABELS]
    metrics: dict[str, Any] = {}
    performance: list[LabelPerformance] = []
    label_specs = [
        LabelSpec(name=label, code=CODES[label], threshold=thr, report=True, finding_site=BRAIN)
        for label, thr in zip(LABELS, thresholds, strict=True)
    ]
    for key, split_name in (("test", "held_out_test"), ("val", "validation")):
        if key not in probs:
            continue
        metrics[split_name] = rounded(
            multilabel_report(
                datasets[key].targets(),
                probs[key],
                list(LABELS),
                thresholds,
                loss_weights,
                n_bootstrap=recipe.bootstrap_resamples,
                seed=recipe.seed,
            )
        )
        metrics[split_name]["unit"] = "slice"
        # the node reports per study: measure it there too, with the same thresholds
        metrics[split_name]["study"] = rounded(
            study_report(
                datasets[key].slices,
                datasets[key].targets(),
                probs[key],
                label_specs,
                IchOptions(),
                n_bootstrap=recipe.bootstrap_resamples,
                seed=recipe.seed,
            )
        )
        performance += study_performance(metrics[split_name]["study"], split_name)
    if "held_out_test" in metrics:
        test = metrics["held_out_test"]
        run.log(
            "held-out test: weighted log loss "
            f"{test['weighted_log_loss']['value']:.4f}; AUC "
            + ", ".join(
                f"{label} {test['per_label'][label]['roc_auc']['value']:.3f}" for label in LABELS
            )
        )

    card_options = IchOptions(
        z_features=recipe.z_features, hidden=recipe.hidden, dropout=recipe.dropout, tta=tta
    ).model_dump(mode="json")
    return run.save(
        model,
        pipeline="ich",
        version="0.1.0",
        description=(
            "Intracranial hemorrhage on non-contrast head CT (seed 002): six independent "
            "probabilities per slice, aggregated per study."
        ),
        architecture=recipe.backbone,
        labels=label_specs,
        input=spec,
        explainer=ExplainerSpec(
            method="gradcam",
            target_layer=recipe.target_layer or default_target_layer(recipe.backbone),
            top_k=recipe.heatmap_top_k,
        ),
        provenance=run.provenance(
            data=f"RSNA-format data from {Path(dicom_dir).name} with labels {Path(labels_csv).name}",
            generator="pipelines.ich.synth.write_rsna_dataset",
            seed=recipe.seed,
            recipe={
                **asdict(recipe),
                "augment": dataclasses.asdict(recipe.augment),
                "pretrained": bool(recipe.pretrained),
                "loss": "BCE per label weighted any 2 / others 1 (RSNA)",
                "optimizer": "AdamW, cosine schedule",
                "selection": "epoch with the lowest validation loss",
                "thresholds": (
                    "per label, max F1 on validation slices; applied to the study probability "
                    f"({IchOptions().aggregation} of its slices), checked per study in the metrics"
                ),
                "splits": split_info,
                "best_epoch": result.best_epoch,
                "device": result.device,
                "train_seconds": round(result.seconds, 1),
                "history": result.history_rows(),
            },
        ),
        metrics=metrics,
        performance=performance,
        options=card_options,
    )
