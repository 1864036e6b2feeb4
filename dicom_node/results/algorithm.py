"""Identity of the model that produced a result, as DICOM needs to state it.

Every result object (SR and SC) says which algorithm made it, in three places
that different consumers read:

* the SR content tree (TID 4019 Algorithm Identification, TID 1004 Device
  Observer), read by SR-aware viewers and downstream analytics;
* the Contributing Equipment Sequence and General Equipment module, where the
  IHE AI Results (AIR) profile asks result creators to identify the
  algorithm (manufacturer, model name, software version, device UID);
* the Series Description, which is what a radiologist actually sees in the
  PACS series list, and therefore where the "NOT FOR DIAGNOSTIC USE" warning
  of non-validated models must appear.

:class:`AlgorithmInfo` carries exactly what those places need, so that the
SR and SC builders cannot disagree about it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from dicom_node.results.uids import result_uid

if TYPE_CHECKING:
    from pipelines.card import LabelPerformance, ModelCard

__all__ = ["LO_MAX", "NOT_FOR_DIAGNOSTIC_USE", "AlgorithmInfo"]

#: Maximum length of a DICOM LO (Long String) value, e.g. Series Description.
LO_MAX = 64
#: Appended to every series description of a model not validated for clinical use.
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"

_KIND_WORDS: dict[str, str] = {"SR": "findings", "SC": "heatmap", "notice": ""}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_lo(field: str, value: str) -> None:
    """Reject values that cannot be written as a DICOM LO (used as such in the output)."""
    if not value or not value.strip():
        raise ValueError(f"AlgorithmInfo.{field} must not be empty")
    if len(value) > LO_MAX:
        raise ValueError(
            f"AlgorithmInfo.{field} is {len(value)} characters; DICOM LO allows {LO_MAX}. "
            f"Shorten it in the model card: {value!r}"
        )
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(
            f"AlgorithmInfo.{field} must not contain backslashes or control characters "
            f"(they are DICOM value separators): {value!r}"
        )


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model behind a result, as written into the result's DICOM headers.

    Parameters
    ----------
    name : str
        Model card name (e.g. ``"generic-demo"``); becomes the Algorithm Name,
        the Manufacturer's Model Name and the Device Observer Model Name.
    version : str
        Model card version; the Algorithm Version and first Software Versions value.
    pipeline : str
        Name of the pipeline that ran the model (recorded as an algorithm
        parameter so that a result can be traced to the code path).
    weights_sha256 : str
        sha256 of the weights file (64 hex digits). Part of :attr:`device_uid`
        so that retrained weights under an unchanged version are a different device.
    for_diagnostic_use : bool
        ``True`` only for hospital-validated, non-synthetic weights
        (``ModelCard.for_diagnostic_use``). ``False`` adds
        ``"NOT FOR DIAGNOSTIC USE"`` to every series description.
    software_version : str
        The dicom-node version string (``dicom_node.__version__``), recorded
        next to the model version so that a result can be traced to the node
        release that encoded it.
    manufacturer : str
        Manufacturer written to General Equipment, Contributing Equipment and
        the device observer. Defaults to ``"dicom-node"``.
    synthetic : bool or None
        The weights were trained on generated phantoms (the card's provenance);
        None: unknown (the card could not be read).
    clinically_validated : bool
        The hospital validated the weights for clinical use (the card's
        ``provenance.clinical_use``).
    performance : tuple of pipelines.card.LabelPerformance
        The card's headline metrics per label, unit and split: what the
        results quote next to each finding (:meth:`validation_for`).

    Raises
    ------
    ValueError
        If a field is empty, too long for a DICOM LO, or ``weights_sha256`` is
        not 64 hexadecimal digits.
    """

    name: str
    version: str
    pipeline: str
    weights_sha256: str
    for_diagnostic_use: bool
    software_version: str
    manufacturer: str = "dicom-node"
    synthetic: bool | None = None
    clinically_validated: bool = False
    performance: tuple[LabelPerformance, ...] = field(default=(), hash=False)

    def __post_init__(self) -> None:
        for name in ("name", "version", "pipeline", "software_version", "manufacturer"):
            _check_lo(name, getattr(self, name))
        sha = self.weights_sha256.lower()
        if not _SHA256.match(sha):
            raise ValueError(
                "AlgorithmInfo.weights_sha256 must be the 64 hex digits of the weights "
                f"file's sha256 (as in the model card's weights.sha256), got {self.weights_sha256!r}"
            )
        object.__setattr__(self, "weights_sha256", sha)
        if not isinstance(self.for_diagnostic_use, bool):
            raise ValueError(
                "AlgorithmInfo.for_diagnostic_use must be a bool (ModelCard.for_diagnostic_use), "
                f"got {self.for_diagnostic_use!r}"
            )

    @classmethod
    def from_card(cls, card: ModelCard, software_version: str) -> AlgorithmInfo:
        """Build from a loaded model card, so that every field comes from one place.

        Parameters
        ----------
        card : pipelines.card.ModelCard
            The card whose weights produced the result.
        software_version : str
            ``dicom_node.__version__``.
        """
        return cls(
            name=card.name,
            version=card.version,
            pipeline=card.pipeline,
            weights_sha256=card.weights.sha256,
            for_diagnostic_use=card.for_diagnostic_use,
            software_version=software_version,
            synthetic=card.provenance.synthetic,
            clinically_validated=card.provenance.clinical_use,
            performance=tuple(card.performance),
        )

    @property
    def provenance_statement(self) -> str:
        """Where the weights come from and whether they were validated, in one sentence."""
        if self.synthetic is None:
            return "The model card could not be read: training data and validation unknown."
        if self.synthetic:
            return "Trained on synthetic phantoms (demo weights); never validated on patients."
        if self.clinically_validated and self.for_diagnostic_use:
            return "Trained on clinical data; validated for clinical use by the hospital."
        return "Trained on clinical data; not validated for clinical use."

    @property
    def use_statement(self) -> str:
        """What the result is: always preliminary, and not for diagnosis unless validated."""
        if self.for_diagnostic_use:
            return "Preliminary AI result, to be confirmed by the reading radiologist."
        return (
            f"{NOT_FOR_DIAGNOSTIC_USE}: preliminary AI result of a model not validated "
            "for clinical use; it must not inform a diagnosis."
        )

    def quoted(self, label: str, unit: str | None) -> list[LabelPerformance]:
        """The entries a result quotes for ``label`` in ``unit``: held-out data (test split,
        then cross-validation) when the card has them, else its validation-split entries
        (thresholds were chosen on them, so they are named as such)."""
        from pipelines.card import SPLIT_PREFERENCE

        chosen = sorted(
            (p for p in self.performance if p.label == label and p.unit == unit),
            key=lambda p: SPLIT_PREFERENCE.index(p.split),
        )
        held_out = [p for p in chosen if p.split != "validation"]
        return held_out or chosen

    def validation_for(self, label: str, unit: str | None) -> list[str]:
        """How well the model did for ``label`` counted in ``unit``, one line per quoted split
        (:meth:`quoted`). Without any, the line says so: silence must not read as "validated"."""
        lines = [p.describe() for p in self.quoted(label, unit)]
        if lines:
            return lines
        what = f"per {unit}" if unit else "in this finding's unit"
        return [f"The model card has no metrics for {label} {what}."]

    @property
    def device_uid(self) -> str:
        """Deterministic Device UID of this exact model (name, version and weights).

        Used as the Device Observer UID in the SR and the Device UID in
        General Equipment and Contributing Equipment. It changes whenever the
        model changes (including new weights under the same version), so a
        viewer or registry that groups results by device never mixes two models.
        """
        return result_uid("algorithm-device", self.name, self.version, self.weights_sha256)

    @property
    def software_versions(self) -> list[str]:
        """Software Versions (0018,1020) values: the model version, then the node version."""
        return [self.version, f"dicom-node {self.software_version}"[:LO_MAX]]

    def series_description(self, kind: Literal["SR", "SC", "notice"]) -> str:
        """Series Description (LO, at most 64 characters) for a result series.

        Reads like ``"AI generic-demo 0.1.0 heatmap - NOT FOR DIAGNOSTIC USE"``, or
        ``"AI NOT ANALYSED hip-demo 0.1.0 - NOT FOR DIAGNOSTIC USE"`` for a notice.
        It is what the radiologist sees in the PACS series list, so it must
        name the model and, for a model not validated for clinical use, carry
        the warning. When too long, the model part is shortened (name first,
        marked with ``".."``); the warning is never cut.

        Parameters
        ----------
        kind : {"SR", "SC", "notice"}
            ``"SR"`` for the findings report, ``"SC"`` for heatmap images,
            ``"notice"`` for the SR saying the AI did not analyse the study.

        Raises
        ------
        ValueError
            If ``kind`` is not one of those.
        """
        try:
            word = _KIND_WORDS[kind]
        except KeyError:
            raise ValueError(
                f"series_description(kind) must be 'SR', 'SC' or 'notice', got {kind!r}"
            ) from None
        suffix = "" if self.for_diagnostic_use else f" - {NOT_FOR_DIAGNOSTIC_USE}"
        budget = LO_MAX - len(suffix)
        # a notice says so first, where a viewer's narrow series list still shows it
        head = "AI NOT ANALYSED " if kind == "notice" else "AI "
        tail = f" {self.version}" + (f" {word}" if word else "")
        model = f"{head}{self.name}{tail}"
        if len(model) > budget:
            # Shorten the model name first: the version and kind are short and
            # tell the radiologist which result this is.
            room = budget - len(head) - len(tail) - len("..")
            if room >= 1:
                model = f"{head}{self.name[:room].rstrip()}..{tail}"
            else:
                model = model[: budget - 2].rstrip() + ".."
        return model + suffix
