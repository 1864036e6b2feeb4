"""Heatmaps as Secondary Capture images the radiologist can page through.

Every viewer and PACS displays Secondary Capture Image Storage, which is why
explanation maps are sent as an RGB SC image (the source image in grey with a
jet-coloured heatmap blended on top where the map is significant, and, for
detectors, each box outlined with its label and score in a tag above it)
rather than as a parametric map, segmentation or SR boxes few viewers render.

What the SC carries and why
---------------------------
* Same study as the source (patient/study modules copied from it), in the
  result series the caller chose, so it sits next to the images it explains.
* Same Rows/Columns as the source, PixelSpacing copied when the source has it
  and Patient Orientation copied (or derived from Image Orientation
  (Patient)), so measurements and orientation markers stay meaningful.
* Image Laterality copied from the source's Image Laterality, else derived
  from its series Laterality (R/L). It is image-level on purpose: one result
  series may hold heatmaps of left and right images, so series-level
  Laterality could be wrong for some of them. When the source states
  neither, laterality is unknown: Laterality (General Series, Type 2C) is
  then written *empty*, which the standard defines as "unknown"; "U" would
  wrongly assert an unpaired body part. Laterality is never written together
  with Image Laterality (dciodvfy rejects that combination).
* Source Image Sequence referencing the source image with purpose
  (121322, DCM, "Source image for image processing operation") (CID 7202).
* Contributing Equipment identifying the AI model (IHE AI Results; see
  :func:`dicom_node.results.sr.algorithm_contributing_equipment`).
* Boxes and captions (:class:`pipelines.base.Annotation`) drawn on top of the
  overlay: a magenta outline (a hue the jet map and the grey image never
  produce) and white text on a black tag, so both read on any background.
  Line width and font size scale with the image, so a 3000-pixel radiograph
  and a 256-pixel phantom look alike at "fit to window".
* Burned In Annotation ``NO``: the only text drawn is the model's label and
  score, which cannot identify the patient. Callers that burn in patient
  or date information must set it to ``YES``.
* Conversion Type ``WSD`` (workstation): the image is rendered by software,
  not digitised from a video or film source.
* A deterministic SOP Instance UID from (job key, source SOP Instance UID,
  label), so a resend replaces the image instead of duplicating it.
* Explicit VR Little Endian, uncompressed: every PACS accepts it.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.results import codes
from dicom_node.results.algorithm import NOT_FOR_DIAGNOSTIC_USE, AlgorithmInfo
from dicom_node.results.sr import algorithm_contributing_equipment
from dicom_node.results.uids import result_uid
from imaging.pixels import display_pixels
from pipelines.base import Annotation, Box, Finding
from pipelines.card import METRIC_TITLES

__all__ = [
    "BOX_COLOUR",
    "DEFAULT_ALPHA",
    "DEFAULT_THRESHOLD",
    "build_heatmap_sc",
    "draw_annotations",
    "heatmap_series_instance_uid",
    "heatmap_sop_instance_uid",
    "jet",
    "overlay_rgb",
]

#: Heatmap values below this are not coloured (the grey source shows through).
DEFAULT_THRESHOLD = 0.25
#: Opacity of the colour at the strongest heatmap values.
DEFAULT_ALPHA = 0.5
#: Heatmap range above the threshold over which the opacity ramps up from 0,
#: so the coloured region has a soft edge instead of a hard contour.
_RAMP = 0.15

#: Box outline (and tag border) colour: saturated magenta. Jet never produces
#: it (red and blue are only both non-zero around 0.5, where green is at full
#: strength) and neither does the grey image, so a box stays distinct from
#: hot spots and anatomy alike.
BOX_COLOUR = (255, 0, 255)
#: Caption tag: white text on black, readable whatever lies under the tag.
_TAG_FILL = (0, 0, 0)
_TAG_TEXT = (255, 255, 255)
#: Line width and font size as fractions of the image's shorter side, with
#: minimums that keep them visible on small images (a 256-pixel phantom is
#: shown magnified, a 3000-pixel radiograph reduced).
_LINE_FRACTION = 0.003
_FONT_FRACTION = 0.018
_MIN_LINE = 2
_MIN_FONT = 10

# LPS patient axes: +x = Left, +y = Posterior, +z = Head (PS3.3 C.7.6.1.1.1).
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def heatmap_series_instance_uid(job_key: str) -> str:
    """A deterministic Series Instance UID for a job's heatmap series.

    Callers may pass it as ``series_instance_uid`` to :func:`build_heatmap_sc`
    so that a resend also reuses the series.
    """
    return result_uid("sc-series", job_key)


def heatmap_sop_instance_uid(job_key: str, source_sop_instance_uid: str, label: str = "") -> str:
    """SOP Instance UID of the heatmap SC of one source image and label (deterministic)."""
    return result_uid("sc-heatmap", job_key, source_sop_instance_uid, label)


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colormap: [0, 1] -> RGB float32 in [0, 1], blue (low) to red (high).

    The classic piecewise-linear MATLAB "jet", implemented here so the node
    does not depend on matplotlib.
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # R, G, B peaks
    # numpy's stubs type np.abs() of a float array as Any
    rgb: npt.NDArray[np.float32] = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0).astype(
        np.float32
    )
    return rgb


def overlay_rgb(
    gray: np.ndarray,
    heatmap: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """Blend a jet-coloured heatmap over a greyscale image, only where it is significant.

    Parameters
    ----------
    gray : numpy.ndarray
        Shape (Rows, Columns), display values in [0, 1] (bright = dense), as
        returned by :func:`imaging.pixels.display_pixels`.
    heatmap : numpy.ndarray
        Shape (Rows, Columns), values in [0, 1].
    threshold : float, optional
        Heatmap values below it leave the grey pixel untouched, so the
        radiologist still sees the anatomy away from the hot spots.
    alpha : float, optional
        Colour opacity reached at ``threshold + 0.15`` and above.

    Returns
    -------
    numpy.ndarray
        uint8, shape (Rows, Columns, 3), RGB. Callers may draw on it (boxes,
        contours) before encoding.

    Raises
    ------
    ValueError
        If the shapes differ, an array is not 2-D, contains NaN/inf, or
        ``threshold``/``alpha`` are outside [0, 1].
    """
    gray = np.asarray(gray, dtype=np.float32)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if gray.ndim != 2 or heatmap.ndim != 2:
        raise ValueError(
            f"overlay_rgb() needs 2-D arrays, got gray {gray.shape} and heatmap {heatmap.shape}; "
            "pass one frame"
        )
    if gray.shape != heatmap.shape:
        raise ValueError(
            f"heatmap shape {heatmap.shape} differs from the image shape {gray.shape}; "
            "resize the heatmap to the source's (Rows, Columns) in the pipeline"
        )
    if not (np.isfinite(gray).all() and np.isfinite(heatmap).all()):
        raise ValueError("overlay_rgb() inputs contain NaN or inf; fix the pipeline's heatmap")
    if not (0.0 <= threshold <= 1.0 and 0.0 <= alpha <= 1.0):
        raise ValueError(f"threshold and alpha must be in [0, 1], got {threshold}, {alpha}")
    g = np.clip(gray, 0.0, 1.0)[..., None]
    h = np.clip(heatmap, 0.0, 1.0)
    weight = (alpha * np.clip((h - threshold) / _RAMP, 0.0, 1.0))[..., None]
    rgb = (1.0 - weight) * g + weight * jet(h)
    # numpy's stubs type np.clip() of a float array as Any
    out: npt.NDArray[np.uint8] = np.round(rgb * 255.0).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font at ``size`` pixels (no font file to ship or find)."""
    try:
        font = ImageFont.load_default(size=size)
    except TypeError as exc:  # Pillow < 10.1: load_default() takes no size
        raise RuntimeError(
            "drawing box labels needs Pillow >= 10.1 (scalable default font); "
            "upgrade it with: pip install 'pillow>=10.1'"
        ) from exc
    except ImportError as exc:  # Pillow built without FreeType
        raise RuntimeError(
            "drawing box labels needs Pillow with FreeType support; install the "
            "official Pillow wheel (pip install --force-reinstall pillow)"
        ) from exc
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow returned a bitmap font; upgrade to Pillow >= 10.1")
    return font


def _box_pixels(box: Box, rows: int, cols: int) -> tuple[int, int, int, int]:
    """First and last column and row covered by ``box``, clipped to the image.

    DICOM pixel coordinates put the top-left corner of the top-left pixel at
    (0, 0), so pixel column ``c`` spans [c, c + 1): the box covers columns
    ``floor(x0)`` to ``ceil(x1) - 1`` (``x1`` is the exclusive right edge),
    and likewise for rows. A box partly outside the image is clipped; one
    entirely outside is an error, because drawing nothing would hide the
    pipeline's coordinate bug.
    """
    coords = (box.x0, box.y0, box.x1, box.y1)
    if not all(math.isfinite(float(c)) for c in coords):
        raise ValueError(f"box {coords} on {box.sop_instance_uid} has NaN or inf coordinates")
    if box.x1 < box.x0 or box.y1 < box.y0:
        raise ValueError(
            f"box {coords} on {box.sop_instance_uid} has x1 < x0 or y1 < y0; "
            "pass (x0, y0) = top-left and (x1, y1) = bottom-right"
        )
    left, top = math.floor(box.x0), math.floor(box.y0)
    right = max(left, math.ceil(box.x1) - 1)
    bottom = max(top, math.ceil(box.y1) - 1)
    if right < 0 or bottom < 0 or left >= cols or top >= rows:
        raise ValueError(
            f"box {coords} lies entirely outside the {cols}x{rows} (Columns x Rows) image "
            f"{box.sop_instance_uid}; boxes are in pixel coordinates of the source image "
            "(x = column, y = row), not of the model's resized input"
        )
    return max(left, 0), max(top, 0), min(right, cols - 1), min(bottom, rows - 1)


def draw_annotations(
    rgb: np.ndarray, annotations: Sequence[Annotation], sop_instance_uid: str
) -> np.ndarray:
    """Draw boxes and their captions on an RGB image (e.g. from :func:`overlay_rgb`).

    Each box is outlined in :data:`BOX_COLOUR`; a non-empty caption goes in a
    black tag with white text just above the box, or inside it at the top
    when there is no room above (a box at the image's top edge). All boxes
    are drawn before any tag so that no outline crosses a caption. Line
    width and font size scale with the image's shorter side.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8, shape (Rows, Columns, 3); not modified.
    annotations : sequence of Annotation
        Boxes in pixel coordinates of this image (see
        :class:`pipelines.base.Box`); clipped to the image. Whitespace in a
        caption (newlines included) is collapsed to single spaces: the tag
        holds one line.
    sop_instance_uid : str
        SOP Instance UID of the image ``rgb`` shows; every box must be on it.

    Returns
    -------
    numpy.ndarray
        A new uint8 (Rows, Columns, 3) array with the annotations drawn.

    Raises
    ------
    ValueError
        If a box is on another image (both UIDs are named), has non-finite
        or inverted coordinates, or lies entirely outside the image.
    TypeError
        If an item is not an :class:`pipelines.base.Annotation`.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"draw_annotations() needs a uint8 (Rows, Columns, 3) RGB array, "
            f"got {rgb.dtype} {rgb.shape}; pass the output of overlay_rgb()"
        )
    rows, cols = rgb.shape[:2]
    boxes = []
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, Annotation):
            raise TypeError(
                f"annotation {index} is a {type(annotation).__name__}, not a "
                "pipelines.base.Annotation; wrap boxes as Annotation(box=..., text=...)"
            )
        box = annotation.box
        if str(box.sop_instance_uid) != str(sop_instance_uid):
            raise ValueError(
                f"annotation {index} ({annotation.text!r}) has a box on image "
                f"{box.sop_instance_uid}, but it is drawn on image {sop_instance_uid}; "
                "attach each box to the Heatmap of the image it was detected on"
            )
        boxes.append((_box_pixels(box, rows, cols), " ".join(annotation.text.split())))
    if not boxes:
        return rgb.copy()

    short = min(rows, cols)
    line = max(_MIN_LINE, round(_LINE_FRACTION * short))
    font = _font(max(_MIN_FONT, round(_FONT_FRACTION * short)))
    ascent, descent = font.getmetrics()
    pad = line + max(1, font.size // 6)

    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    for (left, top, right, bottom), _ in boxes:
        # Pillow's width grows inwards, so the outline stays on the box's own pixels.
        draw.rectangle((left, top, right, bottom), outline=BOX_COLOUR, width=line)
    for (left, top, _, _), text in boxes:
        if not text:
            continue
        tag_w = math.ceil(draw.textlength(text, font=font)) + 2 * pad
        tag_h = ascent + descent + 2 * pad
        tag_top = top - tag_h if top - tag_h >= 0 else top
        # Shift left rather than run off the right edge; a caption wider than
        # the image starts at column 0 and is cut at the right.
        tag_left = max(0, min(left, cols - tag_w))
        draw.rectangle(
            (tag_left, tag_top, tag_left + tag_w - 1, tag_top + tag_h - 1),
            fill=_TAG_FILL,
            outline=BOX_COLOUR,
            width=line,
        )
        draw.text((tag_left + pad, tag_top + pad), text, font=font, fill=_TAG_TEXT, anchor="la")
    return np.array(image, dtype=np.uint8)


def _orientation_letters(cosines: np.ndarray) -> str:
    """Patient Orientation string of one direction cosine vector (e.g. ``"L"``, ``"PF"``).

    Letters of the axes with a significant component, most significant first
    (PS3.3 C.7.6.1.1.1), at most three.
    """
    order = np.argsort(-np.abs(cosines))
    letters = [
        _AXIS_LETTERS[axis][1 if cosines[axis] > 0 else 0]
        for axis in order
        if abs(cosines[axis]) > 0.25
    ]
    return "".join(letters[:3])


def _patient_orientation(source: Dataset) -> list[str] | None:
    """Row and column directions of the source pixels, or None when unknown."""
    po = source.get("PatientOrientation")
    if po is not None and len(po) == 2 and all(po):
        return [str(po[0]), str(po[1])]
    iop = source.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        v = np.asarray([float(x) for x in iop], dtype=np.float64)
        row, col = _orientation_letters(v[:3]), _orientation_letters(v[3:])
        if row and col:
            return [row, col]
    return None


def _image_laterality(source: Dataset) -> str | None:
    """Image Laterality of the source (R, L, U, B), else its series Laterality (R, L)."""
    for keyword, allowed in (("ImageLaterality", {"R", "L", "U", "B"}), ("Laterality", {"R", "L"})):
        value = str(source.get(keyword) or "").strip().upper()
        if value in allowed:
            return value
    return None


#: Copied when highdicom does not know the source's SOP class (and so its modules).
_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


def _copy_patient_and_study(sc: hd.sc.SCImage, source: Dataset) -> None:
    """Copy the source's Patient and Study modules verbatim (as the SR does).

    All root attributes of those modules (Issuer of Patient ID, Patient's
    Age, Study Description, clinical trial attributes, ...) so that the SC
    files into the same patient and study as its source in every PACS.
    """
    try:
        sc.copy_patient_and_study_information(source)
    except KeyError:  # SOP class unknown to highdicom's module tables
        for keyword in _PATIENT_STUDY_KEYWORDS:
            if keyword in source:
                sc.add(copy.deepcopy(source[keyword]))


def _wrap(
    text: str, width: float, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont
) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken between words."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


#: The footer may cover at most this share of the image's rows.
FOOTER_MAX_SHARE = 0.25
_FOOTER_FONT_FRACTION = 0.024
_FOOTER_MIN_FONT = 7


def draw_footer(rgb: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Burn ``texts`` into a black band along the bottom of an RGB image, in white.

    What a radiologist must read on the image itself, whatever the viewer
    shows of the headers: which model made the heatmap, whether it may be
    used for diagnosis, and how well it did on held-out data. The font
    scales with the image width; lines that do not fit are wrapped between
    words. The image keeps its size (the heatmap stays registered to its
    source), so the band covers the bottom rows, at most
    :data:`FOOTER_MAX_SHARE` of them: on a small image the last lines are
    left out, never the first (put the model and its use there). Boxes are
    drawn over it, so that no finding is hidden.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8, shape (Rows, Columns, 3); not modified.
    texts : sequence of str
        The lines, most important first; none identifies the patient.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"draw_footer() needs a uint8 (Rows, Columns, 3) array, got {rgb.shape}")
    texts = [" ".join(t.split()) for t in texts if t.strip()]
    if not texts:
        return rgb.copy()
    rows, cols = rgb.shape[:2]
    font = _font(max(_FOOTER_MIN_FONT, round(_FOOTER_FONT_FRACTION * cols)))
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    pad = max(1, font.size // 4)
    lines = [line for text in texts for line in _wrap(text, cols - 2 * pad, draw, font)]
    ascent, descent = font.getmetrics()
    step = ascent + descent
    room = max(1, int((FOOTER_MAX_SHARE * rows - 2 * pad) // step))
    lines = lines[:room]
    top = rows - (len(lines) * step + 2 * pad)
    draw.rectangle((0, max(0, top), cols - 1, rows - 1), fill=_TAG_FILL)
    for i, line in enumerate(lines):
        draw.text((pad, top + pad + i * step), line, font=font, fill=_TAG_TEXT, anchor="la")
    return np.array(image, dtype=np.uint8)


def label_units(findings: Sequence[Finding]) -> dict[str, str | None]:
    """The unit each label is reported in: a present finding's when there is one (a box)."""
    return {f.label: f.unit for f in sorted(findings, key=lambda f: f.present)}


def _short_metrics(algorithm: AlgorithmInfo, label: str, unit: str | None) -> str:
    """One short line of the card's metrics for ``label`` in ``unit`` (held-out data first)."""
    chosen = algorithm.quoted(label, unit)
    if not chosen:
        return f"{label}: no metrics per {unit or 'unit reported'} in the model card"
    best = chosen[0]
    where = "validation" if best.split == "validation" else "held-out"
    parts = []
    for name, est in list(best.metrics.items())[:2]:
        title = METRIC_TITLES[name]
        if est.value is None:
            parts.append(f"{title} n/a")
        elif est.ci_low is None or est.ci_high is None:
            parts.append(f"{title} {est.value:.2f}")
        else:
            parts.append(f"{title} {est.value:.2f} ({est.ci_low:.2f}-{est.ci_high:.2f})")
    return f"{label} per {best.unit}, {where} n={best.n}: " + ", ".join(parts)


def footer_texts(algorithm: AlgorithmInfo, label: str, unit: str | None) -> list[str]:
    """The heatmap's burnt-in lines: the model and its use, then its metrics for ``label``."""
    use = "preliminary" if algorithm.for_diagnostic_use else NOT_FOR_DIAGNOSTIC_USE
    head = f"AI {algorithm.name} {algorithm.version} | {use}"
    if algorithm.synthetic:
        head += " | synthetic demo weights"
    return [head, _short_metrics(algorithm, label, unit)] if label else [head]


def build_heatmap_sc(
    source: pydicom.Dataset,
    heatmap: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    job_key: str,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    label: str = "",
    annotations: Sequence[Annotation] = (),
    unit: str | None = None,
) -> pydicom.Dataset:
    """Render a heatmap over its source image as an RGB Secondary Capture image.

    A footer burnt into the bottom rows names the model, says whether it may
    be used for diagnosis, and quotes its held-out metrics for ``label`` in
    ``unit`` (:func:`draw_footer`).

    Parameters
    ----------
    source : pydicom.Dataset
        The source image *with* pixel data (its display greyscale is the
        background, via :func:`imaging.pixels.display_pixels`).
    heatmap : numpy.ndarray
        float, shape (Rows, Columns) of the source, values in [0, 1].
    algorithm : AlgorithmInfo
        The model that produced the heatmap.
    job_key : str
        Stable identifier of the job; with the source SOP Instance UID and
        ``label`` it determines the SOP Instance UID, so a resend replaces
        the image in the PACS.
    series_instance_uid : str
        The job's heatmap series (all heatmaps of a job share it).
    series_number : int
        Series Number of that series (positive).
    instance_number : int
        Instance Number within the series (positive).
    label : str, optional
        Card label the heatmap explains; part of the UID and of the Derivation
        Description so that several labels per image stay distinct.
    annotations : sequence of Annotation, optional
        Boxes with captions (label and score) drawn over the overlay, see
        :func:`draw_annotations`. Every box must be on ``source``; the SC's
        UID does not depend on them, so a resend with other boxes replaces it.
    unit : str, optional
        The unit the job's finding of ``label`` is reported in: the footer
        quotes the card's metrics counted in it.

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.sc.SCImage`, RGB, 8 bit, Explicit VR Little Endian.

    Raises
    ------
    ValueError
        If the heatmap does not match the source size, is not finite, is far
        outside [0, 1], the source lacks identifying attributes, or a box is
        on another image, inverted, non-finite or entirely outside the image.
    imaging.pixels.PixelDataError
        If the source has no decodable greyscale pixel data.
    """
    if not job_key:
        raise ValueError(
            "build_heatmap_sc() needs a non-empty job_key: the SC's UID derives from it"
        )
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "Rows", "Columns"):
        if not source.get(keyword):
            raise ValueError(
                f"source dataset is missing {keyword}; pass the DICOM image the heatmap was "
                "computed on, read with its pixel data"
            )
    rows, cols = int(source.Rows), int(source.Columns)
    heatmap = np.asarray(heatmap)
    if heatmap.shape != (rows, cols):
        raise ValueError(
            f"heatmap shape {heatmap.shape} does not match the source image "
            f"({rows}, {cols}) = (Rows, Columns) of {source.SOPInstanceUID}; resize it in the pipeline"
        )
    if not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(f"heatmap must be a float array in [0, 1], got dtype {heatmap.dtype}")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap contains NaN or inf; fix the pipeline's normalisation")
    if heatmap.min() < -1e-3 or heatmap.max() > 1.0 + 1e-3:
        raise ValueError(
            f"heatmap values span [{heatmap.min():.3g}, {heatmap.max():.3g}]; normalise to [0, 1]"
        )

    annotations = tuple(annotations)
    rgb = overlay_rgb(display_pixels(source), heatmap)
    # boxes over the footer: a finding is never hidden by the text about the model
    rgb = draw_footer(rgb, footer_texts(algorithm, label, unit))
    rgb = draw_annotations(rgb, annotations, str(source.SOPInstanceUID))
    orientation = _patient_orientation(source)
    pixel_spacing = source.get("PixelSpacing")

    sc = hd.sc.SCImage(
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=heatmap_sop_instance_uid(job_key, str(source.SOPInstanceUID), label),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        # Patient and study attributes are copied verbatim below
        # (copy_patient_and_study_information) rather than passed here, where
        # highdicom would re-validate them and reject e.g. a legacy Patient's
        # Sex "U" that the PACS already accepted in the source study.
        pixel_spacing=(
            (float(pixel_spacing[0]), float(pixel_spacing[1]))
            if pixel_spacing is not None and len(pixel_spacing) == 2
            else None
        ),
        # highdicom only accepts single-letter orientations; the real value
        # (possibly oblique, e.g. "LP", or unknown) is written below.
        patient_orientation=("L", "P"),
        series_description=algorithm.series_description("SC"),
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.software_versions,
        contributing_equipment=[algorithm_contributing_equipment(algorithm)],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    _copy_patient_and_study(sc, source)

    # Type 2: empty when the source says nothing about orientation. (The type: ignores here:
    # mypy takes these attributes' types from SCImage.__init__, which only sets them non-empty;
    # pydicom writes None as the empty value a Type 2 attribute may have.)
    sc.PatientOrientation = orientation  # type: ignore[assignment]
    laterality = _image_laterality(source)
    if laterality is not None:
        sc.ImageLaterality = laterality
    else:
        # Type 2C, empty = unknown (see module docstring)
        sc.Laterality = None  # type: ignore[assignment]
    # Burned In Annotation "indicates whether or not image contains sufficient
    # burned in annotation to identify the patient and date the image was
    # acquired" (PS3.3 Table C.7-9, General Image Module). The only text drawn
    # is the model's label and score and the footer about the model, which
    # identify neither, so it stays NO even with annotations; de-identification
    # tools then keep the pixels.
    sc.BurnedInAnnotation = "NO"
    sc.ConversionType = "WSD"
    what = f"heatmap of {label!r}" if label else "heatmap"
    drawn = ""
    if annotations:
        count = len(annotations)
        labelled = any(a.text.strip() for a in annotations)
        drawn = f", {count} box{'es' if count > 1 else ''}" + (
            " with labels drawn" if labelled else " drawn"
        )
    sc.DerivationDescription = (
        f"AI {what} by {algorithm.name} {algorithm.version} blended over the source image"
        + drawn
        + ", the model and its held-out metrics burnt into the bottom rows"
        + ("" if algorithm.for_diagnostic_use else f"; {NOT_FOR_DIAGNOSTIC_USE}")
    )[:1024]
    if not algorithm.for_diagnostic_use:
        sc.ImageComments = NOT_FOR_DIAGNOSTIC_USE
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = codes.SOURCE_IMAGE_FOR_PROCESSING
    ref.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept(
            value=purpose.value,
            scheme_designator=purpose.scheme_designator,
            meaning=purpose.meaning,
        )
    ]
    sc.SourceImageSequence = [ref]
    return sc
