"""Routing rules as written in ``config.yaml`` (``routes:``), parsed into typed models.

A rule selects series by their DICOM attributes and by the calling AE title
that sent them, and names the pipeline to run and where to send results::

    routes:
      - name: chest-xr
        match:
          Modality: [CR, DX]               # list: any of these values
          BodyPartExamined: CHEST          # exact value (case-sensitive after stripping)
          SeriesDescription: {regex: "(?i)pa|ap"}   # Python regex, searched
          SliceThickness: {range: [0.5, 5]}          # numeric, inclusive
          ContrastBolusAgent: {present: false}       # attribute absent or empty
          contrast: enhanced                 # derived by the node: enhanced | unenhanced
        calling_ae: [ORTHANC]              # optional
        pipeline: generic
        destinations: [pacs]
        shadow: false                      # true: run and keep results locally, send nothing
        fallback: false                    # true: fires only when no other rule matched the series
        final: false                       # true: when it matches, later rules are not tried
        require:                           # optional: series the study must also hold
          series: [{SeriesDescription: {regex: "(?i)lat"}}]
          wait: true                       # hold the study's completion for them (to its force deadline)
          when_missing: discard            # or proceed: what the route does without them

Rules are tried in order. Every matching non-fallback rule fires (a series may
feed several pipelines) until a matching rule marked ``final``. Fallback rules
fire only for series that no non-fallback, non-shadow rule matched (a shadow
rule never changes what production routing does).

Lower-case keys are derived by the node from several attributes
(:mod:`dicom_node.route.derived`); ``contrast`` says whether contrast was
given (:mod:`imaging.contrast` documents the decision).

Values are strict: ``Modality: true`` is an error, not ``1``. Quote values
that YAML would otherwise read as numbers or booleans (``SeriesNumber: "010"``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)
from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicom_node.route.derived import DERIVED

Scalar = StrictStr | StrictInt | StrictFloat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexMatch(_Strict):
    """``{regex: PATTERN}``: the attribute's string value contains a match (``re.search``)."""

    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
        return v


class RangeMatch(_Strict):
    """``{range: [LOW, HIGH]}``: numeric value within the inclusive range (either end may be null)."""

    range: tuple[float | None, float | None]

    @model_validator(mode="after")
    def _ordered(self) -> RangeMatch:
        lo, hi = self.range
        if lo is None and hi is None:
            raise ValueError("range needs at least one bound")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"range low {lo} is above high {hi}")
        return self


class PresenceMatch(_Strict):
    """``{present: true|false}``: the attribute exists with a non-empty value, or not."""

    present: bool


def _kind(value: Any) -> str:
    """Pick the one match kind a value can be, so an error names only that kind."""
    if isinstance(value, dict):
        for key in ("regex", "range", "present"):
            if key in value:
                return key
        return "unknown"
    if isinstance(value, list):
        return "list"
    if isinstance(value, RegexMatch):
        return "regex"
    if isinstance(value, RangeMatch):
        return "range"
    if isinstance(value, PresenceMatch):
        return "present"
    return "scalar"


class _UnknownMatch(_Strict):
    """Placeholder for a mapping with none of regex/range/present (always an error)."""

    @model_validator(mode="before")
    @classmethod
    def _explain(cls, value: Any) -> Any:
        keys = ", ".join(map(str, value)) if isinstance(value, dict) else value
        raise ValueError(f"a match mapping needs one of regex, range or present; got keys: {keys}")


MatchValue = Annotated[
    Annotated[Scalar, Tag("scalar")]
    | Annotated[list[Scalar], Tag("list")]
    | Annotated[RegexMatch, Tag("regex")]
    | Annotated[RangeMatch, Tag("range")]
    | Annotated[PresenceMatch, Tag("present")]
    | Annotated[_UnknownMatch, Tag("unknown")],
    Discriminator(_kind),
]


def _check_derived(keyword: str, spec: Any, allowed: tuple[str, ...]) -> None:
    """A derived key takes one of its values, or a list of them (not regex / range / presence)."""
    values = spec if isinstance(spec, list) else [spec]
    if not values or any(not isinstance(v, str) or v not in allowed for v in values):
        raise ValueError(
            f"{keyword!r} is derived by the node and takes one of {', '.join(allowed)} "
            f"(or a list of them), got {spec!r}"
        )


def _derived_values(v: Any) -> Any:
    """Before type validation, so that ``contrast: yes`` (YAML's true) gets this message."""
    if isinstance(v, dict):
        for keyword, spec in v.items():
            if keyword in DERIVED:
                _check_derived(keyword, spec, DERIVED[keyword].values)
    return v


def _keywords(v: dict[str, Any]) -> dict[str, Any]:
    for keyword in v:
        if keyword in DERIVED:
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(
                f"{keyword!r} is not a DICOM keyword (use the standard keyword, "
                "e.g. Modality, BodyPartExamined, SeriesDescription) nor a derived key "
                f"({', '.join(DERIVED)})"
            )
        if dictionary_VR(tag) == "SQ":
            raise ValueError(f"{keyword!r} is a sequence; rules match plain attributes only")
    return v


#: a ``match`` mapping: DICOM keyword (or derived key) → what its value must be
Match = Annotated[
    dict[str, MatchValue], BeforeValidator(_derived_values), AfterValidator(_keywords)
]


class Requirement(_Strict):
    """``require:``: series the study must hold for the route to fire (mercure's "wait for
    these series"), and what happens when they are not there.

    Each entry of ``series`` is a ``match`` mapping that some series of the
    study (any series, not only those the route selects) must satisfy.
    """

    series: list[Match] = Field(min_length=1)
    #: hold the study's completion until they arrive (at most until its force deadline)
    wait: bool = True
    #: when the study completes without them: ``discard`` (no job, an event says why) or
    #: ``proceed`` (the job runs on what is there, an event says what was missing)
    when_missing: Literal["discard", "proceed"] = "discard"


class Route(_Strict):
    """One routing rule."""

    name: str = Field(min_length=1)
    match: Match = Field(default_factory=dict)
    calling_ae: list[str] | None = None
    pipeline: str
    destinations: list[str] = Field(default_factory=list)
    shadow: bool = False
    fallback: bool = False
    final: bool = False
    require: Requirement | None = None

    @field_validator("calling_ae", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fallback_has_no_match(self) -> Route:
        if self.fallback and (self.match or self.calling_ae):
            raise ValueError("a fallback rule fires when no other rule matched; give it no match")
        return self
