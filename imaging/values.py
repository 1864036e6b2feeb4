"""DICOM attribute values as routing sees them: lists of stripped strings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue

Attributes = Dataset | Mapping[str, Any]

# Text VRs whose single value may legitimately contain a backslash; pydicom
# does not split them either.
_UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})


def _text(value: Any) -> str:
    """One DICOM value as stripped text (PersonName, DSfloat, IS, bytes, numbers)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    # Strip NUL as well as spaces: some writers pad UIDs and bytes values with it.
    return str(value).strip(" \x00\t\r\n")


def attribute_values(attrs: Attributes, keyword: str) -> list[str] | None:
    """The values of ``keyword`` as a list of stripped strings, or ``None`` if absent.

    A present attribute with no value gives ``[]``. A plain mapping may hold
    multi-valued attributes either as lists or as backslash-joined strings (as
    a database index stores them); the latter are split, except for the VRs
    whose single value may contain a backslash.
    """
    if keyword not in attrs:
        return None
    raw = attrs.get(keyword)
    if raw is None:
        return []
    if isinstance(raw, str) and not isinstance(attrs, Dataset):
        tag = tag_for_keyword(keyword)
        if tag is None or dictionary_VR(tag) not in _UNSPLIT_VRS:
            raw = raw.split("\\")
    # Only true value lists: PersonName, for one, is iterable but a single value.
    if not isinstance(raw, MultiValue | list | tuple):
        raw = [raw]
    values = [_text(v) for v in raw]
    return values if any(values) else []
