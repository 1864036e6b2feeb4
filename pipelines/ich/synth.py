"""Deterministic synthetic head CT series in the RSNA Intracranial Hemorrhage format.

The intracranial hemorrhage (ICH) pipeline, its tests and anyone evaluating the
node without patient data need head CTs that travel the same path as a
hospital's: axial *CT Image Storage* slices (explicit VR little endian,
MONOCHROME2, stored values with a -1024 rescale intercept, so
``apply_modality_lut`` gives Hounsfield units) that pass ``dciodvfy`` without
errors, grouped into series by real UIDs and ordered by ImagePositionPatient
rather than by file name. A dataset is laid out as the RSNA Intracranial
Hemorrhage Detection challenge data (flat ``dicom/ID_<SOPInstanceUID>.dcm``
files and a ``labels.csv`` with one ``ID_<sop>_<subtype>,0|1`` row per slice and
label), so the same training code reads the phantoms and the real challenge data.

What a series looks like (``size`` = S pixels square on a nominal
:data:`FIELD_OF_VIEW_MM` = 230 mm field, so PixelSpacing is 230/S mm and every
length below is in mm, whatever S; slice 0 is the most inferior):

* air (:data:`AIR_HU`) around a head that is a rough ellipsoid: its axial
  outline shrinks towards the first and last slices, which show little more
  than skull and a small brain;
* a thin scalp (~ +40 HU) over an elliptical skull shell 6-8 mm thick of
  cortical bone (dense inner and outer tables ~ 1500 HU, diploe ~ 750 HU,
  always within :data:`BONE_HU_RANGE`);
* brain parenchyma: grey matter (34-38 HU) in a cortical ribbon and along the
  sulci, white matter (26-30 HU) inside, with smooth texture;
* CSF (2-10 HU): a thin rim over the brain surface, radial sulci near the
  surface, the interhemispheric fissure, two crescent-shaped lateral ventricles
  near the centre on the middle third of the slices, and basal cisterns
  (perimesencephalic ring, suprasellar cistern, Sylvian fissures) on a few
  slices below the ventricles;
* Gaussian noise with a standard deviation of 3-6 HU and a small random shift,
  rotation, size and z-placement per series, so no two series are alike.

Hemorrhages (acute blood, :data:`BLOOD_HU_RANGE` = 55-85 HU) each cover a
contiguous run of 3-8 slices inside the brain's z extent:

* ``subdural``: a crescent 5-10 mm thick hugging the inner table over a long
  arc (105-160 degrees), concave towards the brain;
* ``epidural``: a biconvex lens 9-16 mm thick at its centre over a short arc
  (30-50 degrees) against the inner table;
* ``subarachnoid``: blood filling (and widening) the sulci and the surface
  CSF rim over an arc of the convexity, or filling the basal cisterns and
  Sylvian fissures;
* ``intraparenchymal``: a lobulated blob of radius 6-15 mm within the
  parenchyma, at least a few mm away from the skull, ventricles and cisterns;
* ``intraventricular``: blood in one or both lateral ventricles, layering in
  the dependent (posterior) part or filling them, only where ventricles are.

The sizes are chosen for learnability, not subtlety: a small network trained
from scratch on ~30 patients at 128 px must see them in the brain window
(WL 40 / WW 80). A slice is labelled positive for a subtype iff the
subtype's mask covers at least :func:`min_label_pixels` pixels of it (0.05 %
of the slice, at least 4 pixels); blood that would cover fewer pixels on a
slice is not drawn there at all, so no slice shows unlabelled blood. ``any``
is the OR of the five subtypes.

Everything, pixels and UIDs included, is a pure function of ``(seed, index)``.
Each subtype draws from its own random stream, drawn whether or not it is
used, so the same generator state renders the same anatomy and noise with and
without hemorrhages: the difference of such a pair is the blood alone.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common.phantoms import (
    CT_IMAGE_STORAGE,
    CT_RESCALE_INTERCEPT,
    CtSeriesHeader,
    PhantomHeader,
    smooth_noise,
    soft_ellipse,
    write_ct_series,
)
from pipelines.ich.labels import LABELS, SUBTYPES

logger = logging.getLogger(__name__)

#: Nominal reconstruction field of view: 230 mm whatever the matrix size.
FIELD_OF_VIEW_MM = 230.0
#: Stored value = HU - RESCALE_INTERCEPT (unsigned, BitsStored 12).
RESCALE_INTERCEPT = CT_RESCALE_INTERCEPT
#: Largest stored value (BitsStored = 12): 3071 HU.
MAX_STORED = 4095
#: Air outside the head.
AIR_HU = -1000.0
#: Cortical bone of the skull (diploe at the low end, the tables at the high end).
BONE_HU_RANGE: tuple[float, float] = (700.0, 1600.0)
#: Acute blood, before noise.
BLOOD_HU_RANGE: tuple[float, float] = (55.0, 85.0)
#: A slice is positive for a subtype when its mask covers this fraction of the slice ...
MIN_LABEL_FRACTION = 0.0005
#: ... and at least this many pixels.
MIN_LABEL_PIXELS = 4
#: Brain window of the written files (WindowCenter, WindowWidth).
BRAIN_WINDOW: tuple[float, float] = (40.0, 80.0)


@dataclass(frozen=True)
class SynthSlice:
    """One written slice: its file, identifiers, position and labels."""

    path: Path
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    slice_index: int  # 0 = most inferior (lowest z)
    z_mm: float  # ImagePositionPatient[2]
    labels: dict[str, int]  # all six LABELS -> 0/1; any = OR of subtypes


@dataclass(frozen=True, eq=False, repr=False)
class HeadPhantom:
    """A rendered head and where its tissues are, all arrays of shape (n_slices, size, size).

    Attributes
    ----------
    hu : numpy.ndarray
        float32 Hounsfield units, rounded to integers and clipped to what the
        files can store ([-1024, 3071]); noise included.
    masks : dict of str to numpy.ndarray
        Per subtype asked for, a boolean mask of its blood (possibly empty).
    skull : numpy.ndarray
        Boolean: mostly bone.
    brain : numpy.ndarray
        Boolean: inside the inner table of the skull (parenchyma, CSF spaces, blood).
    ventricles : numpy.ndarray
        Boolean: lateral ventricles.
    csf : numpy.ndarray
        Boolean: extra-ventricular CSF (surface rim, sulci, fissures, cisterns).
    depth_mm : numpy.ndarray
        float32 depth below the inner table of the skull in mm, measured along
        the ray from the head's centre (negative in the skull and outside).
    """

    hu: np.ndarray
    masks: dict[str, np.ndarray]
    skull: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    csf: np.ndarray
    depth_mm: np.ndarray


@dataclass
class _Frame:
    """Geometry of one rendered head that the hemorrhages are drawn into (mm, radians)."""

    px: float
    u: np.ndarray  # (n, S, S) antero-posterior head coordinate, + posterior
    v: np.ndarray  # (n, S, S) right-left head coordinate, + patient's left
    y: np.ndarray  # (1, S, 1) image row coordinate, + posterior (gravity, patient supine)
    phi: np.ndarray  # (n, S, S) angle around the head's axis, atan2(v, u)
    depth: np.ndarray  # (n, S, S) depth below the inner table along the ray
    brain: np.ndarray  # (n, S, S) bool
    brain_fraction: np.ndarray  # (n, S, S) part of each pixel inside the inner table
    content: np.ndarray  # (n, S, S) HU of what is inside the inner table (no blood, no noise)
    usable: np.ndarray  # slice indices with a large brain section (contiguous)
    sulcus_dist: np.ndarray  # (n, S, S) distance to the nearest sulcus line
    sulcus_depth: np.ndarray  # (n, S, S) depth of that sulcus
    sulcus_width: float
    rim: float
    ventricle_sides: tuple[np.ndarray, np.ndarray]  # soft (n, S, S) per side
    ventricles: np.ndarray  # soft (n, S, S)
    cisterns: np.ndarray  # soft (n, S, S): ring, suprasellar, Sylvian
    avoid: np.ndarray  # (n, S, S) bool: ventricles and cisterns with a margin


def min_label_pixels(size: int) -> int:
    """Pixels a subtype's mask must cover on a ``size`` x ``size`` slice to label it positive."""
    return max(MIN_LABEL_PIXELS, math.ceil(MIN_LABEL_FRACTION * size * size))


def _ramp(signed_mm: np.ndarray, px: float) -> np.ndarray:
    """[0, 1] inside-fraction of a pixel whose centre is ``signed_mm`` inside an edge."""
    return np.clip(signed_mm / px + 0.5, 0.0, 1.0)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angle folded into [-pi, pi)."""
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _z_texture(rng: np.random.Generator, size: int, n: int, cells: int) -> np.ndarray:
    """(n, S, S) unit-ish smooth texture that also varies smoothly from slice to slice."""
    a, b = smooth_noise(rng, size, cells), smooth_noise(rng, size, cells)
    w = np.linspace(0.0, rng.uniform(1.0, 2.0) * np.pi, n, dtype=np.float32) + rng.uniform(0, 6.3)
    return np.cos(w)[:, None, None] * a + np.sin(w)[:, None, None] * b


def _z_run(
    rng: np.random.Generator, candidates: np.ndarray, lo: int = 3, hi: int = 8
) -> np.ndarray:
    """A contiguous run of ``lo``-``hi`` slices (fewer if fewer candidates) among ``candidates``."""
    length = min(int(rng.integers(lo, hi + 1)), len(candidates))
    start = int(rng.integers(0, len(candidates) - length + 1))
    return candidates[start : start + length]


def _z_profile(run: np.ndarray, n: int, floor: float = 0.55) -> np.ndarray:
    """(n, 1, 1) extent factor of a lesion over its run: 1 in the middle, >= floor at the ends."""
    prof = np.zeros(n, dtype=np.float32)
    half = len(run) / 2.0 + 0.5
    pos = np.arange(len(run)) - (len(run) - 1) / 2.0
    prof[run] = np.maximum(np.sqrt(np.clip(1.0 - (pos / half) ** 2, 0.0, 1.0)), floor)
    return prof[:, None, None]


def _in_run(run: np.ndarray, n: int) -> np.ndarray:
    sel = np.zeros((n, 1, 1), dtype=bool)
    sel[run] = True
    return sel


def _anatomy(
    rng: np.random.Generator, size: int, n: int
) -> tuple[np.ndarray, _Frame, dict[str, np.ndarray]]:
    """Render the head without blood: HU before noise, the geometry, and tissue maps."""
    px = FIELD_OF_VIEW_MM / size
    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * px
    y, x = coords[None, :, None], coords[None, None, :]

    # z: the head is a rough ellipsoid whose widest section is a little above mid-stack
    t = 2.0 * (np.arange(n, dtype=np.float32) + 0.5) / n - 1.0
    tn = (t - rng.uniform(-0.05, 0.1)) / rng.uniform(1.0, 1.08)
    f = np.sqrt(np.clip(1.0 - tn**2, 0.2, 1.0))[:, None, None]
    scale = rng.uniform(0.93, 1.05)
    a_out, b_out = 92.0 * scale * f, 76.0 * scale * f  # outer scalp semi-axes (AP, LR)

    # position: small shift, in-plane rotation, and a tilt moving the centre with z
    cu = rng.uniform(-0.03, 0.03) * FIELD_OF_VIEW_MM + rng.uniform(-6.0, 6.0) * tn
    cv = rng.uniform(-0.03, 0.03) * FIELD_OF_VIEW_MM + rng.uniform(-2.0, 2.0) * tn
    theta = rng.uniform(-0.12, 0.12)
    dy, dx = y - cu[:, None, None], x - cv[:, None, None]
    u = (dy * math.cos(theta) + dx * math.sin(theta)).astype(np.float32)
    v = (dx * math.cos(theta) - dy * math.sin(theta)).astype(np.float32)
    radius = np.hypot(u, v)
    phi = np.arctan2(v, u)
    # distance from the centre to the outer surface along the ray, and depth below it
    rho = 1.0 / np.sqrt((np.cos(phi) / a_out) ** 2 + (np.sin(phi) / b_out) ** 2)
    depth_out = rho - radius

    scalp = rng.uniform(3.0, 5.0)
    skull_t = rng.uniform(6.0, 8.0) * (1.0 + 0.1 * np.cos(2.0 * phi + rng.uniform(-0.5, 0.5)))
    depth = depth_out - scalp - skull_t  # below the inner table
    head_in, bone_in, brain_in = (
        _ramp(depth_out, px),
        _ramp(depth_out - scalp, px),
        _ramp(depth, px),
    )

    # skull: dense tables, lighter diploe, some texture
    across = np.clip((depth_out - scalp) / skull_t, 0.0, 1.0)
    bone = 750.0 + 750.0 * (2.0 * across - 1.0) ** 2 + 40.0 * smooth_noise(rng, size, 16)
    bone = np.clip(bone, *BONE_HU_RANGE)

    # sulci: radial CSF lines near the surface, wobbling with angle, depth and z
    # (as many per slice as fit at a fixed spacing along the brain's outline)
    spacing = rng.uniform(9.0, 12.0)
    inner_mean = 0.5 * (a_out + b_out) - scalp - 7.0
    n_sulci = np.maximum(6, np.rint(2.0 * np.pi * inner_mean / spacing))
    wobble = (
        0.3 * np.sin(3.0 * phi + rng.uniform(0, 6.3) + 2.5 * tn[:, None, None])
        + 0.2 * np.sin(5.0 * phi + rng.uniform(0, 6.3) - 3.0 * tn[:, None, None])
        + 0.12 * np.sin(depth / 3.0 + rng.uniform(0, 6.3))
    )
    line = n_sulci * (phi + np.pi) / (2.0 * np.pi) + wobble
    nearest = np.rint(line)
    sulcus_dist = np.abs(line - nearest) * (2.0 * np.pi / n_sulci) * radius
    depths = rng.uniform(5.0, 14.0, size=128).astype(np.float32)
    sulcus_depth = depths[nearest.astype(np.int64) % len(depths)]
    sulcus_width = rng.uniform(1.0, 1.6)
    sulci = _ramp(sulcus_width / 2.0 - sulcus_dist, px) * _ramp(sulcus_depth - depth, px)
    rim = rng.uniform(0.6, 1.2)
    csf_rim = _ramp(rim - depth, px)
    fissure = _ramp(0.7 - np.abs(v), px) * _ramp(np.abs(u) - rng.uniform(32.0, 40.0), px)

    # lateral ventricles: two crescents (caudate heads indent them laterally) mid-stack
    vz0, vh = rng.uniform(0.05, 0.2), rng.uniform(0.28, 0.36)
    v_at = np.flatnonzero(np.abs(tn - vz0) < vh)
    fv = np.maximum(np.sqrt(np.clip(1.0 - ((tn[v_at] - vz0) / vh) ** 2, 0.0, 1.0)), 0.5)
    fv = fv[:, None, None]
    sides = []
    for s in (-1.0, 1.0):
        uc = rng.uniform(-4.0, 2.0)
        a_v, b_v = rng.uniform(23.0, 29.0) * fv, rng.uniform(6.0, 8.5) * np.sqrt(fv)
        vc = s * (float(b_v.max(initial=7.0)) + rng.uniform(1.5, 3.0))
        alpha = -s * rng.uniform(0.08, 0.2)  # frontal horn turns laterally
        du, dv = u[v_at] - uc, v[v_at] - vc
        ru = (du * math.cos(alpha) + dv * math.sin(alpha)) / a_v
        rv = (dv * math.cos(alpha) - du * math.sin(alpha)) / b_v
        sharp = 4.0 * float(b_v.max(initial=7.0)) / px
        body = soft_ellipse(ru, rv, (0.0, 0.0), (1.0, 1.0), sharp)
        caudate = soft_ellipse(ru, rv, (-0.25, s * 1.25), (0.5, 0.75), sharp)
        side = np.zeros_like(u)
        side[v_at] = body * (1.0 - caudate)
        sides.append(side)
    ventricles = np.maximum(sides[0], sides[1])

    # basal cisterns below the ventricles: ring around the midbrain, suprasellar, Sylvian
    ch = rng.uniform(0.15, 0.2)
    cz0 = vz0 - vh - ch - rng.uniform(0.03, 0.08)  # not on the ventricles' slices
    c_at = np.flatnonzero(np.abs(tn - cz0) < ch)
    cu_, cv_ = u[c_at], v[c_at]
    mid_u = rng.uniform(3.0, 7.0)
    outer = soft_ellipse(cu_, cv_, (mid_u, 0.0), (13.5, 14.5), 13.5 * 4.0 / px)
    midbrain = soft_ellipse(cu_, cv_, (mid_u, 0.0), (10.0, 11.0), 10.0 * 4.0 / px)
    suprasellar = soft_ellipse(cu_, cv_, (-9.0, 0.0), (7.0, 10.0), 7.0 * 4.0 / px)
    basal = np.maximum(outer * (1.0 - midbrain), suprasellar)
    beta, w_syl, l_syl = rng.uniform(0.25, 0.45), rng.uniform(1.5, 2.5), rng.uniform(30, 42)
    for s in (-1.0, 1.0):
        du, dv = cu_ + 9.0, cv_ - s * 8.0
        along = -du * math.sin(beta) + s * dv * math.cos(beta)
        across_syl = np.abs(du * math.cos(beta) + s * dv * math.sin(beta))
        basal = np.maximum(
            basal,
            _ramp(w_syl / 2.0 - across_syl, px) * _ramp(along, px) * _ramp(l_syl - along, px),
        )
    cisterns = np.zeros_like(u)
    cisterns[c_at] = basal

    # parenchyma: cortical ribbon and sulcal banks are grey, the rest white
    cortex = rng.uniform(2.5, 3.5) + 0.5 * smooth_noise(rng, size, 10)
    grey = np.maximum(
        _ramp(cortex - depth, px),
        _ramp(sulcus_width / 2.0 + cortex - sulcus_dist, px)
        * _ramp(sulcus_depth + cortex - depth, px),
    )
    white_hu, grey_hu = rng.uniform(26.0, 30.0), rng.uniform(34.0, 38.0)
    tissue = white_hu + (grey_hu - white_hu) * grey + 1.2 * _z_texture(rng, size, n, 12)
    extra_csf = np.maximum(np.maximum(csf_rim, sulci), np.maximum(fissure, cisterns))
    csf_all = np.maximum(extra_csf, ventricles)
    csf_hu = rng.uniform(2.0, 10.0)
    content = tissue * (1.0 - csf_all) + csf_hu * csf_all

    scalp_hu = rng.uniform(35.0, 45.0)
    hu = (
        AIR_HU * (1.0 - head_in)
        + scalp_hu * (head_in - bone_in)
        + bone * (bone_in - brain_in)
        + content * brain_in
    ).astype(np.float32)

    brain = brain_in > 0.5
    usable = np.flatnonzero(f[:, 0, 0] >= min(0.8, float(f.max()) - 1e-6))
    frame = _Frame(
        px=px,
        u=u,
        v=v,
        y=y,
        phi=phi,
        depth=depth.astype(np.float32),
        brain=brain,
        brain_fraction=brain_in.astype(np.float32),
        content=content.astype(np.float32),
        usable=usable,
        sulcus_dist=sulcus_dist,
        sulcus_depth=sulcus_depth,
        sulcus_width=sulcus_width,
        rim=rim,
        ventricle_sides=(sides[0], sides[1]),
        ventricles=ventricles,
        cisterns=cisterns,
        avoid=(ventricles > 0.02) | (cisterns > 0.02),
    )
    tissues = {
        "skull": (bone_in - brain_in) > 0.5,
        "brain": brain,
        "ventricles": (ventricles * brain_in) > 0.5,
        "csf": (extra_csf * brain_in) > 0.5,
    }
    return hu, frame, tissues


def _extra_axial(rng: np.random.Generator, fr: _Frame, *, lens: bool) -> np.ndarray:
    """Subdural crescent (long arc, even thickness) or epidural lens (short arc, thick centre)."""
    n = fr.u.shape[0]
    run = _z_run(rng, fr.usable)
    side = rng.choice([-1.0, 1.0])
    if lens:
        centre = side * np.pi / 2.0 + rng.uniform(-0.9, 0.9)
        half_arc, thick = rng.uniform(0.26, 0.44), rng.uniform(9.0, 16.0)
    else:
        centre = side * np.pi / 2.0 + rng.uniform(-0.6, 0.6)
        half_arc, thick = rng.uniform(0.92, 1.4), rng.uniform(5.0, 10.0)
    off = np.clip(np.abs(_wrap(fr.phi - centre)) / half_arc, 0.0, 1.0)
    # lens: parabolic thickness (convex towards the brain); crescent: flat, tapering ends
    shape = 1.0 - off**2 if lens else np.sqrt(1.0 - off**4)
    thickness = thick * _z_profile(run, n, floor=0.6) * shape
    return fr.brain & (fr.depth < thickness) & (off < 1.0) & _in_run(run, n)


def _subarachnoid(rng: np.random.Generator, fr: _Frame) -> np.ndarray:
    """Blood in the convexity sulci and surface rim over an arc, or in the basal cisterns."""
    n = fr.u.shape[0]
    cistern_slices = np.flatnonzero(fr.cisterns.reshape(n, -1).max(axis=1) > 0.5)
    if len(cistern_slices) >= 3 and rng.uniform() < 0.35:
        return fr.brain & (fr.cisterns > 0.3)
    run = _z_run(rng, fr.usable)
    half_arc = rng.uniform(0.6, 1.2)
    arc = np.abs(_wrap(fr.phi - rng.uniform(-np.pi, np.pi))) < half_arc
    widen = rng.uniform(0.5, 0.9)  # blood distends the sulci a little
    in_sulci = (fr.sulcus_dist < fr.sulcus_width / 2.0 + widen) & (
        fr.depth < fr.sulcus_depth + widen
    )
    rim = fr.depth < fr.rim + widen
    return fr.brain & arc & (in_sulci | rim) & _in_run(run, n)


def _intraparenchymal(rng: np.random.Generator, fr: _Frame) -> np.ndarray:
    """A lobulated blob in the parenchyma, clear of skull, ventricles and cisterns."""
    n, size = fr.u.shape[0], fr.u.shape[1]
    run = _z_run(rng, fr.usable)
    prof = _z_profile(run, n)[run]
    radius = rng.uniform(6.0, 15.0)
    lobes = (rng.uniform(0, 6.3), rng.uniform(0, 6.3), rng.uniform(0.05, 0.15))
    mid = run[len(run) // 2]
    inside = fr.brain[mid] & (fr.depth[mid] > 20.0)
    rows, cols = np.nonzero(inside)
    u, v, depth, avoid = fr.u[run], fr.v[run], fr.depth[run], fr.avoid[run]
    for attempt in range(300):
        if attempt and attempt % 50 == 0:
            radius = max(4.0, radius * 0.85)
        if len(rows) == 0:
            break
        pick = rng.integers(0, len(rows))
        u0, v0 = fr.u[mid, rows[pick], cols[pick]], fr.v[mid, rows[pick], cols[pick]]
        dist = np.hypot(u - u0, v - v0)
        reach = dist < radius * prof * (1.0 + lobes[2] + 0.07) + 4.0
        if np.all(depth[reach] > 4.0) and not np.any(avoid[reach]):
            ang = np.arctan2(v - v0, u - u0)
            edge = (
                radius
                * prof
                * (
                    1.0
                    + lobes[2] * np.cos(2.0 * ang + lobes[0])
                    + 0.07 * np.cos(3.0 * ang + lobes[1])
                )
            )
            mask = np.zeros((n, size, size), dtype=bool)
            mask[run] = dist < edge
            return mask
    logger.debug("no room for an intraparenchymal hemorrhage; none drawn")
    return np.zeros((n, size, size), dtype=bool)


def _intraventricular(rng: np.random.Generator, fr: _Frame) -> np.ndarray:
    """Blood in one or both lateral ventricles: a dependent (posterior) layer or a cast."""
    n, size = fr.u.shape[0], fr.u.shape[1]
    mask = np.zeros((n, size, size), dtype=bool)
    slices = np.flatnonzero(fr.ventricles.reshape(n, -1).max(axis=1) > 0.5)
    if len(slices) == 0:
        return mask
    run = _z_run(rng, slices)
    which = [int(rng.integers(0, 2))] if rng.uniform() < 0.5 else [0, 1]
    cast = rng.uniform() < 0.25
    level = 0.0 if cast else rng.uniform(0.3, 0.6)  # fraction of the ventricle left clear
    y = np.broadcast_to(fr.y[0], (size, size))
    for k in run:
        for s in which:
            vent = (fr.ventricle_sides[s][k] > 0.5) & fr.brain[k]
            if not vent.any():
                continue
            ys = y[vent]
            cut = ys.min() + level * (ys.max() - ys.min())
            mask[k] |= vent & (y >= cut)
    return mask


def _hemorrhage(subtype: str, rng: np.random.Generator, fr: _Frame) -> np.ndarray:
    if subtype == "subdural":
        return _extra_axial(rng, fr, lens=False)
    if subtype == "epidural":
        return _extra_axial(rng, fr, lens=True)
    if subtype == "subarachnoid":
        return _subarachnoid(rng, fr)
    if subtype == "intraparenchymal":
        return _intraparenchymal(rng, fr)
    return _intraventricular(rng, fr)


def render_head(
    rng: np.random.Generator,
    *,
    size: int = 256,
    n_slices: int = 24,
    hemorrhages: Sequence[str] = (),
) -> HeadPhantom:
    """Render a head CT volume with the requested hemorrhages and its tissue maps.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness; the same generator state gives the same volume.
    size : int
        Rows = Columns (at least 64).
    n_slices : int
        Number of axial slices, slice 0 the most inferior (at least 3).
    hemorrhages : sequence of str
        Subtypes from :data:`SUBTYPES` to draw (order and repeats do not matter).

    Returns
    -------
    HeadPhantom
        The HU volume, one blood mask per requested subtype, and tissue maps.
    """
    if size < 64:
        raise ValueError(f"head phantom size must be at least 64 pixels, got {size}")
    if n_slices < 3:
        raise ValueError(f"a head series needs at least 3 slices, got {n_slices}")
    unknown = sorted(set(hemorrhages) - set(SUBTYPES))
    if unknown:
        raise ValueError(f"unknown hemorrhage subtypes {unknown}; expected some of {SUBTYPES}")
    # one stream per subtype, drawn whether or not it is used (paired volumes, see module doc)
    streams = dict(zip(SUBTYPES, rng.integers(0, 2**63, size=len(SUBTYPES)), strict=True))
    hu, frame, tissues = _anatomy(rng, size, n_slices)
    noise_sd = rng.uniform(3.0, 6.0)
    noise = rng.standard_normal(hu.shape, dtype=np.float32) * noise_sd

    threshold = min_label_pixels(size)
    masks: dict[str, np.ndarray] = {}
    filling = frame.content  # what is inside the inner table, blood included
    for subtype in SUBTYPES:
        if subtype not in hemorrhages:
            continue
        lrng = np.random.default_rng(streams[subtype])
        mask = _hemorrhage(subtype, lrng, frame)
        # no blood on a slice where there is too little of it to label the slice positive
        mask[mask.reshape(n_slices, -1).sum(axis=1) < threshold] = False
        blood = lrng.uniform(62.0, 78.0) + 2.5 * smooth_noise(lrng, size, 12)
        # blood replaces what fills the brain's share of a pixel; bone at the inner table stays
        blood = np.clip(blood, *BLOOD_HU_RANGE)
        hu = np.where(mask, hu + frame.brain_fraction * (blood - filling), hu)
        filling = np.where(mask, blood, filling)
        masks[subtype] = mask

    hu = np.clip(np.rint(hu + noise), RESCALE_INTERCEPT, MAX_STORED + RESCALE_INTERCEPT)
    return HeadPhantom(
        hu=hu.astype(np.float32),
        masks=masks,
        skull=tissues["skull"],
        brain=tissues["brain"],
        ventricles=tissues["ventricles"],
        csf=tissues["csf"],
        depth_mm=frame.depth,
    )


def make_head_volume(
    rng: np.random.Generator,
    *,
    size: int = 256,
    n_slices: int = 24,
    hemorrhages: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render a head CT volume and the masks of its hemorrhages.

    See :func:`render_head` (which also returns tissue maps) for the parameters.

    Returns
    -------
    hu : numpy.ndarray
        float32 (n_slices, size, size) Hounsfield units (integer-valued, noise included).
    masks : dict of str to numpy.ndarray
        Per subtype in ``hemorrhages``, a boolean (n_slices, size, size) mask of its blood.
    """
    head = render_head(rng, size=size, n_slices=n_slices, hemorrhages=hemorrhages)
    return head.hu, head.masks


def slice_labels(masks: dict[str, np.ndarray], size: int) -> list[dict[str, int]]:
    """Per slice, all six :data:`LABELS` as 0/1 from the hemorrhage masks.

    A subtype is 1 on a slice iff its mask covers at least :func:`min_label_pixels`
    pixels there; ``any`` is the OR of the subtypes.
    """
    n = next(iter(masks.values())).shape[0] if masks else 0
    counts = {s: m.reshape(m.shape[0], -1).sum(axis=1) for s, m in masks.items()}
    threshold = min_label_pixels(size)
    out = []
    for k in range(n):
        labels = {s: int(s in counts and counts[s][k] >= threshold) for s in SUBTYPES}
        labels["any"] = max(labels.values())
        out.append(labels)
    return out


def series_rng(seed: int, index: int) -> np.random.Generator:
    """The generator :func:`write_head_ct_series` renders series ``(seed, index)`` from.

    An independent stream per (seed, index): series do not depend on dataset order.
    ``render_head(series_rng(seed, index), ...)`` gives the written pixels and masks.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, index, 0x1C4]))


def write_head_ct_series(
    out_dir: Path,
    *,
    seed: int,
    index: int,
    hemorrhages: Sequence[str] = (),
    n_slices: int = 24,
    size: int = 256,
    patient_id: str | None = None,
    study_instance_uid: str | None = None,
    slice_thickness_mm: float = 5.0,
    shuffle_files: bool = True,
) -> list[SynthSlice]:
    """Write one axial head CT series, one ``ID_<SOPInstanceUID>.dcm`` file per slice.

    Parameters
    ----------
    out_dir : Path
        Folder to write into (created if missing); the files go directly in it.
    seed, index : int
        Together they fix the pixels, the z placement and every UID.
    hemorrhages : sequence of str
        Subtypes from :data:`SUBTYPES` to draw.
    n_slices, size : int
        Number of slices and Rows = Columns.
    patient_id : str or None
        PatientID; default ``ICH-<seed>-<index>``. PatientName is ``PHANTOM^<patient_id>``.
    study_instance_uid : str or None
        Put the series in this study; default a new study of its own.
    slice_thickness_mm : float
        SliceThickness and the spacing between slice positions. The head fills
        the ``n_slices`` whatever the thickness: it changes the positions, not the pixels.
    shuffle_files : bool
        Write the files in random order, so that nothing but ImagePositionPatient
        (or InstanceNumber) tells the slice order.

    Returns
    -------
    list of SynthSlice
        In slice order (most inferior first).
    """
    head = render_head(
        series_rng(seed, index), size=size, n_slices=n_slices, hemorrhages=hemorrhages
    )
    labels = slice_labels(head.masks, size) if head.masks else None
    patient_id = patient_id if patient_id is not None else f"ICH-{seed}-{index}"
    header = PhantomHeader(
        sop_class_uid=CT_IMAGE_STORAGE,
        modality="CT",
        study_description="CT HEAD WO CONTRAST",
        series_number=2,
        series_description=f"AXIAL {slice_thickness_mm:g}mm",
        body_part="HEAD",
        generator="pipelines.ich.synth",
    )
    uids, files = write_ct_series(
        Path(out_dir),
        head.hu,
        CtSeriesHeader(
            header,
            tag="ich",
            ids="ICH",
            frame="ich-frame-of-reference",
            patient_position="HFS",
            window=BRAIN_WINDOW,
            window_name="BRAIN",
            field_of_view_mm=FIELD_OF_VIEW_MM,
            z_range=(-120.0, -40.0),
            thickness_mm=slice_thickness_mm,
            shuffle=shuffle_files,
        ),
        seed=seed,
        index=index,
        patient_id=patient_id,
        study_uid=study_instance_uid,
        when=dt.datetime(2024, 1, 1, 7, 0, 0)
        + dt.timedelta(days=index % 365, minutes=(37 * index) % 720),
        file_name="ID_{sop}.dcm",
    )
    negative = dict.fromkeys(LABELS, 0)
    slices = [
        SynthSlice(
            path=f.path,
            patient_id=patient_id,
            study_instance_uid=uids["study"],
            series_instance_uid=uids["series"],
            sop_instance_uid=f.sop_instance_uid,
            slice_index=f.slice_index,
            z_mm=f.z_mm,
            labels=dict(labels[f.slice_index]) if labels else dict(negative),
        )
        for f in files
    ]
    logger.debug(
        "wrote head CT series %s (%d slices, hemorrhages=%s) to %s",
        uids["series"],
        n_slices,
        sorted(set(hemorrhages)),
        out_dir,
    )
    return slices


def series_hemorrhages(
    n_series: int, *, seed: int, positive_fraction: float = 0.6
) -> list[tuple[str, ...]]:
    """Which subtypes each series of :func:`write_rsna_dataset` gets.

    Exactly ``round(n_series * positive_fraction)`` series are positive, at
    positions drawn from ``seed``. Positive series get one subtype, cycling
    through a shuffled :data:`SUBTYPES` so that the five are balanced, and with
    probability 0.35 a second, different one.

    Returns
    -------
    list of tuple of str
        Per series, its subtypes (empty for a negative series).
    """
    if n_series < 0:
        raise ValueError(f"n_series must be >= 0, got {n_series}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1C5]))
    order = rng.permutation(n_series)
    n_pos = round(n_series * positive_fraction)
    out: list[tuple[str, ...]] = [()] * n_series
    cycle = [int(j) for j in rng.permutation(len(SUBTYPES))]
    used = np.zeros(len(SUBTYPES))
    for i, series in enumerate(order[:n_pos]):
        picked = {cycle[i % len(SUBTYPES)]}
        if rng.uniform() < 0.35:
            # the least used other subtype (ties at random) keeps the five balanced
            others = [j for j in range(len(SUBTYPES)) if j not in picked]
            fewest = min(used[j] for j in others)
            picked.add(int(rng.choice([j for j in others if used[j] == fewest])))
        for j in picked:
            used[j] += 1
        out[int(series)] = tuple(SUBTYPES[j] for j in sorted(picked))
    return out


def write_rsna_dataset(
    out_dir: Path,
    *,
    patients: int,
    seed: int,
    n_slices: int = 24,
    size: int = 256,
    positive_fraction: float = 0.6,
    series_per_patient: int = 1,
) -> tuple[Path, list[SynthSlice]]:
    """Write a dataset laid out as the RSNA Intracranial Hemorrhage Detection data.

    * ``out_dir/dicom/ID_<SOPInstanceUID>.dcm``: every slice, flat;
    * ``out_dir/labels.csv``: header ``ID,Label``, then per slice the six rows
      ``ID_<SOPInstanceUID>_<label>,0|1`` in :data:`LABELS` order;
    * ``out_dir/manifest.csv``: one row per slice with ``patient_id``,
      ``study_instance_uid``, ``series_instance_uid``, ``sop_instance_uid``,
      ``slice_index``, ``z_mm`` and one 0/1 column per label.

    Series ``j`` of patient ``p`` is ``write_head_ct_series(seed=seed,
    index=p * series_per_patient + j, patient_id="ICH-<seed>-<p>")``, a study of
    its own (as in the RSNA data, where a patient may have several studies of one
    series each); its subtypes are :func:`series_hemorrhages` of the series count.

    Parameters
    ----------
    out_dir : Path
        Output folder (dicom/, labels.csv, manifest.csv); created if missing.
    patients : int
        Number of patients.
    seed : int
        Dataset seed.
    n_slices : int
        Axial slices per series.
    size : int
        Rows = columns of each slice.
    positive_fraction : float
        Share of the series with a hemorrhage.
    series_per_patient : int
        Series of each patient, each a study of its own.

    Returns
    -------
    labels_csv : Path
        ``out_dir/labels.csv``.
    slices : list of SynthSlice
        Every slice, by patient, series and slice index.
    """
    if patients < 1 or series_per_patient < 1:
        raise ValueError("patients and series_per_patient must be at least 1")
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    n_series = patients * series_per_patient
    plan = series_hemorrhages(n_series, seed=seed, positive_fraction=positive_fraction)
    slices: list[SynthSlice] = []
    for p in range(patients):
        for j in range(series_per_patient):
            index = p * series_per_patient + j
            slices += write_head_ct_series(
                dicom_dir,
                seed=seed,
                index=index,
                hemorrhages=plan[index],
                n_slices=n_slices,
                size=size,
                patient_id=f"ICH-{seed}-{p}",
            )

    labels_csv = out_dir / "labels.csv"
    with labels_csv.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["ID", "Label"])
        for s in slices:
            writer.writerows([f"ID_{s.sop_instance_uid}_{lab}", s.labels[lab]] for lab in LABELS)
    with (out_dir / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(
            [
                "patient_id",
                "study_instance_uid",
                "series_instance_uid",
                "sop_instance_uid",
                "slice_index",
                "z_mm",
                *LABELS,
            ]
        )
        for s in slices:
            writer.writerow(
                [
                    s.patient_id,
                    s.study_instance_uid,
                    s.series_instance_uid,
                    s.sop_instance_uid,
                    s.slice_index,
                    f"{s.z_mm:g}",
                    *(s.labels[lab] for lab in LABELS),
                ]
            )
    return labels_csv, slices


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pipelines.ich.synth --out DIR --patients N --seed S``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ich.synth",
        description="Write synthetic head CT series in the RSNA Intracranial Hemorrhage layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--seed", type=int, required=True, help="dataset seed")
    parser.add_argument("--slices", type=int, default=24, help="slices per series (24)")
    parser.add_argument("--size", type=int, default=256, help="rows = columns (256)")
    parser.add_argument(
        "--positive-fraction", type=float, default=0.6, help="fraction of series with blood"
    )
    parser.add_argument("--series-per-patient", type=int, default=1, help="series per patient")
    args = parser.parse_args(argv)
    labels_csv, slices = write_rsna_dataset(
        args.out,
        patients=args.patients,
        seed=args.seed,
        n_slices=args.slices,
        size=args.size,
        positive_fraction=args.positive_fraction,
        series_per_patient=args.series_per_patient,
    )
    counts = {lab: sum(s.labels[lab] for s in slices) for lab in LABELS}
    n_series = len({s.series_instance_uid for s in slices})
    per_label = " ".join(f"{lab}={counts[lab]}" for lab in LABELS)
    print(
        f"wrote {len(slices)} slices in {n_series} series of {args.patients} patients "
        f"to {args.out}; positive slices: {per_label}; labels: {labels_csv}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
