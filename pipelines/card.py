"""Model cards: the YAML file that describes one trained model.

A card (``models/<name>/card.yaml``) says which pipeline serves the model,
its architecture, labels with their codes and thresholds, the input spec,
the weights file with its sha256, where the training data came from, and the
validation metrics measured when it was trained. The node refuses to load
weights whose sha256 does not match the card: a swapped file must never
produce results under another model's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.base import UNITS, Code, Unit

#: File names of a model folder: ``models/<name>/card.yaml`` and the weights it names.
CARD_FILE = "card.yaml"
WEIGHTS_FILE = "weights.pt"


class CardError(ValueError):
    """A model card is missing, invalid, or does not match its weights."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(_Strict):
    """A code triplet as written in a card: ``{value, scheme, meaning}``."""

    value: str
    scheme: str
    meaning: str

    def to_code(self) -> Code:
        return Code(self.value, self.scheme, self.meaning)


class LabelSpec(_Strict):
    """One output of the model."""

    name: str
    code: CodeSpec
    #: probability at or above which the finding is reported present
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: False for a background / "normal" class that is not reported as a finding
    report: bool = True
    finding_site: CodeSpec | None = None
    #: what the result says to do when the finding is present, in words a clinician reads
    #: (e.g. seed 003: "Osteoporosis suspected; DEXA of the hip recommended to confirm.")
    advice: str = Field("", max_length=1024)


class WindowSpec(_Strict):
    """One display window in modality units (HU for CT), mapped linearly to [0, 1]."""

    name: str = ""
    center: float
    width: float = Field(gt=0)


class InputSpec(_Strict):
    """How source pixels become the model's input tensor.

    Three ways, one per card: ``windows`` (one window per channel on the
    modality values, e.g. brain / subdural / bone HU windows for head CT),
    ``window_center``/``window_width`` (one fixed window replicated to every
    channel) or neither (the object's own VOI / a percentile stretch).
    """

    size: int = Field(224, gt=0)
    channels: int = Field(3, ge=1, le=3)
    #: per-channel mean / std applied after scaling to [0, 1]
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = Field(default_factory=lambda: [0.25, 0.25, 0.25])
    #: optional fixed window (centre, width) in modality units (e.g. HU); None = per-image VOI/min-max
    window_center: float | None = None
    window_width: float | None = None
    #: one window per channel on the modality values (len == channels); excludes window_center
    windows: list[WindowSpec] | None = None

    @model_validator(mode="after")
    def _windows_fit(self) -> InputSpec:
        if self.windows is not None:
            if len(self.windows) != self.channels:
                raise ValueError(
                    f"windows has {len(self.windows)} entries but channels is {self.channels}; "
                    "give one window per channel"
                )
            if self.window_center is not None or self.window_width is not None:
                raise ValueError("set either windows or window_center/window_width, not both")
        return self


class ExplainerSpec(_Strict):
    method: str = "gradcam"
    target_layer: str = "layer4"
    #: heatmaps are produced for the k images with the highest positive score
    top_k: int = Field(3, ge=0)


class WeightsSpec(_Strict):
    file: str
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower()):
            raise ValueError("must be 64 hexadecimal digits")
        return v.lower()


class Provenance(_Strict):
    #: True when the weights were trained on generated phantoms
    synthetic: bool
    #: True only for weights validated for clinical use by the hospital
    clinical_use: bool = False
    data: str = ""
    generator: str | None = None
    seed: int | None = None
    trained_at: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    #: the CPU code path the weights were trained under (:mod:`pipelines.common.codepath`):
    #: its name and the variables that capped PyTorch, MKL, oneDNN and NumPy
    code_path: dict[str, str] | None = None


#: Which data a metric was measured on: the held-out test split, the
#: validation split (used to pick thresholds or epochs, so optimistic), or
#: cross-validation folds on the training data.
Split = Literal["held_out_test", "cross_validation", "validation"]
#: The headline metrics a card may quote per label (the SR shows them by these names).
MetricName = Literal[
    "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "roc_auc", "ap50"
]
#: How the SR and the heatmap footer write each metric.
METRIC_TITLES: dict[str, str] = {
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "accuracy": "accuracy",
    "roc_auc": "ROC AUC",
    "ap50": "AP50",
}
#: Splits in the order a result prefers to quote them (held-out data first).
SPLIT_PREFERENCE: tuple[str, ...] = ("held_out_test", "cross_validation", "validation")


class Estimate(_Strict):
    """One metric's value with its confidence interval (``None``: undefined on these data)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def has_ci(self) -> bool:
        return self.value is not None and self.ci_low is not None and self.ci_high is not None


class LabelPerformance(_Strict):
    """How well the model did for one label, on one split, counted in one unit.

    The node quotes these next to every finding of ``label`` reported in
    ``unit`` (the SR's content tree, the heatmap's footer), so a radiologist
    reads how far to trust a finding in the unit it is reported in: a
    per-study finding next to per-study sensitivity, a box next to AP50 per box.
    """

    label: str
    unit: Unit
    split: Split
    #: units evaluated (studies, images, boxes...) and how many of them were positive
    n: int = Field(ge=1)
    n_positive: int | None = Field(None, ge=0)
    #: the decision threshold the metrics were computed at (None: threshold-free, e.g. AP50)
    threshold: float | None = None
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    ci_method: str = ""
    metrics: dict[MetricName, Estimate] = Field(min_length=1)

    def describe(self) -> str:
        """One line a radiologist reads: split, unit and n, then each metric with its CI."""
        where = self.split.replace("_", " ").replace("held out", "held-out")
        count = f"n={self.n}" + (
            f", {self.n_positive} positive" if self.n_positive is not None else ""
        )
        parts = []
        for name, est in self.metrics.items():
            title = METRIC_TITLES[name]
            if est.value is None:
                parts.append(f"{title} undefined")
            elif est.has_ci:
                parts.append(
                    f"{title} {est.value:.2f} ({self.confidence:.0%} CI "
                    f"{est.ci_low:.2f}-{est.ci_high:.2f})"
                )
            else:
                parts.append(f"{title} {est.value:.2f} (no CI)")
        return f"{where}, per {self.unit} ({count}): " + ", ".join(parts)


class ModelCard(_Strict):
    """The parsed contents of a ``card.yaml``."""

    name: str
    pipeline: str
    version: str
    description: str = ""
    architecture: str
    labels: list[LabelSpec]
    input: InputSpec = Field(default_factory=InputSpec)
    explainer: ExplainerSpec = Field(default_factory=ExplainerSpec)
    weights: WeightsSpec
    provenance: Provenance
    #: the detailed reports of the training run (each study's own shape); read by people
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: the headline metrics per label, each naming its unit and split: what results quote
    performance: list[LabelPerformance] = Field(default_factory=list)
    #: pipeline-specific settings (documented by each pipeline)
    options: dict[str, Any] = Field(default_factory=dict)

    #: folder the card was loaded from (weights resolve against it); not part of the YAML
    folder: Path = Field(default=Path("."), exclude=True)

    @field_validator("metrics")
    @classmethod
    def _metrics_name_split_and_unit(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        for split, section in metrics.items():
            if split not in SPLIT_PREFERENCE:
                raise ValueError(
                    f"metrics.{split}: each top-level section of metrics is the split it was "
                    f"measured on ({', '.join(SPLIT_PREFERENCE)}); move it under one of them"
                )
            _check_units(section, f"metrics.{split}", None)
        return metrics

    @model_validator(mode="after")
    def _performance_fits(self) -> ModelCard:
        names = {label.name for label in self.labels}
        unknown = sorted({p.label for p in self.performance} - names)
        if unknown:
            raise ValueError(
                f"performance names label(s) {', '.join(unknown)} that are not among the card's "
                f"labels ({', '.join(sorted(names))})"
            )
        if self.provenance.clinical_use:
            missing = [
                label.name
                for label in self.labels
                if label.report
                and not any(
                    p.label == label.name
                    and p.split != "validation"
                    and all(e.has_ci for e in p.metrics.values())
                    for p in self.performance
                )
            ]
            if missing:
                raise ValueError(
                    "provenance.clinical_use is true, but label(s) "
                    f"{', '.join(missing)} have no performance entry measured on held-out data "
                    "(split held_out_test or cross_validation) with n and a "
                    "confidence interval for every metric; evaluate the model on the hospital's "
                    "held-out data and write those entries, or set clinical_use: false"
                )
        return self

    def performance_for(self, label: str, unit: str | None) -> list[LabelPerformance]:
        """The card's metrics of ``label`` counted in ``unit``, held-out data first."""
        chosen = [p for p in self.performance if p.label == label and p.unit == unit]
        return sorted(chosen, key=lambda p: SPLIT_PREFERENCE.index(p.split))

    @property
    def weights_path(self) -> Path:
        return self.folder / self.weights.file

    @property
    def for_diagnostic_use(self) -> bool:
        """Only hospital-validated, non-synthetic weights may be labelled for diagnostic use."""
        return self.provenance.clinical_use and not self.provenance.synthetic

    @property
    def algorithm_name(self) -> str:
        return self.name


def _check_units(section: Any, where: str, unit: str | None) -> None:
    """Refuse a number in a card's ``metrics`` that no ``unit`` above it names.

    A ``unit`` key holds for its mapping and everything below it, so a split
    counted in one unit says it once and a sub-section counted in another
    (an ICH split per slice with a ``study`` section) says its own.
    """
    if isinstance(section, dict):
        if "unit" in section:
            unit = section["unit"]
            if unit not in UNITS:
                raise ValueError(
                    f"{where}.unit is {unit!r}: a unit is one of {', '.join(UNITS)}; "
                    "say more in a `note` key beside it"
                )
        for key, value in section.items():
            _check_units(value, f"{where}.{key}", unit)
    elif isinstance(section, list):
        for i, value in enumerate(section):
            _check_units(value, f"{where}[{i}]", unit)
    elif isinstance(section, (int, float)) and not isinstance(section, bool) and unit is None:
        raise ValueError(
            f"{where} is a number that names no unit: add `unit:` (one of "
            f"{', '.join(UNITS)}) to its section or a section above it"
        )


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def parse_options(card: ModelCard, options_model: type[OptionsT], pipeline: str) -> OptionsT:
    """Validate a card's pipeline-specific ``options`` with the pipeline's pydantic model.

    Raises
    ------
    CardError
        Naming each option and what is wrong with it.
    """
    try:
        return options_model.model_validate(card.options)
    except ValidationError as exc:
        problems = "; ".join(
            f"options.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise CardError(
            f"card {card.name!r} is invalid for the {pipeline} pipeline: {problems}"
        ) from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_card(path: str | Path, *, verify_weights: bool = True) -> ModelCard:
    """Read and validate a model card.

    Parameters
    ----------
    path : str or Path
        The ``card.yaml`` file.
    verify_weights : bool
        Check that the weights file exists and its sha256 matches the card.

    Raises
    ------
    CardError
        If the file is missing or invalid, or the weights do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise CardError(
            f"model card {path} does not exist; for the demo models run "
            "'dicom-node models build-demo'"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CardError(f"model card {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise CardError(f"model card {path} must be a mapping")
    try:
        card = ModelCard.model_validate({**raw, "folder": path.parent.resolve()})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise CardError(f"model card {path} is invalid: {problems}") from None
    if verify_weights:
        weights = card.weights_path
        if not weights.is_file():
            raise CardError(f"weights {weights} named by card {path} do not exist")
        actual = sha256_file(weights)
        if actual != card.weights.sha256:
            raise CardError(
                f"weights {weights} have sha256 {actual} but card {path} says "
                f"{card.weights.sha256}; refusing to load a model that is not the one the card describes"
            )
    return card


def write_card(card: ModelCard, path: str | Path) -> None:
    """Write a card as YAML (the ``folder`` field is not written)."""
    data = card.model_dump(mode="json", exclude={"folder"})
    # atomically: a node may be waiting for this card (card_state) and must never read half of it
    path = Path(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    os.replace(staging, path)


def existing_card(path: str | Path, *, force: bool) -> bool:
    """Whether a build can reuse the card at ``path`` (it exists and verifies, and not ``force``).

    Raises
    ------
    CardError
        If the card exists but does not verify (e.g. its weights changed) and
        ``force`` is False: the message says to rebuild with ``--force``.
    """
    path = Path(path)
    if force or not path.is_file():
        return False
    try:
        load_card(path)
    except CardError as exc:
        raise CardError(f"{exc}. Rebuild the demo model with force=True (--force).") from exc
    return True


#: Present in a model's folder while a process builds its card (JSON: the builder's ``pid``).
BUILDING_FILE = ".building"


def mark_building(card_path: str | Path, pid: int) -> None:
    """Say that process ``pid`` is building the card at ``card_path`` (see :func:`card_state`)."""
    folder = Path(card_path).parent
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / BUILDING_FILE
    staging = marker.with_name(f"{BUILDING_FILE}.{pid}")
    staging.write_text(json.dumps({"pid": pid, "card": Path(card_path).name}) + "\n")
    os.replace(staging, marker)


def unmark_building(card_path: str | Path) -> None:
    """The build of ``card_path`` ended (finished or failed)."""
    (Path(card_path).parent / BUILDING_FILE).unlink(missing_ok=True)


def card_state(card_path: str | Path) -> tuple[Literal["ready", "building", "missing"], str]:
    """Whether a configured card can serve jobs now, and why not: ``(state, detail)``.

    ``ready``: the card file exists (whether it verifies is checked when it
    loads). ``building``: it does not exist yet, but a live process is
    building it (:func:`mark_building`): jobs for it wait. ``missing``: no
    card and no live build (a build that died leaves a stale marker, named
    in the detail): jobs for it fail with the loader's error.
    """
    path = Path(card_path)
    if path.is_file():
        return "ready", str(path)
    marker = path.parent / BUILDING_FILE
    try:
        pid = int(json.loads(marker.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "missing", f"{path} does not exist"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "missing", f"{path} does not exist; its build (process {pid}) stopped before it"
    except PermissionError:
        pass  # alive, another user's
    return "building", f"process {pid} is building {path}"
