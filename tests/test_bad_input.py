"""Bad input: a corpus of malformed, hostile and unusual objects sent to the Storage SCP.

Every case goes over a real association (pynetdicom as the peer, sending the
bytes exactly as built, corruption included) to one in-process receiver, and
is followed on the same association by a valid object. For each case:

* the exact C-STORE status (PS3.4 B.2.3; README "DICOM conformance statement"):
  ``0x0000`` only when the object is in the spool and in the index, ``0xA900``
  when it is a data set that does not match its SOP class (UIDs, pixel data),
  ``0xC000`` when the bytes are not one well-formed data set; association-level
  cases (refused presentation contexts, aborts) get no status and are checked
  on the association;
* one log line of the node naming it, and the patient's name (a marker in every
  data set) in no log line at all;
* no file left in the spool, not even in its ``tmp/``, for a refused object, and
  nothing written outside the spool (UIDs carry ``/``, ``..``, ``\\``, NUL);
* the valid object after it stored: a refusal costs nothing else.

After the whole corpus the node still answers C-ECHO and stores, and the index
holds exactly the valid objects and the accepted cases, nothing more.
"""

from __future__ import annotations

import io
import logging
import random
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import test_scp
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import text
from sqlalchemy.orm import Session
from test_scp import Receiver

from dicom_node.complete.tables import Completion
from dicom_node.config import parse_config
from dicom_node.jobs.tables import Job
from dicom_node.receive import check
from dicom_node.route.router import Router

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: the in-process receiver of test_scp: a real association, a real index database
receiver = test_scp.receiver

SUCCESS = 0x0000
MISMATCH = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand

#: in every data set of the corpus; must never reach a log line
PATIENT_NAME = "Phimarker^Badinput"
PATIENT_ID = "PHI-ID-7731"
#: file names a path traversal would create, searched for outside the spool
ESCAPE = f"bad-input-escaped-{uuid.uuid4().hex[:8]}"

SCP_LOGGER = "dicom_node.receive.scp"

# --- building data sets and bytes ---------------------------------------------------------


def ct(**changes: object) -> Dataset:
    """A small valid CT image (8 x 8, 16 bits) with fresh UIDs; ``None`` removes an attribute."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "CT"
    ds.SeriesDescription = "bad input corpus"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(128))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    """The data set alone (no preamble, no file meta), as a peer puts it in P-DATA."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    return fp.getvalue()


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF


def element(tag: int, vr: str, value: bytes = b"", length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the true value length."""
    n = len(value) if length is None else length
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in LONG_VRS:
        return struct.pack("<HH2sHL", group, elem, vr.encode(), 0, n) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), n) + value


def implicit_element(tag: int, value: bytes = b"", length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, n) + value


def item(value: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(value) if length is None else length) + value


ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)

TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "PatientName": 0x00100010,
    "SeriesDescription": 0x0008103E,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelData": 0x7FE00010,
    "Private": 0x00091010,
    "ReferencedSeriesSequence": 0x00081115,
}


def layout(body: bytes) -> dict[int, tuple[int, int]]:
    """Top-level elements of an explicit VR little endian body without sequences: tag -> (start, end)."""
    out: dict[int, tuple[int, int]] = {}
    pos = 0
    while pos < len(body):
        group, elem, vr = struct.unpack_from("<HH2s", body, pos)
        if vr.decode() in LONG_VRS:
            (length,) = struct.unpack_from("<L", body, pos + 8)
            end = pos + 12 + length
        else:
            (length,) = struct.unpack_from("<H", body, pos + 6)
            end = pos + 8 + length
        out[group << 16 | elem] = (pos, end)
        pos = end
    return out


def start(body: bytes, keyword: str) -> int:
    return layout(body)[TAGS[keyword]][0]


def insert(body: bytes, raw: bytes) -> bytes:
    """Insert one raw element at its place in tag order."""
    tag = struct.unpack_from("<HH", raw)
    new = tag[0] << 16 | tag[1]
    for old, (begin, _) in layout(body).items():
        if old > new:
            return body[:begin] + raw + body[begin:]
    return body + raw


def replace(body: bytes, keyword: str, raw: bytes) -> bytes:
    begin, end = layout(body)[TAGS[keyword]]
    return body[:begin] + raw + body[end:]


def set_length(body: bytes, keyword: str, length: int) -> bytes:
    """Rewrite the length field of a short-VR element (a 2-byte length) or a long-VR one."""
    begin, _ = layout(body)[TAGS[keyword]]
    vr = body[begin + 4 : begin + 6].decode()
    if vr in LONG_VRS:
        return body[: begin + 8] + struct.pack("<L", length) + body[begin + 12 :]
    return body[: begin + 6] + struct.pack("<H", length) + body[begin + 8 :]


def before(keyword: str, raw: bytes) -> Callable[[bytes], bytes]:
    """Insert ``raw`` just before an element."""
    return lambda b: b[: start(b, keyword)] + raw + b[start(b, keyword) :]


def swallow(keyword: str, through: str) -> Callable[[bytes], bytes]:
    """Lengthen an element's value to end exactly where ``through`` ends: still well-formed."""

    def change(b: bytes) -> bytes:
        begin, end = layout(b)[TAGS[keyword]][0], layout(b)[TAGS[through]][1]
        return set_length(b, keyword, end - begin - 8)

    return change


def value_length(body: bytes, keyword: str) -> int:
    begin, end = layout(body)[TAGS[keyword]]
    return end - begin - 8  # short VRs: 8-byte header


def cut(keyword: str, into: int) -> Callable[[bytes], bytes]:
    """Truncate ``into`` bytes after the start of an element."""
    return lambda b: b[: start(b, keyword) + into]


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- what the peer sends ------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """What the peer sends: the data set's bytes and the request around them."""

    body: bytes
    sop_instance: str
    sop_class: str = CTImageStorage
    syntax: str = ExplicitVRLittleEndian


Build = Callable[[], Sent]


def send(ds: Dataset, body: bytes | None = None, **request: str) -> Sent:
    """``ds`` (or ``body``, made from it) under a request naming its SOP Class and Instance UIDs."""
    fields = {
        "sop_instance": str(ds.get("SOPInstanceUID") or generate_uid()),
        "sop_class": str(ds.get("SOPClassUID") or CTImageStorage),
    } | request
    return Sent(encode(ds) if body is None else body, **fields)


def dataset(make: Callable[..., Dataset] = ct, **attributes: object) -> Build:
    """A data set encoded correctly: what is wrong is in its attributes."""
    return lambda: send(make(**attributes))


def edited(change: Callable[[bytes], bytes], **attributes: object) -> Build:
    """A CT whose explicit VR little endian encoding is then changed byte-wise."""

    def build() -> Sent:
        ds = ct(**attributes)
        return send(ds, change(encode(ds)))

    return build


def encoded(
    syntax: str,
    change: Callable[[bytes], bytes] = lambda b: b,
    implicit: bool = False,
    little: bool = True,
) -> Build:
    """A CT encoded ``implicit``/``little`` (then changed), sent on a ``syntax`` context."""

    def build() -> Sent:
        ds = ct()
        return send(ds, change(encode(ds, implicit, little)), syntax=syntax)

    return build


def raw(body: bytes) -> Build:
    """Bytes that are no data set at all, under a CT request."""
    return lambda: send(ct(), body)


def uid(keyword: str, value: str, in_request: bool = False) -> Build:
    """A CT whose ``keyword`` UID is ``value``, byte for byte (pydicom would not write some)."""

    def build() -> Sent:
        ds = ct()
        data = value.encode("latin-1")
        data += b"\0" * (len(data) % 2)
        body = replace(encode(ds), keyword, element(TAGS[keyword], "UI", data))
        return send(ds, body, **({"sop_instance": value} if in_request else {}))

    return build


def encapsulated(
    fragments: list[bytes], rows: int = 8, columns: int = 8, frames: int = 1, delimit: bool = True
) -> Build:
    """An 8-bit CT with encapsulated Pixel Data on a JPEG Lossless context."""

    def build() -> Sent:
        ds = ct(Rows=rows, Columns=columns, BitsAllocated=8, BitsStored=8, HighBit=7)
        del ds.PixelData
        if frames != 1:
            ds.NumberOfFrames = frames
        pixels = element(TAGS["PixelData"], "OB", length=UNDEFINED) + item()  # empty offset table
        pixels += b"".join(item(f) for f in fragments) + (SEQUENCE_END if delimit else b"")
        return send(ds, encode(ds) + pixels, syntax=JPEGLosslessSV1)

    return build


def on_native_context(build: Build) -> Build:
    """The same bytes, sent on an Explicit VR Little Endian context."""

    def native() -> Sent:
        sent = build()
        return Sent(sent.body, sent.sop_instance)

    return native


def sequence(content: bytes) -> Callable[[bytes], bytes]:
    """Insert an undefined-length Referenced Series Sequence holding ``content``."""
    tag = TAGS["ReferencedSeriesSequence"]
    return lambda b: insert(b, element(tag, "SQ", length=UNDEFINED) + content)


def nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = element(TAGS["ReferencedSeriesSequence"], "SQ", item(inner))
    return inner


def deflate_bomb() -> Sent:
    """2 MiB of zero pixels deflate to about 2 KiB; the test lowers the limit to 1 MiB."""
    ds = ct(Rows=1024, Columns=1024, PixelData=bytes(2 << 20))
    return send(ds, deflate(encode(ds)), syntax=DeflatedExplicitVRLittleEndian)


PIXEL_ATTRIBUTES = [
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
]


def document(sop_class: str, modality: str) -> Dataset:
    """A non-image object: the CT's patient, study and series attributes, no Image Pixel module."""
    ds = ct(SOPClassUID=sop_class, Modality=modality)
    for keyword in PIXEL_ATTRIBUTES:
        delattr(ds, keyword)
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def basic_text_sr() -> Dataset:
    ds = document(BasicTextSRStorage, "SR")
    note = Dataset()
    note.RelationshipType, note.ValueType = "CONTAINS", "TEXT"
    note.ConceptNameCodeSequence = Sequence([code("121106", "DCM", "Comment")])
    note.TextValue = "forwarded by the PACS with the study"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([code("11528-7", "LN", "Radiology Report")])
    ds.ContentSequence = Sequence([note])
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    return ds


def encapsulated_pdf() -> Dataset:
    ds = document(EncapsulatedPDFStorage, "DOC")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
    return ds


def presentation_state() -> Dataset:
    ds = document(GrayscaleSoftcopyPresentationStateStorage, "PR")
    referenced = Dataset()
    referenced.SeriesInstanceUID = generate_uid()
    ds.ReferencedSeriesSequence = Sequence([referenced])
    ds.PresentationLUTShape = "IDENTITY"
    return ds


def key_objects() -> Dataset:
    ds = document(KeyObjectSelectionDocumentStorage, "KO")
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code("113000", "DCM", "Of Interest")])
    return ds


# --- the corpus -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input, the status the node must answer, and words its log line must contain."""

    category: str
    name: str
    status: int
    log: str
    build: Build


CORPUS: list[Case] = [
    # truncated transfers: pydicom reads every one of these without an error
    Case("truncated", "inside the first tag", CANNOT_UNDERSTAND, "truncated", edited(lambda b: b[:2])),
    Case("truncated", "inside an element header", CANNOT_UNDERSTAND, "truncated", edited(cut("SOPClassUID", 5))),
    Case("truncated", "inside the SOP Class UID", CANNOT_UNDERSTAND, "truncated", edited(cut("SOPClassUID", 18))),
    Case("truncated", "inside the Series UID (still a valid UID)", CANNOT_UNDERSTAND, "truncated", edited(cut("SeriesInstanceUID", 30))),
    Case("truncated", "at the element boundary before Pixel Data", MISMATCH, "has no Pixel Data", edited(cut("PixelData", 0))),
    Case("truncated", "inside the Pixel Data header", CANNOT_UNDERSTAND, "truncated", edited(cut("PixelData", 6))),
    Case("truncated", "in the middle of Pixel Data", CANNOT_UNDERSTAND, "truncated", edited(cut("PixelData", 12 + 64))),
    Case("truncated", "last byte missing", CANNOT_UNDERSTAND, "truncated", edited(lambda b: b[:-1])),
    Case("truncated", "implicit VR, in Pixel Data", CANNOT_UNDERSTAND, "truncated", encoded(ImplicitVRLittleEndian, lambda b: b[:-50], implicit=True)),
    Case("truncated", "deflated stream cut short", CANNOT_UNDERSTAND, "truncated", encoded(DeflatedExplicitVRLittleEndian, lambda b: deflate(b)[:60])),
    # garbage
    Case("garbage", "512 random bytes", CANNOT_UNDERSTAND, "not a DICOM VR", raw(noise(512, 1))),
    Case("garbage", "all 0xFF", CANNOT_UNDERSTAND, "not a DICOM VR", raw(b"\xff" * 256)),
    Case("garbage", "all zeros", CANNOT_UNDERSTAND, "not a DICOM VR", raw(bytes(256))),
    Case("garbage", "an HTTP request", CANNOT_UNDERSTAND, "not a DICOM VR", raw(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")),
    Case("garbage", "a PNG file", CANNOT_UNDERSTAND, "not a DICOM VR", raw(b"\x89PNG\r\n\x1a\n" + noise(200, 2))),
    Case("garbage", "a DICOM file (preamble, DICM) as the data set", CANNOT_UNDERSTAND, "not a DICOM VR", edited(lambda b: bytes(128) + b"DICM" + b)),
    Case("garbage", "random bytes after a valid data set", CANNOT_UNDERSTAND, "not a DICOM VR", edited(lambda b: b + noise(37, 3))),
    Case("garbage", "random bytes over the middle of the header", CANNOT_UNDERSTAND, "the length is wrong", edited(lambda b: b[:40] + noise(20, 4) + b[60:])),
    # bytes not in the negotiated transfer syntax (and valid ones that are)
    Case("transfer syntax", "implicit VR on an explicit VR context", CANNOT_UNDERSTAND, "not a DICOM VR", encoded(ExplicitVRLittleEndian, implicit=True)),
    Case("transfer syntax", "explicit VR on an implicit VR context", CANNOT_UNDERSTAND, "the length is wrong", encoded(ImplicitVRLittleEndian)),
    Case("transfer syntax", "big endian on a little endian context", CANNOT_UNDERSTAND, "the length is wrong", encoded(ExplicitVRLittleEndian, little=False)),
    Case("transfer syntax", "plain bytes on a deflated context", CANNOT_UNDERSTAND, "not valid deflate data", encoded(DeflatedExplicitVRLittleEndian)),
    Case("transfer syntax", "deflate bomb", CANNOT_UNDERSTAND, "decompression bomb", deflate_bomb),
    Case("transfer syntax", "Explicit VR Big Endian: stored", SUCCESS, "stored", encoded(ExplicitVRBigEndian, little=False)),
    Case("transfer syntax", "Deflated Explicit VR Little Endian: stored", SUCCESS, "stored", encoded(DeflatedExplicitVRLittleEndian, deflate)),
    # wrong element lengths
    Case("wrong length", "SOP Instance UID past the end", CANNOT_UNDERSTAND, "the length is wrong", edited(lambda b: set_length(b, "SOPInstanceUID", 0xFFF0))),
    Case("wrong length", "Patient Name past the end", CANNOT_UNDERSTAND, "the length is wrong", edited(lambda b: set_length(b, "PatientName", 0xFFFF))),
    Case("wrong length", "Series Description 2 bytes too long", CANNOT_UNDERSTAND, "not a DICOM VR", edited(lambda b: set_length(b, "SeriesDescription", value_length(b, "SeriesDescription") + 2))),
    Case("wrong length", "SOP Instance UID 2 bytes too short", CANNOT_UNDERSTAND, "not a DICOM VR", edited(lambda b: set_length(b, "SOPInstanceUID", value_length(b, "SOPInstanceUID") - 2))),
    Case("wrong length", "SOP Instance UID swallowing the elements up to Patient Name", MISMATCH, "SOP Instance UID is not a valid UID", edited(swallow("SOPInstanceUID", "PatientName"))),
    Case("wrong length", "Series Description swallowing Patient Name", MISMATCH, "SeriesDescription holds control characters", edited(swallow("SeriesDescription", "PatientName"))),
    Case("wrong length", "Pixel Data of 1 MiB, 128 bytes sent", CANNOT_UNDERSTAND, "the length is wrong", edited(lambda b: set_length(b, "PixelData", 1 << 20))),
    Case("wrong length", "Rows with two values", MISMATCH, "Rows is not a single number", edited(lambda b: replace(b, "Rows", element(TAGS["Rows"], "US", struct.pack("<HH", 8, 8))))),
    Case("wrong length", "Columns with a 3-byte value", MISMATCH, "Columns is not a single number", edited(lambda b: replace(b, "Columns", element(TAGS["Columns"], "US", b"\x08\x00\x00")))),
    Case("wrong length", "implicit VR Pixel Data past the end", CANNOT_UNDERSTAND, "the length is wrong", encoded(ImplicitVRLittleEndian, lambda b: b[:-136] + implicit_element(TAGS["PixelData"], bytes(128), 4096), implicit=True)),
    Case("wrong length", "odd value length (unambiguous): stored", SUCCESS, "stored", edited(lambda b: replace(b, "SeriesDescription", element(TAGS["SeriesDescription"], "LO", b"ODD")))),
    # undefined length where it does not belong, or never closed
    Case("undefined length", "UI element (implicit VR)", CANNOT_UNDERSTAND, "undefined length", encoded(ImplicitVRLittleEndian, lambda b: implicit_element(0x00080014, length=UNDEFINED) + b, implicit=True)),
    Case("undefined length", "private OB element", CANNOT_UNDERSTAND, "undefined length", edited(lambda b: insert(b, element(TAGS["Private"], "OB", length=UNDEFINED) + bytes(16) + SEQUENCE_END))),
    Case("undefined length", "sequence without its delimiter", CANNOT_UNDERSTAND, "truncated", edited(lambda b: b + element(0x7FE10010, "SQ", length=UNDEFINED) + item())),
    Case("undefined length", "item without its delimiter", CANNOT_UNDERSTAND, "stray", edited(sequence(item(length=UNDEFINED) + element(0x0020000E, "UI", b"1.2.3\0") + SEQUENCE_END))),
    Case("undefined length", "stray sequence delimiter", CANNOT_UNDERSTAND, "stray", edited(before("StudyInstanceUID", SEQUENCE_END))),
    Case("undefined length", "stray item delimiter", CANNOT_UNDERSTAND, "stray", edited(before("StudyInstanceUID", ITEM_END))),
    Case("undefined length", "an element where an item belongs", CANNOT_UNDERSTAND, "expected an item", edited(sequence(element(0x0020000E, "UI", b"1.2.3\0") + SEQUENCE_END))),
    Case("undefined length", "sequences nested 200 deep", CANNOT_UNDERSTAND, "nested deeper", edited(lambda b: insert(b, nested(200)))),
    Case("undefined length", "encapsulated Pixel Data never closed", CANNOT_UNDERSTAND, "truncated", encapsulated([b"\xff\xd8\xff\xd9"], delimit=False)),
    Case("undefined length", "encapsulated Pixel Data in a native syntax", MISMATCH, "encapsulated, but", on_native_context(encapsulated([bytes(64)]))),
    # Pixel Data against the SOP class and the Image Pixel module
    Case("pixel data", "CT without Pixel Data", MISMATCH, "has no Pixel Data", dataset(PixelData=None)),
    Case("pixel data", "CT with empty Pixel Data", MISMATCH, "hold 0 bytes", dataset(PixelData=b"")),
    Case("pixel data", "half the pixel bytes", MISMATCH, "hold 64 bytes, but 8 x 8", dataset(PixelData=bytes(64))),
    Case("pixel data", "two bytes short", MISMATCH, "hold 126 bytes", dataset(PixelData=bytes(126))),
    Case("pixel data", "Rows 0", MISMATCH, "Rows is 0", dataset(Rows=0)),
    Case("pixel data", "Columns missing", MISMATCH, "Columns is missing", dataset(Columns=None)),
    Case("pixel data", "Bits Allocated 12", MISMATCH, "BitsAllocated is 12", dataset(BitsAllocated=12)),
    Case("pixel data", "Samples per Pixel 0", MISMATCH, "SamplesPerPixel is 0", dataset(SamplesPerPixel=0)),
    Case("pixel data", "Number of Frames 'abc'", MISMATCH, "NumberOfFrames is not a single number", edited(lambda b: insert(b, element(TAGS["NumberOfFrames"], "IS", b"abc ")))),
    Case("pixel data", "Number of Frames 0", MISMATCH, "NumberOfFrames is 0", dataset(NumberOfFrames=0)),
    Case("pixel data", "4 frames declared, 1 sent", MISMATCH, "need 512", dataset(NumberOfFrames=4)),
    Case("pixel data", "bomb: 65535 x 65535 x 1000 frames in 128 bytes", MISMATCH, "need 8589672450000", dataset(Rows=65535, Columns=65535, NumberOfFrames=1000)),
    Case("pixel data", "bomb: compressed 65535 x 65535 x 1000 frames in 4 bytes", CANNOT_UNDERSTAND, "decompression bomb", encapsulated([b"\xff\xd8\xff\xd9"], 65535, 65535, 1000)),
    Case("pixel data", "encapsulated, no fragment", MISMATCH, "no fragments", encapsulated([])),
    Case("pixel data", "native Pixel Data on a JPEG Lossless context", MISMATCH, "not encapsulated", lambda: send(ct(), syntax=JPEGLosslessSV1)),
    Case("pixel data", "excess pixel bytes: stored (decoders ignore them)", SUCCESS, "stored", dataset(PixelData=bytes(256))),
    Case("pixel data", "garbage in a JPEG fragment: stored (not decoded on receipt)", SUCCESS, "stored", encapsulated([noise(64, 5)])),
    # UIDs: missing, malformed, naming paths
    Case("UIDs", "SOP Instance UID missing from the data set", MISMATCH, "SOP Instance UID is missing", dataset(SOPInstanceUID=None)),
    Case("UIDs", "Study Instance UID missing", MISMATCH, "Study Instance UID is missing", dataset(StudyInstanceUID=None)),
    Case("UIDs", "Series Instance UID empty", MISMATCH, "Series Instance UID is missing", dataset(SeriesInstanceUID="")),
    Case("UIDs", "SOP Class UID missing", MISMATCH, "SOP Class UID is missing", dataset(SOPClassUID=None)),
    Case("UIDs", "letters", MISMATCH, "Study Instance UID is not a valid UID ('1.2.' then 'a' and 2 more characters)", uid("StudyInstanceUID", "1.2.abc")),
    Case("UIDs", "a leading zero", MISMATCH, "is not a valid UID", uid("SeriesInstanceUID", "1.02.3")),
    Case("UIDs", "a trailing dot", MISMATCH, "is not a valid UID", uid("StudyInstanceUID", "1.2.3.")),
    Case("UIDs", "an empty component", MISMATCH, "is not a valid UID", uid("SeriesInstanceUID", "1..2")),
    Case("UIDs", "65 characters", MISMATCH, "is not a valid UID", uid("StudyInstanceUID", "1." + "2" * 63)),
    Case("UIDs", "SOP Instance UID of 65 characters", MISMATCH, "is not a valid UID", uid("SOPInstanceUID", "1." + "3" * 63)),
    Case("UIDs", "a slash", MISMATCH, "is not a valid UID", uid("SeriesInstanceUID", "1.2/3")),
    Case("UIDs", "../ out of the spool", MISMATCH, "is not a valid UID", uid("StudyInstanceUID", f"../../../../{ESCAPE}")),
    Case("UIDs", "an absolute path", MISMATCH, "is not a valid UID", uid("SeriesInstanceUID", f"/tmp/{ESCAPE}")),
    Case("UIDs", "../ in the request and the data set", MISMATCH, "is not a valid UID", uid("SOPInstanceUID", f"../../{ESCAPE}", in_request=True)),
    Case("UIDs", "a backslash (two values)", MISMATCH, "is not a valid UID", uid("StudyInstanceUID", "1.2\\3")),
    Case("UIDs", "a NUL inside", MISMATCH, "is not a valid UID", uid("SeriesInstanceUID", "1.2\x003.4")),
    Case("UIDs", "a space inside", MISMATCH, "is not a valid UID", uid("StudyInstanceUID", "1.2 3.4")),
    Case("UIDs", "a newline forging a log line", MISMATCH, "is not a valid UID", uid("SOPInstanceUID", "1.2.3\nINFO forged", in_request=True)),
    Case("UIDs", "padded with a space instead of NUL: stored", SUCCESS, "stored", uid("StudyInstanceUID", "1.2.840.99.1 ")),
    Case("UIDs", "SOP Instance UID differs from the request", MISMATCH, "differs from the request", lambda: send(ct(), sop_instance=generate_uid())),
    Case("UIDs", "MR data set on a CT context", MISMATCH, "SOP Class UID 1.2.840.10008.5.1.4.1.1.4 differs", lambda: send(ct(SOPClassUID=MRImageStorage), sop_class=CTImageStorage)),
    # non-image objects a PACS forwards with a study: stored and indexed like images
    Case("non-image", "Basic Text SR", SUCCESS, "stored", dataset(basic_text_sr)),
    Case("non-image", "Encapsulated PDF", SUCCESS, "stored", dataset(encapsulated_pdf)),
    Case("non-image", "Grayscale Softcopy Presentation State", SUCCESS, "stored", dataset(presentation_state)),
    Case("non-image", "Key Object Selection", SUCCESS, "stored", dataset(key_objects)),
    # empty
    Case("empty", "empty data set (0 bytes)", MISMATCH, "SOP Class UID is missing", raw(b"")),
    Case("empty", "one empty element", MISMATCH, "SOP Class UID is missing", raw(element(0x00100010, "PN"))),
]  # fmt: skip


# --- the peer -----------------------------------------------------------------------------

LOOPBACK = "127.0.0.1"
VALID_CONTEXT = (str(CTImageStorage), str(ExplicitVRLittleEndian))


class Peer:
    """pynetdicom as the sending modality, and what the node must hold after each case."""

    def __init__(self, receiver: Receiver, scratch: Path) -> None:
        self.receiver = receiver
        self.scratch = scratch
        #: SOP Instance UID -> data set bytes sent, for everything answered Success
        self.stored: dict[str, bytes] = {}

    def associate(self, *contexts: tuple[str, str]) -> Association:
        """An association proposing ``contexts`` and the valid object's context."""
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for abstract, syntax in dict.fromkeys(
            [*contexts, VALID_CONTEXT, (Verification, ImplicitVRLittleEndian)]
        ):
            ae.add_requested_context(abstract, syntax)
        assoc = ae.associate(LOOPBACK, self.receiver.port, ae_title="DICOM_NODE")
        assert assoc.is_established, "the node refused an association from an allowed peer"
        return assoc

    def store(self, assoc: Association, sent: Sent) -> int | None:
        """C-STORE the bytes of ``sent`` exactly as built, corruption included."""
        context = context_for(assoc, sent.sop_class, sent.syntax)
        if sent.body:
            status = request(assoc, store_request(sent), context)
        else:
            status = self.store_empty(assoc, sent)
        if status == SUCCESS:
            self.stored[sent.sop_instance.rstrip("\0 ")] = sent.body
        return status

    def store_empty(self, assoc: Association, sent: Sent) -> int | None:
        """A data set of zero bytes: pynetdicom sends one only from a file (an empty last PDV)."""
        path = self.scratch / f"{uuid.uuid4().hex}.dcm"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sent.sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sent.sop_instance)
        meta.TransferSyntaxUID = UID(sent.syntax)
        with path.open("wb") as fp:
            fp.write(bytes(128) + b"DICM")
            write_file_meta_info(fp, meta, enforce_standard=True)
        try:
            status = assoc.send_c_store(path)
        finally:
            path.unlink()
        return int(status.Status) if "Status" in status else None

    def store_valid(self, assoc: Association) -> list[str]:
        """Store a valid CT: a refusal before it on the association must cost nothing."""
        status = self.store(assoc, send(ct()))
        return [] if status == SUCCESS else [f"the valid object after it got {status!r}"]

    def index(self) -> dict[str, str]:
        with self.receiver.engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid, path FROM instances")).all()
        return dict(rows)

    def holds(self) -> list[str]:
        """What is wrong with the spool and the index, compared with what was answered Success."""
        problems = []
        leftovers = sorted(p.name for p in self.receiver.spool.tmp.iterdir())
        if leftovers:
            problems.append(f"files left in the spool's tmp/: {leftovers}")
        files = {p.name.removesuffix(".dcm") for p in self.receiver.files()}
        if files != set(self.stored):
            problems.append(
                f"spool files differ: extra {files - set(self.stored)}, missing {set(self.stored) - files}"
            )
        index = self.index()
        if set(index) != set(self.stored):
            problems.append(
                f"index differs: extra {set(index) - set(self.stored)}, missing {set(self.stored) - set(index)}"
            )
        with self.receiver.engine.connect() as conn:
            texts = conn.execute(
                text("SELECT modality, body_part_examined, series_description FROM series")
            )
            if any(PATIENT_NAME in str(row) for row in texts):
                problems.append("the patient's name is in the index")
        for sop, relative in index.items():
            if (
                sop in self.stored
                and data_set_of(self.receiver.spool.root / relative) != self.stored[sop]
            ):
                problems.append(f"{sop} is not stored as sent")
        return problems


def data_set_of(path: Path) -> bytes:
    """The data set bytes of a stored file (after preamble and file meta)."""
    data = path.read_bytes()
    (group_length,) = struct.unpack_from("<L", data, 140)
    return data[144 + group_length :]


def context_for(assoc: Association, abstract: str, syntax: str = ExplicitVRLittleEndian) -> int:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == abstract and cx.transfer_syntax[0] == syntax:
            return int(cx.context_id)  # type: ignore[arg-type]
    raise AssertionError(f"no accepted context for {abstract} with {syntax}")


def request(assoc: Association, req: C_STORE, context_id: int) -> int | None:
    """Send a hand-built C-STORE request and wait for its response (as send_c_store does)."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return None if rsp is None else int(rsp.Status)  # type: ignore[union-attr]


def store_request(sent: Sent, with_data_set: bool = True) -> C_STORE:
    req = C_STORE()
    req.MessageID = 1
    req.Priority = 2
    req.AffectedSOPClassUID = sent.sop_class
    req.AffectedSOPInstanceUID = sent.sop_instance
    if with_data_set:
        req.DataSet = io.BytesIO(sent.body)
    return req


def send_partially(assoc: Association, sent: Sent, fragments: int) -> None:
    """Send the command and the first data set fragments of a C-STORE, never the last one."""
    message = C_STORE_RQ()
    message.primitive_to_message(store_request(sent))
    pdus = message.encode_msg(context_for(assoc, CTImageStorage), 256)
    for _, pdata in zip(range(fragments), pdus, strict=False):
        assoc.dul.send_pdu(pdata)


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


# --- cases that are not one C-STORE of some bytes -----------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What an association-level case observed: a status if any, and what went wrong."""

    status: int | None
    problems: list[str] = field(default_factory=list)
    log: str = ""


def refused_context(
    abstract: str, syntax: str, result: int, reason: str
) -> Callable[[Peer], Outcome]:
    """Propose a context the node must refuse; the rest of the association must work."""

    def run(peer: Peer) -> Outcome:
        assoc = peer.associate((abstract, syntax))
        refused = [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts]
        problems = (
            [] if (abstract, result) in refused else [f"context not refused as {result}: {refused}"]
        )
        problems += peer.store_valid(assoc)
        assoc.release()
        return Outcome(
            None, problems, f"refused 1 presentation context(s): {abstract} with {syntax}: {reason}"
        )

    return run


def no_data_set(peer: Peer) -> Outcome:
    """A C-STORE request whose command says no data set follows."""
    assoc = peer.associate()
    status = request(
        assoc, store_request(send(ct()), with_data_set=False), context_for(assoc, CTImageStorage)
    )
    problems = peer.store_valid(assoc)
    assoc.release()
    return Outcome(status, problems, "the request has no data set")


def request_class_not_context(peer: Peer) -> Outcome:
    """The request (and data set) say MR Image Storage, on the CT Image Storage context."""
    assoc = peer.associate()
    sent = send(ct(SOPClassUID=MRImageStorage))
    status = request(assoc, store_request(sent), context_for(assoc, CTImageStorage))
    problems = peer.store_valid(assoc)
    assoc.release()
    return Outcome(status, problems, "or the presentation context (1.2.840.10008.5.1.4.1.1.2)")


def cut_off(how: str) -> Callable[[Peer], Outcome]:
    """Send part of a data set, then abort or drop the connection: its partial file must go."""

    def run(peer: Peer) -> Outcome:
        tmp = peer.receiver.spool.tmp
        assoc = peer.associate()
        sent = send(ct(Rows=64, Columns=64, PixelData=bytes(8192)))
        send_partially(assoc, sent, fragments=6)
        problems = (
            [] if wait_for(lambda: any(tmp.iterdir()), 5) else ["the node never started receiving"]
        )
        if how == "abort":
            assoc.abort()
        else:  # the peer vanishes: no A-ABORT, the TCP connection just closes
            sock = assoc.dul.socket.socket  # type: ignore[union-attr]
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            assoc.kill()
        if not wait_for(lambda: not any(tmp.iterdir()), 5):
            problems.append("the partial data set stayed in tmp/")
        fresh = peer.associate()
        problems += peer.store_valid(fresh)
        fresh.release()
        return Outcome(None, problems, "partial data set discarded")

    return run


def garbage_command(peer: Peer) -> Outcome:
    """A P-DATA whose command set is random bytes: the node aborts the association."""
    assoc = peer.associate()
    pdata = P_DATA()
    pdata.presentation_data_value_list = [
        [context_for(assoc, CTImageStorage), b"\x03" + noise(64, 6)]
    ]
    assoc.dul.send_pdu(pdata)
    problems = [] if wait_for(lambda: assoc.is_aborted, 5) else ["the node did not abort"]
    assoc.kill()
    fresh = peer.associate()
    problems += peer.store_valid(fresh)
    fresh.release()
    # pynetdicom drops the association itself (its DUL dies), without an event the node sees
    return Outcome(None, problems, "State Machine received an exception")


def not_dicom(peer: Peer) -> Outcome:
    """An HTTP request on the DICOM port: the node closes the connection and goes on."""
    problems = []
    with socket.create_connection((LOOPBACK, peer.receiver.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
        reply = b""
        try:
            while chunk := sock.recv(4096):
                reply += chunk
        except TimeoutError:
            problems.append("the node kept the connection open")
    if reply and reply[0] != 0x07:  # nothing, or an A-ABORT
        problems.append(f"the node answered {reply[:16]!r}")
    fresh = peer.associate()
    problems += peer.store_valid(fresh)
    fresh.release()
    return Outcome(None, problems, "Unknown PDU type received '0x47'")


@dataclass(frozen=True)
class Special:
    category: str
    name: str
    status: int | None
    run: Callable[[Peer], Outcome]


SPECIAL: list[Special] = [
    Special("negotiation", "unknown transfer syntax proposed", None, refused_context(CTImageStorage, "1.2.840.99999.1.2.3", 0x04, "Transfer Syntax(es) Not Supported")),
    Special("negotiation", "unknown SOP class proposed", None, refused_context("1.2.840.99999.4.5.6", ExplicitVRLittleEndian, 0x03, "Abstract Syntax Not Supported")),
    Special("empty", "C-STORE without a data set", CANNOT_UNDERSTAND, no_data_set),
    Special("UIDs", "request SOP class differs from the presentation context", MISMATCH, request_class_not_context),
    Special("connection", "A-ABORT in the middle of a data set", None, cut_off("abort")),
    Special("connection", "connection dropped in the middle of a data set", None, cut_off("drop")),
    Special("connection", "random bytes as a command set", None, garbage_command),
    Special("connection", "an HTTP request on the DICOM port", None, not_dicom),
]  # fmt: skip


# --- the tests ----------------------------------------------------------------------------


def outside(root: Path, receiver: Receiver, scratch: Path) -> set[Path]:
    """Every path under ``root`` that is not the spool, the index database or the peer's scratch."""
    spool = receiver.spool.root
    return {
        p
        for p in root.rglob("*")
        if not p.is_relative_to(spool)
        and not p.is_relative_to(scratch)
        and not p.name.startswith("index.sqlite3")
    }


def escaped(root: Path) -> list[Path]:
    """Anything named by the corpus' path traversal UIDs, under ``root`` or in /tmp."""
    return [*root.rglob(f"*{ESCAPE}*"), *Path("/tmp").glob(f"*{ESCAPE}*")]


def log_problems(
    records: list[logging.LogRecord], status: int | None, words: str, uid: str
) -> list[str]:
    """The node must say what it did with the object in one line; no line may name the patient."""
    problems = []
    for record in records:
        message = record.getMessage() + (record.exc_text or "")
        for phi in (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID):
            if phi in message:
                problems.append(f"patient data in a log line: {message!r}")
        if record.name.startswith("dicom_node") and "\n" in record.getMessage():
            problems.append(f"a log line spans lines: {record.getMessage()!r}")
    node = [r.getMessage() for r in records if r.name == SCP_LOGGER]
    if status == SUCCESS:
        if not any(m.startswith(f"stored {uid} ") for m in node):
            problems.append(f"no 'stored {uid}' log line")
    elif status is not None:
        refusals = [m for m in node if m.startswith("refused ")]
        if len(refusals) != 1 or words not in refusals[0]:
            problems.append(f"expected one 'refused ... {words}' log line, got {refusals}")
    elif not any(words in r.getMessage() for r in records if r.levelno >= logging.INFO):
        # association-level: the node's line, or pynetdicom's where it ends the association itself
        problems.append(f"no log line saying {words!r}")
    return problems


def test_corpus_is_large_and_varied() -> None:
    cases = [(c.category, c.name) for c in CORPUS] + [(s.category, s.name) for s in SPECIAL]
    assert len(set(cases)) == len(cases) >= 50
    assert {category for category, _ in cases} >= {
        "truncated", "garbage", "wrong length", "undefined length", "pixel data", "UIDs",
        "non-image", "transfer syntax", "negotiation", "empty", "connection",
    }  # fmt: skip


def test_bad_input_corpus(
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every case answered as documented, logged without patient data, nothing else lost."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # empty data sets, see Peer
    monkeypatch.setattr(check, "MAX_DECODED_BYTES", 1 << 20)  # a deflate bomb of 2 KiB will do
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="dicom_node")
    caplog.set_level(logging.DEBUG, logger="pydicom")
    scratch = tmp_path / "peer"
    scratch.mkdir()
    peer = Peer(receiver, scratch)
    baseline = outside(tmp_path, receiver, scratch)
    failures: list[str] = []
    seen: dict[str, dict[str, int]] = {}

    def verify(
        category: str,
        name: str,
        status: int | None,
        expected: int | None,
        problems: list[str],
        words: str,
        uid: str,
        mark: int,
    ) -> None:
        if status != expected:
            problems.insert(0, f"answered {status!r}, expected {expected!r}")
        problems += log_problems(caplog.records[mark:], status, words, uid)
        problems += peer.holds()
        if outside(tmp_path, receiver, scratch) != baseline or escaped(tmp_path.parent):
            problems.append(
                f"files outside the spool: {outside(tmp_path, receiver, scratch) - baseline}, {escaped(tmp_path.parent)}"
            )
        failures.extend(f"{category} / {name}: {p}" for p in problems)
        shown = "none" if status is None else f"0x{status:04X}"
        seen.setdefault(category, {}).setdefault(shown, 0)
        seen[category][shown] += 1

    for case in CORPUS:
        mark = len(caplog.records)
        sent = case.build()
        assoc = peer.associate((sent.sop_class, sent.syntax))
        status = peer.store(assoc, sent)
        problems = peer.store_valid(assoc)
        assoc.release()
        verify(
            case.category,
            case.name,
            status,
            case.status,
            problems,
            case.log,
            sent.sop_instance,
            mark,
        )

    for special in SPECIAL:
        mark = len(caplog.records)
        outcome = special.run(peer)
        # association-level lines may come a moment after the peer saw the end
        wait_for(lambda words=outcome.log: words in caplog.text, 2)
        verify(
            special.category,
            special.name,
            outcome.status,
            special.status,
            outcome.problems,
            outcome.log,
            "",
            mark,
        )

    # after all of it the node still answers, and still stores
    assoc = peer.associate()
    echo = assoc.send_c_echo()
    after = peer.store_valid(assoc)
    assoc.release()
    assert echo.Status == SUCCESS and not after, "the node stopped serving"
    print("\nstatuses per category:", *(f"{c}: {s}" for c, s in seen.items()), sep="\n  ")
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures)
    # nothing else lost: the valid object after every case, the final one, the accepted cases
    accepted = sum(case.status == SUCCESS for case in CORPUS)
    assert len(peer.index()) == len(CORPUS) + len(SPECIAL) + 1 + accepted


def test_non_image_objects_are_routed_without_error(
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SR, PDF, presentation state and KOS series of a study: stored, and routing passes them by.

    A route for CT images fires for the CT series only; the others are not
    routed at all, not even by a fallback rule (no pipeline reads them), and
    routing them raises nothing.
    """
    caplog.set_level(logging.INFO, logger="dicom_node")
    image = ct()
    objects = [image] + [
        make() for make in (basic_text_sr, encapsulated_pdf, presentation_state, key_objects)
    ]
    for ds in objects[1:]:
        ds.StudyInstanceUID = image.StudyInstanceUID
    for ds in objects:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        assert receiver.store(ds) == SUCCESS
    config = parse_config(
        """
pipelines: {generic: {card: card.yaml}}
routes:
  - {name: ct, match: {Modality: CT}, pipeline: generic, shadow: true}
  - {name: rest, fallback: true, pipeline: generic, shadow: true}
""",
        tmp_path,
    )
    series = [str(ds.SeriesInstanceUID) for ds in objects]
    completion = Completion(
        study_instance_uid=image.StudyInstanceUID, generation=1, through_instance_id=0,
        series_uids=series, reason="quiet", completed_at=None,
    )  # fmt: skip
    with Session(receiver.engine) as session, session.begin():
        Router(receiver.spool)(session, completion, config)
    with Session(receiver.engine) as session:
        jobs = [(job.route, job.series_uids) for job in session.query(Job)]
    # the fallback fires for the CT too (the CT rule is a shadow rule), never for the others
    assert jobs == [("ct", [series[0]]), ("rest", [series[0]])]
    unrouted = [r.getMessage() for r in caplog.records if "non-image objects" in r.getMessage()]
    assert len(unrouted) == 4, unrouted
    assert any("Encapsulated PDF Storage" in m for m in unrouted)
