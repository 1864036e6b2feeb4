"""Pair hip radiographs with DEXA results: the ground truth of seed 003.

The study labels a radiograph with the DEXA femoral-neck T-score of the same
Patient ID measured within six months of it (WHO: T <= -2.5 is
osteoporosis). :func:`pair_dexa` does that for a folder of DICOM files and a
DEXA export:

* each file's header (never its pixels) gives the Patient ID and the date
  of the radiograph: Acquisition Date, else Study Date, else Series Date
  (the first that reads as a date);
* the DEXA of that Patient ID nearest in time is used if it is at most
  ``window_days`` away (default 182, i.e. +-6 months, inclusive); the label
  is 1 when its T-score is <= -2.5;
* every file that gets no label is reported with its reason: not DICOM, not
  a hip radiograph the pipeline can read, no Patient ID, unreadable date, no
  DEXA for the patient, nearest DEXA outside the window (how many days),
  ambiguous (two DEXAs equally near with different labels).

The DEXA file is a CSV with a header row: Patient ID, scan date (``YYYY-MM-DD``,
``YYYYMMDD`` or ``YYYY/MM/DD``) and femoral-neck T-score columns, named by
the caller (default ``patient_id``, ``scan_date``, ``neck_t_score``). A row
with an empty T-score (e.g. a spine-only scan) or an empty Patient ID is
ignored and counted; a row whose date or T-score cannot be read stops the
pairing, naming the row, because leaving it out could silently change which
DEXA is nearest.

Nothing here logs or writes a Patient ID or name: reports name files and
SOP Instance UIDs, and the labels CSV carries no patient identifier.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipelines.hip.codes import CLASSES, label_of
from pipelines.hip.radiograph import not_a_hip_radiograph

logger = logging.getLogger(__name__)

#: +-6 months, the study's window between radiograph and DEXA
DEFAULT_WINDOW_DAYS = 182
#: Columns of the labels CSV that :func:`write_labels` writes and :func:`read_labels` reads
LABEL_COLUMNS = (
    "file",
    "sop_instance_uid",
    "image_date",
    "dexa_date",
    "days_apart",
    "t_score",
    "label",
    "class",
)

#: Reasons a radiograph gets no label (the ``reason`` key of :class:`Unpaired`)
NOT_DICOM = "not_dicom"
NOT_A_HIP_RADIOGRAPH = "not_a_hip_radiograph"
NO_PATIENT_ID = "no_patient_id"
UNREADABLE_DATE = "unreadable_date"
NO_DEXA = "no_dexa"
OUTSIDE_WINDOW = "outside_window"
AMBIGUOUS = "ambiguous"
REASONS = (
    NOT_DICOM,
    NOT_A_HIP_RADIOGRAPH,
    NO_PATIENT_ID,
    UNREADABLE_DATE,
    NO_DEXA,
    OUTSIDE_WINDOW,
    AMBIGUOUS,
)


class DexaError(ValueError):
    """The DEXA or labels file cannot be used (the message names the row or column)."""


@dataclass(frozen=True)
class DexaRecord:
    """One DEXA result (``row`` is its 1-based line number in the CSV, header = 1)."""

    row: int
    patient_id: str
    date: dt.date
    t_score: float


@dataclass(frozen=True)
class RadiographHeader:
    """What pairing needs from one file: never pixels."""

    file: str
    sop_instance_uid: str
    patient_id: str
    date: dt.date | None
    #: why the file is not a usable hip radiograph, or None
    refusal: tuple[str, str] | None = None


@dataclass(frozen=True)
class Pairing:
    """A radiograph with its DEXA result and label."""

    file: str
    sop_instance_uid: str
    image_date: dt.date
    dexa_date: dt.date
    #: DEXA date minus radiograph date
    days_apart: int
    t_score: float
    label: int


@dataclass(frozen=True)
class Unpaired:
    """A file that got no label: ``reason`` is one of :data:`REASONS`, ``detail`` says more."""

    file: str
    sop_instance_uid: str
    reason: str
    detail: str


@dataclass
class PairingReport:
    """What :func:`pair_dexa` found."""

    window_days: int
    paired: list[Pairing] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)
    #: DEXA rows without a T-score or Patient ID
    ignored_dexa_rows: int = 0

    def counts(self) -> dict[str, int]:
        """Unpaired files per reason (every reason, 0 when none)."""
        found = Counter(u.reason for u in self.unpaired)
        return {reason: found.get(reason, 0) for reason in REASONS}

    def summary(self) -> str:
        """Counts for the operator: paired per class, unpaired per reason (no identifiers)."""
        positives = sum(p.label for p in self.paired)
        lines = [
            (
                f"paired {len(self.paired)} radiograph(s) with a DEXA within "
                f"+-{self.window_days} days: {positives} {CLASSES[1]}, "
                f"{len(self.paired) - positives} {CLASSES[0]}"
            ),
            f"not paired: {len(self.unpaired)}",
        ]
        lines += [f"  {reason}: {n}" for reason, n in self.counts().items() if n]
        if self.ignored_dexa_rows:
            lines.append(
                f"ignored {self.ignored_dexa_rows} DEXA row(s) without a T-score or Patient ID"
            )
        return "\n".join(lines)


def parse_date(text: str) -> dt.date | None:
    """A date written ``YYYY-MM-DD``, ``YYYYMMDD`` (DICOM DA) or ``YYYY/MM/DD``; None if not."""
    value = text.strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"):
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None


def read_dexa_csv(
    path: str | Path,
    *,
    patient_column: str = "patient_id",
    date_column: str = "scan_date",
    t_score_column: str = "neck_t_score",
) -> tuple[list[DexaRecord], int]:
    """Read a DEXA export; return its records and the number of rows ignored.

    Raises
    ------
    DexaError
        If the file is missing, lacks a named column, or a row's date or
        T-score cannot be read (the message lists the rows, never their Patient IDs).
    """
    source = Path(path)
    if not source.is_file():
        raise DexaError(f"DEXA file {source} does not exist")
    with open(source, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in (patient_column, date_column, t_score_column) if c not in header]
        if missing:
            raise DexaError(
                f"{source} has no column(s) {missing}; its columns are {header}. Name the "
                "columns with --patient-column / --date-column / --t-score-column"
            )
        records: list[DexaRecord] = []
        problems: list[str] = []
        ignored = 0
        for row_number, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            patient, date_text, t_text = (
                row.get(patient_column, ""),
                row.get(date_column, ""),
                row.get(t_score_column, ""),
            )
            if not patient or not t_text:
                ignored += 1
                continue
            date = parse_date(date_text)
            try:
                t_score = float(t_text)
            except ValueError:
                t_score = math.nan
            if date is None:
                problems.append(f"row {row_number}: {date_column} {date_text!r} is not a date")
            elif not math.isfinite(t_score):
                problems.append(f"row {row_number}: {t_score_column} {t_text!r} is not a number")
            else:
                records.append(DexaRecord(row_number, patient, date, t_score))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DexaError(
            f"{source}: {'; '.join(problems[:5])}{more}; fix these rows (dates as YYYY-MM-DD, "
            "YYYYMMDD or YYYY/MM/DD) or empty their T-score to ignore them"
        )
    return records, ignored


def image_date(ds: Dataset) -> dt.date | None:
    """The radiograph's date: Acquisition Date, else Study Date, else Series Date (the first
    that reads as a date); None if none does."""
    for keyword in ("AcquisitionDate", "StudyDate", "SeriesDate"):
        date = parse_date(str(ds.get(keyword, "") or ""))
        if date is not None:
            return date
    return None


def read_header(path: Path, root: Path) -> RadiographHeader:
    """The pairing header of one file (header only, pixels are not read)."""
    file = path.relative_to(root).as_posix()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        return RadiographHeader(file, "", "", None, (NOT_DICOM, type(exc).__name__))
    uid = str(ds.get("SOPInstanceUID", "") or "")
    refusal = not_a_hip_radiograph(ds)
    return RadiographHeader(
        file,
        uid,
        str(ds.get("PatientID", "") or "").strip(),
        image_date(ds),
        (NOT_A_HIP_RADIOGRAPH, refusal) if refusal else None,
    )


def pair_records(
    headers: Iterable[RadiographHeader],
    records: Sequence[DexaRecord],
    *,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> PairingReport:
    """Pair each radiograph with the nearest DEXA of its patient (see the module docstring).

    Raises
    ------
    ValueError
        If ``window_days`` is negative.
    """
    if window_days < 0:
        raise ValueError(f"window_days must be >= 0, got {window_days}")
    by_patient: dict[str, list[DexaRecord]] = defaultdict(list)
    for record in records:
        by_patient[record.patient_id].append(record)
    report = PairingReport(window_days=window_days)

    def unpaired(header: RadiographHeader, reason: str, detail: str) -> None:
        report.unpaired.append(Unpaired(header.file, header.sop_instance_uid, reason, detail))

    for header in headers:
        if header.refusal is not None:
            unpaired(header, *header.refusal)
            continue
        if not header.patient_id:
            unpaired(header, NO_PATIENT_ID, "the file has no Patient ID")
            continue
        if header.date is None:
            unpaired(header, UNREADABLE_DATE, "no readable Acquisition, Study or Series Date")
            continue
        candidates = by_patient.get(header.patient_id, [])
        if not candidates:
            unpaired(header, NO_DEXA, "no DEXA result for this Patient ID")
            continue
        distance = {id(r): abs((r.date - header.date).days) for r in candidates}
        nearest = min(distance.values())
        if nearest > window_days:
            unpaired(
                header,
                OUTSIDE_WINDOW,
                f"nearest DEXA is {nearest} days away (window +-{window_days} days)",
            )
            continue
        closest = sorted(
            (r for r in candidates if distance[id(r)] == nearest), key=lambda r: (r.date, r.row)
        )
        labels = {label_of(r.t_score) for r in closest}
        if len(labels) > 1:
            unpaired(
                header,
                AMBIGUOUS,
                f"{len(closest)} DEXA results {nearest} days away disagree "
                f"(T-scores {', '.join(f'{r.t_score:g}' for r in closest)})",
            )
            continue
        chosen = closest[0]
        report.paired.append(
            Pairing(
                file=header.file,
                sop_instance_uid=header.sop_instance_uid,
                image_date=header.date,
                dexa_date=chosen.date,
                days_apart=(chosen.date - header.date).days,
                t_score=chosen.t_score,
                label=label_of(chosen.t_score),
            )
        )
    return report


def pair_dexa(
    dicom_dir: str | Path,
    dexa_csv: str | Path,
    *,
    window_days: int = DEFAULT_WINDOW_DAYS,
    patient_column: str = "patient_id",
    date_column: str = "scan_date",
    t_score_column: str = "neck_t_score",
) -> PairingReport:
    """Pair every file below ``dicom_dir`` (recursively, in path order) with the DEXA results.

    Raises
    ------
    DexaError
        If the folder does not exist or the DEXA file cannot be used.
    """
    root = Path(dicom_dir)
    if not root.is_dir():
        raise DexaError(f"DICOM folder {root} does not exist")
    records, ignored = read_dexa_csv(
        dexa_csv,
        patient_column=patient_column,
        date_column=date_column,
        t_score_column=t_score_column,
    )
    headers = [read_header(p, root) for p in sorted(root.rglob("*")) if p.is_file()]
    report = pair_records(headers, records, window_days=window_days)
    report.ignored_dexa_rows = ignored
    logger.info(
        "paired %d of %d file(s) with %d DEXA result(s)",
        len(report.paired),
        len(headers),
        len(records),
    )
    return report


def write_labels(report: PairingReport, path: str | Path) -> None:
    """The labels CSV (:data:`LABEL_COLUMNS`), one row per paired radiograph; no Patient ID."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABEL_COLUMNS)
        for p in report.paired:
            writer.writerow(
                [
                    p.file,
                    p.sop_instance_uid,
                    p.image_date.isoformat(),
                    p.dexa_date.isoformat(),
                    p.days_apart,
                    f"{p.t_score:g}",
                    p.label,
                    CLASSES[p.label],
                ]
            )


def write_unpaired(report: PairingReport, path: str | Path) -> None:
    """A CSV of the files without a label: ``file, sop_instance_uid, reason, detail``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "sop_instance_uid", "reason", "detail"])
        for u in report.unpaired:
            writer.writerow([u.file, u.sop_instance_uid, u.reason, u.detail])


@dataclass(frozen=True)
class LabelRow:
    """One row of a labels CSV."""

    file: str
    sop_instance_uid: str
    image_date: dt.date | None
    t_score: float
    label: int


def read_labels(path: str | Path) -> dict[str, LabelRow]:
    """A labels CSV (from :func:`write_labels` or the hospital) by SOP Instance UID.

    Only ``sop_instance_uid`` and ``label`` (0/1) are required; ``file``,
    ``image_date`` and ``t_score`` are used when present.

    Raises
    ------
    DexaError
        If the file is missing, lacks a column, has a bad label or repeats a UID.
    """
    source = Path(path)
    if not source.is_file():
        raise DexaError(f"labels file {source} does not exist")
    out: dict[str, LabelRow] = {}
    with open(source, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [name.strip() for name in reader.fieldnames or []]
        for column in ("sop_instance_uid", "label"):
            if column not in header:
                raise DexaError(
                    f"{source} has no column {column!r}; its columns are {header} (write it "
                    "with 'dicom-node dataset pair-dexa')"
                )
        for row_number, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            uid, label = row.get("sop_instance_uid", ""), row.get("label", "")
            if not uid:
                raise DexaError(f"{source} row {row_number}: empty sop_instance_uid")
            if label not in ("0", "1"):
                raise DexaError(f"{source} row {row_number}: label {label!r} is not 0 or 1")
            if uid in out:
                raise DexaError(f"{source} row {row_number}: SOP Instance UID {uid} repeats")
            try:
                t_score = float(row.get("t_score", "") or "nan")
            except ValueError:
                t_score = math.nan
            out[uid] = LabelRow(
                file=row.get("file", ""),
                sop_instance_uid=uid,
                image_date=parse_date(row.get("image_date", "")),
                t_score=t_score,
                label=int(label),
            )
    return out
