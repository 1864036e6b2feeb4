"""Was contrast given for a CT series? The ``contrast`` key of routing rules.

Seed 000 trained one gallbladder model on contrast-enhanced CT and another
on non-contrast CT, so the node must route each abdominal CT series to the
right one. DICOM has no single "contrast: yes/no" attribute: the
Contrast/Bolus module (PS3.3 C.7.6.4) is present when contrast was used,
but exam-level contrast data is often copied into every series of a
multiphase exam, including the plain one, and some sites type "NONE" into
Contrast/Bolus Agent. So the decision weighs several attributes, in this
order; the first rule that applies decides:

1. The series says it is plain: Series Description or Protocol Name holds a
   non-contrast term (``NON-CONTRAST``, ``NON CON``, ``W/O``, ``WITHOUT``,
   ``NO CONTRAST``, ``UNENHANCED``, ``PLAIN``, ``NATIVE``, ``PRE-CONTRAST``,
   ``NC``, ``NECT``, ``C-``) -> **unenhanced**. A technologist's series-level
   label beats exam-level contrast data copied into the series.
2. Contrast/Bolus Agent (0018,0010) is an explicit "none" (``NONE``, ``NO``,
   ``N/A``, ``NIL``, ``0``) -> **unenhanced**.
3. The series was acquired before the injection: Acquisition Time (else
   Series Time) earlier than Contrast/Bolus Start Time -> **unenhanced**
   (the plain phase of a multiphase exam).
4. The Contrast/Bolus module says contrast was given: Contrast/Bolus Agent,
   Agent Sequence, Route or Ingredient has a value, or Contrast/Bolus
   Volume or Total Dose is above 0 -> **enhanced**.
5. Series Description or Protocol Name names a contrast phase (``C+``,
   ``CONTRAST``, ``ENHANCED``, ``ARTERIAL``, ``PORTAL``, ``VENOUS``, ``PV``,
   ``DELAYED``, ``NEPHROGRAPHIC``, ``CTA``, ``ANGIO``, ``CECT``) ->
   **enhanced**.
6. Nothing says contrast -> **unenhanced**: the module is required whenever
   contrast was used, so its absence means none was.

A rule uses it like any attribute, ``match: {Modality: CT, contrast:
enhanced}``; ``dicom-node route --explain`` shows which step decided. A site
whose scanners label series differently writes its own rule instead, e.g.
``SeriesDescription: {regex: "(?i)venous"}``, or routes by
``ContrastBolusAgent: {present: true}``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from imaging.values import attribute_values

Attributes = Dataset | Mapping[str, Any]

ENHANCED = "enhanced"
UNENHANCED = "unenhanced"
#: The values a rule may ask for.
CONTRAST_STATES: tuple[str, ...] = (ENHANCED, UNENHANCED)

_DESCRIPTIONS = ("SeriesDescription", "ProtocolName")
_PLAIN = re.compile(
    r"\bNON[- ]?(?:CON(?:TRAST)?|ENH(?:ANCED)?|IV)\b|\bW/?O\b|\bWITHOUT\b|\bNO\s+(?:IV\s+)?CONTRAST\b"
    r"|\bUN-?ENHANCED\b|\bPLAIN\b|\bNATIVE?\b|\bPRE[- ]?(?:CON(?:TRAST)?|IV)\b|\bNC\b|\bNECT\b"
    r"|(?<![A-Z0-9])C-(?![A-Z0-9])"
)
_PHASE = re.compile(
    r"(?<![A-Z0-9])C\+|\bCONTRAST\b|\bENHANCED\b|\bARTERIAL\b|\bPORTAL\b|\bVENOUS\b|\bPV\b"
    r"|\bDELAYED\b|\bNEPHRO\w*|\bCTA\b|\bANGIO\w*|\bCECT\b|\bW/\s*(?:IV\s*)?CONTRAST\b"
)
_NONE_AGENT = frozenset({"NONE", "NO", "N/A", "NA", "NIL", "0", "NO CONTRAST", "NOT GIVEN"})
_INGREDIENT = ("ContrastBolusIngredient",)
_AMOUNTS = ("ContrastBolusVolume", "ContrastBolusTotalDose")


@dataclass(frozen=True)
class ContrastDecision:
    """``state`` (:data:`ENHANCED` or :data:`UNENHANCED`) and the attribute that decided it."""

    state: str
    because: str


def _first(attrs: Attributes, keyword: str) -> str | None:
    values = attribute_values(attrs, keyword)
    return values[0] if values else None


def _has_sequence(attrs: Attributes, keyword: str) -> bool:
    value = attrs.get(keyword) if keyword in attrs else None
    return bool(value) and not isinstance(value, str)


def _time(text: str | None) -> dt.time | None:
    """A DICOM TM value (HHMMSS.FFFFFF, or shorter) as a time; ``None`` when unreadable."""
    if not text:
        return None
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text.replace(":", ""))
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    try:
        return dt.time(int(hh), int(mm or 0), int(ss or 0), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


def _description_match(attrs: Attributes, pattern: re.Pattern[str]) -> str | None:
    for keyword in _DESCRIPTIONS:
        text = _first(attrs, keyword)
        if text and pattern.search(text.upper()):
            return f"{keyword} '{text}'"
    return None


def contrast_decision(attrs: Attributes) -> ContrastDecision:
    """Decide whether contrast was given for the series ``attrs`` belongs to (see module doc).

    ``attrs`` is one of the series' data sets (header only is enough) or a
    mapping from DICOM keyword to value.
    """
    said = _description_match(attrs, _PLAIN)
    if said:
        return ContrastDecision(UNENHANCED, f"{said} names a non-contrast series")
    agent = _first(attrs, "ContrastBolusAgent")
    if agent is not None and agent.upper() in _NONE_AGENT:
        return ContrastDecision(UNENHANCED, f"ContrastBolusAgent '{agent}' says none")
    start = _time(_first(attrs, "ContrastBolusStartTime"))
    for keyword in ("AcquisitionTime", "SeriesTime"):
        acquired = _time(_first(attrs, keyword))
        if start is not None and acquired is not None:
            if acquired < start:
                return ContrastDecision(
                    UNENHANCED, f"{keyword} is before ContrastBolusStartTime (pre-injection phase)"
                )
            break
    if agent:
        return ContrastDecision(ENHANCED, f"ContrastBolusAgent '{agent}'")
    if _has_sequence(attrs, "ContrastBolusAgentSequence"):
        return ContrastDecision(ENHANCED, "ContrastBolusAgentSequence is present")
    for keyword in ("ContrastBolusRoute", *_INGREDIENT):
        value = _first(attrs, keyword)
        if value:
            return ContrastDecision(ENHANCED, f"{keyword} '{value}'")
    for keyword in _AMOUNTS:
        value = _first(attrs, keyword)
        try:
            amount = float(value) if value else 0.0
        except ValueError:
            continue
        if amount > 0:
            return ContrastDecision(ENHANCED, f"{keyword} {value}")
    said = _description_match(attrs, _PHASE)
    if said:
        return ContrastDecision(ENHANCED, f"{said} names a contrast phase")
    return ContrastDecision(UNENHANCED, "no Contrast/Bolus attributes and no contrast term")


def contrast_state(attrs: Attributes) -> str:
    """:data:`ENHANCED` or :data:`UNENHANCED`: the ``contrast`` value routing rules match."""
    return contrast_decision(attrs).state
