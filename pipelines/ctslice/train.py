"""``dicom-node train ct-slice-classifier``: seed 000's protocol, from labelled slices to a card.

The study's protocol, as the trainer runs it:

1. **Split by patient** (by study when Patient ID is missing) into train /
   validation / held-out test (default 70 / 15 / 15 %), findings spread
   evenly (:func:`pipelines.ctslice.data.split_slices`).
2. **Parameter table**: a grid of settings from YAML (the study tried four
   per model, then tuned in one to three rounds), each trained on the
   training split and measured on the validation split; every run is a row
   of ``<out>/train/runs.csv`` (its settings, best epoch, validation loss,
   the study's metrics and ROC AUC, seconds). The **chosen setting** is the
   run with the best validation value of ``select`` (default ``accuracy``,
   the study's headline metric; ties go to the lower validation loss, then
   to the earlier run). Without a grid the recipe itself is the only run.
3. **Repeats**: with ``repeats`` N the chosen setting is trained N more
   times with seeds ``seed + 1 .. seed + N`` (the study: 40) and each run
   is measured on the held-out test split (validation when there is none);
   ``<out>/train/repeats.csv`` has one row per run and the card's
   ``metrics.<split>.repeats`` the mean and Student-t 95 % interval of every metric
   (:func:`pipelines.common.metrics.repeat_summary`), the study's table.
4. The chosen run's weights (seed ``seed``) are written with the card; its
   ``metrics`` hold the slice- and series-level tables of the held-out test
   and validation splits with bootstrap intervals
   (:func:`pipelines.ctslice.evaluate.slice_and_series_report`).

Training each run: the card's window (default abdomen WL 40 / WW 400) on
HU, resized to ``size`` and normalised with the training split's mean /
std; rotation and horizontal flip (the study's augmentation); cross-entropy
over the labels; AdamW, Adam or SGD with a one-cycle, cosine or constant
learning rate; the epoch with the lowest validation loss is kept.
Inception-v3 trains its auxiliary classifier too (``loss = main + 0.4 x
aux``, torchvision's reference recipe) and needs 299-pixel input for it.
BatchNorm layers are given ``bn_momentum`` (0.1): torchvision's MobileNet-v3
uses 0.01, tuned for long ImageNet runs; after a few hundred steps from
scratch its running statistics would still be near their initial values
and the evaluated model would call every slice one class. Residual blocks
start as the identity when training from scratch (:func:`zero_init_residual`).

Each run checkpoints to its own folder under ``<out>/train/``; running the
same command again resumes (finished runs are not retrained). The
checkpoints are removed when the card is written; the CSV files stay.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Unpack

import numpy as np
import torch
import yaml
from torch import nn

from pipelines.card import (
    CodeSpec,
    ExplainerSpec,
    InputSpec,
    LabelPerformance,
    LabelSpec,
)
from pipelines.common.aggregate import Aggregation
from pipelines.common.augment import AugmentSpec, image_augment
from pipelines.common.metrics import (
    STUDY_METRICS,
    label_performance,
    repeat_summary,
    roc_auc,
    rounded,
    study_metrics,
)
from pipelines.common.models import (
    MIN_TRAIN_SIZE,
    build_classifier,
    default_target_layer,
    supported_architectures,
)
from pipelines.common.recipe import SplitRecipe, one_of
from pipelines.common.train import (
    OPTIMIZERS,
    TrainingRun,
    TrainOptions,
    TrainResult,
    lr_schedule,
    optimizer,
    predict,
    resolve_device,
    seed_everything,
    steps_per_epoch,
)
from pipelines.ctslice.data import (
    DataError,
    LabelledSlice,
    SliceDataset,
    channel_statistics,
    label_order,
    split_slices,
)
from pipelines.ctslice.evaluate import (
    decisions,
    format_study_table,
    slice_and_series_report,
)
from pipelines.ctslice.labels import (
    ABDOMEN_WINDOW,
    CHOLECYSTITIS_CODE,
    GALLBLADDER,
    LOCAL_SCHEME,
    NORMAL_CODE,
)
from pipelines.ctslice.pipeline import PIPELINE_NAME, CtSliceOptions

logger = logging.getLogger(__name__)

#: Codes of the labels this package knows; other labels get a local code (edit the card).
KNOWN_CODES: dict[str, tuple[CodeSpec, CodeSpec | None]] = {
    "normal": (NORMAL_CODE, None),
    "cholecystitis": (CHOLECYSTITIS_CODE, GALLBLADDER),
}
#: Recipe fields a grid setting may change.
GRID_KEYS: tuple[str, ...] = (
    "architecture",
    "size",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "schedule",
    "rotation",
    "hflip",
    "aux_weight",
    "bn_momentum",
    "zero_init_residual",
)
#: Validation values ``select`` may name (all larger-is-better but ``loss``).
SELECT_METRICS: tuple[str, ...] = (*STUDY_METRICS, "roc_auc", "loss")
_LOWER_IS_BETTER = frozenset({"loss", "fpr", "fnr"})


@dataclass(frozen=True)
class SliceRecipe(SplitRecipe):
    """Every training choice; all of it is written to the card's provenance."""

    architecture: str = "mobilenet_v3_large"
    size: int = 224
    channels: int = 3
    window_center: float = ABDOMEN_WINDOW[0]
    window_width: float = ABDOMEN_WINDOW[1]
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    #: the study's augmentation: rotation (max degrees) and horizontal flip (probability)
    rotation: float = 10.0
    hflip: float = 0.5
    #: weight of Inception-v3's auxiliary loss
    aux_weight: float = 0.4
    bn_momentum: float = 0.1
    #: start residual blocks as the identity (from-scratch training only)
    zero_init_residual: bool = True
    #: threshold of every reported label
    threshold: float = 0.5
    #: validation value that picks the chosen setting of a grid
    select: str = "accuracy"
    aggregation: Aggregation = "top_k_mean"
    aggregation_k: int = 3
    max_key_slices: int = 5
    #: the kind of series the model is for (card options.contrast)
    contrast: Literal["enhanced", "unenhanced", "any"] = "any"
    #: Grad-CAM layer; "" = the architecture's last feature block
    target_layer: str = ""
    heatmap_top_k: int = 3
    #: keep windowed slices in memory (a few hundred MB for the study's 2,456 at 299 px)
    cache: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("architecture", self.architecture, supported_architectures())
        smallest = MIN_TRAIN_SIZE.get(self.architecture, 32)
        if self.size < smallest:
            raise ValueError(
                f"{self.architecture} trains at size >= {smallest} px, got {self.size}"
                + (
                    " (its auxiliary classifier needs the native 299 px input)"
                    if self.architecture == "inception_v3"
                    else ""
                )
            )
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("schedule", self.schedule, ("onecycle", "cosine", "constant"))
        one_of("select", self.select, SELECT_METRICS)
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.window_width <= 0:
            raise ValueError("epochs >= 1, batch_size >= 2, lr > 0 and window_width > 0 required")

    def setting(self) -> dict[str, Any]:
        """The values of :data:`GRID_KEYS` (a row of the parameter table)."""
        return {key: getattr(self, key) for key in GRID_KEYS}


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """Read a parameter grid: a YAML list of settings (or ``{settings: [...]}``).

    Each setting is a mapping of :data:`GRID_KEYS` to values, e.g.::

        - {architecture: mobilenet_v3_large, lr: 0.001, batch_size: 32, epochs: 20}
        - {architecture: mobilenet_v3_large, lr: 0.0003, batch_size: 16, epochs: 30}
        - {architecture: inception_v3, size: 299, lr: 0.001, optimizer: sgd}

    Raises
    ------
    DataError
        If the file is not such a list or a setting has an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"grid file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"grid file {path} is not valid YAML: {exc}") from exc
    if isinstance(raw, dict) and "settings" in raw:
        raw = raw["settings"]
    if not isinstance(raw, list) or not raw or not all(isinstance(s, dict) for s in raw):
        raise DataError(f"grid file {path} must be a non-empty list of settings (mappings)")
    for i, setting in enumerate(raw, start=1):
        unknown = sorted(set(setting) - set(GRID_KEYS))
        if unknown:
            raise DataError(
                f"grid file {path}, setting {i}: unknown key(s) {', '.join(unknown)}; "
                f"a setting may set {', '.join(GRID_KEYS)}"
            )
    return [dict(s) for s in raw]


@dataclass
class RunResult:
    """One trained run: its recipe, model (best epoch) and validation numbers."""

    recipe: SliceRecipe
    seed: int
    model: nn.Module
    train: TrainResult
    seconds: float
    spec: InputSpec
    validation: dict[str, float] = field(default_factory=dict)


class _Data:
    """The three splits as datasets, built once per input size and shared by the runs."""

    def __init__(
        self,
        parts: Sequence[Sequence[LabelledSlice]],
        labels: Sequence[str],
        recipe: SliceRecipe,
        normal: str,
    ) -> None:
        self.parts = [list(p) for p in parts]
        self.labels = tuple(labels)
        self.reported = _reported(labels, normal)
        self.recipe = recipe
        self._by_size: dict[int, tuple[InputSpec, list[SliceDataset]]] = {}

    def at(self, size: int) -> tuple[InputSpec, list[SliceDataset]]:
        """(card input spec, [train, validation, test]) at ``size`` pixels."""
        if size not in self._by_size:
            r = self.recipe
            c = r.channels
            base = InputSpec(
                size=size,
                channels=c,
                mean=[0.0] * c,
                std=[1.0] * c,
                window_center=r.window_center,
                window_width=r.window_width,
            )
            sets = [SliceDataset(p, self.labels, base, cache=r.cache) for p in self.parts]
            mean, std = channel_statistics(sets[0], seed=r.seed)
            spec = base.model_copy(update={"mean": [mean] * c, "std": [std] * c})
            self._by_size[size] = (spec, [s.with_spec(spec) for s in sets])
        return self._by_size[size]


def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale of the last BatchNorm of every residual block; return how many.

    Each residual block then starts as the identity, so a deep network
    trained from scratch starts as a shallow one and deepens as it learns
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD", 5.1; torchvision's
    ``zero_init_residual`` for ResNets). Without it, MobileNet-v3-large
    trained from scratch on a few hundred slices sat at the class prior for
    several epochs before it found the gallbladder, for some seeds for the
    whole run. Covers torchvision's ResNet blocks and the inverted residual
    blocks of MobileNet-v3 and EfficientNet; other architectures are left
    as they are (0 is returned).
    """
    from torchvision.models.efficientnet import MBConv
    from torchvision.models.mobilenetv3 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    count = 0
    for module in model.modules():
        bn: nn.Module | None = None
        if isinstance(module, Bottleneck):
            bn = module.bn3
        elif isinstance(module, BasicBlock):
            bn = module.bn2
        elif isinstance(module, InvertedResidual | MBConv) and module.use_res_connect:
            bn = module.block[-1][1]
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.zeros_(bn.weight)
            count += 1
    return count


def aux_train_step(aux_weight: float) -> Callable[[nn.Module, Any, Any], torch.Tensor]:
    """A :func:`fit` ``train_step``: cross-entropy, plus ``aux_weight`` x the auxiliary loss.

    Inception-v3 in training mode returns ``InceptionOutputs(logits,
    aux_logits)``; other models return logits and get plain cross-entropy.
    """
    loss_fn = nn.CrossEntropyLoss()

    def step(model: nn.Module, x: Any, y: Any) -> torch.Tensor:
        out = model(x)
        aux = getattr(out, "aux_logits", None)
        if aux is not None:
            return loss_fn(out.logits, y) + aux_weight * loss_fn(aux, y)
        return loss_fn(out, y)

    return step


def train_run(
    recipe: SliceRecipe,
    data: _Data,
    *,
    seed: int,
    folder: str,
    log: TrainingRun,
    tag: str,
) -> RunResult:
    """Train one setting with ``seed`` and measure it on the validation split."""
    spec, (train_set, val_set, _) = data.at(recipe.size)
    seed_everything(seed)
    model = build_classifier(
        recipe.architecture,
        len(data.labels),
        in_channels=recipe.channels,
        pretrained_path=recipe.pretrained or None,
    )
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = recipe.bn_momentum
    if recipe.zero_init_residual and not recipe.pretrained:
        zero_init_residual(model)
    steps = recipe.epochs * steps_per_epoch(len(train_set), recipe.batch_size)
    # onecycle: a quarter of the steps warm up, at least two
    schedule = lr_schedule(
        recipe.schedule,
        lr=recipe.lr,
        epochs=recipe.epochs,
        steps=steps,
        warmup=max(0.25, 2.0 / max(steps, 1)),
    )

    mean, std = spec.mean, spec.std
    result = log.fit(
        model,
        train_set,
        val_set,
        recipe,
        seed=seed,
        folder=folder,
        what=tag,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer_factory=optimizer(
            recipe.optimizer,
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.momentum > 0,
        ),
        **schedule,
        augment=image_augment(
            AugmentSpec(
                hflip=recipe.hflip,
                rotation=recipe.rotation,
                brightness=0.0,
                contrast=0.0,
                noise=0.0,
                mixup_alpha=0.0,
            ),
            mean,
            std,
        ),
        train_step=aux_train_step(recipe.aux_weight),
    )
    run = RunResult(
        recipe=recipe,
        seed=seed,
        model=model,
        train=result,
        seconds=result.seconds,
        spec=spec,
    )
    if len(val_set):
        run.validation = split_metrics(run, val_set, data.reported, log.device)
    return run


def _probabilities(run: RunResult, dataset: SliceDataset, device: str | None) -> np.ndarray:
    logits, _ = predict(
        run.model, dataset, batch_size=2 * run.recipe.batch_size, device=resolve_device(device)
    )
    return torch.softmax(logits.float(), dim=1).numpy()


def split_metrics(
    run: RunResult, dataset: SliceDataset, reported: Sequence[int], device: str | None = None
) -> dict[str, float]:
    """Slice-level study metrics, ROC AUC and cross-entropy of a run on one split.

    ``reported`` are the indices of the finding labels (the study's positive class).
    """
    probs = _probabilities(run, dataset, device)
    targets = dataset.targets()
    truth = np.isin(targets, list(reported)).astype(np.int64)
    called, score = decisions(probs, reported, [run.recipe.threshold] * probs.shape[1])
    out = study_metrics(truth, called)
    out["roc_auc"] = roc_auc(truth, score)
    picked = np.clip(probs[np.arange(len(targets)), targets], 1e-7, 1.0)
    out["loss"] = float(-np.log(picked).mean())
    return out


def _reported(labels: Sequence[str], normal: str) -> list[int]:
    return [i for i, label in enumerate(labels) if label != normal]


def _better(a: RunResult, b: RunResult, select: str) -> bool:
    """Whether run ``a`` beats ``b`` on the validation ``select`` value (ties: lower loss)."""
    va, vb = a.validation.get(select, math.nan), b.validation.get(select, math.nan)
    if math.isnan(vb) and not math.isnan(va):
        return True
    if va != vb and not math.isnan(va):
        return va < vb if select in _LOWER_IS_BETTER else va > vb
    return a.validation.get("loss", math.inf) < b.validation.get("loss", math.inf)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def _label_specs(labels: Sequence[str], normal: str, threshold: float) -> list[LabelSpec]:
    specs = []
    for label in labels:
        code, site = KNOWN_CODES.get(
            label,
            (CodeSpec(value=f"CT-{label.upper()}"[:16], scheme=LOCAL_SCHEME, meaning=label), None),
        )
        specs.append(
            LabelSpec(
                name=label,
                code=code,
                threshold=threshold,
                report=label != normal,
                finding_site=site,
            )
        )
    return specs


def _describe(parts: Sequence[Sequence[LabelledSlice]], labels: Sequence[str]) -> dict[str, Any]:
    out = {}
    for name, part in zip(("train", "validation", "test"), parts, strict=True):
        out[name] = {
            "patients": len({s.group for s in part}),
            "series": len({s.series for s in part}),
            "slices": len(part),
            "per_label": {label: sum(s.label == label for s in part) for label in labels},
        }
    return out


def train_ct_slices(
    slices: Sequence[LabelledSlice],
    out_dir: str | Path,
    recipe: SliceRecipe | None = None,
    *,
    grid: Sequence[Mapping[str, Any]] | None = None,
    repeats: int = 0,
    labels: Sequence[str] | None = None,
    normal: str = "normal",
    generator: str | None = None,
    **options: Unpack[TrainOptions],
) -> Path:
    """Run the study's protocol on labelled slices; write ``<out_dir>/card.yaml`` + weights.

    Parameters
    ----------
    slices
        The labelled slices (:mod:`pipelines.ctslice.data`).
    out_dir
        The model folder; ``train/`` below it holds runs.csv, repeats.csv and
        the resumable checkpoints.
    recipe
        Base hyper-parameters (default :class:`SliceRecipe`); each grid
        setting overrides some of them.
    grid
        Settings of the parameter table (:func:`load_grid`); None = the
        recipe alone.
    repeats
        Retrain the chosen setting this many more times and report the mean
        and 95 % interval of the study's metrics (0 = no repeats).
    labels
        Output order; default the ``normal`` label, then the others sorted.
    normal
        The label that is not a finding (``report: false``).
    generator
        The phantom writer of synthetic data, for the card's provenance.
    options
        The :class:`~pipelines.common.train.TrainOptions`.

    Raises
    ------
    DataError
        If the data cannot be read or split, or a grid setting is invalid.
    """
    recipe = recipe or SliceRecipe()
    if repeats < 0:
        raise DataError(f"repeats must be >= 0, got {repeats}")
    # each run seeds itself (the setting's seed, a repeat's seed + r)
    log = TrainingRun.start("ct-slice", out_dir, seed=None, **options)
    work = log.work
    work.mkdir(parents=True, exist_ok=True)

    order = label_order(slices, labels, normal)
    parts = split_slices(slices, recipe.split, order, normal=normal, seed=recipe.seed)
    log.require_patients(parts, len({s.group for s in slices}))
    split_info = _describe(parts, order)
    log.log_splits(split_info, "slices")
    data = _Data(parts, order, recipe, normal)
    try:
        settings = [replace(recipe, **s) for s in (grid or [{}])]
    except (TypeError, ValueError) as exc:
        raise DataError(f"invalid grid setting: {exc}") from exc

    # 1. the parameter table
    runs: list[RunResult] = []
    rows: list[dict[str, Any]] = []
    for i, setting in enumerate(settings, start=1):
        tag = f"run {i}/{len(settings)}"
        log.log(f"{tag}: {setting.setting()}")
        run = train_run(
            setting,
            data,
            seed=recipe.seed,
            folder=f"runs/{i:03d}",
            log=log,
            tag=tag,
        )
        runs.append(run)
        rows.append(
            {
                "run": i,
                **setting.setting(),
                "seed": recipe.seed,
                "best_epoch": run.train.best_epoch,
                **{f"val_{k}": v for k, v in run.validation.items()},
                "seconds": round(run.seconds, 1),
            }
        )
        _write_csv(work / "runs.csv", rows)
    chosen_index = 0
    for i in range(1, len(runs)):
        if _better(runs[i], runs[chosen_index], recipe.select):
            chosen_index = i
    chosen = runs[chosen_index]
    for i, row in enumerate(rows):
        row["chosen"] = int(i == chosen_index)
    _write_csv(work / "runs.csv", rows)
    log.log(
        f"chosen setting: run {chosen_index + 1} (validation {recipe.select} "
        f"{chosen.validation.get(recipe.select, math.nan):.4f}); parameter table in "
        f"{work / 'runs.csv'}"
    )

    spec, (_, val_set, test_set) = data.at(chosen.recipe.size)
    report_set, report_split = (
        (test_set, "held_out_test") if len(test_set) else (val_set, "validation")
    )

    # 2. repeats of the chosen setting
    metrics: dict[str, Any] = {}
    if repeats:
        repeat_rows: list[dict[str, Any]] = []
        for r in range(1, repeats + 1):
            tag = f"repeat {r}/{repeats}"
            run = train_run(
                chosen.recipe,
                data,
                seed=recipe.seed + r,
                folder=f"repeats/{r:03d}",
                log=log,
                tag=tag,
            )
            values = split_metrics(run, report_set, data.reported, log.device)
            repeat_rows.append(
                {"repeat": r, "seed": recipe.seed + r, "best_epoch": run.train.best_epoch, **values}
            )
            _write_csv(work / "repeats.csv", repeat_rows)
        summary = repeat_summary(
            [{k: row[k] for k in (*STUDY_METRICS, "roc_auc")} for row in repeat_rows]
        )
        # kept under the split the repeats were measured on (each split owns its numbers)
        metrics[report_split] = {}
        metrics[report_split]["repeats"] = rounded(
            {
                "n": repeats,
                "unit": "slice",
                "seeds": [row["seed"] for row in repeat_rows],
                "interval": "Student-t 95 % interval of the mean over the repeats",
                "summary": summary,
            }
        )
        log.log(
            f"{repeats} repeats of the chosen setting on the {report_split} slices "
            f"(mean and 95 % CI):\n" + format_study_table({chosen.recipe.architecture: summary})
        )

    # 3. the chosen run's metrics and card
    reported = data.reported
    thresholds = [recipe.threshold] * len(order)
    performance: list[LabelPerformance] = []
    for key, dataset in (("held_out_test", test_set), ("validation", val_set)):
        if not len(dataset):
            continue
        report = slice_and_series_report(
            _probabilities(chosen, dataset, log.device),
            dataset.targets(),
            dataset.series(),
            order,
            reported,
            thresholds,
            aggregation=recipe.aggregation,
            k=recipe.aggregation_k,
            n_bootstrap=recipe.bootstrap_resamples,
            seed=recipe.seed,
        )
        report.pop("_curves")
        metrics[key] = {**metrics.get(key, {}), **rounded(report)}
        if len(reported) == 1:
            # the series decision is "any reported label": one label's metrics only when
            # there is one reported label
            performance.append(
                label_performance(
                    metrics[key]["series"],
                    label=order[reported[0]],
                    unit="series",
                    split=key,
                    n=metrics[key]["series"]["n"],
                    threshold=recipe.threshold,
                )
            )
    if "held_out_test" in metrics:
        test = metrics["held_out_test"]
        log.log(
            "held-out test of the chosen run:\n"
            + format_study_table({"slice": test["slice"], "series": test["series"]})
        )
    card_options = CtSliceOptions(
        aggregation=recipe.aggregation,
        aggregation_k=recipe.aggregation_k,
        max_key_slices=recipe.max_key_slices,
        contrast=recipe.contrast,
    ).model_dump(mode="json")
    final = chosen.recipe
    card_path = log.save(
        chosen.model,
        pipeline=PIPELINE_NAME,
        version="0.1.0",
        description=(
            f"CT slice classifier (seed 000 protocol, {final.architecture}) over "
            f"{', '.join(order)}; slice probabilities aggregated per series."
        ),
        architecture=final.architecture,
        labels=_label_specs(order, normal, recipe.threshold),
        input=spec,
        explainer=ExplainerSpec(
            method="gradcam",
            target_layer=final.target_layer or default_target_layer(final.architecture),
            top_k=final.heatmap_top_k,
        ),
        provenance=log.provenance(
            data=f"{len(slices)} labelled CT slices",
            generator=generator,
            seed=recipe.seed,
            recipe={
                **asdict(final),
                "split": list(final.split),
                "pretrained": bool(final.pretrained),
                "loss": "cross-entropy"
                + (
                    f" + {final.aux_weight} x auxiliary"
                    if final.architecture == "inception_v3"
                    else ""
                ),
                "augment": f"rotation +-{final.rotation} deg, horizontal flip p={final.hflip}",
                "selection": "epoch with the lowest validation loss; setting with the best "
                f"validation {recipe.select}",
                "grid": [r.recipe.setting() for r in runs] if grid else [],
                "chosen_run": chosen_index + 1,
                "splits": split_info,
                "best_epoch": chosen.train.best_epoch,
                "device": chosen.train.device,
                "train_seconds": round(sum(r.seconds for r in runs), 1),
                "history": chosen.train.history_rows(),
            },
        ),
        metrics=metrics,
        performance=performance,
        options=card_options,
    )
    for folder in ("runs", "repeats"):
        shutil.rmtree(work / folder, ignore_errors=True)
    return card_path
