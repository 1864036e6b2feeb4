"""Deterministic synthetic chest radiographs, written as real DICOM files.

The node's demo model, its tests and anyone evaluating the node without
patient data need images that exercise the same code path as a hospital's
studies: DICOM files read by pydicom, pixels through
:mod:`imaging.pixels`, results referencing real UIDs. These phantoms
are *Digital X-Ray Image Storage - For Presentation* objects (DX, MONOCHROME2,
16-bit allocated / 12-bit stored, explicit VR little endian) that pass
``dciodvfy`` without errors.

What a phantom looks like (``size`` = S pixels square, all geometry scales with S):

* air background, an elliptical body outline with soft tissue, a brighter
  mediastinum / spine band and a heart shadow;
* two darker elliptical lung fields with curved, brighter rib bands;
* smooth low-frequency texture plus Gaussian quantum-like noise, and a random
  global gain/offset so that absolute grey levels are not a shortcut;
* for positives, one bright round "lesion" with a soft edge whose centre lies
  inside a visible lung field (not behind the heart) with the whole disc inside
  the lung. Its radius is drawn uniformly from
  :data:`LESION_RADIUS_RANGE` (a fraction of S: 0.06-0.10, i.e. about 15-26
  pixels at S = 256, a 2.6-4.3 cm radius on the nominal 43 cm field of
  :data:`FIELD_OF_VIEW_MM`: a mass rather than a subtle nodule, so that a
  network trained from scratch on a few hundred images in minutes on a CPU
  learns it) and its peak added density from :data:`LESION_CONTRAST_RANGE`.

Everything, pixel values and UIDs included, is a pure function of
``(seed, index)``, so a dataset can be regenerated bit-for-bit. The lesion
draws from its own random stream, so the same generator state renders the
same anatomy and noise with and without a lesion: the difference of such a
pair is the lesion alone.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

logger = logging.getLogger(__name__)

#: Digital X-Ray Image Storage - For Presentation
DX_FOR_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
#: Lesion radius range as a fraction of the image size (uniform draw).
LESION_RADIUS_RANGE: tuple[float, float] = (0.06, 0.10)
#: Peak intensity the lesion adds, in stored values (uniform draw; lung is about 600-800).
LESION_CONTRAST_RANGE: tuple[float, float] = (700.0, 1000.0)
#: Nominal detector extent: a 43 cm field whatever the matrix size.
FIELD_OF_VIEW_MM = 430.0
#: Largest stored value (BitsStored = 12).
MAX_VALUE = 4095
#: Text that every generated object carries, so nobody mistakes it for a patient.
PHANTOM_MANUFACTURER = "dicom-node phantom"


@dataclass(frozen=True)
class LesionInfo:
    """Where the synthetic lesion is, in pixel coordinates of the generated image.

    ``row`` and ``col`` are the centre (0-based, may be fractional) and
    ``radius`` the radius of the disc at which the lesion's added intensity
    has fallen to half its peak.
    """

    row: float
    col: float
    radius: float

    def mask(self, shape: tuple[int, int], margin: float = 0.0) -> np.ndarray:
        """Boolean mask of the lesion disc dilated by ``margin`` pixels."""
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
        return (rows - self.row) ** 2 + (cols - self.col) ** 2 <= (self.radius + margin) ** 2


@dataclass(frozen=True)
class PhantomFile:
    """One written phantom: its file, its identifiers and the ground truth."""

    path: Path
    seed: int
    index: int
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    has_lesion: bool
    lesion: LesionInfo | None


def soft_ellipse(
    rows: np.ndarray,
    cols: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    sharpness: float = 20.0,
) -> np.ndarray:
    """A [0, 1] ellipse whose edge is a sigmoid rather than a step (no aliasing)."""
    r = np.sqrt(((rows - center[0]) / axes[0]) ** 2 + ((cols - center[1]) / axes[1]) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * sharpness, -50.0, 50.0)))


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture: a ``cells``x``cells`` Gaussian grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _pick_lesion(
    rng: np.random.Generator, field: np.ndarray, size: int
) -> tuple[float, float, float]:
    """Draw a lesion centre and radius such that the whole disc lies in the lung field."""
    lo, hi = LESION_RADIUS_RANGE
    for _ in range(1000):
        radius = rng.uniform(lo, hi) * size
        row = rng.uniform(0, size - 1)
        col = rng.uniform(0, size - 1)
        # the disc is inside the field when the field covers its centre and 8 rim points
        angles = np.linspace(0.0, 2 * np.pi, 8, endpoint=False)
        pts_r = np.concatenate([[row], row + radius * np.sin(angles)])
        pts_c = np.concatenate([[col], col + radius * np.cos(angles)])
        if pts_r.min() < 0 or pts_c.min() < 0 or pts_r.max() > size - 1 or pts_c.max() > size - 1:
            continue
        if np.all(field[np.round(pts_r).astype(int), np.round(pts_c).astype(int)]):
            return row, col, radius
    raise RuntimeError("could not place a lesion inside the lung fields; use a larger size")


def make_radiograph(
    rng: np.random.Generator, *, lesion: bool, size: int = 256
) -> tuple[np.ndarray, LesionInfo | None]:
    """Render one chest-like radiograph phantom.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness; the same generator state gives the same image.
    lesion : bool
        Add one bright round lesion inside a lung field.
    size : int
        Rows = Columns of the image (at least 64, so that a lesion fits in a lung).

    Returns
    -------
    pixels : numpy.ndarray
        uint16 array of shape (size, size) with values in [0, 4095]; bright = dense,
        as a MONOCHROME2 For Presentation radiograph.
    lesion_info : LesionInfo or None
        The lesion's centre and radius in pixels, or None when ``lesion`` is False.
    """
    if size < 64:
        raise ValueError(f"phantom size must be at least 64 pixels, got {size}")
    s = float(size)
    # the lesion has its own stream, drawn whether or not it is used: the same generator
    # state gives the same anatomy and noise with and without a lesion (paired phantoms)
    lesion_rng = np.random.default_rng(rng.integers(0, 2**63))
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    jitter = lambda scale: rng.uniform(-scale, scale) * s  # noqa: E731

    # body outline: soft tissue in air
    body_c = (0.55 * s + jitter(0.02), 0.5 * s + jitter(0.02))
    body = soft_ellipse(
        rows, cols, body_c, (0.52 * s + jitter(0.03), 0.44 * s + jitter(0.03)), sharpness=25.0
    )
    image = 250.0 + 1450.0 * body

    # mediastinum and spine: a bright vertical band in the body
    spine_half = 0.06 * s + jitter(0.01)
    spine = 1.0 / (1.0 + np.exp(np.clip((np.abs(cols - body_c[1]) - spine_half) / 2.0, -50, 50)))
    image += 450.0 * spine * body

    # lungs: two darker ellipses, the left (image right) a little narrower
    lung_row = 0.45 * s + jitter(0.02)
    sep = 0.2 * s + jitter(0.015)
    lungs = np.zeros_like(image)
    for side in (-1.0, 1.0):
        centre = (lung_row + jitter(0.01), body_c[1] + side * sep)
        axes = (0.3 * s + jitter(0.02), (0.13 if side < 0 else 0.12) * s + jitter(0.01))
        lungs = np.maximum(lungs, soft_ellipse(rows, cols, centre, axes, sharpness=18.0))
    lung_depth = rng.uniform(900.0, 1150.0)
    image -= lung_depth * lungs

    # heart shadow over the lower medial left lung (image right)
    heart_c = (0.66 * s + jitter(0.02), body_c[1] + 0.1 * s + jitter(0.015))
    heart = soft_ellipse(rows, cols, heart_c, (0.11 * s + jitter(0.01), 0.12 * s), 12.0)
    image += 0.9 * lung_depth * heart * lungs

    # ribs: curved brighter bands across the lung fields
    spacing = 0.075 * s + jitter(0.005)
    phase = rng.uniform(0.0, spacing)
    curve = 0.25 * ((cols - body_c[1]) / (0.2 * s)) ** 2 * spacing
    rib_pos = np.mod(rows - 0.12 * s - phase + curve, spacing) / spacing
    ribs = np.exp(-(((rib_pos - 0.5) / 0.2) ** 2))
    image += rng.uniform(150.0, 250.0) * ribs * lungs * (1.0 - heart)
    # lung markings: mid-frequency texture that the model must learn to ignore
    image += 70.0 * smooth_noise(rng, size, 20) * lungs

    # visible lung field (for lesion placement): lung, not heart, not the rib-free edges
    field = (lungs > 0.9) & (heart < 0.1)

    # texture, global exposure variation and noise (drawn before the lesion, see above)
    texture = 90.0 * smooth_noise(rng, size, 8) * body + 40.0 * smooth_noise(rng, size, 32)
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-100.0, 100.0)
    noise = rng.normal(0.0, rng.uniform(25.0, 45.0), size=image.shape)

    info: LesionInfo | None = None
    if lesion:
        row, col, radius = _pick_lesion(lesion_rng, field, size)
        dist = np.sqrt((rows - row) ** 2 + (cols - col) ** 2)
        disc = 1.0 / (1.0 + np.exp(np.clip((dist - radius) / (0.12 * radius), -50, 50)))
        # a slightly domed profile: denser in the middle, like a sphere seen in projection
        dome = np.sqrt(np.clip(1.0 - (dist / (1.25 * radius)) ** 2, 0.0, 1.0))
        image += lesion_rng.uniform(*LESION_CONTRAST_RANGE) * disc * (0.5 + 0.5 * dome)
        info = LesionInfo(row=float(row), col=float(col), radius=float(radius))

    image = (image + texture) * gain + offset + noise
    return np.clip(np.rint(image), 0, MAX_VALUE).astype(np.uint16), info


def phantom_uid(seed: int, index: int, what: str) -> str:
    """A UID that is a pure function of ``(seed, index, what)``: rewritten phantoms keep their UIDs.

    Generators other than :func:`write_radiograph_study` put their own prefix
    in ``what`` so that their objects never share a UID with these phantoms.
    """
    return generate_uid(entropy_srcs=["dicom-node phantom", str(seed), str(index), what])


def _phantom_rng(seed: int, index: int) -> np.random.Generator:
    """Independent stream per (seed, index): images do not depend on dataset order."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


@dataclass(frozen=True)
class PhantomHeader:
    """What differs between phantom kinds in the modules every phantom object has."""

    sop_class_uid: str
    modality: str
    study_description: str
    series_number: int
    series_description: str
    body_part: str
    #: the generating module, as Manufacturer's Model Name
    generator: str


def phantom_dataset(
    header: PhantomHeader,
    *,
    uids: dict[str, str],
    when: dt.datetime,
    patient_name: str,
    patient_id: str,
    study_id: str,
    accession: str,
    instance_number: int,
) -> Dataset:
    """File meta, SOP Common, Patient, General Study / Series / Equipment / Image of a phantom.

    ``uids`` holds ``sop``, ``study`` and ``series``. The patient is marked as
    de-identified synthetic data; Manufacturer is :data:`PHANTOM_MANUFACTURER`.
    Callers add their modality's modules (image plane, pixel, DX or CT image).
    """
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(header.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(uids["sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    # SOP common
    ds.SOPClassUID = header.sop_class_uid
    ds.SOPInstanceUID = uids["sop"]
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no patient data"
    # general study
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    ds.StudyID = study_id
    ds.AccessionNumber = accession
    ds.StudyDescription = header.study_description
    # general series
    ds.Modality = header.modality
    ds.SeriesInstanceUID = uids["series"]
    ds.SeriesNumber = header.series_number
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = header.series_description
    ds.BodyPartExamined = header.body_part
    # general equipment
    ds.Manufacturer = PHANTOM_MANUFACTURER
    ds.ManufacturerModelName = header.generator
    ds.SoftwareVersions = "1"
    # general image / acquisition
    ds.InstanceNumber = instance_number
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDate = date
    ds.AcquisitionTime = time
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def set_image_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Image Pixel module of a phantom: MONOCHROME2, 16 bits allocated, 12 stored, unsigned."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()


def build_dx_dataset(
    pixels: np.ndarray,
    *,
    seed: int,
    index: int,
    patient_name: str,
    patient_id: str,
    uids: dict[str, str],
) -> Dataset:
    """A complete PA chest *DX For Presentation* object (MONOCHROME2) around ``pixels``.

    Every module dciodvfy requires is written (DX series, anatomy imaged,
    positioning, detector, image), with PixelSpacing from
    :data:`FIELD_OF_VIEW_MM` and a window from the pixels' percentiles.
    Other chest generators reuse it and then override what differs (the
    descriptions, the photometric interpretation).
    """
    rows, columns = pixels.shape
    when = dt.datetime(2024, 1, 1, 8, 0, 0) + dt.timedelta(days=index % 365, minutes=index % 600)
    spacing = FIELD_OF_VIEW_MM / columns

    ds = phantom_dataset(
        PhantomHeader(
            sop_class_uid=DX_FOR_PRESENTATION_SOP_CLASS,
            modality="DX",
            study_description="Synthetic chest phantom",
            series_number=1,
            series_description="Chest PA (phantom)",
            body_part="CHEST",
            generator="pipelines.common.phantoms",
        ),
        uids=uids,
        when=when,
        patient_name=patient_name,
        patient_id=patient_id,
        study_id=f"P{index:05d}",
        accession=f"PH{seed % 10000:04d}{index:06d}",
        instance_number=1,
    )
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    # PA chest shown as usual: row direction to the patient's left, columns to the feet
    ds.PatientOrientation = ["L", "F"]
    # DX anatomy imaged and positioning
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue = "43799004"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Thorax"
    ds.AnatomicRegionSequence = DicomSequence([region])
    ds.ViewPosition = "PA"
    view = Dataset()
    view.CodeValue = "272479007"
    view.CodingSchemeDesignator = "SCT"
    view.CodeMeaning = "postero-anterior"
    view.ViewModifierCodeSequence = DicomSequence()
    ds.ViewCodeSequence = DicomSequence([view])
    ds.PatientPosition = ""
    ds.DistanceSourceToDetector = 1800.0
    ds.DistanceSourceToPatient = 1650.0
    ds.EstimatedRadiographicMagnificationFactor = round(1800.0 / 1650.0, 6)
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = DicomSequence()
    # DX detector
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Corrected for nominal magnification"
    # DX image + image pixel
    set_image_pixels(ds, pixels)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    lo, hi = np.percentile(pixels, [1.0, 99.5])
    ds.WindowCenter = round(float(lo + hi) / 2.0, 1)
    ds.WindowWidth = round(max(float(hi - lo), 1.0), 1)
    ds.WindowCenterWidthExplanation = "PHANTOM"
    return ds


def write_radiograph_study(
    out_dir: Path,
    *,
    seed: int,
    index: int,
    lesion: bool,
    patient_name: str | None = None,
    size: int = 256,
) -> PhantomFile:
    """Write one phantom as a single-image study (one study, one series, one instance).

    Parameters
    ----------
    out_dir : Path
        Folder to write into (created if missing). The file is named
        ``phantom_<seed>_<index>.dcm``.
    seed, index : int
        Together they fix the pixels and every UID, so rewriting gives an identical file.
    lesion : bool
        Ground truth: whether the image contains a lesion.
    patient_name : str or None
        PatientName to write; default ``PHANTOM^<index>``. Tests use it to
        plant a recognisable name and check that it never reaches the logs.
    size : int
        Rows = Columns.

    Returns
    -------
    PhantomFile
        Path, identifiers and the lesion ground truth.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels, info = make_radiograph(_phantom_rng(seed, index), lesion=lesion, size=size)
    uids = {what: phantom_uid(seed, index, what) for what in ("study", "series", "sop")}
    patient_id = f"PHANTOM-{seed}-{index}"
    ds = build_dx_dataset(
        pixels,
        seed=seed,
        index=index,
        patient_name=patient_name if patient_name is not None else f"PHANTOM^{index}",
        patient_id=patient_id,
        uids=uids,
    )
    path = out_dir / f"phantom_{seed}_{index:05d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    logger.debug("wrote phantom %s (lesion=%s) to %s", uids["sop"], lesion, path)
    return PhantomFile(
        path=path,
        seed=seed,
        index=index,
        patient_id=patient_id,
        study_instance_uid=uids["study"],
        series_instance_uid=uids["series"],
        sop_instance_uid=uids["sop"],
        has_lesion=lesion,
        lesion=info,
    )


def dataset_labels(*, n: int, seed: int, lesion_fraction: float = 0.5) -> np.ndarray:
    """Ground truth of :func:`write_radiograph_dataset`: which indices have a lesion.

    Exactly ``round(n * lesion_fraction)`` entries are True, at positions chosen by a
    permutation drawn from ``seed`` (balanced as asked, not just in expectation).
    Evaluations can recompute the labels of a written dataset without reading it.

    Returns
    -------
    numpy.ndarray
        Boolean array of length ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x1E5])).permutation(n)
    positive = np.zeros(n, dtype=bool)
    positive[order[: round(n * lesion_fraction)]] = True
    return positive


def write_radiograph_dataset(
    out_dir: Path,
    *,
    n: int,
    seed: int,
    lesion_fraction: float = 0.5,
    size: int = 256,
) -> list[PhantomFile]:
    """Write ``n`` single-image phantom studies, a fixed fraction of them with a lesion.

    Which images are positive is :func:`dataset_labels` of the same arguments.

    Parameters
    ----------
    out_dir : Path
        Folder to write into.
    n : int
        Number of studies.
    seed : int
        Dataset seed; image ``i`` is ``write_radiograph_study(seed=seed, index=i)``.
    lesion_fraction : float
        Fraction of positives, in [0, 1].
    size : int
        Rows = Columns.

    Returns
    -------
    list of PhantomFile
        In index order.
    """
    positive = dataset_labels(n=n, seed=seed, lesion_fraction=lesion_fraction)
    return [
        write_radiograph_study(out_dir, seed=seed, index=i, lesion=bool(positive[i]), size=size)
        for i in range(n)
    ]


#: Stored value = HU + 1024 in every CT phantom (unsigned 12 bits: -1024 to 3071 HU).
CT_RESCALE_INTERCEPT = -1024
#: CT Image Storage
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class CtSeriesHeader:
    """What a CT phantom series sets beyond :class:`PhantomHeader`: the acquisition that
    every slice shares and the uid prefix ``tag`` that keeps its UIDs its own."""

    header: PhantomHeader
    #: prefix of the series' UIDs (``<tag>-study``, ``<tag>-series``, ``<tag>-sop-<k>``)
    tag: str
    #: prefix of the Study ID (``<ids><index>``) and the Accession Number (``<ids><seed><index>``)
    ids: str
    #: frame of reference UID's name, per (seed, index): shared by a patient's series
    frame: str
    patient_position: str
    #: the display window the scanner would store, and its name
    window: tuple[float, float]
    window_name: str
    field_of_view_mm: float
    #: where the first slice's z is drawn from, mm
    z_range: tuple[float, float]
    thickness_mm: float = 5.0
    #: write the files in a random order, so that only the geometry tells the slice order
    shuffle: bool = True


@dataclass(frozen=True)
class CtSliceFile:
    """One written slice of :func:`write_ct_series`."""

    path: Path
    sop_instance_uid: str
    slice_index: int
    z_mm: float


def refuse_foreign_files(folder: Path, expected: set[Path]) -> None:
    """Stop before writing into a folder that holds files this dataset would not write.

    Left there, they would become part of the data set: its readers take the
    whole folder (``masks_to_coco``, the VOC and DICOM indexers).

    Raises
    ------
    ValueError
        Naming the folder, how many files are foreign and one of them.
    """
    if not folder.is_dir():
        return
    foreign = sorted(p for p in folder.rglob("*") if p.is_file() and p not in expected)
    if foreign:
        raise ValueError(
            f"{folder} holds {len(foreign)} file(s) this dataset does not write, e.g. "
            f"{foreign[0].relative_to(folder)}; write into an empty folder or remove them"
        )


def write_ct_series(
    out_dir: Path,
    hu: np.ndarray,
    series: CtSeriesHeader,
    *,
    seed: int,
    index: int,
    patient_id: str,
    study_uid: str | None,
    when: dt.datetime,
    file_name: str = "{sop}.dcm",
    more: Callable[[Dataset], None] | None = None,
) -> tuple[dict[str, str], list[CtSliceFile]]:
    """Write the slices ``hu`` (integer Hounsfield units, slice by slice, within the 12 stored
    bits above :data:`CT_RESCALE_INTERCEPT`) as CT Image Storage files.

    The UIDs, the first slice's z and the file order are pure functions of
    ``(seed, index)`` (and ``series.tag``), so a series is rewritten bit for
    bit. ``more(ds)`` adds a study's own attributes (e.g. the Contrast/Bolus
    module) to every slice. Returns the study / series / frame UIDs and the
    slices in slice order (most inferior first).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = (hu - CT_RESCALE_INTERCEPT).astype(np.uint16)
    n_slices, _, columns = stored.shape
    uids = {
        "study": study_uid or phantom_uid(seed, index, f"{series.tag}-study"),
        "series": phantom_uid(seed, index, f"{series.tag}-series"),
        "frame": phantom_uid(seed, index, series.frame),
    }
    geometry = np.random.default_rng(np.random.SeedSequence([seed, index, 0x2E0]))
    z_offset = round(float(geometry.uniform(*series.z_range)), 1)
    order = geometry.permutation(n_slices) if series.shuffle else np.arange(n_slices)
    spacing = round(series.field_of_view_mm / columns, 6)  # DS: 16 characters at most
    half = round((columns - 1) / 2.0 * spacing, 4)
    written: list[CtSliceFile | None] = [None] * n_slices
    for k in (int(i) for i in order):
        sop = phantom_uid(seed, index, f"{series.tag}-sop-{k}")
        z_mm = round(z_offset + k * series.thickness_mm, 3)
        ds = phantom_dataset(
            series.header,
            uids={**uids, "sop": sop},
            when=when,
            patient_name=f"PHANTOM^{patient_id}",
            patient_id=patient_id,
            study_id=f"{series.ids}{index:05d}",
            accession=f"{series.ids}{seed % 10000:04d}{index:06d}",
            instance_number=k + 1,
        )
        ds.PatientPosition = series.patient_position
        # frame of reference, image plane
        ds.FrameOfReferenceUID = uids["frame"]
        ds.PositionReferenceIndicator = ""
        ds.AcquisitionNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelSpacing = [spacing, spacing]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-half, -half, z_mm]
        ds.SliceThickness = round(series.thickness_mm, 6)
        ds.SliceLocation = z_mm
        # image pixel, CT image
        set_image_pixels(ds, stored[k])
        ds.RescaleIntercept = CT_RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.ConvolutionKernel = "PHANTOM"
        ds.WindowCenter, ds.WindowWidth = series.window
        ds.WindowCenterWidthExplanation = series.window_name
        if more is not None:
            more(ds)
        path = out_dir / file_name.format(sop=sop)
        ds.save_as(path, enforce_file_format=True)
        written[k] = CtSliceFile(path, sop, k, z_mm)
    return uids, [s for s in written if s is not None]
