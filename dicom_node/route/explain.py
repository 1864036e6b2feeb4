"""``dicom-node route --explain PATH...``: which rules would fire for series on disk, and why.

Routing rules are the part of the configuration an administrator edits most
and can least observe: a series that silently goes nowhere, or to a fallback,
is the typical support call. Explain reads the headers of DICOM files (or
folders of them), groups them by series exactly as the node routes them --
one decision per ``SeriesInstanceUID``, taken on its first file -- and prints
each rule's verdict with the reason.

Output is plain ASCII so it survives any terminal, log file or ticket. It
never shows patient identity: besides UIDs it prints the modality, series
description and body part, and the values of the attributes the rules name --
except those of PHI attributes (person names, patient identifiers and dates),
which are withheld even when a rule matches on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.errors import InvalidDicomError

from dicom_node.route.match import (
    Condition,
    RuleOutcome,
    attribute_values,
    missing_series,
    select,
)
from dicom_node.route.rules import Requirement, Route

_SUMMARY = ("Modality", "SeriesDescription", "BodyPartExamined")

# Identifying attributes whose value explain never prints (all PN attributes
# are withheld too). A rule may still match on them, e.g. to route phantoms.
_PHI_KEYWORDS = frozenset(
    {
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDs",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientComments",
        "MedicalRecordLocator",
        "MilitaryRank",
        "AccessionNumber",
        "StudyID",
        "AdmissionID",
        "InstitutionAddress",
        "CountryOfResidence",
        "RegionOfResidence",
    }
)


@dataclass(frozen=True)
class FileExplanation:
    """The routing decision for one series found on disk, or why a file was skipped.

    Attributes
    ----------
    path
        The series' first file (the one the rules were evaluated on), or the
        skipped file.
    series_uid
        ``SeriesInstanceUID``; ``None`` for a skipped file.
    files
        How many files of the given paths belong to the series.
    summary
        Modality, SeriesDescription and BodyPartExamined, where present: enough
        for an administrator to recognise the series, and no PHI.
    outcomes
        Every rule's verdict, in order (see :func:`~dicom_node.route.match.select`);
        empty for a skipped file.
    note
        Why the file was skipped (not DICOM, unreadable, no series); ``None``
        for a series.
    """

    path: Path
    series_uid: str | None
    files: int = 0
    summary: tuple[tuple[str, str], ...] = ()
    outcomes: tuple[RuleOutcome, ...] = ()
    note: str | None = None
    #: for each fired route with ``require:``, the required series the study's files lack
    missing: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def fired(self) -> list[RuleOutcome]:
        """The outcomes of the rules that fire."""
        return [o for o in self.outcomes if o.fired]


def _files(paths: Sequence[Path]) -> Iterator[Path | tuple[Path, str]]:
    """Every file under ``paths``, folders walked in name order; a missing path as a note."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            yield path, "no such file or folder"


def _read(path: Path) -> Dataset | str:
    """The file's header, or a note saying why it cannot be explained."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as exc:  # one bad file must not end a folder's explanation
        return f"unreadable: {type(exc).__name__}: {exc}"
    if not ds.get("SeriesInstanceUID"):
        return "no SeriesInstanceUID (not an image or series object, e.g. a DICOMDIR)"
    return ds


def explain_paths(
    routes: Sequence[Route], paths: Sequence[Path], calling_ae: str | None = None
) -> list[FileExplanation]:
    """Explain the routing of every series found in files and folders.

    Parameters
    ----------
    routes
        The routing rules, in configuration order.
    paths
        DICOM files and folders; folders are searched recursively.
    calling_ae
        The calling AE title to assume. Files on disk do not record who sent
        them, so without it rules with a ``calling_ae`` condition are reported
        as undecidable and counted as not matched.

    Returns
    -------
    list of FileExplanation
        One per series, in the order their first file was found, and one per
        skipped file (non-DICOM, unreadable, missing, or without a series),
        at the position it was met.
    """
    found: list[FileExplanation | tuple[Path, str, Dataset]] = []
    counts: dict[str, int] = {}
    for item in _files(paths):
        if isinstance(item, tuple):
            found.append(FileExplanation(item[0], None, note=item[1]))
            continue
        ds = _read(item)
        if isinstance(ds, str):
            found.append(FileExplanation(item, None, note=ds))
            continue
        uid = str(ds.SeriesInstanceUID).strip()
        if uid not in counts:
            # Keep only the first header of each series: a folder may hold thousands.
            found.append((item, uid, ds))
            counts[uid] = 0
        counts[uid] += 1

    studies: dict[str, list[Dataset]] = {}
    for entry in found:
        if not isinstance(entry, FileExplanation):
            studies.setdefault(str(entry[2].get("StudyInstanceUID", "")), []).append(entry[2])
    result = []
    for entry in found:
        if isinstance(entry, FileExplanation):
            result.append(entry)
            continue
        path, uid, ds = entry
        summary = tuple(
            (kw, "\\".join(values)) for kw in _SUMMARY if (values := attribute_values(ds, kw))
        )
        outcomes = tuple(select(routes, ds, calling_ae))
        study = studies[str(ds.get("StudyInstanceUID", ""))]
        missing = tuple(
            (o.route.name, tuple(missing_series(o.route.require, study)))
            for o in outcomes
            if o.fired and o.route.require is not None
        )
        result.append(FileExplanation(path, uid, counts[uid], summary, outcomes, missing=missing))
    return result


def _is_phi(keyword: str) -> bool:
    """Whether explain must withhold this attribute's value."""
    if keyword in _PHI_KEYWORDS:
        return True
    tag = tag_for_keyword(keyword)
    return tag is not None and dictionary_VR(tag) == "PN"


def _condition(c: Condition) -> str:
    """A condition's verdict in words, its value withheld if it is PHI."""
    if _is_phi(c.keyword) and c.actual:
        return f"{c.keyword} (value withheld) {'satisfies' if c.ok else 'fails'} {c.expected}"
    return c.reason


def _target(route: Route) -> str:
    if route.shadow:
        return f"pipeline {route.pipeline}, shadow (results kept locally)"
    return f"pipeline {route.pipeline}, destinations [{', '.join(route.destinations)}]"


def _outcome(o: RuleOutcome) -> list[str]:
    """The lines for one rule's verdict."""
    name = o.route.name + (" (fallback)" if o.route.fallback else "")
    if o.fired:
        lines = [
            f"  [+] {name} -> {_target(o.route)}  FIRES" + (" (final)" if o.route.final else "")
        ]
        if o.conditions:
            lines.append("        " + "; ".join("ok " + _condition(c) for c in o.conditions))
        elif o.route.fallback:
            lines.append(f"        {o.reason}")
        return lines
    if not o.tried or o.matched:
        return [f"  [-] {name}: {o.reason}"]
    definite = [c for c in o.failures if c.evaluable]
    text = "; ".join(_condition(c) for c in definite or o.failures)
    if o.undecided:
        return [f"  [?] {name}: cannot tell: {text}"]
    return [f"  [x] {name}: {text}"]


def _requirement(require: Requirement, missing: Sequence[str]) -> str:
    """What a route's ``require:`` makes of the study's series given."""
    if not missing:
        return "requires: every required series is among the files given"
    wait = "the node waits for it until the force deadline, then it " if require.wait else ""
    return (
        f"requires a series with {'; '.join(missing)}: not among the files given; "
        f"{wait}{'runs anyway' if require.when_missing == 'proceed' else 'is discarded'}"
    )


def format_explanation(explanations: Sequence[FileExplanation]) -> str:
    """Render explanations as the text ``dicom-node route --explain`` prints.

    Each series gets a header line, then one entry per rule: ``[+]`` fires,
    ``[x]`` does not match, ``[?]`` cannot be decided without the calling AE
    title, ``[-]`` not tried or a fallback that stayed quiet. Skipped files
    are listed after the series.
    """
    lines: list[str] = []
    skipped = [e for e in explanations if e.note is not None]
    for e in explanations:
        if e.note is not None:
            continue
        info = [value if kw == "Modality" else f"'{value}'" for kw, value in e.summary]
        info.append(f"{e.files} file" + ("" if e.files == 1 else "s"))
        lines.append(f"series {e.series_uid} ({', '.join(info)}) from {e.path}")
        if not e.outcomes:
            lines.append("  no routes configured: the series is not processed")
        needs = dict(e.missing)
        for o in e.outcomes:
            lines.extend(_outcome(o))
            if o.route.name in needs and o.route.require is not None:
                lines.append("        " + _requirement(o.route.require, needs[o.route.name]))
        if e.outcomes and not e.fired:
            lines.append("  => no rule fires: the series is not processed")
        lines.append("")
    if skipped:
        lines.append(f"skipped {len(skipped)} file" + ("" if len(skipped) == 1 else "s") + ":")
        lines.extend(f"  {e.path}: {e.note}" for e in skipped)
    elif not lines:
        lines.append("no DICOM files found")
    return "\n".join(lines).rstrip("\n") + "\n"
