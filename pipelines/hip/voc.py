"""Pascal VOC XML as LabelImg reads and writes it: the femoral-neck boxes of seed 003.

The study boxed the femoral neck of each hip radiograph by hand in LabelImg,
which saves one XML file per image::

    <annotation>
      <folder>images</folder>
      <filename>hip_0001.png</filename>
      <path>/data/images/hip_0001.png</path>
      <source><database>Unknown</database></source>
      <size><width>2048</width><height>1536</height><depth>1</depth></size>
      <segmented>0</segmented>
      <object>
        <name>femoral_neck</name><pose>Unspecified</pose>
        <truncated>0</truncated><difficult>0</difficult>
        <bndbox><xmin>412</xmin><ymin>530</ymin><xmax>598</xmax><ymax>702</ymax></bndbox>
      </object>
    </annotation>

Coordinates are LabelImg's: integer, **1-based** pixel indices, the box
covering pixels ``xmin..xmax`` and ``ymin..ymax`` inclusive (LabelImg clamps
them to ``1..width`` / ``1..height``). In the node's continuous image
coordinates (origin at the top-left corner of the top-left pixel, as SR
graphic data) that box is ``[xmin - 1, xmax] x [ymin - 1, ymax]``:
:meth:`VocObject.box` and :meth:`VocObject.from_box` convert.

An XML file belongs to the DICOM file with the same stem (name without
extension): the study annotated PNG exports of the DICOM images, so
``hip_0001.xml`` / ``<filename>hip_0001.png</filename>`` annotate
``hip_0001.dcm``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


class VocError(ValueError):
    """A VOC file is missing, malformed or inconsistent (the message names the file and field)."""


@dataclass(frozen=True)
class VocObject:
    """One box: LabelImg's 1-based inclusive pixel indices."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    pose: str = "Unspecified"
    truncated: bool = False
    difficult: bool = False

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The box in continuous image coordinates ``(x0, y0, x1, y1)``."""
        return float(self.xmin - 1), float(self.ymin - 1), float(self.xmax), float(self.ymax)

    @classmethod
    def from_box(
        cls, name: str, box: tuple[float, float, float, float], *, width: int, height: int
    ) -> VocObject:
        """The LabelImg box of a continuous ``(x0, y0, x1, y1)`` box (rounded, clamped)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        xmin = min(max(round(x0) + 1, 1), width)
        ymin = min(max(round(y0) + 1, 1), height)
        xmax = min(max(round(x1), xmin), width)
        ymax = min(max(round(y1), ymin), height)
        return cls(name, xmin, ymin, xmax, ymax)


@dataclass(frozen=True)
class VocAnnotation:
    """One image's annotation file."""

    filename: str
    width: int
    height: int
    depth: int = 1
    objects: tuple[VocObject, ...] = ()
    folder: str = ""
    path: str = ""

    @property
    def stem(self) -> str:
        """The image file name without its extension (what pairs it with a DICOM file)."""
        return Path(self.filename).stem


def _text(parent: ET.Element, tag: str, where: str, source: Path) -> str:
    node = parent.find(tag)
    if node is None or node.text is None or not node.text.strip():
        raise VocError(f"{source}: {where}<{tag}> is missing or empty")
    return node.text.strip()


def _integer(parent: ET.Element, tag: str, where: str, source: Path) -> int:
    text = _text(parent, tag, where, source)
    try:
        value = float(text)
    except ValueError:
        raise VocError(f"{source}: {where}<{tag}> is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise VocError(f"{source}: {where}<{tag}> is {text!r}, not a finite number")
    return round(value)  # LabelImg writes integers; other tools may write 412.0


def _flag(parent: ET.Element, tag: str) -> bool:
    node = parent.find(tag)
    return node is not None and (node.text or "").strip() in ("1", "true", "True")


def read_voc(path: str | Path) -> VocAnnotation:
    """Read one LabelImg XML file.

    Raises
    ------
    VocError
        If the file is missing or not XML, or a field is missing, not a
        number, or a box lies outside the image or is inverted; the message
        names the file, the object and the field.
    """
    source = Path(path)
    try:
        root = ET.parse(source).getroot()
    except FileNotFoundError:
        raise VocError(f"{source}: no such file") from None
    except ET.ParseError as exc:
        raise VocError(f"{source}: not well-formed XML ({exc})") from None
    except OSError as exc:
        raise VocError(f"{source}: cannot be read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise VocError(f"{source}: the root element is <{root.tag}>, not <annotation>")
    filename = _text(root, "filename", "", source)
    size = root.find("size")
    if size is None:
        raise VocError(f"{source}: <size> is missing")
    width = _integer(size, "width", "<size>", source)
    height = _integer(size, "height", "<size>", source)
    depth_node = size.find("depth")
    depth = _integer(size, "depth", "<size>", source) if depth_node is not None else 1
    if width < 1 or height < 1:
        raise VocError(f"{source}: <size> is {width} x {height}; both must be positive")
    objects = []
    for n, obj in enumerate(root.findall("object"), start=1):
        where = f"<object> {n} "
        name = _text(obj, "name", where, source)
        where = f"<object> {n} ({name}) "
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise VocError(f"{source}: {where}has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _integer(bndbox, tag, f"{where}<bndbox>", source)
            for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        for tag, value, limit in (
            ("xmin", xmin, width),
            ("xmax", xmax, width),
            ("ymin", ymin, height),
            ("ymax", ymax, height),
        ):
            if not 1 <= value <= limit:
                raise VocError(
                    f"{source}: {where}<bndbox><{tag}> {value} is outside 1..{limit} "
                    "(LabelImg writes 1-based pixel indices within the image <size>)"
                )
        if xmax < xmin or ymax < ymin:
            raise VocError(
                f"{source}: {where}<bndbox> is inverted: xmin {xmin} xmax {xmax}, "
                f"ymin {ymin} ymax {ymax}"
            )
        pose_node = obj.find("pose")
        objects.append(
            VocObject(
                name=name,
                xmin=xmin,
                ymin=ymin,
                xmax=xmax,
                ymax=ymax,
                pose=(pose_node.text or "").strip() if pose_node is not None else "Unspecified",
                truncated=_flag(obj, "truncated"),
                difficult=_flag(obj, "difficult"),
            )
        )
    folder = root.find("folder")
    full_path = root.find("path")
    return VocAnnotation(
        filename=filename,
        width=width,
        height=height,
        depth=depth,
        objects=tuple(objects),
        folder=(folder.text or "").strip() if folder is not None else "",
        path=(full_path.text or "").strip() if full_path is not None else "",
    )


def _sub(parent: ET.Element, tag: str, text: str | int) -> ET.Element:
    node = ET.SubElement(parent, tag)
    node.text = str(text)
    return node


def write_voc(annotation: VocAnnotation, path: str | Path) -> None:
    """Write ``annotation`` as LabelImg does (tab-indented XML, no XML declaration).

    Raises
    ------
    VocError
        If a box lies outside the image or is inverted (what :func:`read_voc`
        would refuse to read back).
    """
    root = ET.Element("annotation")
    _sub(root, "folder", annotation.folder)
    _sub(root, "filename", annotation.filename)
    _sub(root, "path", annotation.path or annotation.filename)
    source = ET.SubElement(root, "source")
    _sub(source, "database", "Unknown")
    size = ET.SubElement(root, "size")
    _sub(size, "width", annotation.width)
    _sub(size, "height", annotation.height)
    _sub(size, "depth", annotation.depth)
    _sub(root, "segmented", 0)
    for n, obj in enumerate(annotation.objects, start=1):
        if not (
            1 <= obj.xmin <= obj.xmax <= annotation.width
            and 1 <= obj.ymin <= obj.ymax <= annotation.height
        ):
            raise VocError(
                f"{path}: object {n} ({obj.name}) box {obj.xmin},{obj.ymin},{obj.xmax},"
                f"{obj.ymax} does not fit the {annotation.width} x {annotation.height} image"
            )
        node = ET.SubElement(root, "object")
        _sub(node, "name", obj.name)
        _sub(node, "pose", obj.pose)
        _sub(node, "truncated", int(obj.truncated))
        _sub(node, "difficult", int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            _sub(box, tag, getattr(obj, tag))
    ET.indent(root, space="\t")
    Path(path).write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")


def read_voc_folder(folder: str | Path) -> dict[str, tuple[Path, VocAnnotation]]:
    """Every ``*.xml`` below ``folder`` (recursively), by the stem of its image file name.

    Raises
    ------
    VocError
        If the folder does not exist, a file cannot be read (see
        :func:`read_voc`), or two files annotate images with the same stem.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VocError(f"VOC folder {root} does not exist")
    out: dict[str, tuple[Path, VocAnnotation]] = {}
    for path in sorted(root.rglob("*.xml")):
        annotation = read_voc(path)
        if annotation.stem in out:
            raise VocError(
                f"{path} and {out[annotation.stem][0]} both annotate an image named "
                f"{annotation.stem!r}; keep one XML file per image"
            )
        out[annotation.stem] = (path, annotation)
    return out
