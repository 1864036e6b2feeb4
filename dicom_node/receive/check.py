"""Check a received data set before the node answers Success: whole, well-formed, safe to decode.

The receiver stores objects as sent and never decodes pixel data, but Success
promises the object is usable. pydicom reads leniently: a value cut short by a
truncated transfer, a length that runs past the end, an undefined-length
sequence with no delimiter all read without an error and silently lose data
(a truncated Series Instance UID is still a syntactically valid UID). And
pydicom inflates a deflated data set whole in memory: a few MiB from a peer
can become many GiB in the receiver.

So :func:`read_header` walks the element structure of the data set exactly as
received: tags and lengths only, values skipped with a seek (or, for the
deflated transfer syntaxes, inflated in bounded chunks and discarded). It
refuses anything that is not one well-formed data set in the negotiated
transfer syntax, and keeps only the few top-level elements the receiver
indexes, as pydicom raw elements (pydicom converts them on access).
:func:`check_pixels` then compares the Pixel Data with the Image Pixel
module that describes it, without decoding it, and refuses declared sizes
that a decoder would have to allocate but the node will not (decompression
bombs).

Two kinds of refusal, because the peer should act differently:
:class:`MalformedDataSetError` (``0xC000`` cannot understand: the bytes are not
a data set), :class:`DataSetMismatchError` (``0xA900``: a data set, but its
Pixel Data do not match what the SOP class and the Image Pixel module require).
"""

from __future__ import annotations

import struct
import unicodedata
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.uid import UID

from imaging.storage import is_image_storage

#: decoded pixel data (Rows x Columns x Samples x Bits Allocated / 8 x Frames) the node accepts
#: from a compressed object, and bytes it inflates from a deflated one. A pipeline decodes a whole
#: object in memory; beyond this it is a decompression bomb, or an object (a long video, a whole
#: slide) this node does not analyse.
MAX_DECODED_BYTES = 4 << 30

#: nesting of sequences accepted (SR content trees are the deepest in practice, about 10)
MAX_DEPTH = 64

#: the longest value kept for the header; the kept elements are UIDs, codes and short text
MAX_KEPT_VALUE = 1024

#: transfer syntaxes whose data set is deflated after the file meta (PS3.5 A.5, A.7)
DEFLATED = frozenset(
    {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}
)

#: explicit VRs with a reserved field and a 4-byte length (PS3.5 7.1.2), the others have 2 bytes
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN"}
    | {b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})  # float, double float, pixel data


class MalformedDataSetError(ValueError):
    """The bytes received are not one well-formed data set in the negotiated transfer syntax."""


class DataSetMismatchError(ValueError):
    """A data set, but not one of its SOP class: Pixel Data missing or not as described, a UID
    element far longer than any UID, control characters in a code or text attribute."""


@dataclass(frozen=True)
class PixelElement:
    """The top-level pixel data element as found, value unread."""

    tag: int
    #: value length in bytes; None for undefined length (encapsulated)
    length: int | None
    #: items of encapsulated pixel data, the basic offset table included
    items: int


@dataclass(frozen=True)
class Value:
    """A kept element's value bytes as received, and how to read them."""

    data: bytes
    #: the explicit VR, None in implicit VR
    vr: str | None
    little_endian: bool


@dataclass(frozen=True)
class Header:
    """What :func:`read_header` found: the kept top-level elements and the pixel data element.

    Values are decoded here, not by pydicom: pydicom's validation warnings quote
    an invalid value in the log, and a UID element whose wrong length swallowed
    its neighbours would carry the patient's name into it.
    """

    values: dict[str, Value]
    pixels: PixelElement | None

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.values

    def text(self, keyword: str) -> str | None:
        """A string value without its padding; None when absent. Only
        Series Description (LO) depends on the Specific Character Set; UIDs and
        codes are ASCII, and a byte outside it stays visible (and invalid)."""
        value = self.values.get(keyword)
        if value is None:
            return None
        if keyword == "SeriesDescription":
            names = [c.strip() for c in (self.text("SpecificCharacterSet") or "").split("\\")]
            encodings = convert_encodings(names if any(names) else None)
            text = decode_bytes(value.data, encodings, set())
        else:
            text = value.data.decode("latin-1")
        return text.rstrip("\x00 ")

    def number(self, keyword: str) -> int | None:
        """An US or IS value as an int; None when absent or empty.

        Raises
        ------
        ValueError
            Not exactly one number.
        """
        value = self.values.get(keyword)
        if value is None or not value.data:
            return None
        if value.vr == "IS" or (value.vr is None and _dictionary_vr_keyword(keyword) == "IS"):
            digits = value.data.decode("latin-1").strip("\x00 ")
            return int(digits) if digits else None
        if len(value.data) != 2:  # US
            raise ValueError(f"{keyword} has {len(value.data)} bytes, not one US value")
        return int.from_bytes(value.data, "little" if value.little_endian else "big")


def plain_text(header: Header, keyword: str) -> str | None:
    """A code or short text attribute (Modality, Series Description...) for the index, or None.

    Code and long strings allow no control character but ESC, which decoding
    consumes. One left means the value is not what it claims: a wrong length made
    it swallow binary element headers and whatever followed them (the patient's
    name, after a Series Description), which must reach neither index nor log.

    Raises
    ------
    DataSetMismatchError
        The value holds control characters.
    """
    text = header.text(keyword)
    if text is not None and any(unicodedata.category(c) == "Cc" for c in text):
        raise DataSetMismatchError(f"{keyword} holds control characters: is its length wrong?")
    return text


def _tag(tag: int) -> str:
    name = keyword_for_tag(tag) if tag >> 16 & 1 == 0 else ""
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{name} {text}" if name else text


def _name(what: str, tag: int | None) -> str:
    """What a length or a read was for, named only when an error needs it (the walk is hot)."""
    return what if tag is None else f"{what} {_tag(tag)}"


# --- byte sources ---------------------------------------------------------------------------


class _FileSource:
    """The data set in a file from ``offset`` to its end: values are skipped with a seek."""

    def __init__(self, fp: BinaryIO, offset: int, size: int) -> None:
        self.fp = fp
        self.offset = offset
        self.size = size - offset
        self.pos = 0
        fp.seek(offset)

    def read(self, n: int, what: str, tag: int | None = None) -> bytes:
        data = self.fp.read(n) if n else b""
        if len(data) < n:
            raise MalformedDataSetError(
                f"the data set ends inside {_name(what, tag)} at offset {self.pos}: it is truncated"
            )
        self.pos += n
        return data

    def skip(self, n: int, what: str, tag: int | None = None) -> None:
        self.require(n, what, tag)
        self.pos += n
        self.fp.seek(self.offset + self.pos)

    def require(self, n: int, what: str, tag: int | None = None) -> None:
        if self.pos + n > self.size:
            raise MalformedDataSetError(
                f"{_name(what, tag)} at offset {self.pos} declares {n} bytes but only "
                f"{self.size - self.pos} remain: the data set is truncated or the length is wrong"
            )

    def at_end(self) -> bool:
        return self.pos >= self.size


class _InflatingSource:
    """A deflated data set, inflated in bounded chunks: memory stays small whatever it inflates to."""

    CHUNK = 1 << 16

    def __init__(self, fp: BinaryIO, offset: int, limit: int) -> None:
        self.fp = fp
        self.limit = limit
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buffer = b""
        self.pos = 0
        fp.seek(offset)

    def _fill(self, n: int) -> bool:
        """Inflate until ``n`` bytes are buffered; False when the stream ends first."""
        while len(self.buffer) < n and not self.inflater.eof:
            data = self.inflater.unconsumed_tail or self.fp.read(self.CHUNK)
            if not data:
                raise MalformedDataSetError(
                    f"the deflate stream stops after {self.pos + len(self.buffer)} inflated bytes "
                    "without its final block: the data set is truncated"
                )
            try:
                self.buffer += self.inflater.decompress(data, self.CHUNK)
            except zlib.error as exc:
                raise MalformedDataSetError(
                    f"the data set is not valid deflate data ({exc}), as the transfer syntax requires"
                ) from None
            if self.pos + len(self.buffer) > self.limit:
                raise MalformedDataSetError(
                    f"the deflated data set inflates to more than {self.limit} bytes, the node's "
                    "limit: a decompression bomb, or an object this node does not analyse"
                )
        return len(self.buffer) >= n

    def read(self, n: int, what: str, tag: int | None = None) -> bytes:
        if not self._fill(n):
            raise MalformedDataSetError(
                f"the data set ends inside {_name(what, tag)} at offset {self.pos}: it is truncated"
            )
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        self.pos += n
        return data

    def skip(self, n: int, what: str, tag: int | None = None) -> None:
        self.require(n, what, tag)
        while n:
            if not self._fill(1):
                raise MalformedDataSetError(
                    f"{_name(what, tag)} runs past the end of the data set at offset {self.pos}: "
                    "it is truncated or the length is wrong"
                )
            step = min(n, len(self.buffer))
            self.buffer = self.buffer[step:]
            self.pos += step
            n -= step

    def require(self, n: int, what: str, tag: int | None = None) -> None:
        if self.pos + n > self.limit:
            raise MalformedDataSetError(
                f"{_name(what, tag)} at offset {self.pos} declares {n} bytes, more than the node inflates "
                f"({self.limit} bytes): a decompression bomb, or an object this node does not analyse"
            )

    def at_end(self) -> bool:
        return not self._fill(1)


_Source = _FileSource | _InflatingSource


# --- the walk -------------------------------------------------------------------------------


class _Walker:
    """Walks elements and items, checking that every length fits and every delimiter matches."""

    def __init__(self, source: _Source, transfer_syntax: UID, keep: frozenset[int]) -> None:
        self.src = source
        self.syntax = transfer_syntax
        self.keep = keep
        self.kept: dict[int, Value] = {}
        self.pixels: PixelElement | None = None

    def header(self, implicit: bool, little: bool) -> tuple[int, bytes | None, int]:
        """Read one element header: tag, VR (None when implicit or an item tag), length."""
        order = "<" if little else ">"
        start = self.src.pos
        group, element = struct.unpack(order + "HH", self.src.read(4, "an element tag"))
        tag = group << 16 | element
        if implicit or group == 0xFFFE:
            (length,) = struct.unpack(order + "L", self.src.read(4, "the length of", tag))
            return tag, None, length
        vr = self.src.read(2, "the VR of", tag)
        if vr in SHORT_VRS:
            (length,) = struct.unpack(order + "H", self.src.read(2, "the length of", tag))
        elif vr in LONG_VRS:
            raw = self.src.read(6, "the length of", tag)
            (length,) = struct.unpack(order + "L", raw[2:])
        else:
            raise MalformedDataSetError(
                f"element {_tag(tag)} at offset {start} has VR {vr!r}, which is not a DICOM VR: "
                f"the data set is not encoded in the negotiated {self.syntax.name}"
            )
        return tag, vr, length

    def dataset(
        self, implicit: bool, little: bool, depth: int, end: int | None, top: bool = False
    ) -> None:
        """Walk a data set: the top level (to the end of the stream), or an item's.

        An item's data set ends at ``end`` (defined-length item) or at its item
        delimiter (``end`` None).
        """
        while True:
            if end is not None and self.src.pos >= end:
                if self.src.pos > end:
                    raise MalformedDataSetError(
                        f"an element runs past the end of its item at {end}"
                    )
                return
            if top and self.src.at_end():
                return
            start = self.src.pos
            tag, vr, length = self.header(implicit, little)
            if tag == ITEM_END and end is None and not top:
                if length:
                    raise MalformedDataSetError(f"item delimiter at offset {start} has a length")
                return
            if tag in (ITEM, ITEM_END, SEQUENCE_END):
                raise MalformedDataSetError(
                    f"stray {_tag(tag)} at offset {start}, outside a sequence or item"
                )
            if length == UNDEFINED:
                self.undefined(tag, vr, implicit, little, depth, start)
                continue
            if vr == b"SQ" or (implicit and _dictionary_vr(tag) == "SQ"):
                self.src.require(length, "element", tag)
                self.items(implicit, little, depth + 1, self.src.pos + length, pixel=False)
                continue
            if top and tag in self.keep:
                self.src.require(length, "element", tag)
                if length > MAX_KEPT_VALUE and _dictionary_vr(tag) == "UI":
                    raise DataSetMismatchError(
                        f"element {_tag(tag)} is {length} bytes long, not a UID"
                    )
                # text longer than any conformant value: its start is all the index keeps
                kept = min(length, MAX_KEPT_VALUE)
                value = self.src.read(kept, "element", tag)
                self.src.skip(length - kept, "element", tag)
                self.kept[tag] = Value(value, vr.decode() if vr is not None else None, little)
                continue
            if top and tag in PIXEL_TAGS:
                self.pixels = PixelElement(tag, length, 0)
            self.src.skip(length, "element", tag)

    def undefined(
        self, tag: int, vr: bytes | None, implicit: bool, little: bool, depth: int, start: int
    ) -> None:
        """An undefined-length element: a sequence, or encapsulated Pixel Data; nothing else."""
        if tag == PIXEL_DATA and vr in (b"OB", b"OW", None):
            items = self.items(implicit, little, depth + 1, None, pixel=True)
            if depth == 0:
                self.pixels = PixelElement(tag, None, items)
        elif vr == b"UN":
            # PS3.5 6.2.2: an undefined-length UN is a sequence encoded in implicit VR little endian
            self.items(True, True, depth + 1, None, pixel=False)
        elif vr == b"SQ" or (vr is None and _dictionary_vr(tag) in ("SQ", None)):
            self.items(implicit, little, depth + 1, None, pixel=False)
        else:
            raise MalformedDataSetError(
                f"element {_tag(tag)} at offset {start} has an undefined length, which only "
                "sequences and encapsulated Pixel Data may have"
            )

    def items(self, implicit: bool, little: bool, depth: int, end: int | None, pixel: bool) -> int:
        """Walk a sequence's items (or pixel data fragments) to its delimiter or ``end``; count them."""
        if depth > MAX_DEPTH:
            raise MalformedDataSetError(f"sequences nested deeper than {MAX_DEPTH} levels")
        order = "<" if little else ">"
        count = 0
        while True:
            if end is not None and self.src.pos >= end:
                if self.src.pos > end:
                    raise MalformedDataSetError(
                        f"an item runs past the end of its sequence at {end}"
                    )
                return count
            start = self.src.pos
            tag_bytes = self.src.read(8, "an item header")
            group, element, length = struct.unpack(order + "HHL", tag_bytes)
            tag = group << 16 | element
            if tag == SEQUENCE_END and end is None:
                if length:
                    raise MalformedDataSetError(
                        f"sequence delimiter at offset {start} has a length"
                    )
                return count
            if tag != ITEM:
                raise MalformedDataSetError(
                    f"expected an item or a sequence delimiter at offset {start}, found {_tag(tag)}"
                )
            count += 1
            if length == UNDEFINED:
                if pixel:
                    raise MalformedDataSetError(
                        f"pixel data fragment at offset {start} has an undefined length"
                    )
                self.dataset(implicit, little, depth, None)
            elif pixel:
                self.src.skip(length, "a pixel data fragment")
            else:
                self.src.require(length, "an item")
                self.dataset(implicit, little, depth, self.src.pos + length)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None  # private or unknown: an undefined length then means a sequence


def _dataset_offset(fp: BinaryIO) -> int:
    """Where the data set starts in a file written by pynetdicom (preamble, DICM, file meta)."""
    head = fp.read(144)
    if (
        len(head) < 144
        or head[128:132] != b"DICM"
        or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00"
    ):
        raise MalformedDataSetError("the received file has no file meta group length")
    group_length: int  # "<L": an unsigned 32-bit integer
    (group_length,) = struct.unpack("<L", head[140:144])
    return 144 + group_length


def read_header(path: Path, transfer_syntax: UID, keywords: Iterable[str]) -> Header:
    """Walk the data set pynetdicom received into ``path``; return the kept elements.

    Raises
    ------
    MalformedDataSetError
        The bytes are not one well-formed data set in ``transfer_syntax``.
    DataSetMismatchError
        A kept element is absurdly long.
    """
    keep = frozenset(int(tag) for k in keywords if (tag := tag_for_keyword(k)) is not None)
    with open(path, "rb") as fp:
        offset = _dataset_offset(fp)
        source: _Source
        if transfer_syntax in DEFLATED:
            source = _InflatingSource(fp, offset, MAX_DECODED_BYTES)
        else:
            source = _FileSource(fp, offset, path.stat().st_size)
        walker = _Walker(source, transfer_syntax, keep)
        implicit = transfer_syntax == "1.2.840.10008.1.2"
        little = transfer_syntax != "1.2.840.10008.1.2.2"
        walker.dataset(implicit, little, 0, None, top=True)
    values = {keyword_for_tag(tag): value for tag, value in walker.kept.items()}
    return Header(values, walker.pixels)


# --- pixel data against their description ---------------------------------------------------

#: the Image Pixel module attributes read with each object
PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "PixelDataProviderURL",
)


def _dictionary_vr_keyword(keyword: str) -> str | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else _dictionary_vr(tag)


def _number(header: Header, keyword: str, default: int | None = None) -> int:
    """An integer attribute of the Image Pixel module, or a mismatch error saying what is wrong."""
    try:
        value = header.number(keyword)
    except ValueError:
        raise DataSetMismatchError(f"{keyword} is not a single number") from None
    if value is None:
        if default is None:
            raise DataSetMismatchError(f"{keyword} is missing, but the object has Pixel Data")
        return default
    return value


def check_pixels(header: Header, sop_class: str, transfer_syntax: UID) -> None:
    """Check the Pixel Data against the SOP class and the Image Pixel module, without decoding.

    Raises
    ------
    DataSetMismatchError
        Pixel Data missing from an image, or not matching their description.
    MalformedDataSetError
        The description declares more decoded bytes than :data:`MAX_DECODED_BYTES` for an
        encapsulated object (whose size on disk says nothing about its decoded size).
    """
    pixels = header.pixels
    if pixels is None:
        if is_image_storage(sop_class) and "PixelDataProviderURL" not in header:
            raise DataSetMismatchError(f"{UID(sop_class).name} object has no Pixel Data")
        return
    rows = _number(header, "Rows")
    columns = _number(header, "Columns")
    samples = _number(header, "SamplesPerPixel")
    bits = _number(header, "BitsAllocated")
    frames = _number(header, "NumberOfFrames", default=1)
    for keyword, value in [("Rows", rows), ("Columns", columns), ("NumberOfFrames", frames)]:
        if value < 1:
            raise DataSetMismatchError(f"{keyword} is {value}")
    if not 1 <= samples <= 4:
        raise DataSetMismatchError(f"SamplesPerPixel is {samples}")
    if not (bits == 1 or (bits % 8 == 0 and 8 <= bits <= 64)):
        raise DataSetMismatchError(f"BitsAllocated is {bits}, not 1 or a multiple of 8")
    need = (rows * columns * samples * frames * bits + 7) // 8
    if samples == 3 and header.text("PhotometricInterpretation") == "YBR_FULL_422":
        need = need // 3 * 2  # native 4:2:2: two chroma samples per pair of pixels (PS3.3 C.7.6.3)
    shape = f"{rows} x {columns} x {samples} samples x {bits} bits x {frames} frames"
    native = not transfer_syntax.is_encapsulated
    if native:
        if pixels.length is None:
            raise DataSetMismatchError(
                f"Pixel Data are encapsulated, but {transfer_syntax.name} is not a compressed syntax"
            )
        if pixels.length < need:
            raise DataSetMismatchError(
                f"Pixel Data hold {pixels.length} bytes, but {shape} need {need}"
            )
        return
    if pixels.length is not None and not transfer_syntax.startswith("1.2.840.10008.1.2.7."):
        raise DataSetMismatchError(
            f"Pixel Data are not encapsulated, as {transfer_syntax.name} requires"
        )
    if pixels.length is None and pixels.items < 2:
        raise DataSetMismatchError("encapsulated Pixel Data have no fragments")
    if need > MAX_DECODED_BYTES:
        raise MalformedDataSetError(
            f"compressed Pixel Data declare {shape} = {need} bytes decoded, more than the "
            f"node's limit of {MAX_DECODED_BYTES}: a decompression bomb, or an object this node "
            "does not analyse"
        )
