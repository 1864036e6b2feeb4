"""Deterministic chest radiograph phantoms with findings: DX DICOM files, masks and COCO boxes.

The chest X-ray findings detector, its tests and anyone evaluating the node
without patient data need radiographs that travel the hospital's path: PA
chest *Digital X-Ray Image Storage - For Presentation* objects (16 bits
allocated, 12 stored, MONOCHROME2 or MONOCHROME1) that pass ``dciodvfy``
without errors, annotated as the seed's data is, with one binary mask per
finding and image (``masks/<class>/<stem>.png``) that
:func:`pipelines.cxr.coco.masks_to_coco` turns into the COCO boxes a
detector trains on. The DICOM modules are those of the lesion phantoms,
:func:`pipelines.common.phantoms.build_dx_dataset`.

What an image looks like (``size`` = S pixels square on the nominal 43 cm
field of :data:`~pipelines.common.phantoms.FIELD_OF_VIEW_MM`; every length is a
fraction of S). The film is displayed as usual for a PA view, the patient's
left on the image's right:

* air, an elliptical body with soft tissue, a brighter mediastinum / spine band;
* two dark lung fields with curved rib bands and lung markings;
* a heart shadow over the lower medial lungs, reaching further to the
  image's right (the left ventricle) than to its left: its width over the
  thorax's (outer lung edge to outer lung edge), the cardiothoracic ratio,
  is drawn from :data:`NORMAL_CTR_RANGE`;
* the aortic knob, a round density of diameter :data:`KNOB_DIAMETER_RANGE`
  bulging from the upper mediastinum into the left lung (image right);
* smooth low-frequency texture, Gaussian quantum-like noise and a random
  global gain / offset, so that absolute grey levels are no shortcut.

Findings (:data:`CLASSES`) and their masks (boolean, full image):

* ``aortic_atherosclerosis_calcification``: a thin bright arc (a calcified
  rim) along the upper-lateral edge of the knob; mask: the knob and rim;
* ``lung_field_infiltration``: 1-3 patchy, soft-edged, mottled opacities of
  irregular outline, about :data:`INFILTRATE_DIAMETER_RANGE` across, each
  wholly inside a visible lung field (not behind the heart or knob), in one
  or both lungs; mask: the union of the patches, each its own connected
  component (at least 3 pixels apart) so that each becomes its own box;
* ``cardiac_hypertrophy``: the heart enlarged to a cardiothoracic ratio in
  :data:`HYPERTROPHY_CTR_RANGE`; mask: the heart silhouette.

Contrasts are well above the noise (standard deviation 25-45 stored values):
the images are for a small detector trained from scratch on a few hundred
images on a CPU, not for subtlety.

Everything, pixel values and UIDs included, is a pure function of
``(seed, index)`` (and of ``size`` and ``images_per_patient``). Images of one
patient share the patient's anatomy (:class:`ChestAnatomy`, drawn from
``(seed, patient)``) and differ in positioning, exposure, texture, noise and
findings, so that a split by image rather than by patient would leak. Each
finding draws from its own random stream, drawn whether or not it is used:
the same generator state renders the same anatomy and noise with and without
findings, and the difference of such a pair is the finding alone (with
hypertrophy, the enlarged heart; infiltrates are placed in the lung field
left visible by the heart actually drawn).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.common.phantoms import (
    MAX_VALUE,
    build_dx_dataset,
    phantom_uid,
    refuse_foreign_files,
    set_image_pixels,
    smooth_noise,
    soft_ellipse,
)
from pipelines.cxr.coco import masks_to_coco, write_coco

logger = logging.getLogger(__name__)

#: The findings of seed 001, in category-id order (id 1 is the first).
CLASSES: tuple[str, ...] = (
    "aortic_atherosclerosis_calcification",
    "lung_field_infiltration",
    "cardiac_hypertrophy",
)
CALCIFICATION, INFILTRATION, HYPERTROPHY = CLASSES
#: Cardiothoracic ratio of a normal heart (uniform draw per patient).
NORMAL_CTR_RANGE: tuple[float, float] = (0.40, 0.48)
#: Cardiothoracic ratio with cardiac hypertrophy (uniform draw per image).
HYPERTROPHY_CTR_RANGE: tuple[float, float] = (0.55, 0.65)
#: Diameter of the aortic knob as a fraction of the image size.
KNOB_DIAMETER_RANGE: tuple[float, float] = (0.06, 0.085)
#: Peak density the calcified rim adds, in stored values.
CALCIFICATION_CONTRAST_RANGE: tuple[float, float] = (800.0, 1100.0)
#: Mean diameter of one infiltrate as a fraction of the image size (outline varies +-20 %).
INFILTRATE_DIAMETER_RANGE: tuple[float, float] = (0.08, 0.15)
#: Density one infiltrate adds at its densest, in stored values (lung is about 600-800).
INFILTRATE_CONTRAST_RANGE: tuple[float, float] = (500.0, 750.0)
#: Smallest image: below it the knob's rim is under a pixel thick.
MIN_SIZE = 128
#: Gap kept between two infiltrates' masks, in pixels (> 1: separate 8-connected components).
_PATCH_GAP = 3.0
#: Stream tags: patient anatomy, image rendering, which findings / photometric an image has.
_PATIENT_STREAM, _IMAGE_STREAM, _PLAN_STREAM = 0xC0A1, 0xC0A2, 0xC0A3


@dataclass(frozen=True)
class ChestAnatomy:
    """A patient's chest, shared by all their images; lengths are fractions of the image size.

    "Right" and "left" are the patient's: on a PA film the right lung is on
    the image's left.
    """

    body_half_height: float
    body_half_width: float
    spine_half_width: float
    lung_row: float
    lung_half_height: float
    lung_separation: float
    right_lung_half_width: float
    left_lung_half_width: float
    cardiothoracic_ratio: float
    heart_half_height: float
    knob_radius: float
    knob_offset: float
    lung_depth: float

    @property
    def thorax_width(self) -> float:
        """Outer edge of the right lung to outer edge of the left lung."""
        return 2 * self.lung_separation + self.right_lung_half_width + self.left_lung_half_width


def draw_anatomy(rng: np.random.Generator) -> ChestAnatomy:
    """Draw one patient's chest (normal heart, ratio in :data:`NORMAL_CTR_RANGE`)."""
    return ChestAnatomy(
        body_half_height=rng.uniform(0.49, 0.55),
        body_half_width=rng.uniform(0.41, 0.46),
        spine_half_width=rng.uniform(0.05, 0.07),
        lung_row=rng.uniform(0.43, 0.47),
        lung_half_height=rng.uniform(0.27, 0.31),
        lung_separation=rng.uniform(0.18, 0.20),
        right_lung_half_width=rng.uniform(0.125, 0.14),
        left_lung_half_width=rng.uniform(0.115, 0.13),
        cardiothoracic_ratio=rng.uniform(*NORMAL_CTR_RANGE),
        heart_half_height=rng.uniform(0.10, 0.12),
        knob_radius=rng.uniform(*KNOB_DIAMETER_RANGE) / 2.0,
        knob_offset=rng.uniform(0.065, 0.08),
        lung_depth=rng.uniform(950.0, 1150.0),
    )


@dataclass(frozen=True, eq=False, repr=False)
class CxrPhantom:
    """One rendered chest radiograph and where its findings and organs are.

    Attributes
    ----------
    pixels : numpy.ndarray
        uint16 (size, size), values in [0, 4095], bright = dense (MONOCHROME2).
    masks : dict of str to numpy.ndarray
        Boolean (size, size) mask per finding present, keys in :data:`CLASSES` order.
    heart : numpy.ndarray
        Boolean heart silhouette as drawn (enlarged with hypertrophy).
    lungs : numpy.ndarray
        Boolean lung fields (including the parts behind the heart).
    cardiothoracic_ratio : float
        Heart width over thorax width as drawn.
    """

    pixels: np.ndarray
    masks: dict[str, np.ndarray]
    heart: np.ndarray
    lungs: np.ndarray
    cardiothoracic_ratio: float


def _check_findings(findings: Collection[str]) -> None:
    unknown = sorted(set(findings) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; the phantoms draw {', '.join(CLASSES)}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(x, -50.0, 50.0)))


def _calcified_rim(
    rng: np.random.Generator,
    rows: np.ndarray,
    cols: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Added density of a calcified arc on the knob's upper-lateral edge, and the knob+rim mask."""
    rim_radius = radius * rng.uniform(0.85, 0.95)
    thickness = max(0.6, 0.0035 * size)
    contrast = rng.uniform(*CALCIFICATION_CONTRAST_RANGE)
    # angle 0 = image right (lateral for the knob), pi/2 = up
    mid_angle = rng.uniform(0.0, 0.5 * np.pi)
    half_extent = np.deg2rad(rng.uniform(60.0, 110.0))
    beads, phase = int(rng.integers(3, 6)), rng.uniform(0.0, 2 * np.pi)
    dist = np.hypot(rows - centre[0], cols - centre[1])
    angle = np.arctan2(-(rows - centre[0]), cols - centre[1])
    off = np.abs((angle - mid_angle + np.pi) % (2 * np.pi) - np.pi)
    along = np.clip((half_extent - off) / 0.3, 0.0, 1.0) * (
        0.75 + 0.25 * np.cos(beads * angle + phase)
    )
    added = contrast * np.exp(-(((dist - rim_radius) / thickness) ** 2)) * along
    mask = dist <= max(radius, rim_radius + 2.0 * thickness)
    return added, mask


def _infiltrates(
    rng: np.random.Generator,
    rows: np.ndarray,
    cols: np.ndarray,
    field: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Added density of 1-3 patchy opacities inside ``field``, and the union of their masks."""
    s = float(size)
    count = int(rng.integers(1, 4))
    mottle = np.clip(0.8 + 0.25 * smooth_noise(rng, size, 40), 0.4, 1.2)
    inside = ndimage.distance_transform_edt(field)
    occupied = np.zeros(field.shape, dtype=bool)
    added = np.zeros(field.shape, dtype=np.float32)
    for n in range(count):
        mean_radius = rng.uniform(*INFILTRATE_DIAMETER_RANGE) * s / 2.0
        harmonics = [(k, rng.uniform(0.0, 0.07), rng.uniform(0.0, 2 * np.pi)) for k in (2, 3, 4)]
        spread = 1.0 + sum(a for _, a, _ in harmonics)
        away = ndimage.distance_transform_edt(~occupied) if occupied.any() else None
        # shrink a patch that fits nowhere, down to the smallest size; then give up on it
        while True:
            reach = mean_radius * spread
            valid = inside > reach + 1.0
            if away is not None:
                valid &= away > reach + _PATCH_GAP
            if valid.any() or mean_radius <= INFILTRATE_DIAMETER_RANGE[0] * s / 2.0:
                break
            mean_radius = max(0.85 * mean_radius, INFILTRATE_DIAMETER_RANGE[0] * s / 2.0)
        spots = np.flatnonzero(valid)
        if spots.size == 0:
            if n == 0:
                raise RuntimeError(
                    f"no room for an infiltrate in the lung fields at size {size}; use a larger size"
                )
            break
        row, col = np.unravel_index(spots[rng.integers(spots.size)], field.shape)
        dist = np.hypot(rows - row, cols - col)
        angle = np.arctan2(rows - row, cols - col)
        outline = mean_radius * (1.0 + sum(a * np.cos(k * angle + p) for k, a, p in harmonics))
        envelope = _sigmoid((dist - outline) / (0.1 * mean_radius))
        added += rng.uniform(*INFILTRATE_CONTRAST_RANGE) * envelope * mottle
        occupied |= dist < outline
    return added, occupied


def make_chest_radiograph(
    rng: np.random.Generator,
    *,
    size: int = 512,
    findings: Collection[str] = (),
    anatomy: ChestAnatomy | None = None,
) -> CxrPhantom:
    """Render one PA chest radiograph phantom with the given findings.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness; the same state gives the same image.
        The findings' streams are split off it first, so the same state
        renders the same anatomy and noise whatever the findings.
    size : int
        Rows = Columns, at least :data:`MIN_SIZE`.
    findings : collection of str
        Findings to draw, from :data:`CLASSES`.
    anatomy : ChestAnatomy or None
        The patient's chest; drawn from ``rng`` when None.

    Returns
    -------
    CxrPhantom
        Pixels (MONOCHROME2 stored values), the masks of the findings drawn,
        heart and lung masks and the cardiothoracic ratio.
    """
    _check_findings(findings)
    if size < MIN_SIZE:
        raise ValueError(f"chest phantom size must be at least {MIN_SIZE} pixels, got {size}")
    streams = {name: np.random.default_rng(rng.integers(0, 2**63)) for name in CLASSES}
    a = anatomy if anatomy is not None else draw_anatomy(rng)
    s = float(size)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    # positioning and inspiration vary from image to image of one patient
    shift_r, shift_c = rng.uniform(-0.015, 0.015, size=2) * s
    inspiration = rng.uniform(0.97, 1.03)
    mid = 0.5 * s + shift_c

    body = soft_ellipse(
        rows, cols, (0.55 * s + shift_r, mid), (a.body_half_height * s, a.body_half_width * s), 25.0
    )
    image = 250.0 + 1450.0 * body
    spine = _sigmoid((np.abs(cols - mid) - a.spine_half_width * s) / 2.0)
    image += 450.0 * spine * body

    lung_row = a.lung_row * s + shift_r
    lung_half_height = a.lung_half_height * s * inspiration
    lungs = np.maximum(
        soft_ellipse(
            rows,
            cols,
            (lung_row, mid - a.lung_separation * s),
            (lung_half_height, a.right_lung_half_width * s),
            18.0,
        ),
        soft_ellipse(
            rows,
            cols,
            (lung_row, mid + a.lung_separation * s),
            (lung_half_height, a.left_lung_half_width * s),
            18.0,
        ),
    )

    # heart: wider towards the image's right (the patient's left ventricle)
    ctr = a.cardiothoracic_ratio
    if HYPERTROPHY in findings:
        ctr = streams[HYPERTROPHY].uniform(*HYPERTROPHY_CTR_RANGE)
    grow = ctr / a.cardiothoracic_ratio
    heart_width = ctr * a.thorax_width * s
    heart_centre = (lung_row + lung_half_height - 0.09 * s, mid + 0.02 * s)
    heart_half_height = a.heart_half_height * s * (1.0 + 0.5 * (grow - 1.0))
    heart = np.where(
        cols < heart_centre[1],
        soft_ellipse(rows, cols, heart_centre, (heart_half_height, 0.38 * heart_width), 30.0),
        soft_ellipse(rows, cols, heart_centre, (heart_half_height, 0.62 * heart_width), 30.0),
    )
    knob_radius = a.knob_radius * s
    knob_centre = (lung_row - 0.13 * s, mid + a.knob_offset * s)
    knob = soft_ellipse(rows, cols, knob_centre, (knob_radius, knob_radius), 15.0)
    dense = np.maximum(heart, knob)
    image -= a.lung_depth * lungs * (1.0 - 0.9 * dense)
    image += 150.0 * dense * body

    # ribs: curved brighter bands across the lung fields; lung markings
    spacing = (0.075 + rng.uniform(-0.005, 0.005)) * s
    phase = rng.uniform(0.0, spacing)
    curve = 0.25 * ((cols - mid) / (0.2 * s)) ** 2 * spacing
    rib_pos = np.mod(rows - 0.12 * s - phase + curve, spacing) / spacing
    ribs = np.exp(-(((rib_pos - 0.5) / 0.2) ** 2))
    image += rng.uniform(150.0, 250.0) * ribs * lungs * (1.0 - dense)
    image += 70.0 * smooth_noise(rng, size, 20) * lungs

    # texture, exposure and noise: drawn before the findings, so the same whatever they are
    texture = 90.0 * smooth_noise(rng, size, 8) * body + 40.0 * smooth_noise(rng, size, 32)
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-100.0, 100.0)
    noise = rng.normal(0.0, rng.uniform(25.0, 45.0), size=image.shape)

    masks: dict[str, np.ndarray] = {}
    if CALCIFICATION in findings:
        added, masks[CALCIFICATION] = _calcified_rim(
            streams[CALCIFICATION], rows, cols, knob_centre, knob_radius, size
        )
        image += added
    if INFILTRATION in findings:
        field = (lungs > 0.9) & (heart < 0.1) & (knob < 0.1)
        added, masks[INFILTRATION] = _infiltrates(streams[INFILTRATION], rows, cols, field, size)
        image += added * lungs
    heart_mask = heart > 0.5
    if HYPERTROPHY in findings:
        masks[HYPERTROPHY] = heart_mask

    image = (image + texture) * gain + offset + noise
    return CxrPhantom(
        pixels=np.clip(np.rint(image), 0, MAX_VALUE).astype(np.uint16),
        masks={name: masks[name] for name in CLASSES if name in masks},
        heart=heart_mask,
        lungs=lungs > 0.5,
        cardiothoracic_ratio=float(ctr),
    )


def image_plan(
    seed: int, index: int, *, finding_rate: float = 0.5, monochrome1_fraction: float = 0.1
) -> tuple[tuple[str, ...], bool]:
    """Which findings image ``index`` of dataset ``seed`` has, and whether it is MONOCHROME1.

    Each finding is present independently with probability ``finding_rate``;
    the draws have their own stream per image, so they do not depend on the
    size or on how many images the dataset has.
    """
    for name, value in (
        ("finding_rate", finding_rate),
        ("monochrome1_fraction", monochrome1_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    stream = np.random.default_rng(np.random.SeedSequence([seed, index, _PLAN_STREAM]))
    draws = stream.random(len(CLASSES) + 1)
    present = zip(CLASSES, draws[: len(CLASSES)], strict=True)
    findings = tuple(name for name, u in present if u < finding_rate)
    return findings, bool(draws[-1] < monochrome1_fraction)


def render_dataset_image(
    seed: int,
    index: int,
    *,
    size: int = 512,
    findings: Collection[str] = (),
    images_per_patient: int = 2,
) -> CxrPhantom:
    """What :func:`write_cxr_dataset` renders for image ``index`` (before MONOCHROME1 inversion).

    The patient is ``index // images_per_patient``; their anatomy comes from
    ``(seed, patient)``, the rest of the image from ``(seed, index)``.
    """
    if images_per_patient < 1:
        raise ValueError(f"images_per_patient must be at least 1, got {images_per_patient}")
    patient = index // images_per_patient
    anatomy = draw_anatomy(
        np.random.default_rng(np.random.SeedSequence([seed, patient, _PATIENT_STREAM]))
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _IMAGE_STREAM]))
    return make_chest_radiograph(rng, size=size, findings=findings, anatomy=anatomy)


@dataclass(frozen=True)
class CxrImage:
    """One written image: its files, identifiers and findings."""

    stem: str
    index: int
    path: Path
    patient_id: str
    study_instance_uid: str
    sop_instance_uid: str
    monochrome1: bool
    findings: tuple[str, ...]
    #: mask file per finding present
    mask_paths: dict[str, Path]


@dataclass(frozen=True)
class CxrDataset:
    """A written phantom dataset: where its parts are and what each image holds."""

    root: Path
    images_dir: Path
    masks_dir: Path
    annotations: Path
    classes: tuple[str, ...]
    images: tuple[CxrImage, ...]

    @property
    def patients(self) -> tuple[str, ...]:
        """Patient IDs in order of first appearance."""
        return tuple(dict.fromkeys(image.patient_id for image in self.images))


def dataset_stem(seed: int, index: int) -> str:
    """File stem of image ``index``: ``images/<stem>.dcm`` and ``masks/<class>/<stem>.png``."""
    return f"cxr_{seed}_{index:05d}"


def dataset_patient_id(seed: int, patient: int) -> str:
    """Patient ID of patient number ``patient`` of dataset ``seed``."""
    return f"CXR-PHANTOM-{seed}-{patient:04d}"


def _write_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path, format="PNG")


def write_cxr_dataset(
    out_dir: Path,
    *,
    n: int,
    seed: int,
    size: int = 512,
    images_per_patient: int = 2,
    finding_rate: float = 0.5,
    monochrome1_fraction: float = 0.1,
) -> CxrDataset:
    """Write ``n`` chest phantoms as DX DICOM files, binary masks per finding and COCO boxes.

    Layout::

        out_dir/images/cxr_<seed>_<index>.dcm          one PA radiograph, its own study
        out_dir/masks/<class>/cxr_<seed>_<index>.png   0/255 mask, only if the finding is present
        out_dir/annotations.json                       COCO, from masks_to_coco(images, masks)

    Image ``i`` belongs to patient ``i // images_per_patient`` (Patient ID
    :func:`dataset_patient_id`); its findings and photometric interpretation are
    :func:`image_plan` and its pixels :func:`render_dataset_image`. A
    MONOCHROME1 file stores ``4095 - value`` with the window mirrored and
    Presentation LUT Shape INVERSE, so it displays exactly as the
    MONOCHROME2 rendering would. Rewriting with the same arguments gives
    identical bytes.

    Parameters
    ----------
    out_dir : Path
        Created if missing; it must not hold other files under ``images/``
        or ``masks/`` (they would end up in the annotations).
    n : int
        Number of images (at least 1).
    seed : int
        Dataset seed.
    size : int
        Rows = Columns (at least :data:`MIN_SIZE`).
    images_per_patient : int
        Images per patient, each in a separate study.
    finding_rate : float
        Probability of each finding, independently per image.
    monochrome1_fraction : float
        Probability that an image is written as MONOCHROME1.

    Returns
    -------
    CxrDataset
        Paths and, per image, stem, UIDs, patient and findings.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size < MIN_SIZE:
        raise ValueError(f"chest phantom size must be at least {MIN_SIZE} pixels, got {size}")
    if images_per_patient < 1:
        raise ValueError(f"images_per_patient must be at least 1, got {images_per_patient}")
    out_dir = Path(out_dir)
    images_dir, masks_dir = out_dir / "images", out_dir / "masks"
    plans = [
        image_plan(seed, i, finding_rate=finding_rate, monochrome1_fraction=monochrome1_fraction)
        for i in range(n)
    ]
    stems = [dataset_stem(seed, i) for i in range(n)]
    refuse_foreign_files(images_dir, {images_dir / f"{stem}.dcm" for stem in stems})
    refuse_foreign_files(
        masks_dir,
        {
            masks_dir / name / f"{stem}.png"
            for stem, (found, _) in zip(stems, plans, strict=True)
            for name in found
        },
    )
    images_dir.mkdir(parents=True, exist_ok=True)
    for name in CLASSES:
        (masks_dir / name).mkdir(parents=True, exist_ok=True)

    written: list[CxrImage] = []
    for index, (stem, (found, monochrome1)) in enumerate(zip(stems, plans, strict=True)):
        phantom = render_dataset_image(
            seed, index, size=size, findings=found, images_per_patient=images_per_patient
        )
        patient = index // images_per_patient
        uids = {
            what: phantom_uid(seed, index, f"cxr-{what}") for what in ("study", "series", "sop")
        }
        pid = dataset_patient_id(seed, patient)
        ds = build_dx_dataset(
            phantom.pixels,
            seed=seed,
            index=index,
            patient_name=f"PHANTOM^CXR{patient:04d}",
            patient_id=pid,
            uids=uids,
        )
        ds.ManufacturerModelName = "pipelines.cxr.synth"
        ds.StudyDescription = "XR CHEST PA (synthetic phantom)"
        ds.SeriesDescription = "Chest PA (phantom with findings)"
        ds.StudyID = f"C{index:05d}"
        ds.AccessionNumber = f"CX{seed % 10000:04d}{index:06d}"
        # MONOCHROME2 here: higher stored values are denser, i.e. less X-ray beam intensity
        ds.PixelIntensityRelationshipSign = -1
        if monochrome1:
            set_image_pixels(ds, MAX_VALUE - phantom.pixels)
            ds.PhotometricInterpretation = "MONOCHROME1"
            ds.PresentationLUTShape = "INVERSE"
            ds.PixelIntensityRelationshipSign = 1
            # the mirror of the window about the inverted values (DICOM's linear VOI uses c - 0.5)
            ds.WindowCenter = round(MAX_VALUE + 1 - float(ds.WindowCenter), 1)
        path = images_dir / f"{stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        mask_paths: dict[str, Path] = {}
        for name, mask in phantom.masks.items():
            mask_paths[name] = masks_dir / name / f"{stem}.png"
            _write_mask(mask, mask_paths[name])
        written.append(
            CxrImage(
                stem=stem,
                index=index,
                path=path,
                patient_id=pid,
                study_instance_uid=uids["study"],
                sop_instance_uid=uids["sop"],
                monochrome1=monochrome1,
                findings=found,
                mask_paths=mask_paths,
            )
        )
    annotations = out_dir / "annotations.json"
    write_coco(masks_to_coco(images_dir, masks_dir, CLASSES), annotations)
    logger.info(
        "wrote %d chest phantoms of %d patients (seed %d, %d px) to %s",
        n,
        (n + images_per_patient - 1) // images_per_patient,
        seed,
        size,
        out_dir,
    )
    return CxrDataset(
        root=out_dir,
        images_dir=images_dir,
        masks_dir=masks_dir,
        annotations=annotations,
        classes=CLASSES,
        images=tuple(written),
    )
