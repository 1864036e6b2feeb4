"""Binary masks per finding to COCO boxes, COCO validation, and the split by patient.

The seed's annotations are one binary mask per finding and image, laid out as
``<masks_dir>/<class>/<stem>.png`` next to ``<images_dir>/.../<stem>.dcm``.
A detector needs boxes: every 8-connected component of a mask becomes one
box, so two separate infiltrates give two boxes and a finding drawn as one
blob gives one. The result is a COCO *detection* file (``images``,
``annotations``, ``categories``) that torchvision's Faster R-CNN training
code and ``pycocotools`` evaluation read as they are, with two extra keys per
image, ``patient_id`` and ``sop_instance_uid``, taken from the DICOM header:
the split needs the patient, and results are matched to the hospital's
objects by UID rather than by file name.

Conventions (the same as COCO's own files, so that ``pycocotools`` agrees):

* ``bbox`` is ``[x, y, w, h]`` in pixels with the pixel-*edge* convention: a
  component covering columns ``c0..c1`` and rows ``r0..r1`` (inclusive) has
  ``x = c0``, ``y = r0``, ``w = c1 - c0 + 1``, ``h = r1 - r0 + 1``, so a
  one-pixel component has ``w = h = 1`` and ``x + w <= width`` always;
* ``area`` is the component's pixel count (not ``w * h``): pycocotools uses it
  only for its small / medium / large breakdown;
* category ids are ``1..K`` in class order; 0 is the detector's background;
* ``segmentation`` is omitted: boxes are what is trained and evaluated, and
  an empty list would break pycocotools' ``annToMask``.

Training and validation are split by Patient ID so that no patient's images
are on both sides (images of one patient are correlated, and a split by
image overstates validation performance). The split reuses the grouped,
stratified splitter shared by the pipelines,
:func:`pipelines.common.split.grouped_split`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from pipelines.common.split import grouped_split

logger = logging.getLogger(__name__)

#: File name endings taken off a DICOM file's name to get the stem its masks are named by.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: Components smaller than this (in pixels) are dropped by :func:`masks_to_coco` by default.
MIN_COMPONENT_PIXELS = 4
#: How many problems an error message lists before "and N more".
_LISTED = 5
#: 8-connectivity: pixels that touch only at a corner belong to the same finding.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class CocoError(ValueError):
    """Annotations or images are not usable; the message lists what to fix and where."""


def _raise_problems(problems: Sequence[str], what: str, fix: str) -> None:
    """Raise one :class:`CocoError` for all ``problems`` (the first few spelt out)."""
    if not problems:
        return
    listed = "; ".join(problems[:_LISTED])
    more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
    raise CocoError(f"{what}: {len(problems)} problem(s): {listed}{more}. {fix}")


def image_stem(path: Path) -> str:
    """The name masks of the image at ``path`` carry: the file name without ``.dcm``/``.dicom``.

    Exports name files ``<stem>.dcm``, ``<SOP UID>`` or ``IM0001``; only the
    DICOM endings are taken off, so ``1.2.3.4`` stays ``1.2.3.4``.
    """
    name = path.name
    for suffix in DICOM_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_mask(path: Path) -> np.ndarray:
    """A mask file as a boolean array: foreground is above half the file's largest value.

    That reads 0/255 (the seed's format), 0/1 and 16-bit masks alike, and
    an anti-aliased edge as the binary mask it approximates. Colour files
    are accepted only when their colour channels are equal (a grey mask
    saved as RGB).

    Raises
    ------
    ValueError
        If the file is not an image or is a colour image.
    """
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        arr = np.asarray(img)
    if arr.ndim == 3:
        # grey + alpha (LA) or colour (RGB, RGBA): the alpha channel is not the mask
        colours = arr[..., : 3 if arr.shape[-1] >= 3 else 1]
        if any(
            not np.array_equal(colours[..., 0], colours[..., c])
            for c in range(1, colours.shape[-1])
        ):
            raise ValueError(f"a {mode} colour image, expected a single-channel binary mask")
        arr = colours[..., 0]
    arr = arr.astype(np.float64, copy=False)
    peak = float(arr.max()) if arr.size else 0.0
    return arr > peak / 2.0 if peak > 0 else np.zeros(arr.shape, dtype=bool)


def mask_boxes(
    mask: np.ndarray, *, min_pixels: int = MIN_COMPONENT_PIXELS
) -> tuple[list[tuple[list[int], int]], int]:
    """Boxes of the 8-connected components of one binary mask.

    Parameters
    ----------
    mask : numpy.ndarray
        2-D boolean (or 0/non-0) array.
    min_pixels : int
        Components with fewer pixels are dropped: single stray pixels from
        brush strokes or resampling are not findings, and a box of a pixel
        or two is below what a detector can localise.

    Returns
    -------
    boxes : list of (bbox, area)
        ``bbox`` is ``[x, y, w, h]`` with the pixel-edge convention (see the
        module docstring) and ``area`` the component's pixel count, in scan
        order of the components' first pixels.
    dropped : int
        How many components were smaller than ``min_pixels``.
    """
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT_CONNECTED)
    if count == 0:
        return [], 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    boxes: list[tuple[list[int], int]] = []
    dropped = 0
    for k, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        area = int(sizes[k])
        if area < min_pixels:
            dropped += 1
            continue
        rows, cols = found
        bbox = [
            int(cols.start),
            int(rows.start),
            int(cols.stop - cols.start),
            int(rows.stop - rows.start),
        ]
        boxes.append((bbox, area))
    return boxes, dropped


def _index_images(images_dir: Path) -> tuple[dict[str, tuple[Path, pydicom.Dataset]], list[str]]:
    """Headers of the DICOM images under ``images_dir`` by stem, and what is wrong with them.

    Files that are not DICOM are skipped unless their name ends in ``.dcm``;
    DICOM objects without Rows/Columns (DICOMDIR, reports) are skipped.
    """
    found: dict[str, tuple[Path, pydicom.Dataset]] = {}
    problems: list[str] = []
    for path in sorted(images_dir.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(images_dir).as_posix()
        named_dicom = path.name.lower().endswith(DICOM_SUFFIXES)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            if named_dicom:
                problems.append(f"image {rel} is not a DICOM file")
            else:
                logger.debug("%s is not DICOM; not part of the data set", rel)
            continue
        except Exception as exc:  # truncated or corrupt files raise many types
            problems.append(f"image {rel} cannot be read ({type(exc).__name__}: {exc})")
            continue
        if "Rows" not in ds or "Columns" not in ds:
            logger.info(
                "%s is a DICOM object without pixels (%s); skipped", rel, ds.get("SOPClassUID", "?")
            )
            continue
        stem = image_stem(path)
        if stem in found:
            other = found[stem][0].relative_to(images_dir).as_posix()
            problems.append(
                f"images {other} and {rel} have the same stem {stem!r}, so masks named {stem}.png are ambiguous"
            )
            continue
        if not str(ds.get("PatientID", "") or "").strip():
            problems.append(f"image {rel} has no Patient ID (needed to split by patient)")
            continue
        found[stem] = (path, ds)
    return found, problems


def masks_to_coco(
    images_dir: Path,
    masks_dir: Path,
    classes: Sequence[str] | None = None,
    *,
    min_pixels: int = MIN_COMPONENT_PIXELS,
) -> dict[str, Any]:
    """Build a COCO detection dataset from DICOM images and binary masks per finding.

    Every DICOM image under ``images_dir`` (searched recursively) becomes an
    ``images`` entry; its masks are ``masks_dir/<class>/<stem>.png`` where
    ``<stem>`` is the image's file name without ``.dcm`` (see
    :func:`image_stem`). Each 8-connected component of a mask with at least
    ``min_pixels`` pixels becomes one annotation; smaller components are
    dropped (and counted in the log), since they are stray pixels rather than
    findings. An image without any mask is a normal image with no
    annotations, not an error; so is an all-zero mask.

    Parameters
    ----------
    images_dir : Path
        Folder of DICOM files. Files that are not DICOM are ignored unless
        their name ends in ``.dcm``; DICOM objects without pixels (DICOMDIR,
        reports) are ignored.
    masks_dir : Path
        Folder with one subfolder per class holding ``<stem>.png`` masks
        (8-bit 0/255 in the seed; 0/1 and 16-bit masks read as well: a pixel
        is foreground when above half the file's largest value).
    classes : sequence of str or None
        Class names in category-id order (id 1 is the first). Default: the
        sorted names of the subfolders of ``masks_dir``. Subfolders not named
        here are ignored with a warning.
    min_pixels : int
        Smallest component kept, in pixels (default 4).

    Returns
    -------
    dict
        COCO with ``info``, ``images`` (``id`` from 1 in file order,
        ``file_name`` relative to ``images_dir`` in posix form, ``width``,
        ``height``, ``patient_id``, ``sop_instance_uid``), ``annotations``
        (``id``, ``image_id``, ``category_id``, ``bbox``, ``area``,
        ``iscrowd`` 0) and ``categories``.

    Raises
    ------
    CocoError
        Listing every problem found at once: an unreadable image, an image
        without Patient ID, two images with the same stem, a mask without an
        image of its stem, a mask whose size is not the image's Rows x
        Columns, an unreadable or colour mask, no images at all.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir():
        raise CocoError(f"images folder {images_dir} does not exist")
    if not masks_dir.is_dir():
        raise CocoError(
            f"masks folder {masks_dir} does not exist; it must hold one subfolder per class "
            "with a <stem>.png mask per image that has the finding"
        )
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
    folders = sorted(p.name for p in masks_dir.iterdir() if p.is_dir())
    if classes is None:
        if not folders:
            raise CocoError(
                f"{masks_dir} has no class subfolders; put each finding's masks in "
                f"{masks_dir}/<class>/<stem>.png or pass the class names"
            )
        classes = folders
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes) or not all(classes):
        raise CocoError(f"classes must be distinct non-empty names, got {classes}")
    ignored = [f for f in folders if f not in classes]
    if ignored:
        logger.warning("mask folders %s are not among the classes %s; ignored", ignored, classes)

    headers, problems = _index_images(images_dir)
    masks: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for cls in classes:
        folder = masks_dir / cls
        if not folder.is_dir():
            logger.info("no %s masks (no folder %s)", cls, folder)
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() != ".png":
                if path.is_file():
                    logger.warning("%s is not a .png mask; ignored", path)
                continue
            rel = f"{cls}/{path.name}"
            stem = path.stem
            if stem not in headers:
                problems.append(f"mask {rel} has no image named {stem} under {images_dir}")
                continue
            try:
                mask = _read_mask(path)
            except Exception as exc:  # PIL raises many types for unreadable files
                problems.append(f"mask {rel} cannot be read ({exc})")
                continue
            ds = headers[stem][1]
            shape = (int(ds.Rows), int(ds.Columns))
            if mask.shape != shape:
                problems.append(
                    f"mask {rel} is {mask.shape[1]}x{mask.shape[0]} (width x height) but its "
                    f"image is {shape[1]}x{shape[0]}"
                )
                continue
            masks[stem][cls] = mask
    if not headers and not problems:
        problems.append(f"no DICOM image found under {images_dir}")
    _raise_problems(
        problems,
        f"cannot build COCO annotations from {images_dir} and {masks_dir}",
        "Fix or remove these files and run again.",
    )

    category_id = {cls: i for i, cls in enumerate(classes, start=1)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    dropped = 0
    ordered = sorted(headers.items(), key=lambda kv: kv[1][0].relative_to(images_dir).as_posix())
    for image_id, (stem, (path, ds)) in enumerate(ordered, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": path.relative_to(images_dir).as_posix(),
                "width": int(ds.Columns),
                "height": int(ds.Rows),
                "patient_id": str(ds.PatientID).strip(),
                "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            }
        )
        for cls in classes:
            if cls not in masks[stem]:
                continue
            boxes, small = mask_boxes(masks[stem][cls], min_pixels=min_pixels)
            dropped += small
            for bbox, area in boxes:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id[cls],
                        "bbox": bbox,
                        "area": area,
                        "iscrowd": 0,
                    }
                )
    if dropped:
        logger.info("%d mask component(s) below %d pixels dropped", dropped, min_pixels)
    logger.info("%d images, %d boxes in %d classes", len(images), len(annotations), len(classes))
    return {
        "info": {
            "description": "boxes of the connected components of binary masks per finding",
            "min_component_pixels": min_pixels,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": category_id[cls], "name": cls, "supercategory": "finding"} for cls in classes
        ],
    }


def validate_coco(coco: Any, *, images_dir: Path | None = None) -> None:
    """Check that ``coco`` is a COCO detection dataset a detector can train on.

    Checked: ``images``, ``annotations`` and ``categories`` are lists of
    objects; ids are integers, unique within their list; category ids are
    at least 1 (0 is the background) and names unique; images have a
    ``file_name`` (unique) and positive integer ``width`` and ``height``;
    annotations reference a known image and category, have a ``bbox`` of
    four finite numbers with ``w, h > 0`` lying inside the image, a positive
    ``area`` (pycocotools needs it) and ``iscrowd`` 0 or 1 when present. With
    ``images_dir``, every ``file_name`` must be a file under it.

    Raises
    ------
    CocoError
        Listing the problems by image or annotation id.
    """
    if not isinstance(coco, dict):
        raise CocoError(
            f"expected a JSON object with images, annotations and categories, got {type(coco).__name__}"
        )
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)
    ]
    if missing:
        raise CocoError(f"COCO data needs lists {', '.join(missing)}; got keys {sorted(coco)}")
    problems: list[str] = []

    categories: set[int] = set()
    names: set[str] = set()
    for n, cat in enumerate(coco["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            problems.append(f"category #{n + 1} has no integer id")
            continue
        cid, name = cat["id"], cat.get("name")
        if cid < 1:
            problems.append(
                f"category id {cid} must be at least 1 (0 is the detector's background)"
            )
        if cid in categories:
            problems.append(f"category id {cid} appears twice")
        if not isinstance(name, str) or not name:
            problems.append(f"category id {cid} has no name")
        elif name in names:
            problems.append(f"category name {name!r} appears twice")
        else:
            names.add(name)
        categories.add(cid)

    sizes: dict[int, tuple[int, int]] = {}
    files: set[str] = set()
    for n, img in enumerate(coco["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            problems.append(f"image #{n + 1} has no integer id")
            continue
        iid, name = img["id"], img.get("file_name")
        if iid in sizes:
            problems.append(f"image id {iid} appears twice")
            continue
        width, height = img.get("width"), img.get("height")
        size = (width, height) if _is_int(width) and _is_int(height) else (0, 0)
        if not (size[0] > 0 and size[1] > 0):
            problems.append(
                f"image id {iid}: width and height must be positive integers, got {width!r} and {height!r}"
            )
            size = (0, 0)
        if not isinstance(name, str) or not name:
            problems.append(f"image id {iid} has no file_name")
        elif name in files:
            problems.append(f"image id {iid}: file_name {name!r} is used by another image too")
        else:
            files.add(name)
            if images_dir is not None and not (Path(images_dir) / name).is_file():
                problems.append(f"image id {iid}: file {name} does not exist under {images_dir}")
        patient = img.get("patient_id")
        if patient is not None and not (isinstance(patient, str) and patient.strip()):
            problems.append(
                f"image id {iid}: patient_id must be a non-empty string, got {patient!r}"
            )
        sizes[iid] = size

    seen: set[int] = set()
    for n, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            problems.append(f"annotation #{n + 1} has no integer id")
            continue
        aid = ann["id"]
        where = f"annotation id {aid}"
        if aid in seen:
            problems.append(f"{where} appears twice")
            continue
        seen.add(aid)
        iid, cid = ann.get("image_id"), ann.get("category_id")
        if iid not in sizes:
            problems.append(f"{where}: image_id {iid!r} is not among the images")
        if cid not in categories:
            problems.append(f"{where}: category_id {cid!r} is not among the categories")
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list | tuple) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
        ):
            problems.append(
                f"{where}: bbox must be [x, y, w, h] (four finite numbers), got {bbox!r}"
            )
        else:
            x, y, w, h = bbox
            width, height = sizes.get(iid, (0, 0))
            if w <= 0 or h <= 0:
                problems.append(f"{where}: bbox {bbox} has a width or height that is not positive")
            elif x < 0 or y < 0:
                problems.append(f"{where}: bbox {bbox} starts left of or above the image")
            elif width and (x + w > width + 1e-6 or y + h > height + 1e-6):
                problems.append(
                    f"{where}: bbox {bbox} extends past image {iid}, which is {width}x{height} "
                    "(x + w must be at most the width, y + h at most the height)"
                )
        area = ann.get("area")
        if not (_is_number(area) and area > 0):
            problems.append(f"{where}: area must be a positive number, got {area!r}")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            problems.append(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
    _raise_problems(
        problems, "invalid COCO data", "Fix the annotation file (or regenerate it from the masks)."
    )


def load_coco(path: Path, images_dir: Path | None = None) -> dict[str, Any]:
    """Read a COCO detection file and check it with :func:`validate_coco`.

    Parameters
    ----------
    path : Path
        The JSON file.
    images_dir : Path or None
        When given, every image's ``file_name`` must exist under it.

    Returns
    -------
    dict
        The parsed file, unchanged.

    Raises
    ------
    CocoError
        If the file is missing, is not JSON, holds no images, or fails validation.
    """
    path = Path(path)
    if not path.is_file():
        raise CocoError(f"COCO file {path} does not exist")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path} is not valid JSON: {exc}") from exc
    try:
        validate_coco(coco, images_dir=images_dir)
    except CocoError as exc:
        raise CocoError(f"{path}: {exc}") from exc
    if not coco["images"]:
        raise CocoError(f"{path} holds no images")
    return coco


def _patient_ids(coco: dict[str, Any], images_dir: Path | None) -> dict[int, str]:
    """Patient of every image: its ``patient_id``, else the PatientID of its DICOM file."""
    patients: dict[int, str] = {}
    problems: list[str] = []
    for img in coco["images"]:
        patient = str(img.get("patient_id") or "").strip()
        if not patient and images_dir is not None:
            path = Path(images_dir) / img["file_name"]
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                patient = str(ds.get("PatientID", "") or "").strip()
            except Exception as exc:  # missing, not DICOM, truncated
                problems.append(f"image id {img['id']}: cannot read {path} ({type(exc).__name__})")
                continue
        if not patient:
            problems.append(
                f"image id {img['id']} ({img['file_name']}) has no patient_id"
                + (" and its file has no Patient ID" if images_dir is not None else "")
            )
            continue
        patients[img["id"]] = patient
    _raise_problems(
        problems,
        "cannot split by patient",
        "Every image needs a patient_id in the COCO file or a Patient ID in its DICOM file "
        "(pass images_dir to read it).",
    )
    return patients


def split_by_patient(
    coco: dict[str, Any],
    fractions: Sequence[float] = (0.8, 0.2),
    seed: int = 0,
    images_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Split a COCO dataset into parts by patient: no patient has images in two parts.

    Patients are stratified by their rarest finding (the category that the
    fewest patients have, among those the patient has; patients without
    findings form their own stratum) and dealt to the parts with
    :func:`pipelines.common.split.grouped_split`, so every part gets patients
    with each finding where there are enough of them, and the split is a
    deterministic function of ``seed`` and the set of patients.

    Parameters
    ----------
    coco : dict
        A valid COCO detection dataset (checked with :func:`validate_coco`).
    fractions : sequence of float
        Relative sizes of the parts, in patients (normalised to sum 1).
    seed : int
        Seed of the shuffle of patients.
    images_dir : Path or None
        Where to read PatientID from images whose entry has no ``patient_id``.

    Returns
    -------
    list of dict
        One COCO dataset per fraction, with the same ``categories`` (and
        other top-level keys), only its images and their annotations, ids
        unchanged. Images carry ``patient_id`` (filled in when read from the
        file).

    Raises
    ------
    CocoError
        If the data is invalid or an image has no patient.
    ValueError
        If ``fractions`` are negative or sum to zero.
    """
    validate_coco(coco)
    patients = _patient_ids(coco, images_dir)
    findings: dict[int, list[int]] = defaultdict(list)
    for ann in coco["annotations"]:
        findings[ann["image_id"]].append(ann["category_id"])
    parts = grouped_split(
        coco["images"],
        fractions,
        group=lambda img: patients[img["id"]],
        classes=lambda img: findings.get(img["id"], []),
        class_order=[cat["id"] for cat in coco["categories"]],
        seed=seed,
    )
    rest = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    out: list[dict[str, Any]] = []
    for n, part in enumerate(parts):
        ids = {img["id"] for img in part}
        images = [
            {**deepcopy(img), "patient_id": patients[img["id"]]}
            for img in coco["images"]
            if img["id"] in ids
        ]
        annotations = [deepcopy(a) for a in coco["annotations"] if a["image_id"] in ids]
        if not images and fractions[n] > 0:
            logger.warning("split part %d is empty: too few patients for %s", n, list(fractions))
        absent = [
            c["name"]
            for c in coco["categories"]
            if c["id"] not in {a["category_id"] for a in annotations}
        ]
        if images and absent:
            logger.warning("split part %d has no %s", n, ", ".join(absent))
        out.append({**deepcopy(rest), "images": images, "annotations": annotations})
    return out


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, as a caller's own COCO dict may hold them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_coco(coco: dict[str, Any], path: Path) -> None:
    """Write ``coco`` as JSON atomically: a reader sees the old file or the new one, never half.

    The text goes to a temporary file in the same folder, which then
    replaces ``path`` (``os.replace``); the folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(coco, indent=1, ensure_ascii=False, default=_json_default) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
