"""Reading a DICOM file, with one error that says why a file is not readable DICOM."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError


class UnreadableDicom(ValueError):
    """The file is not DICOM, or pydicom cannot parse it; the message says which (no PHI)."""


def read_dataset(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """``pydicom.dcmread`` of ``path``; every way it can fail is one :class:`UnreadableDicom`.

    pydicom raises many types for truncated or corrupt files; callers that
    skip such a file with a logged reason need one, with the same words
    wherever it happens.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise UnreadableDicom("not a readable DICOM file: no DICOM preamble/header") from None
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, vanished: all unreadable
        raise UnreadableDicom(f"not a readable DICOM file: {type(exc).__name__}") from None
