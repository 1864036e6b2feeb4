"""Deterministic hip and pelvis radiograph phantoms: DX DICOM, LabelImg boxes and a DEXA export.

The hip pipeline, its tests and its demo model need data shaped like the
study's: AP pelvis (and some single-hip) radiographs as *Digital X-Ray Image
Storage - For Presentation* objects that pass ``dciodvfy``, one LabelImg
Pascal VOC file per image boxing each femoral neck, and a DEXA export whose
femoral-neck T-scores, paired by :func:`pipelines.hip.dexa.pair_dexa`, give
the labels. The DICOM modules are those of the other phantoms
(:func:`pipelines.common.phantoms.build_dx_dataset`).

What an image shows (``size`` = W columns, ``0.75 W`` rows; every length
is a fraction of W, on the nominal 43 cm field): soft tissue, the iliac
wings, sacrum and the rings of the pubic and ischial rami, and both proximal
femurs, each a head in its acetabulum, a neck at a neck-shaft angle of
about 128 degrees, the greater and lesser trochanters and the shaft running
off the bottom. As displayed on an AP view the patient's right is on the
image's left.

Bone density follows the patient's femoral-neck T-score ``T`` (DEXA's,
rounded to 0.1 as DEXA reports it), the way osteoporosis shows on a
radiograph:

* **trabeculae**: oriented streaks (along the neck in the neck and head,
  along the shaft below), band-pass noise of period about 1.3 % of W,
  thresholded so that they occupy a fraction :func:`trabecular_fraction`
  of the marrow: 0.52 + 0.075 T (0.33 at T = -2.5, 0.2 at T = -4.2) and
  whose density :func:`trabecular_density` falls with T: lower T, sparser
  and fainter trabeculae;
* **cortex**: a bright rim whose thickness :func:`cortex_thickness` is
  (1.8 + 0.25 T) % of W in the neck (1.8 times that in the shaft): lower T,
  thinner cortex.

T-scores of osteoporotic patients are drawn from -4.2 to -2.5, of the
others from -2.4 to 1.5, in steps of 0.1, so the label is the WHO rule of
the DEXA value. Texture, noise, a random global gain / offset and
positioning vary from image to image, so grey levels are no shortcut.

Each patient (anatomy and T-score from ``(seed, patient)``) has one or two
radiographs (the second 15-120 days after the first), dated within
``years``; an image is an AP pelvis (``BodyPartExamined PELVIS``, Image
Laterality ``B``) or, with probability ``single_hip_fraction``, one hip
(``HIP``, Image Laterality ``R`` or ``L``, the image's half with that
femur). Some images are stored flipped left-right (Patient Orientation
``R\\F``) or as MONOCHROME1. The DEXA export has, per patient, usually one
scan within 150 days of the first radiograph; some patients have none, one
out of the +-182-day window, or two (one near, one far), so that pairing
leaves some radiographs out with each of its reasons.

Everything, pixels and UIDs included, is a pure function of the arguments:
rewriting gives identical bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pipelines.common.phantoms import (
    FIELD_OF_VIEW_MM,
    MAX_VALUE,
    build_dx_dataset,
    phantom_uid,
    refuse_foreign_files,
    set_image_pixels,
    smooth_noise,
)
from pipelines.hip.codes import NECK_CLASS, label_of
from pipelines.hip.sides import Side
from pipelines.hip.voc import VocAnnotation, VocObject, write_voc

logger = logging.getLogger(__name__)

Box4 = tuple[float, float, float, float]

#: Smallest image width: below it the trabeculae are under a pixel apart.
MIN_SIZE = 128
#: T-scores drawn (inclusive, steps of 0.1) for osteoporotic and other patients.
OSTEOPOROSIS_T_RANGE: tuple[float, float] = (-4.2, -2.5)
OTHER_T_RANGE: tuple[float, float] = (-2.4, 1.5)
#: Kinds of image: an AP pelvis, or one hip (the patient's side).
PELVIS, RIGHT_HIP, LEFT_HIP = "pelvis", "R", "L"
#: Stream tags: patient anatomy, patient plan (T-score, dates, DEXA), image rendering,
#: metal implants (their own stream: a dataset without implants is drawn as before).
_ANATOMY_STREAM, _PLAN_STREAM, _IMAGE_STREAM, _IMPLANT_STREAM = 0x41B0, 0x41B1, 0x41B2, 0x41B3
#: Stored value of metal: far above any bone over soft tissue (about 2400 at most).
METAL_VALUE = 3900
_DEXA_COLUMNS = ("patient_id", "scan_date", "neck_bmd", "neck_t_score")


def trabecular_fraction(t_score: float) -> float:
    """Fraction of the marrow the trabeculae occupy at a T-score."""
    return float(np.clip(0.52 + 0.075 * t_score, 0.12, 0.7))


def trabecular_density(t_score: float) -> float:
    """Density (stored values) a trabecula adds over the marrow at a T-score."""
    return float(520.0 * np.clip(1.0 + 0.06 * t_score, 0.6, 1.15))


def cortex_thickness(t_score: float, width: int) -> float:
    """Cortex thickness of the neck in pixels at a T-score (the shaft's is 1.8 times it)."""
    return max(1.0, width * (0.018 + 0.0025 * t_score))


@dataclass(frozen=True)
class HipAnatomy:
    """A patient's pelvis and proximal femurs; lengths are fractions of the image width.

    ``separation`` is the distance of each femoral head from the midline;
    angles are in degrees.
    """

    separation: float
    head_row: float
    head_radius: float
    neck_length: float
    neck_half_width: float
    shaft_half_width: float
    neck_shaft_angle: float
    shaft_tilt: float
    ilium_rows: float
    body_half_width: float


def draw_anatomy(rng: np.random.Generator) -> HipAnatomy:
    """Draw one patient's anatomy."""
    radius = rng.uniform(0.058, 0.07)
    return HipAnatomy(
        separation=rng.uniform(0.19, 0.22),
        head_row=rng.uniform(0.41, 0.45),
        head_radius=radius,
        neck_length=rng.uniform(1.65, 1.85) * radius,
        neck_half_width=rng.uniform(0.62, 0.7) * radius,
        shaft_half_width=rng.uniform(0.78, 0.88) * radius,
        neck_shaft_angle=rng.uniform(123.0, 133.0),
        shaft_tilt=rng.uniform(5.0, 9.0),
        ilium_rows=rng.uniform(0.17, 0.22),
        body_half_width=rng.uniform(0.5, 0.56),
    )


@dataclass(frozen=True, eq=False)
class HipPhantom:
    """One rendered AP pelvis: MONOCHROME2 stored values and the neck boxes by side."""

    pixels: np.ndarray
    necks: dict[Side, Box4]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(x, -50.0, 50.0)))


def _segment_distance(
    rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Distance of every pixel (row, col) to the segment a-b (points as (col, row))."""
    ab = b - a
    t = ((cols - a[0]) * ab[0] + (rows - a[1]) * ab[1]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(cols - (a[0] + t * ab[0]), rows - (a[1] + t * ab[1]))


def _ellipse_distance(
    rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float], axes: tuple[float, float]
) -> np.ndarray:
    """An approximate signed distance to an ellipse (centre and axes as (col, row))."""
    q = np.hypot((cols - centre[0]) / axes[0], (rows - centre[1]) / axes[1])
    return (q - 1.0) * min(axes)


def _oriented_texture(
    spectrum: np.ndarray, angle: float, period: float, shape: tuple[int, int]
) -> np.ndarray:
    """Unit-variance streaks along ``angle`` (radians, image x towards y) from a noise spectrum."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    along = fx * math.cos(angle) + fy * math.sin(angle)
    across = -fx * math.sin(angle) + fy * math.cos(angle)
    f0 = 1.0 / period
    filt = np.exp(-0.5 * (along / (0.18 * f0)) ** 2) * np.exp(
        -0.5 * ((np.abs(across) - f0) / (0.35 * f0)) ** 2
    )
    tex = np.real(np.fft.ifft2(spectrum * filt))
    return ((tex - tex.mean()) / (tex.std() + 1e-9)).astype(np.float32)


def _femur(
    rows: np.ndarray,
    cols: np.ndarray,
    anatomy: HipAnatomy,
    side: Side,
    head: tuple[float, float],
    width: int,
    t_score: float,
    spectrum: np.ndarray,
) -> tuple[np.ndarray, Box4]:
    """Density of one proximal femur on the pixel grid ``rows``, ``cols`` (absolute
    coordinates of a window of the image), and its neck box."""
    w = float(width)
    medial = 1.0 if side is Side.RIGHT else -1.0  # towards the midline, in image columns
    angle = math.radians(anatomy.neck_shaft_angle)
    h = np.array(head, dtype=np.float64)
    neck_dir = np.array([medial * math.sin(angle), math.cos(angle)])  # junction -> head
    length = anatomy.neck_length * w
    junction = h - length * neck_dir
    tilt = math.radians(anatomy.shaft_tilt)
    shaft_dir = np.array([medial * math.sin(tilt), math.cos(tilt)])
    shaft_top = junction - 0.35 * anatomy.shaft_half_width * w * shaft_dir
    shaft_end = junction + 3.0 * w * shaft_dir
    r_head = anatomy.head_radius * w
    d_head = np.hypot(cols - h[0], rows - h[1]) - r_head
    d_neck = _segment_distance(rows, cols, h, junction) - anatomy.neck_half_width * w
    d_shaft = _segment_distance(rows, cols, shaft_top, shaft_end) - anatomy.shaft_half_width * w
    greater = junction + w * np.array([-medial * 0.03, -0.02])
    d_greater = _ellipse_distance(rows, cols, (greater[0], greater[1]), (0.04 * w, 0.05 * w))
    lesser = junction + w * np.array([medial * 0.04, 0.08])
    d_lesser = np.hypot(cols - lesser[0], rows - lesser[1]) - 0.02 * w
    d_upper = np.minimum(d_head, d_neck)
    d_lower = np.minimum.reduce([d_shaft, d_greater, d_lesser])
    d = np.minimum(d_upper, d_lower)

    t_neck = cortex_thickness(t_score, width)
    lower_weight = _sigmoid((d_lower - d_upper) / 3.0)  # 1 in the shaft and trochanters
    t_cortex = t_neck * (1.0 + 0.8 * lower_weight)
    bone = _sigmoid(d / 0.7)
    marrow = _sigmoid((d + t_cortex) / 0.7)
    cortex = np.clip(bone - marrow, 0.0, 1.0)

    neck_angle = math.atan2(neck_dir[1], neck_dir[0])
    shaft_angle = math.atan2(shaft_dir[1], shaft_dir[0])
    period = 0.0135 * w
    streaks = (1.0 - lower_weight) * _oriented_texture(
        spectrum, neck_angle, period, rows.shape
    ) + lower_weight * _oriented_texture(spectrum, shaft_angle, period, rows.shape)
    inside = marrow > 0.5
    level = (
        np.quantile(streaks[inside], 1.0 - trabecular_fraction(t_score)) if inside.any() else 0.0
    )
    trabeculae = _sigmoid(-(streaks - level) / 0.25)
    density = 900.0 * cortex + marrow * (140.0 + trabecular_density(t_score) * trabeculae)

    # the neck box: the neck between the head-neck junction and the trochanters
    unit = -neck_dir  # head -> junction
    normal = np.array([-unit[1], unit[0]])
    t0, t1 = 0.8 * r_head, length - 0.2 * anatomy.shaft_half_width * w
    half = anatomy.neck_half_width * w * 1.05
    corners = np.array(
        [h + unit * t + normal * s for t in (t0, t1) for s in (-half, half)], dtype=np.float64
    )
    box = (
        float(corners[:, 0].min()),
        float(corners[:, 1].min()),
        float(corners[:, 0].max()),
        float(corners[:, 1].max()),
    )
    return density.astype(np.float32), box


def render_pelvis(
    rng: np.random.Generator, anatomy: HipAnatomy, t_score: float, *, size: int = 384
) -> HipPhantom:
    """Render one AP pelvis phantom of ``size`` columns (``0.75 size`` rows).

    The same generator state gives the same anatomy placement, texture and
    noise whatever ``t_score``: two renderings that differ only in T differ
    only in the femurs' bone.

    Raises
    ------
    ValueError
        If ``size`` is below :data:`MIN_SIZE`.
    """
    if size < MIN_SIZE:
        raise ValueError(f"hip phantom size must be at least {MIN_SIZE} pixels, got {size}")
    width, height = size, round(0.75 * size)
    w = float(width)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    mid = 0.5 * w + rng.uniform(-0.02, 0.02) * w
    head_row = anatomy.head_row * height + rng.uniform(-0.015, 0.015) * w
    soft = smooth_noise(rng, max(height, width), 6)[:height, :width]
    fine = smooth_noise(rng, max(height, width), 30)[:height, :width]
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-80.0, 80.0)
    sigma = rng.uniform(10.0, 18.0)
    noise = rng.normal(0.0, sigma, size=(height, width)).astype(np.float32)

    # soft tissue: thickest in the middle of the body
    body = _sigmoid(
        (
            np.hypot((cols - mid) / (anatomy.body_half_width * w), (rows - 0.55 * height) / height)
            - 1.0
        )
        * 12.0
    )
    image = 220.0 + 950.0 * body + 60.0 * soft * body

    # pelvis: iliac wings, sacrum, pubic / ischial rings and acetabular roofs
    pelvis = np.zeros_like(image)
    for medial in (1.0, -1.0):
        wing_c = (mid - medial * 0.22 * w, anatomy.ilium_rows * height)
        d_wing = _ellipse_distance(rows, cols, wing_c, (0.17 * w, 0.2 * height))
        pelvis += 280.0 * _sigmoid(d_wing / 1.5) + 260.0 * np.exp(-((d_wing / 2.5) ** 2))
        ring_c = (mid - medial * 0.1 * w, 0.7 * height)
        d_outer = _ellipse_distance(rows, cols, ring_c, (0.075 * w, 0.12 * height))
        d_hole = _ellipse_distance(rows, cols, ring_c, (0.04 * w, 0.07 * height))
        pelvis += 330.0 * _sigmoid(d_outer / 1.5) * (1.0 - _sigmoid(d_hole / 1.5))
    d_sacrum = _ellipse_distance(rows, cols, (mid, 0.22 * height), (0.085 * w, 0.24 * height))
    pelvis += 240.0 * _sigmoid(d_sacrum / 1.5)

    necks: dict[Side, Box4] = {}
    femurs = np.zeros_like(image)
    reach = round(0.2 * w)
    for side in (Side.RIGHT, Side.LEFT):
        medial = 1.0 if side is Side.RIGHT else -1.0
        head = (mid - medial * anatomy.separation * w, head_row)
        # the femur's own window of columns: its texture is drawn there only
        c0, c1 = max(0, round(head[0]) - reach), min(width, round(head[0]) + reach)
        spectrum = np.fft.fft2(rng.standard_normal((height, c1 - c0)))
        density, box = _femur(
            rows[:, c0:c1], cols[:, c0:c1], anatomy, side, head, width, t_score, spectrum
        )
        femurs[:, c0:c1] += density
        necks[side] = box
        d_roof = np.hypot(cols - head[0], rows - head[1]) - 1.18 * anatomy.head_radius * w
        above = _sigmoid((rows - head[1] + 0.2 * anatomy.head_radius * w) / 3.0)
        pelvis += 300.0 * np.exp(-((d_roof / 2.5) ** 2)) * above
    image += pelvis * (1.0 + 0.05 * fine) + femurs
    image = image * gain + offset + noise
    pixels = np.clip(np.rint(image), 0, MAX_VALUE).astype(np.uint16)
    return HipPhantom(pixels, necks)


def draw_implant(pixels: np.ndarray, box: Box4, side: Side) -> np.ndarray:
    """``pixels`` (MONOCHROME2) with a hip prosthesis over the femur of ``side``.

    A ball in the femoral head and a tapered stem down the shaft, at
    :data:`METAL_VALUE` with a one-pixel soft edge: what a hemi- or total hip
    arthroplasty looks like on an AP radiograph, and what seed 003 excluded.
    ``box`` is that side's neck box in the image's (unflipped) columns; the
    head lies at its medial upper corner, the shaft below its lateral end.
    """
    height, width = pixels.shape
    x0, y0, x1, y1 = box
    medial = 1.0 if side is Side.RIGHT else -1.0  # the patient's right is the image's left
    neck_w, neck_h = x1 - x0, y1 - y0
    head = (x1 if medial > 0 else x0, y0)
    radius = 0.55 * neck_h
    top = (x0 + 0.2 * neck_w if medial > 0 else x1 - 0.2 * neck_w, y1)
    bottom = (top[0] - medial * 0.15 * neck_w, min(height - 1.0, y1 + 3.0 * neck_h))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    d_ball = np.hypot(cols - head[0], rows - head[1]) - radius
    along = np.clip((rows - top[1]) / max(bottom[1] - top[1], 1.0), 0.0, 1.0)
    centre = top[0] + along * (bottom[0] - top[0])
    half = (0.3 - 0.15 * along) * neck_w
    d_stem = np.maximum(np.abs(cols - centre) - half, np.maximum(top[1] - rows, rows - bottom[1]))
    d_neck = _segment_distance(rows, cols, np.array(head), np.array(top)) - 0.18 * neck_h
    metal = _sigmoid(np.minimum.reduce([d_ball, d_stem, d_neck]) / 0.7)  # 1 inside
    out = pixels.astype(np.float32) * (1.0 - metal) + METAL_VALUE * metal
    return np.clip(np.rint(out), 0, MAX_VALUE).astype(pixels.dtype)


@dataclass(frozen=True)
class HipImage:
    """One written radiograph: files, identifiers and ground truth."""

    stem: str
    index: int
    path: Path
    voc_path: Path
    patient_id: str
    study_date: dt.date
    study_instance_uid: str
    sop_instance_uid: str
    #: PELVIS, RIGHT_HIP or LEFT_HIP
    kind: str
    flipped: bool
    monochrome1: bool
    t_score: float
    #: 1 when t_score <= -2.5 (the label pairing should give)
    label: int
    #: neck boxes in the stored image's pixel coordinates (continuous), by side
    necks: dict[Side, Box4] = field(default_factory=dict)
    #: the side with a metal hip prosthesis drawn in (``implant_fraction``), else None
    implant: Side | None = None


@dataclass(frozen=True)
class HipDataset:
    """A written phantom dataset."""

    root: Path
    dicom_dir: Path
    voc_dir: Path
    dexa_csv: Path
    images: tuple[HipImage, ...]
    #: DEXA dates per Patient ID, as written to the DEXA file
    dexa_dates: dict[str, tuple[dt.date, ...]]

    @property
    def patients(self) -> tuple[str, ...]:
        """Patient IDs in order of first appearance."""
        return tuple(dict.fromkeys(image.patient_id for image in self.images))


@dataclass(frozen=True)
class _PatientPlan:
    t_score: float
    dates: tuple[dt.date, ...]
    dexa: tuple[dt.date, ...]


def patient_id_of(seed: int, patient: int) -> str:
    """Patient ID of patient ``patient`` of dataset ``seed``."""
    return f"HIP-PHANTOM-{seed}-{patient:04d}"


def _plan(
    seed: int,
    patient: int,
    *,
    years: tuple[int, int],
    osteoporosis_fraction: float,
    second_image_fraction: float,
) -> _PatientPlan:
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, _PLAN_STREAM]))
    lo, hi = OSTEOPOROSIS_T_RANGE if rng.random() < osteoporosis_fraction else OTHER_T_RANGE
    t_score = int(rng.integers(round(lo * 10), round(hi * 10) + 1)) / 10.0
    start = dt.date(years[0], 1, 1)
    span = (dt.date(years[1], 12, 31) - start).days
    first = start + dt.timedelta(days=int(rng.integers(0, span + 1)))
    dates = [first]
    if rng.random() < second_image_fraction:
        dates.append(first + dt.timedelta(days=int(rng.integers(15, 121))))
    sign = 1 if rng.random() < 0.5 else -1
    scenario = rng.random()
    near = first + dt.timedelta(days=sign * int(rng.integers(0, 151)))
    if scenario < 0.05:  # never had a DEXA
        dexa: list[dt.date] = []
    elif scenario < 0.10:  # only one well outside the window
        dexa = [first + dt.timedelta(days=sign * int(rng.integers(200, 501)))]
    elif scenario < 0.15:  # a near one and a follow-up long after
        dexa = [near, near + dt.timedelta(days=int(rng.integers(400, 801)))]
    else:
        dexa = [near]
    return _PatientPlan(t_score, tuple(dates), tuple(dexa))


def _mirror_box(box: Box4, width: int) -> Box4:
    return (width - box[2], box[1], width - box[0], box[3])


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def write_hip_dataset(
    out_dir: Path,
    *,
    patients: int,
    seed: int,
    size: int = 384,
    years: tuple[int, int] = (2018, 2022),
    osteoporosis_fraction: float = 0.4,
    second_image_fraction: float = 0.25,
    single_hip_fraction: float = 0.2,
    flipped_fraction: float = 0.1,
    monochrome1_fraction: float = 0.1,
    implant_fraction: float = 0.0,
) -> HipDataset:
    """Write hip / pelvis phantoms as DX DICOM, LabelImg VOC boxes and a DEXA CSV.

    Layout::

        out_dir/dicom/hip_<seed>_<index>.dcm   one radiograph, its own study
        out_dir/voc/hip_<seed>_<index>.xml     LabelImg boxes of its femoral neck(s)
        out_dir/dexa.csv                       patient_id, scan_date, neck_bmd, neck_t_score

    Parameters
    ----------
    out_dir : Path
        Created if missing; it must not hold other files under ``dicom/`` or ``voc/``.
    patients : int
        Number of patients (at least 1); each has one or two radiographs.
    seed : int
        Dataset seed.
    size : int
        Columns of an AP pelvis (rows are 0.75 of it); at least :data:`MIN_SIZE`.
    years : (int, int)
        First and last year of the radiographs (inclusive).
    osteoporosis_fraction : float
        Probability that a patient has osteoporosis (by the T-score).
    second_image_fraction : float
        Probability that a patient has a second radiograph.
    single_hip_fraction : float
        Probability that an image shows one hip.
    flipped_fraction : float
        Probability that an image is stored flipped.
    monochrome1_fraction : float
        Probability that an image is written as MONOCHROME1.
    implant_fraction : float
        Probability that an image has a metal hip prosthesis on one side
        (:func:`draw_implant`), an image the study excluded. Drawn from a stream of
        its own, so the other images do not change with it.

    Returns
    -------
    HipDataset
        Paths, and per image its identifiers and ground truth.
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if size < MIN_SIZE:
        raise ValueError(f"hip phantom size must be at least {MIN_SIZE} pixels, got {size}")
    if years[1] < years[0]:
        raise ValueError(f"years must be (first, last), got {years}")
    for name, value in (
        ("osteoporosis_fraction", osteoporosis_fraction),
        ("second_image_fraction", second_image_fraction),
        ("single_hip_fraction", single_hip_fraction),
        ("flipped_fraction", flipped_fraction),
        ("monochrome1_fraction", monochrome1_fraction),
        ("implant_fraction", implant_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    out_dir = Path(out_dir)
    dicom_dir, voc_dir = out_dir / "dicom", out_dir / "voc"
    plans = [
        _plan(
            seed,
            p,
            years=years,
            osteoporosis_fraction=osteoporosis_fraction,
            second_image_fraction=second_image_fraction,
        )
        for p in range(patients)
    ]
    n_images = sum(len(plan.dates) for plan in plans)
    stems = [f"hip_{seed}_{i:05d}" for i in range(n_images)]
    refuse_foreign_files(dicom_dir, {dicom_dir / f"{s}.dcm" for s in stems})
    refuse_foreign_files(voc_dir, {voc_dir / f"{s}.xml" for s in stems})
    dicom_dir.mkdir(parents=True, exist_ok=True)
    voc_dir.mkdir(parents=True, exist_ok=True)

    written: list[HipImage] = []
    dexa_dates: dict[str, tuple[dt.date, ...]] = {}
    dexa_rows: list[tuple[str, str, str, str]] = []
    index = 0
    for patient, plan in enumerate(plans):
        pid = patient_id_of(seed, patient)
        anatomy = draw_anatomy(
            np.random.default_rng(np.random.SeedSequence([seed, patient, _ANATOMY_STREAM]))
        )
        dexa_dates[pid] = plan.dexa
        for when in plan.dexa:
            bmd = 0.858 + 0.12 * plan.t_score  # young-adult femoral-neck mean and SD (g/cm2)
            dexa_rows.append((pid, when.isoformat(), f"{bmd:.3f}", f"{plan.t_score:.1f}"))
        for date in plan.dates:
            rng = np.random.default_rng(np.random.SeedSequence([seed, index, _IMAGE_STREAM]))
            draws = rng.random(4)
            kind = (
                (RIGHT_HIP if draws[1] < 0.5 else LEFT_HIP)
                if draws[0] < single_hip_fraction
                else PELVIS
            )
            flipped = bool(draws[2] < flipped_fraction)
            monochrome1 = bool(draws[3] < monochrome1_fraction)
            phantom = render_pelvis(rng, anatomy, plan.t_score, size=size)
            pixels, necks = phantom.pixels, dict(phantom.necks)
            if kind != PELVIS:
                keep = round(0.56 * size)
                if kind == RIGHT_HIP:  # the patient's right is the image's left
                    pixels = pixels[:, :keep]
                    necks = {Side.RIGHT: necks[Side.RIGHT]}
                else:
                    start = size - keep
                    pixels = pixels[:, start:]
                    x0, y0, x1, y1 = necks[Side.LEFT]
                    necks = {Side.LEFT: (x0 - start, y0, x1 - start, y1)}
            implant: Side | None = None
            if implant_fraction > 0.0:
                draw = np.random.default_rng(
                    np.random.SeedSequence([seed, index, _IMPLANT_STREAM])
                ).random(2)
                if draw[0] < implant_fraction:
                    sides = sorted(necks, key=lambda side: side.value)
                    implant = sides[int(draw[1] * len(sides))]
                    pixels = draw_implant(pixels, necks[implant], implant)
            width = int(pixels.shape[1])
            if flipped:
                pixels = np.ascontiguousarray(pixels[:, ::-1])
                necks = {side: _mirror_box(box, width) for side, box in necks.items()}
            stem = stems[index]
            uids = {w: phantom_uid(seed, index, f"hip-{w}") for w in ("study", "series", "sop")}
            ds = build_dx_dataset(
                pixels,
                seed=seed,
                index=index,
                patient_name=f"PHANTOM^HIP{patient:04d}",
                patient_id=pid,
                uids=uids,
            )
            _describe(ds, kind=kind, flipped=flipped, date=date, index=index, seed=seed, size=size)
            if monochrome1:
                set_image_pixels(ds, MAX_VALUE - pixels)
                ds.PhotometricInterpretation = "MONOCHROME1"
                ds.PresentationLUTShape = "INVERSE"
                ds.PixelIntensityRelationshipSign = 1
                ds.WindowCenter = round(MAX_VALUE + 1 - float(ds.WindowCenter), 1)
            path = dicom_dir / f"{stem}.dcm"
            ds.save_as(path, enforce_file_format=True)
            height = int(pixels.shape[0])
            voc_path = voc_dir / f"{stem}.xml"
            write_voc(
                VocAnnotation(
                    filename=f"{stem}.png",
                    width=width,
                    height=height,
                    depth=1,
                    folder="images",
                    path=f"images/{stem}.png",
                    objects=tuple(
                        VocObject.from_box(NECK_CLASS, box, width=width, height=height)
                        for box in necks.values()
                    ),
                ),
                voc_path,
            )
            written.append(
                HipImage(
                    stem=stem,
                    index=index,
                    path=path,
                    voc_path=voc_path,
                    patient_id=pid,
                    study_date=date,
                    study_instance_uid=uids["study"],
                    sop_instance_uid=uids["sop"],
                    kind=kind,
                    flipped=flipped,
                    monochrome1=monochrome1,
                    t_score=plan.t_score,
                    label=label_of(plan.t_score),
                    necks=necks,
                    implant=implant,
                )
            )
            index += 1
    dexa_csv = out_dir / "dexa.csv"
    with open(dexa_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_DEXA_COLUMNS)
        writer.writerows(dexa_rows)
    logger.info(
        "wrote %d hip phantoms of %d patients (seed %d, %d px) to %s",
        len(written),
        patients,
        seed,
        size,
        out_dir,
    )
    return HipDataset(out_dir, dicom_dir, voc_dir, dexa_csv, tuple(written), dexa_dates)


def _describe(
    ds: Dataset, *, kind: str, flipped: bool, date: dt.date, index: int, seed: int, size: int
) -> None:
    """Turn the chest phantom header into an AP pelvis / hip radiograph's."""
    # the pelvis spans the nominal field; a single-hip image is a part of it at the same scale
    spacing = round(FIELD_OF_VIEW_MM / size, 6)
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    stamp = date.strftime("%Y%m%d")
    for keyword in (
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "InstanceCreationDate",
    ):
        setattr(ds, keyword, stamp)
    ds.ManufacturerModelName = "pipelines.hip.synth"
    pelvis = kind == PELVIS
    ds.StudyDescription = f"XR {'PELVIS' if pelvis else 'HIP'} AP (synthetic phantom)"
    ds.SeriesDescription = "Pelvis AP (phantom)" if pelvis else f"Hip {kind} AP (phantom)"
    ds.StudyID = f"H{index:05d}"
    ds.AccessionNumber = f"HX{seed % 10000:04d}{index:06d}"
    ds.BodyPartExamined = "PELVIS" if pelvis else "HIP"
    ds.AnatomicRegionSequence = DicomSequence(
        [_code("816092008", "Pelvis") if pelvis else _code("29836001", "Hip")]
    )
    ds.ImageLaterality = "B" if pelvis else kind
    ds.ViewPosition = "AP"
    view = _code("399348003", "antero-posterior")
    view.ViewModifierCodeSequence = DicomSequence()
    ds.ViewCodeSequence = DicomSequence([view])
    # AP shown as usual: rows run to the patient's left, columns to the feet; flipped: right
    ds.PatientOrientation = ["R" if flipped else "L", "F"]
    # higher stored values are denser (less beam intensity) in these MONOCHROME2 pixels
    ds.PixelIntensityRelationshipSign = -1
