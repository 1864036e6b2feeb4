"""A reusable supervised training loop: seeded, resumable, keeps the best epoch.

Every pipeline that ships trainable weights (the generic classifier's demo,
later multi-label or detection heads) needs the same plumbing: pick the
device, shuffle deterministically, show progress, checkpoint every epoch so
that a long run on a hospital workstation survives a reboot, and keep the
weights of the best validation epoch rather than the last. The loss,
optimizer, scheduler, augmentation and selection metric are parameters, so
the loop does not assume cross-entropy or a single label.

Determinism: every epoch draws its shuffling and augmentation from a
generator seeded with ``(seed, epoch)`` and reseeds torch's global generator
the same way, so a run resumed from a checkpoint yields the same weights as an
uninterrupted one (on the same device and thread count).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Unpack

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pipelines.common.recipe import one_of

if TYPE_CHECKING:
    from pipelines.card import Provenance

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_FORMAT = 1

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
#: A model input: one tensor, or a tuple of tensors passed as ``model(*inputs)``
#: (e.g. an image batch and the slice positions of a position-aware model).
Inputs = torch.Tensor | tuple[torch.Tensor, ...]
#: ``augment(inputs, targets, generator) -> (inputs, targets)`` on a training batch;
#: it may change targets too (Mixup).
Augment = Callable[[Inputs, torch.Tensor, torch.Generator], tuple[Inputs, torch.Tensor]]
#: ``metric(logits, targets) -> float`` on the whole validation set
ValMetric = Callable[[torch.Tensor, torch.Tensor], float]
#: ``step(model, inputs, targets) -> loss`` on one training batch already on the device,
#: for models whose training call is not ``loss_fn(model(inputs), targets)`` (detectors
#: return their own losses)
TrainStep = Callable[[nn.Module, Any, Any], torch.Tensor]
#: ``validate(model, val_set, device) -> (val_loss or None, selection metric)``, for
#: models whose validation is not a loss over concatenated logits (e.g. detection mAP)
Validate = Callable[[nn.Module, Dataset, torch.device], tuple[float | None, float]]


class DataSplitError(ValueError):
    """The data are too few to split into the parts a trainer needs."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint in ``out_dir`` belongs to a different training setup."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`fit` that are not pluggable callables.

    Parameters
    ----------
    epochs : int
        Total epochs; a resumed run trains only the missing ones.
    batch_size : int
        Training batch size (a final batch of one sample is dropped, as
        BatchNorm cannot train on it).
    seed : int
        Seed of shuffling, augmentation and torch's global generator.
    device : str or None
        ``"cuda"``, ``"cpu"``, ... or None for CUDA when available, else CPU.
    eval_batch_size : int or None
        Validation batch size; default ``2 * batch_size``.
    num_workers : int
        DataLoader worker processes (0 = in the training process).
    progress : bool
        Show a tqdm bar with the running loss.
    """

    epochs: int
    batch_size: int = 16
    seed: int = 0
    device: str | None = None
    eval_batch_size: int | None = None
    num_workers: int = 0
    progress: bool = True


@dataclass(frozen=True)
class EpochStats:
    """What happened in one epoch (1-based ``epoch``)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_metric: float | None
    seconds: float
    lr: float


@dataclass
class TrainResult:
    """Outcome of :func:`fit`; the model passed in now holds the best epoch's weights."""

    best_epoch: int
    best_metric: float | None
    history: list[EpochStats] = field(default_factory=list)
    #: epoch the run resumed after (0 for a fresh run)
    resumed_from: int = 0
    device: str = "cpu"
    #: wall time of the run, seconds (set by :meth:`TrainingRun.fit`)
    seconds: float = 0.0

    def history_rows(self) -> list[dict[str, Any]]:
        """Per-epoch losses, rounded, for a model card's provenance."""
        return [
            {
                "epoch": h.epoch,
                "train_loss": round(h.train_loss, 5),
                "val_loss": None if h.val_loss is None else round(h.val_loss, 5),
            }
            for h in self.history
        ]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python, numpy and torch, and prefer deterministic kernels.

    ``deterministic`` switches torch to deterministic algorithms process-wide
    (``warn_only``, so an op without a deterministic implementation warns
    instead of failing) and disables cuDNN autotuning.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def sgd(lr: float = 0.001, momentum: float = 0.9, weight_decay: float = 0.0) -> OptimizerFactory:
    """Optimizer factory for SGD with momentum (the seed recipe's default)."""
    return optimizer("sgd", lr=lr, momentum=momentum, weight_decay=weight_decay)


#: The optimizers a recipe may name (:func:`optimizer`).
OPTIMIZERS = ("sgd", "adamw", "adam")
#: The learning-rate schedules a recipe may name (:func:`lr_schedule`).
SCHEDULES = ("constant", "onecycle", "cosine", "step")


def optimizer(
    kind: str,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    trainable_only: bool = False,
) -> OptimizerFactory:
    """The :func:`fit` optimizer factory a recipe names: ``sgd`` (with ``momentum``, Nesterov's
    when ``nesterov``), ``adamw`` or ``adam`` (``momentum`` unused).

    ``trainable_only`` leaves out parameters that do not require gradients (a
    detector's frozen backbone stages), as torchvision's references do.
    """
    one_of("optimizer", kind, OPTIMIZERS)

    def make(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        chosen: Any = [p for p in params if p.requires_grad] if trainable_only else params
        if kind == "sgd":
            return torch.optim.SGD(
                chosen, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
            )
        adam = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        return adam(chosen, lr=lr, weight_decay=weight_decay)

    return make


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of :func:`fit` over ``n`` samples: a final batch of one
    is dropped (batch norm cannot train on it), so a one-cycle schedule's ``steps`` is
    ``epochs * steps_per_epoch(n, batch_size)``."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def lr_schedule(
    kind: str,
    *,
    lr: float,
    epochs: int,
    steps: int = 0,
    warmup: float = 0.15,
    step_size: int = 1,
    gamma: float = 0.1,
) -> dict[str, Any]:
    """:func:`fit`'s ``scheduler_factory`` and ``scheduler_interval`` for a named schedule.

    ``constant``: none. ``onecycle``: per batch, a linear warm-up over the
    ``warmup`` share of the ``steps`` to ``lr``, then cosine decay (with fewer
    than 4 steps, constant: OneCycleLR cannot split them). ``cosine``: per
    epoch, cosine decay over ``epochs``. ``step``: per epoch, ``lr`` times
    ``gamma`` every ``step_size`` epochs.
    """
    one_of("schedule", kind, SCHEDULES)
    factory: SchedulerFactory | None = None
    if kind == "onecycle" and steps >= 4:

        def factory(opt: torch.optim.Optimizer) -> Any:
            return torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=steps, pct_start=warmup
            )

        return {"scheduler_factory": factory, "scheduler_interval": "batch"}
    if kind == "cosine":

        def factory(opt: torch.optim.Optimizer) -> Any:
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)

    elif kind == "step":

        def factory(opt: torch.optim.Optimizer) -> Any:
            return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)

    return {"scheduler_factory": factory, "scheduler_interval": "epoch"}


def horizontal_flip(p: float = 0.5) -> Augment:
    """Augmentation flipping each image left-right with probability ``p``.

    Only for tasks whose labels do not depend on laterality. With tuple
    inputs the first tensor is the image batch.
    """

    def augment(
        inputs: Inputs, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[Inputs, torch.Tensor]:
        batch = inputs[0] if isinstance(inputs, tuple | list) else inputs
        flip = torch.rand(batch.shape[0], generator=generator) < p
        if flip.any():
            batch = batch.clone()
            batch[flip] = batch[flip].flip(-1)
        out = (batch, *inputs[1:]) if isinstance(inputs, tuple | list) else batch
        return out, targets

    return augment


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors in nested tuples / lists / dicts, to ``device``.

    Tuples and lists come back as tuples (model inputs) and dicts as dicts
    (detection targets); anything else is returned as is.
    """
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, tuple | list):
        return tuple(to_device(t, device) for t in inputs)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return inputs


def call_model(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model(inputs)`` or ``model(*inputs)`` for tuple inputs."""
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def stratified_kfold(
    labels: Sequence[int], k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split indices into ``k`` folds with the same class mix, for cross-validation.

    Returns
    -------
    list of (train_indices, val_indices)
        One pair per fold; every index is in exactly one validation fold.
    """
    y = np.asarray(labels)
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        for i, index in enumerate(members):
            folds[i % k].append(int(index))
    everything = np.arange(y.size)
    out = []
    for fold in folds:
        val = np.sort(np.asarray(fold, dtype=np.int64))
        out.append((np.setdiff1d(everything, val), val))
    return out


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    mixed = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Dataset | torch.Tensor,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` in eval mode over a dataset of ``(x, y)`` pairs or a tensor of inputs.

    Returns
    -------
    logits : torch.Tensor
        Concatenated outputs, on the CPU.
    targets : torch.Tensor or None
        Concatenated targets when ``data`` is a dataset, else None.
    """
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model.eval()
    if isinstance(data, torch.Tensor):
        outs = [
            model(data[i : i + batch_size].to(dev)).cpu() for i in range(0, len(data), batch_size)
        ]
        return torch.cat(outs), None
    logits, targets = [], []
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        logits.append(call_model(model, to_device(x, dev)).cpu())
        targets.append(torch.as_tensor(y))
    return torch.cat(logits), torch.cat(targets)


def _fingerprint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    n_train: int,
    n_val: int,
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (epochs may grow)."""
    return {
        "model": type(model).__name__,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "optimizer": type(optimizer).__name__,
        "optimizer_defaults": {k: repr(v) for k, v in sorted(optimizer.defaults.items())},
        "batch_size": config.batch_size,
        "seed": config.seed,
        "n_train": n_train,
        "n_val": n_val,
    }


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write then rename, so an interrupted save never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    config: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    optimizer_factory: OptimizerFactory | None = None,
    scheduler_factory: SchedulerFactory | None = None,
    augment: Augment | None = None,
    val_metric: ValMetric | None = None,
    maximize: bool = True,
    train_step: TrainStep | None = None,
    validate: Validate | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    scheduler_interval: str = "epoch",
    out_dir: Path | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``model`` and leave it holding the weights of its best validation epoch.

    Parameters
    ----------
    model : torch.nn.Module
        Moved to the resolved device.
    train_set, val_set : Dataset
        Map-style datasets of ``(input, target)`` pairs. Without ``val_set``
        the last epoch is "best".
    config : TrainConfig
        Epochs, batch size, seed, device, progress.
    loss_fn : callable, optional
        ``loss(logits, targets)``, mean-reduced; default cross-entropy. Pass
        ``nn.BCEWithLogitsLoss()`` for multi-label targets.
    optimizer_factory : callable, optional
        ``factory(model.parameters())``; default :func:`sgd` (lr 0.001, momentum 0.9).
    scheduler_factory : callable, optional
        ``factory(optimizer)``; its ``step()`` is called once per epoch, or
        after every optimizer step with ``scheduler_interval="batch"``
        (warm-up and one-cycle schedules).
    augment : callable, optional
        ``augment(batch, generator)`` applied to each training batch on the CPU.
    val_metric : callable, optional
        ``metric(logits, targets)`` on the whole validation set, used to pick
        the best epoch; default the validation loss (lower is better).
    maximize : bool
        Whether a larger ``val_metric`` (or ``validate`` metric) is better
        (ignored for the default).
    train_step : callable, optional
        ``step(model, inputs, targets) -> loss`` replacing
        ``loss_fn(model(inputs), targets)``, e.g. the sum of a torchvision
        detector's losses. Inputs and targets are moved to the device first.
    validate : callable, optional
        ``validate(model, val_set, device) -> (val_loss or None, metric)``
        replacing the default validation (loss and ``val_metric`` over the
        concatenated logits), e.g. COCO mAP of a detector.
    collate_fn : callable, optional
        The DataLoader's ``collate_fn`` for training batches (e.g. keep
        detection images and targets as lists).
    out_dir : Path, optional
        Where ``checkpoint.pt`` is written after every epoch and resumed from
        when present.
    on_epoch_end : callable, optional
        Called with each epoch's :class:`EpochStats` (e.g. to print progress).

    Returns
    -------
    TrainResult

    Raises
    ------
    CheckpointMismatchError
        If ``out_dir`` holds a checkpoint of a different setup (model, optimizer,
        batch size, seed or data size): delete it or choose another ``out_dir``.
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise ValueError("the training set is empty")
    device = resolve_device(config.device)
    model.to(device)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    optimizer = (optimizer_factory or sgd())(model.parameters())
    scheduler = scheduler_factory(optimizer) if scheduler_factory is not None else None
    if val_metric is None and validate is None:
        maximize = False
    if scheduler_interval not in ("epoch", "batch"):
        raise ValueError(
            f"scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}"
        )
    n_train = len(train_set)  # type: ignore[arg-type]
    n_val = len(val_set) if val_set is not None else 0  # type: ignore[arg-type]
    fingerprint = _fingerprint(model, optimizer, config, n_train, n_val)

    history: list[EpochStats] = []
    best_state = _state_copy(model)
    best_metric: float | None = None
    best_epoch = 0
    start = 0
    checkpoint_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if checkpoint_path is not None and checkpoint_path.is_file():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != _CHECKPOINT_FORMAT or ckpt.get("fingerprint") != fingerprint:
            raise CheckpointMismatchError(
                f"{checkpoint_path} was written by a different training setup "
                f"({ckpt.get('fingerprint')} != {fingerprint}); delete it to start over or "
                "use another output folder"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        best_state, best_metric, best_epoch = (
            ckpt["best_state"],
            ckpt["best_metric"],
            ckpt["best_epoch"],
        )
        history = [EpochStats(**h) for h in ckpt["history"]]
        start = int(ckpt["epoch"])
        _set_rng_state(ckpt["rng"])
        logger.info("resuming training from %s after epoch %d", checkpoint_path, start)

    per_batch = config.batch_size
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        generator = _epoch_generator(config.seed, epoch)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        order = torch.randperm(n_train, generator=generator).tolist()
        drop_last = n_train % per_batch == 1
        loader = DataLoader(
            train_set,
            batch_size=per_batch,
            sampler=order,
            drop_last=drop_last,
            num_workers=config.num_workers,
            collate_fn=collate_fn,
        )
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{config.epochs}",
            # None: a bar on a terminal, nothing in a log file or CI (the epoch lines are logged)
            disable=None if config.progress else True,
            leave=False,
            unit="batch",
        )
        for x, y in bar:
            if augment is not None:
                x, y = augment(x, y, generator)
            x, y = to_device(x, device), to_device(y, device)
            optimizer.zero_grad(set_to_none=True)
            if train_step is not None:
                loss = train_step(model, x, y)
            else:
                loss = loss_fn(call_model(model, x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} in epoch {epoch}; lower the learning rate"
                )
            loss.backward()
            optimizer.step()
            if scheduler is not None and scheduler_interval == "batch":
                scheduler.step()
            total += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        bar.close()
        lr = float(optimizer.param_groups[0]["lr"])
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()

        val_loss = val_score = None
        if val_set is not None and n_val > 0 and validate is not None:
            val_loss, val_score = validate(model, val_set, device)
        elif val_set is not None and n_val > 0:
            logits, val_targets = predict(
                model, val_set, batch_size=config.eval_batch_size or 2 * per_batch, device=device
            )
            if val_targets is None:
                raise ValueError(
                    "the validation set has no targets: give (inputs, target) items, "
                    "or a validate function"
                )
            val_loss = float(loss_fn(logits, val_targets))
            val_score = (
                float(val_metric(logits, val_targets)) if val_metric is not None else val_loss
            )
        stats = EpochStats(
            epoch=epoch,
            train_loss=total / max(seen, 1),
            val_loss=val_loss,
            val_metric=val_score if val_metric is not None or validate is not None else None,
            seconds=time.perf_counter() - t0,
            lr=lr,
        )
        history.append(stats)
        improved = (
            val_score is None
            or best_metric is None
            or (val_score > best_metric if maximize else val_score < best_metric)
        )
        if improved:
            best_state, best_metric, best_epoch = _state_copy(model), val_score, epoch
        logger.info(
            "epoch %d/%d train_loss=%.4f val_loss=%s val_metric=%s%s (%.1fs)",
            epoch,
            config.epochs,
            stats.train_loss,
            "n/a" if val_loss is None else f"{val_loss:.4f}",
            "n/a" if stats.val_metric is None else f"{stats.val_metric:.4f}",
            " *best*" if improved else "",
            stats.seconds,
        )
        if checkpoint_path is not None:
            checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic(
                {
                    "format": _CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "best_state": best_state,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "history": [asdict(h) for h in history],
                    "rng": _rng_state(),
                },
                checkpoint_path,
            )
        if on_epoch_end is not None:
            on_epoch_end(stats)

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        best_metric=best_metric,
        history=history,
        resumed_from=start,
        device=str(device),
    )


def save_model(model: nn.Module, out_dir: Path, **card_fields: Any) -> Path:
    """Write ``weights.pt`` and a ``card.yaml`` naming it (with its sha256); return the card path.

    ``card_fields`` are the :class:`pipelines.card.ModelCard` fields other
    than ``weights``. The card is loaded back as the node will load it, so a
    card that would not load fails here, at training time, not in production;
    the resumable checkpoint in ``<out_dir>/train`` is then removed.
    """
    from pipelines.card import (
        CARD_FILE,
        WEIGHTS_FILE,
        ModelCard,
        WeightsSpec,
        load_card,
        sha256_file,
        write_card,
    )
    from pipelines.common.codepath import active_code_path

    out_dir = Path(out_dir)
    provenance = card_fields.get("provenance")
    if provenance is not None and provenance.code_path is None:
        card_fields["provenance"] = provenance.model_copy(update={"code_path": active_code_path()})
    model.cpu()
    weights_path = out_dir / WEIGHTS_FILE
    torch.save(model.state_dict(), weights_path)
    card = ModelCard(
        **card_fields, weights=WeightsSpec(file=WEIGHTS_FILE, sha256=sha256_file(weights_path))
    )
    card_path = out_dir / CARD_FILE
    write_card(card, card_path)
    load_card(card_path)
    (out_dir / "train" / CHECKPOINT_NAME).unlink(missing_ok=True)
    return card_path


class Schedule(Protocol):
    """How long and in what batches :meth:`TrainingRun.fit` trains: any recipe has both."""

    @property
    def epochs(self) -> int: ...

    @property
    def batch_size(self) -> int: ...


class TrainOptions(TypedDict, total=False):
    """How a study's ``train_*`` runs and labels its card, beside its data and recipe.

    Every trainer takes these as keyword arguments and hands them to
    :meth:`TrainingRun.start`; they change where and how loudly it trains,
    never the weights.
    """

    #: card name; default the model folder's name
    name: str | None
    #: "cuda", "cpu", ... or None: CUDA when available, else CPU
    device: str | None
    #: show a tqdm bar with the running loss
    progress: bool
    #: the data are generated phantoms: the card says so and is never marked for clinical use
    synthetic: bool
    #: the card's description; "" = the study's own
    description: str
    #: the card's provenance note on the data; "" = one naming the input files
    data_note: str
    #: DataLoader processes reading and preparing inputs (0: in the training process)
    workers: int
    #: where progress lines go (default: this module's logger)
    say: Callable[[str], None] | None


@dataclass
class TrainingRun:
    """The bookkeeping every study's ``train_*`` shares, so that a trainer reads as its
    protocol: the model folder (``train/`` below it for checkpoints), progress lines tagged
    with the study, the :class:`TrainOptions`, the clock, and the card fields every trainer
    writes the same way.

    Start one with :meth:`start`, which also seeds every generator (before any data are
    read, as each trainer always did, so weights stay the same).
    """

    tag: str
    out: Path
    say: Callable[[str], None] | None = None
    name: str | None = None
    device: str | None = None
    progress: bool = True
    synthetic: bool = False
    description: str = ""
    data_note: str = ""
    workers: int = 0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(
        cls,
        tag: str,
        out_dir: str | Path,
        *,
        seed: int | None,
        **options: Unpack[TrainOptions],
    ) -> TrainingRun:
        """Create the model folder and, unless ``seed`` is None (a trainer that seeds each of
        its runs itself), seed torch, numpy and random."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        run = cls(tag, out, **options)
        if seed is not None:
            seed_everything(seed)
        return run

    @property
    def work(self) -> Path:
        """``<out>/train``: checkpoints and per-run tables, removed when the card is written."""
        return self.out / "train"

    @property
    def torch_device(self) -> torch.device:
        """The device the run trains and predicts on."""
        return resolve_device(self.device)

    def log(self, text: str) -> None:
        """One progress line, ``[tag] text``."""
        (self.say or logger.info)(f"[{self.tag}] {text}")

    def log_splits(self, splits: dict[str, dict[str, Any]], items: str) -> None:
        """``train: 42 patients / 840 slices, ...`` from ``{split: {patients, <items>}}``."""
        self.log(
            ", ".join(
                f"{k}: {v['patients']} patients / {v[items]} {items}" for k, v in splits.items()
            )
        )

    def require_patients(self, parts: Sequence[Sequence[Any]], patients: int) -> None:
        """Refuse a split without train or validation items, naming the ``patients`` it had.

        Raises
        ------
        DataSplitError
            A :class:`ValueError` the commands print as a data error.
        """
        if not parts[0] or not parts[1]:
            raise DataSplitError(
                f"{patients} patient(s) cannot be split into train and validation; at least 3 "
                "are needed (more for meaningful metrics)"
            )

    def epoch_reporter(
        self, epochs: int, *, what: str = "", metric: str = "val loss"
    ) -> Callable[[EpochStats], None]:
        """An ``on_epoch_end`` for :func:`fit` that logs the losses and ``metric`` (``val loss``,
        or a name for the run's ``val_metric``)."""
        prefix = f"{what} " if what else ""

        def report(stats: EpochStats) -> None:
            value = stats.val_loss if metric == "val loss" else stats.val_metric
            shown = "n/a" if value is None else f"{value:.4f}"
            self.log(
                f"{prefix}epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f}, "
                f"{metric} {shown} ({stats.seconds:.0f}s)"
            )

        return report

    def fit(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        schedule: Schedule,
        *,
        seed: int,
        folder: str = "",
        what: str = "",
        metric: str = "val loss",
        **hooks: Any,
    ) -> TrainResult:
        """:func:`fit` for ``schedule.epochs`` epochs of ``schedule.batch_size`` (a recipe) on
        this run's device, progress and workers, checkpointing under ``work/folder`` and
        reporting each epoch (an empty ``val_set`` counts as none).

        ``hooks`` are :func:`fit`'s pluggable keyword arguments (``loss_fn``,
        ``optimizer_factory``, ``augment``...). The result's ``seconds`` is the
        call's wall time.
        """
        t0 = time.perf_counter()
        epochs = schedule.epochs
        config = TrainConfig(
            epochs=epochs,
            batch_size=schedule.batch_size,
            seed=seed,
            device=self.device,
            progress=self.progress,
            num_workers=self.workers,
        )
        result = fit(
            model,
            train_set,
            val_set if val_set is not None and len(val_set) else None,  # type: ignore[arg-type]
            config,
            out_dir=self.work / folder if folder else self.work,
            on_epoch_end=self.epoch_reporter(epochs, what=what, metric=metric),
            **hooks,
        )
        result.seconds = time.perf_counter() - t0
        return result

    def provenance(
        self,
        *,
        data: str,
        seed: int,
        recipe: dict[str, Any],
        generator: str | None = None,
    ) -> Provenance:
        """The card's :class:`pipelines.card.Provenance`: never for clinical use from a trainer
        (a hospital validates and sets that), trained now, with this torch and ``recipe``.

        ``data`` describes the input unless the run has a ``data_note``; ``generator``
        (the phantom writer) is recorded for synthetic data only.
        """
        import datetime as dt

        from pipelines.card import Provenance

        return Provenance(
            synthetic=self.synthetic,
            clinical_use=False,
            data=self.data_note or data,
            generator=generator if self.synthetic else None,
            seed=seed,
            trained_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            recipe={**recipe, "torch": torch.__version__},
        )

    def save(self, model: nn.Module, *, description: str, **card_fields: Any) -> Path:
        """:func:`save_model` into the model folder under the run's card name, with the run's
        description or else ``description`` (the study's); log it and return the card path."""
        card_path = save_model(
            model,
            self.out,
            name=self.name or self.out.name,
            description=self.description or description,
            **card_fields,
        )
        return self.finish(card_path)

    def finish(self, card_path: Path) -> Path:
        """Log the card and the run's wall time; return ``card_path``."""
        self.log(f"wrote {card_path} in {time.perf_counter() - self.started:.0f}s")
        return card_path
