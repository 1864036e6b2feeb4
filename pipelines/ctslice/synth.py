"""Deterministic synthetic abdominal CT series, with and without contrast, as real CT DICOM.

Seed 000 trains one slice classifier on contrast-enhanced and another on
non-contrast abdominal CT, for acute cholecystitis. The demo models, the
tests and anyone trying the node without patient data need series that
travel the hospital's path: axial *CT Image Storage* slices (explicit VR
little endian, MONOCHROME2, stored value = HU + 1024) that pass ``dciodvfy``,
grouped by real UIDs, ordered by ImagePositionPatient, and, above all, with
the attributes the node's router reads to tell the phases apart:

* **enhanced** series carry the Contrast/Bolus module (ContrastBolusAgent
  such as ``IOPAMIDOL 370`` or ``OMNIPAQUE 350``, route ``IV``, volume, start
  time, ingredient ``IODINE`` and its concentration) and a description with
  a contrast word (``ABD/PELVIS PV C+``, ``CT ABDOMEN ARTERIAL C+``), or none
  (``ABDOMEN 5mm``: then only the agent tells);
* **unenhanced** series have no Contrast/Bolus module and a description such
  as ``ABDOMEN W/O``, ``CT ABD NON-CONTRAST`` or ``ABDOMEN PLAIN``.

BodyPartExamined is ``ABDOMEN``.

What a slice shows (``size`` = S pixels on a nominal :data:`FIELD_OF_VIEW_MM`
= 360 mm field, every length below in mm; slice 0 is the most inferior,
image left is the patient's right):

* air around an elliptical body: subcutaneous fat (-100 HU), a muscle wall,
  visceral fat inside;
* the spine (vertebral body, cortical rim, paraspinal muscles), the aorta
  left-anterior and the IVC right-anterior of it;
* the liver on the patient's right (its section grows towards the top of the
  stack) with portal / hepatic vessel branches, the spleen on the left on the
  upper slices, both kidneys on the lower ones, a few bowel loops with gas or
  fluid;
* the gallbladder in the liver's fossa on a contiguous run of the middle
  slices: bile (0-15 HU) inside a thin wall, and in a third of the patients
  one to three gallstones;
* Gaussian noise of 8-14 HU and smooth texture.

Enhancement follows the phase (portal venous or arterial, per series): e.g.
the aorta is ~40 HU without contrast, 150-190 HU portal venous and
250-340 HU arterial; liver, spleen, kidneys, vessels and the gallbladder
wall enhance, bile and fat do not.

**Acute cholecystitis** (the positive class) draws the CT signs on every
slice of the gallbladder: a distended gallbladder, a wall thickened to
5-9 mm with an enhancing mucosa and an oedematous outer layer (a "halo"),
pericholecystic fluid (a crescent of 5-20 HU, 5-11 mm wide, over 140-240 degrees of the
free side) and stranding of the surrounding fat. A slice is labelled
``cholecystitis`` when it shows the gallbladder of a patient with
cholecystitis, otherwise ``normal``; a series is positive when one of its
slices is. The signs are pronounced (a network trained from scratch on a CPU
in a minute must see them at 128 pixels), not subtle.

Everything, pixels and UIDs included, is a pure function of ``(seed, index)``
and the contrast phase; the finding draws from its own random stream, so the
same patient renders the same anatomy and noise with and without
cholecystitis, and the enhanced and unenhanced series of one patient show
the same anatomy.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

from pipelines.common.phantoms import (
    CT_IMAGE_STORAGE,
    CT_RESCALE_INTERCEPT,
    CtSeriesHeader,
    PhantomHeader,
    phantom_uid,
    smooth_noise,
    write_ct_series,
)
from pipelines.ctslice.labels import ABDOMEN_WINDOW, LABELS, POSITIVE

logger = logging.getLogger(__name__)

#: Nominal reconstruction field of view, whatever the matrix size.
FIELD_OF_VIEW_MM = 360.0
#: Stored value = HU - RESCALE_INTERCEPT (unsigned, BitsStored 12).
RESCALE_INTERCEPT = CT_RESCALE_INTERCEPT
MAX_STORED = 4095
AIR_HU = -1000.0
#: The slice CSV written next to the DICOM folder.
SLICES_CSV = "slices.csv"
#: Columns of :data:`SLICES_CSV` (``path`` is relative to the CSV's folder).
CSV_COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "slice_index",
    "contrast",
)

Contrast = Literal["enhanced", "unenhanced"]
Phase = Literal["unenhanced", "portal_venous", "arterial"]

#: (unenhanced, portal venous, arterial) mean HU of each tissue before per-series jitter.
TISSUE_HU: dict[str, tuple[float, float, float]] = {
    "fat": (-100.0, -100.0, -100.0),
    "muscle": (50.0, 60.0, 55.0),
    "liver": (60.0, 110.0, 75.0),
    "spleen": (48.0, 120.0, 125.0),
    "kidney": (32.0, 160.0, 185.0),
    "aorta": (42.0, 170.0, 300.0),
    "ivc": (42.0, 140.0, 60.0),
    "portal": (42.0, 175.0, 95.0),
    "bone": (600.0, 600.0, 600.0),
    "marrow": (220.0, 230.0, 225.0),
    "bile": (8.0, 8.0, 8.0),
    "gb_wall": (40.0, 85.0, 75.0),
    "gb_mucosa": (45.0, 135.0, 125.0),
    "gb_oedema": (20.0, 32.0, 28.0),
    "fluid": (12.0, 12.0, 12.0),
    "bowel_wall": (40.0, 95.0, 85.0),
    "bowel_fluid": (15.0, 15.0, 15.0),
    "stone": (400.0, 400.0, 400.0),
}
_PHASE_COLUMN = {"unenhanced": 0, "portal_venous": 1, "arterial": 2}

#: (SeriesDescription, ProtocolName) choices per phase; "" description: only the agent tells.
_DESCRIPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "unenhanced": (
        ("ABDOMEN W/O", "ABDOMEN W/O"),
        ("CT ABD NON-CONTRAST", "ABD NON CONTRAST"),
        ("ABDOMEN PLAIN 5mm", "ABDOMEN PLAIN"),
    ),
    "portal_venous": (
        ("ABD/PELVIS PV C+", "ABDOMEN PELVIS C+"),
        ("PORTAL VENOUS 5mm", "ABDOMEN WITH CONTRAST"),
        ("ABDOMEN 5mm", "ABDOMEN ROUTINE"),
    ),
    "arterial": (
        ("CT ABDOMEN ARTERIAL C+", "ABDOMEN ARTERIAL"),
        ("ARTERIAL PHASE 5mm", "ABDOMEN MULTIPHASE"),
    ),
}
#: (ContrastBolusAgent, iodine concentration mg/ml) choices of enhanced series.
_AGENTS: tuple[tuple[str, int], ...] = (
    ("IOPAMIDOL 370", 370),
    ("OMNIPAQUE 350", 350),
    ("IOHEXOL 300", 300),
    ("ULTRAVIST 370", 370),
)


@dataclass(frozen=True)
class AbdomenSlice:
    """One written slice: its file, identifiers, position and label."""

    path: Path
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    slice_index: int  # 0 = most inferior (lowest z)
    z_mm: float
    contrast: Contrast
    phase: Phase
    label: str  # "normal" or "cholecystitis"
    gallbladder: bool  # the gallbladder is on this slice
    gallbladder_centre: tuple[float, float]  # (row, column) in pixels, where it is when shown


@dataclass(frozen=True)
class AbdomenSeries:
    """A rendered series: HU (n, S, S) float32, where the gallbladder is, and the labels."""

    hu: np.ndarray
    gallbladder_slices: tuple[int, ...]
    labels: tuple[str, ...]
    phase: Phase
    #: (row, column) of the gallbladder's centre on its slices, in pixels
    gallbladder_centre: tuple[float, float]


def _patient_rng(seed: int, index: int) -> np.random.Generator:
    """Anatomy stream of one patient: the same in every phase and with or without the finding."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 0xAB0]))


def _soft(signed_mm: np.ndarray, px: float) -> np.ndarray:
    """[0, 1] inside-fraction of a pixel whose centre is ``signed_mm`` inside an edge."""
    return np.clip(signed_mm / px + 0.5, 0.0, 1.0)


def _ellipse(
    x: np.ndarray,
    y: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    px: float,
    angle: float = 0.0,
) -> np.ndarray:
    """Soft ellipse mask (anti-aliased over one pixel); ``axes`` in mm (x, y), angle in radians."""
    dx, dy = x - centre[0], y - centre[1]
    if angle:
        dx, dy = (
            dx * math.cos(angle) + dy * math.sin(angle),
            dy * math.cos(angle) - dx * math.sin(angle),
        )
    ax, ay = max(axes[0], 1e-3), max(axes[1], 1e-3)
    r = np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2)
    # distance inside the edge, approximately, in mm
    return _soft((1.0 - r) * min(ax, ay), px)


def _paint(image: np.ndarray, mask: np.ndarray, hu: float | np.ndarray) -> None:
    image *= 1.0 - mask
    image += mask * hu


def _profile(t: np.ndarray, centre: float, half: float, floor: float = 0.0) -> np.ndarray:
    """Size factor along the stack: 1 at ``centre``, 0 beyond ``half`` (>= floor inside)."""
    inside = np.abs(t - centre) < half
    f = np.sqrt(np.clip(1.0 - ((t - centre) / half) ** 2, 0.0, 1.0))
    return np.where(inside, np.maximum(f, floor), 0.0)


def render_series(
    seed: int,
    index: int,
    *,
    phase: Phase,
    cholecystitis: bool,
    n_slices: int = 16,
    size: int = 256,
) -> AbdomenSeries:
    """Render one patient's abdominal series in HU (see the module docstring).

    Parameters
    ----------
    seed, index : int
        The patient: same pair, same anatomy in every phase.
    phase : {"unenhanced", "portal_venous", "arterial"}
        Contrast phase: decides the enhancement of every tissue.
    cholecystitis : bool
        Draw the signs of acute cholecystitis on the gallbladder's slices.
    n_slices, size : int
        Slices (at least 4) and Rows = Columns (at least 64).
    """
    if n_slices < 4 or size < 64:
        raise ValueError(f"need at least 4 slices of 64 pixels, got {n_slices} of {size}")
    rng = _patient_rng(seed, index)
    finding_rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0xC01]))
    noise_rng = np.random.default_rng(
        np.random.SeedSequence([seed, index, 0x9015, _PHASE_COLUMN[phase]])
    )
    col = _PHASE_COLUMN[phase]
    jitter = {k: v[col] + (rng.uniform(-0.08, 0.08) * abs(v[col])) for k, v in TISSUE_HU.items()}

    px = FIELD_OF_VIEW_MM / size
    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * px
    y, x = np.meshgrid(coords, coords, indexing="ij")  # y: + posterior (rows), x: + patient left
    t = np.linspace(0.0, 1.0, n_slices)  # 0 = most inferior

    # body and its wall
    cx, cy = rng.uniform(-8, 8), rng.uniform(-4, 10)
    a_body, b_body = rng.uniform(135, 165), rng.uniform(100, 122)
    fat_t, muscle_t = rng.uniform(12, 26), rng.uniform(8, 12)
    # spine and great vessels
    r_vert = rng.uniform(17, 21)
    vy = cy + b_body - fat_t - muscle_t - r_vert - rng.uniform(22, 30)
    aorta = (cx + rng.uniform(10, 16), vy - r_vert - rng.uniform(10, 14), rng.uniform(9, 12))
    ivc = (cx - rng.uniform(20, 28), vy - r_vert - rng.uniform(8, 12))
    ivc_axes = (rng.uniform(10, 13), rng.uniform(7, 10))
    # organs
    liver_c = (cx - 0.42 * a_body + rng.uniform(-6, 6), cy - 0.08 * b_body + rng.uniform(-6, 6))
    liver_axes = (0.52 * a_body, 0.72 * b_body)
    liver_angle = rng.uniform(-0.25, 0.05)
    spleen_c = (cx + 0.62 * a_body, cy + 0.28 * b_body)
    kidney_c = [(cx + s * rng.uniform(55, 65), vy + rng.uniform(-6, 6)) for s in (-1, 1)]
    vessels = [
        (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(3, 6)) for _ in range(5)
    ]
    bowel = [
        (
            cx + rng.uniform(-0.1, 0.6) * a_body,
            cy + rng.uniform(-0.65, 0.1) * b_body,
            rng.uniform(9, 18),
            bool(rng.uniform() < 0.5),
            rng.uniform(0.0, 1.0),
        )
        for _ in range(int(rng.integers(3, 6)))
    ]
    # gallbladder: in the liver's fossa, on a run of the middle slices
    gb_axes = (rng.uniform(13, 18), rng.uniform(15, 21))
    gb_angle = rng.uniform(-0.5, 0.5)
    gb_t0, gb_half = rng.uniform(0.42, 0.58), rng.uniform(0.2, 0.3)
    # on the liver's antero-medial edge at the gallbladder's level, half of it in the fat
    theta = -math.radians(rng.uniform(20, 50))
    f_edge = float(np.clip(0.5 + 0.75 * (gb_t0 - 0.1), 0.0, 1.05))
    ex, ey = liver_axes[0] * f_edge * math.cos(theta), liver_axes[1] * f_edge * math.sin(theta)
    ex, ey = (
        ex * math.cos(liver_angle) - ey * math.sin(liver_angle),
        ex * math.sin(liver_angle) + ey * math.cos(liver_angle),
    )
    inward = rng.uniform(0.1, 0.35) * min(gb_axes)
    norm = math.hypot(ex, ey)
    gb_c = (liver_c[0] + ex * (1 - inward / norm), liver_c[1] + ey * (1 - inward / norm))
    stones = [
        (rng.uniform(-0.4, 0.4), rng.uniform(0.2, 0.6), rng.uniform(2.0, 4.5))
        for _ in range(int(rng.integers(1, 4)))
    ]
    has_stones = bool(rng.uniform() < 0.35)
    wall_normal = rng.uniform(1.0, 2.0)
    # the finding's draws (made whether or not it is drawn: same anatomy either way)
    distend = finding_rng.uniform(1.15, 1.35)
    wall_thick = finding_rng.uniform(5.0, 9.0)
    fluid_width = finding_rng.uniform(5.0, 11.0)
    fluid_arc = math.radians(finding_rng.uniform(140, 240)) / 2.0
    strand_width = finding_rng.uniform(12, 22)
    strand_hu = finding_rng.uniform(55, 85)
    texture_seed = int(rng.integers(0, 2**31))

    body_f = 1.0 - 0.04 * np.abs(t - 0.5)
    liver_f = np.clip(0.5 + 0.75 * (t - 0.1), 0.0, 1.05) * (t > 0.08)
    spleen_f = _profile(t, 0.9, 0.45, floor=0.45)
    kidney_f = _profile(t, 0.22, 0.4, floor=0.5)
    gb_f = _profile(t, gb_t0, gb_half, floor=0.6)
    if not np.any(gb_f > 0):  # at least one slice shows the gallbladder
        gb_f[int(np.argmin(np.abs(t - gb_t0)))] = 0.6

    texture = smooth_noise(np.random.default_rng(texture_seed), size, 12)
    noise_sd = rng.uniform(8.0, 14.0)
    out = np.empty((n_slices, size, size), dtype=np.float32)
    gallbladder: list[int] = []
    for k in range(n_slices):
        img = np.full((size, size), AIR_HU, dtype=np.float32)
        ab, bb = a_body * body_f[k], b_body * body_f[k]
        _paint(img, _ellipse(x, y, (cx, cy), (ab, bb), px), jitter["fat"])
        inner = (ab - fat_t, bb - fat_t)
        _paint(img, _ellipse(x, y, (cx, cy), inner, px), jitter["muscle"])
        _paint(
            img,
            _ellipse(x, y, (cx, cy), (inner[0] - muscle_t, inner[1] - muscle_t), px),
            jitter["fat"],
        )
        # paraspinal muscles, vertebral body, posterior elements
        for s in (-1, 1):
            _paint(
                img,
                _ellipse(x, y, (cx + s * 32, vy + r_vert + 18), (24, 20), px),
                jitter["muscle"],
            )
        _paint(img, _ellipse(x, y, (cx, vy), (r_vert, r_vert * 0.9), px), jitter["bone"])
        _paint(img, _ellipse(x, y, (cx, vy), (r_vert - 3, r_vert * 0.9 - 3), px), jitter["marrow"])
        _paint(img, _ellipse(x, y, (cx, vy + r_vert + 16), (7, 12), px), jitter["bone"])
        # kidneys (lower slices), spleen (upper), liver with vessels
        if kidney_f[k] > 0:
            for kc in kidney_c:
                m = _ellipse(x, y, kc, (24 * kidney_f[k], 30 * kidney_f[k]), px, angle=0.3)
                _paint(img, m, jitter["kidney"])
        if spleen_f[k] > 0:
            m = _ellipse(x, y, spleen_c, (28 * spleen_f[k], 48 * spleen_f[k]), px, angle=-0.5)
            _paint(img, m, jitter["spleen"])
        if liver_f[k] > 0:
            la = (liver_axes[0] * liver_f[k], liver_axes[1] * liver_f[k])
            liver = _ellipse(x, y, liver_c, la, px, angle=liver_angle)
            liver *= _ellipse(x, y, (cx, cy), inner, px)  # stays inside the wall
            _paint(img, liver, jitter["liver"] + 4.0 * texture)
            for vx, vy_, vr in vessels:
                centre = (liver_c[0] + vx * la[0] * 0.6, liver_c[1] + vy_ * la[1] * 0.6)
                _paint(img, _ellipse(x, y, centre, (vr, vr), px) * liver, jitter["portal"])
        # bowel loops
        for bx, by, br, gas, wobble in bowel:
            centre = (bx, by + 6.0 * math.sin(6.0 * t[k] + 6.0 * wobble))
            _paint(img, _ellipse(x, y, centre, (br, br * 0.85), px), jitter["bowel_wall"])
            inside = _ellipse(x, y, centre, (br - 2.5, br * 0.85 - 2.5), px)
            _paint(img, inside, AIR_HU + 50.0 if gas else jitter["bowel_fluid"])
        # great vessels
        _paint(img, _ellipse(x, y, aorta[:2], (aorta[2], aorta[2]), px), jitter["aorta"])
        _paint(img, _ellipse(x, y, ivc, ivc_axes, px), jitter["ivc"])
        # gallbladder
        if gb_f[k] > 0:
            gallbladder.append(k)
            f = gb_f[k] * (distend if cholecystitis else 1.0)
            axes = (gb_axes[0] * f, gb_axes[1] * f)
            if cholecystitis:
                _draw_inflamed_gallbladder(
                    img,
                    x,
                    y,
                    px,
                    gb_c,
                    axes,
                    gb_angle,
                    liver_c,
                    jitter,
                    wall=wall_thick,
                    fluid=fluid_width,
                    arc=fluid_arc,
                    strand=strand_width,
                    strand_hu=strand_hu,
                    strand_texture=texture,
                )
            else:
                outer = (axes[0] + wall_normal, axes[1] + wall_normal)
                _paint(img, _ellipse(x, y, gb_c, outer, px, gb_angle), jitter["gb_wall"])
                _paint(img, _ellipse(x, y, gb_c, axes, px, gb_angle), jitter["bile"])
            if has_stones:
                for sx, sy, sr in stones:
                    centre = (gb_c[0] + sx * axes[0], gb_c[1] + sy * axes[1])
                    _paint(img, _ellipse(x, y, centre, (sr, sr), px), jitter["stone"])
        body = _ellipse(x, y, (cx, cy), (ab, bb), px)
        img += body * (3.0 * texture + noise_rng.normal(0.0, noise_sd, size=img.shape))
        img += (1.0 - body) * noise_rng.normal(0.0, 4.0, size=img.shape)
        out[k] = img
    hu = np.clip(np.rint(out), RESCALE_INTERCEPT, MAX_STORED + RESCALE_INTERCEPT)
    labels = tuple(
        POSITIVE if cholecystitis and k in gallbladder else LABELS[0] for k in range(n_slices)
    )
    centre = (gb_c[1] / px + (size - 1) / 2.0, gb_c[0] / px + (size - 1) / 2.0)
    return AbdomenSeries(
        hu=hu,
        gallbladder_slices=tuple(gallbladder),
        labels=labels,
        phase=phase,
        gallbladder_centre=centre,
    )


def _draw_inflamed_gallbladder(
    img: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    px: float,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    liver_c: tuple[float, float],
    hu: dict[str, float],
    *,
    wall: float,
    fluid: float,
    arc: float,
    strand: float,
    strand_hu: float,
    strand_texture: np.ndarray,
) -> None:
    """Distended gallbladder, thick layered wall, pericholecystic fluid and fat stranding."""
    outer = (axes[0] + wall, axes[1] + wall)
    # the free side: away from the liver's centre
    free = math.atan2(centre[1] - liver_c[1], centre[0] - liver_c[0])
    phi = np.arctan2(y - centre[1], x - centre[0])
    facing = np.cos(phi - free)
    # fat stranding: fat within `strand` mm of the wall turns streaky soft-tissue grey
    band = _ellipse(x, y, centre, (outer[0] + strand, outer[1] + strand), px, angle)
    fat = img < -40.0
    streaks = np.clip(0.5 + strand_texture, 0.0, 1.0)
    img += band * fat * (facing > -0.3) * streaks * strand_hu
    # pericholecystic fluid: a crescent on the free side
    crescent = _ellipse(x, y, centre, (outer[0] + fluid, outer[1] + fluid), px, angle)
    crescent *= _soft((facing - math.cos(arc)) * 20.0, px)
    _paint(img, crescent, hu["fluid"])
    # wall: oedematous outer layer, enhancing mucosa, then bile
    _paint(img, _ellipse(x, y, centre, outer, px, angle), hu["gb_oedema"])
    mucosa = (axes[0] + 1.5, axes[1] + 1.5)
    _paint(img, _ellipse(x, y, centre, mucosa, px, angle), hu["gb_mucosa"])
    _paint(img, _ellipse(x, y, centre, axes, px, angle), hu["bile"])


def _add_contrast_bolus(
    ds: Dataset, agent: tuple[str, int, float], phase: Phase, when: dt.datetime
) -> None:
    """The Contrast/Bolus module (C.7.6.4) of an enhanced series' slice."""
    name, concentration, volume = agent
    start = when - dt.timedelta(seconds=70 if phase == "portal_venous" else 30)
    ds.ContrastBolusAgent = name
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = volume
    ds.ContrastBolusStartTime = start.strftime("%H%M%S")
    ds.ContrastBolusIngredient = "IODINE"
    ds.ContrastBolusIngredientConcentration = concentration


def write_abdomen_series(
    out_dir: Path,
    *,
    seed: int,
    index: int,
    contrast: Contrast,
    cholecystitis: bool,
    n_slices: int = 16,
    size: int = 256,
    patient_id: str | None = None,
    study_instance_uid: str | None = None,
    phase: Phase | None = None,
    slice_thickness_mm: float = 5.0,
) -> list[AbdomenSlice]:
    """Write one axial abdominal CT series, one ``<SOPInstanceUID>.dcm`` file per slice.

    Parameters
    ----------
    out_dir : Path
        Folder to write into (created if missing).
    seed, index : int
        The patient: they fix the anatomy, the z placement and every UID.
    contrast : {"enhanced", "unenhanced"}
        Enhanced series get the Contrast/Bolus module and a portal venous
        (70 %) or arterial phase, drawn from ``(seed, index)`` unless
        ``phase`` says which.
    cholecystitis : bool
        Ground truth: draw acute cholecystitis on the gallbladder's slices.
    n_slices, size : int
        Slices and Rows = Columns.
    patient_id : str or None
        PatientID; default ``ABD-<seed>-<index>``; PatientName is ``PHANTOM^<patient_id>``.
    study_instance_uid : str or None
        Put the series in this study (e.g. the patient's other phase); default
        a study per (patient, contrast).
    phase : str or None
        Force the phase (``portal_venous`` or ``arterial`` for enhanced series).
    slice_thickness_mm : float
        SliceThickness and the spacing of the slice positions.

    Returns
    -------
    list of AbdomenSlice
        In slice order (most inferior first). Files are written in a shuffled
        order: only ImagePositionPatient (or InstanceNumber) tells the order.
    """
    if contrast not in ("enhanced", "unenhanced"):
        raise ValueError(f"contrast must be 'enhanced' or 'unenhanced', got {contrast!r}")
    choice = np.random.default_rng(np.random.SeedSequence([seed, index, 0xC7]))
    drawn_phase: Phase = "portal_venous" if choice.uniform() < 0.7 else "arterial"
    if contrast == "unenhanced":
        phase = "unenhanced"
    elif phase is None:
        phase = drawn_phase
    elif phase == "unenhanced":
        raise ValueError("an enhanced series needs phase 'portal_venous' or 'arterial'")
    options = _DESCRIPTIONS[phase]
    description = options[int(choice.integers(0, len(options)))]
    agent_name, concentration = _AGENTS[int(choice.integers(0, len(_AGENTS)))]
    volume = float(round(choice.uniform(70, 120)))
    agent = (agent_name, concentration, volume) if contrast == "enhanced" else None

    series = render_series(
        seed, index, phase=phase, cholecystitis=cholecystitis, n_slices=n_slices, size=size
    )
    patient_id = patient_id if patient_id is not None else f"ABD-{seed}-{index}"
    when = dt.datetime(2024, 3, 1, 8, 0, 0) + dt.timedelta(
        days=index % 365, minutes=(29 * index) % 600 + (3 if contrast == "enhanced" else 0)
    )
    header = PhantomHeader(
        sop_class_uid=CT_IMAGE_STORAGE,
        modality="CT",
        study_description="CT ABDOMEN WITH CONTRAST" if agent else "CT ABDOMEN WITHOUT CONTRAST",
        series_number=3 if contrast == "enhanced" else 2,
        series_description=description[0],
        body_part="ABDOMEN",
        generator="pipelines.ctslice.synth",
    )

    def more(ds: Dataset) -> None:
        ds.ProtocolName = description[1]
        if agent is not None:
            _add_contrast_bolus(ds, agent, phase, when)

    uids, files = write_ct_series(
        Path(out_dir),
        series.hu,
        CtSeriesHeader(
            header,
            tag=f"abd-{contrast}",
            ids="ABD",
            frame="abd-frame-of-reference",
            patient_position="FFS",
            window=ABDOMEN_WINDOW,
            window_name="ABDOMEN",
            field_of_view_mm=FIELD_OF_VIEW_MM,
            z_range=(-260.0, -200.0),
            thickness_mm=slice_thickness_mm,
        ),
        seed=seed,
        index=index,
        patient_id=patient_id,
        study_uid=study_instance_uid,
        when=when,
        more=more,
    )
    slices = [
        AbdomenSlice(
            path=f.path,
            patient_id=patient_id,
            study_instance_uid=uids["study"],
            series_instance_uid=uids["series"],
            sop_instance_uid=f.sop_instance_uid,
            slice_index=f.slice_index,
            z_mm=f.z_mm,
            contrast=contrast,
            phase=phase,
            label=series.labels[f.slice_index],
            gallbladder=f.slice_index in series.gallbladder_slices,
            gallbladder_centre=series.gallbladder_centre,
        )
        for f in files
    ]
    logger.debug(
        "wrote abdominal CT series %s (%s, %d slices, cholecystitis=%s) to %s",
        uids["series"],
        phase,
        n_slices,
        cholecystitis,
        out_dir,
    )
    return slices


def positive_patients(patients: int, *, seed: int, positive_fraction: float = 0.5) -> np.ndarray:
    """Which patients of :func:`write_abdomen_dataset` have cholecystitis (exactly as asked).

    ``round(patients * positive_fraction)`` entries are True, at positions
    drawn from ``seed``.
    """
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0xCC5])).permutation(patients)
    positive = np.zeros(patients, dtype=bool)
    positive[order[: round(patients * positive_fraction)]] = True
    return positive


def write_abdomen_dataset(
    out_dir: str | Path,
    *,
    patients: int,
    seed: int,
    contrast: Literal["enhanced", "unenhanced", "both"] = "both",
    n_slices: int = 16,
    size: int = 256,
    positive_fraction: float = 0.5,
    first_index: int = 0,
) -> tuple[Path, list[AbdomenSlice]]:
    """Write ``patients`` abdominal CT studies and the slice CSV; return (csv path, slices).

    Layout: ``out_dir/dicom/<PatientID>/<contrast>/<SOPInstanceUID>.dcm`` and
    ``out_dir/slices.csv`` with :data:`CSV_COLUMNS` (``path`` relative to
    ``out_dir``), the input of ``dicom-node train ct-slice-classifier``.
    With ``contrast="both"`` each patient has one study with an unenhanced
    and an enhanced series (a biphasic examination), both with or both
    without cholecystitis. Patient ``i`` is ``(seed, first_index + i)``.

    Parameters
    ----------
    out_dir : Path
        Output folder (dicom/, slices.csv); created if missing.
    patients : int
        Number of patients.
    seed : int
        Dataset seed.
    contrast : str
        Series per patient: one phase, or both in one study.
    n_slices : int
        Axial slices per series.
    size : int
        Rows = columns of each slice.
    positive_fraction : float
        Share of the patients with cholecystitis.
    first_index : int
        Index of the first patient (to extend a data set with new patients).
    """
    if contrast not in ("enhanced", "unenhanced", "both"):
        raise ValueError(f"contrast must be enhanced, unenhanced or both, got {contrast!r}")
    if patients < 1:
        raise ValueError("patients must be at least 1")
    out = Path(out_dir)
    phases: list[Contrast] = ["unenhanced", "enhanced"] if contrast == "both" else [contrast]
    positive = positive_patients(patients, seed=seed, positive_fraction=positive_fraction)
    slices: list[AbdomenSlice] = []
    for i in range(patients):
        index = first_index + i
        patient_id = f"ABD-{seed}-{index}"
        study = phantom_uid(seed, index, "abd-biphasic-study") if contrast == "both" else None
        for kind in phases:
            slices += write_abdomen_series(
                out / "dicom" / patient_id / kind,
                seed=seed,
                index=index,
                contrast=kind,
                cholecystitis=bool(positive[i]),
                n_slices=n_slices,
                size=size,
                patient_id=patient_id,
                study_instance_uid=study,
            )
    csv_path = out / SLICES_CSV
    write_slices_csv(csv_path, slices)
    return csv_path, slices


def write_slices_csv(path: Path, slices: Sequence[AbdomenSlice]) -> None:
    """The slice CSV (:data:`CSV_COLUMNS`), paths relative to its folder."""
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for s in slices:
            writer.writerow(
                [
                    s.path.relative_to(path.parent).as_posix(),
                    s.label,
                    s.patient_id,
                    s.study_instance_uid,
                    s.series_instance_uid,
                    s.sop_instance_uid,
                    s.slice_index,
                    s.contrast,
                ]
            )
