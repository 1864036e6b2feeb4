"""Run dicom3tools' ``dciodvfy`` on a DICOM object and return what it calls errors.

``dciodvfy`` checks an instance against the IOD of its SOP class (modules,
attribute types and conditions, enumerated values, VR and VM). Every object
the node sends to a PACS must have zero errors. Warnings (e.g. a zero
Patient's Weight copied from the source, or an attribute newer than the
installed dicom3tools release) are not errors and are returned separately
by :func:`dciodvfy_report` so tests can print them.

A missing ``dciodvfy`` raises :class:`DciodvfyMissingError`, which makes the
calling test fail with an install hint: validation is never skipped silently.

Usage from any test::

    from dicom_validation import dciodvfy_errors

    assert dciodvfy_errors(ds_or_path) == []
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

__all__ = [
    "DCIODVFY",
    "DciodvfyMissingError",
    "DciodvfyReport",
    "dciodvfy_errors",
    "dciodvfy_report",
]

#: The validator; override with the ``DCIODVFY`` environment variable.
DCIODVFY = os.environ.get("DCIODVFY", "/usr/bin/dciodvfy")
_INSTALL_HINT = "run scripts/install-system-deps (apt package dicom3tools provides dciodvfy)"


class DciodvfyMissingError(RuntimeError):
    """dciodvfy is not installed, so DICOM conformance cannot be checked."""


@dataclass(frozen=True)
class DciodvfyReport:
    """What dciodvfy said about one object.

    Attributes
    ----------
    errors : list of str
        Lines starting with ``"Error - "``: violations of the IOD.
    warnings : list of str
        Lines starting with ``"Warning - "``: worth reading, not failures.
    output : str
        The complete output (stdout and stderr), for failure messages.
    """

    errors: list[str]
    warnings: list[str]
    output: str


def _executable() -> str:
    found = DCIODVFY if os.path.isfile(DCIODVFY) else shutil.which("dciodvfy")
    if not found:
        raise DciodvfyMissingError(f"dciodvfy not found at {DCIODVFY} or on PATH; {_INSTALL_HINT}")
    return found


def _run(path: Path) -> DciodvfyReport:
    proc = subprocess.run(
        [_executable(), str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return DciodvfyReport(errors=errors, warnings=warnings, output=output)


def dciodvfy_report(path_or_dataset: str | os.PathLike[str] | Dataset) -> DciodvfyReport:
    """Validate a DICOM file, or a dataset written to a temporary file first.

    Parameters
    ----------
    path_or_dataset : str, os.PathLike or pydicom.Dataset
        A DICOM Part 10 file, or a dataset with ``file_meta`` (as highdicom
        builds them), which is written with ``enforce_file_format=True``
        exactly as it would be sent.

    Returns
    -------
    DciodvfyReport
        Error and warning lines and the full output.

    Raises
    ------
    DciodvfyMissingError
        If dciodvfy is not installed.
    FileNotFoundError
        If a path is given that does not exist.
    """
    if isinstance(path_or_dataset, Dataset):
        with tempfile.TemporaryDirectory(prefix="dciodvfy-") as tmp:
            path = Path(tmp) / "object.dcm"
            path_or_dataset.save_as(path, enforce_file_format=True)
            return _run(path)
    path = Path(path_or_dataset)
    if not path.is_file():
        raise FileNotFoundError(f"no DICOM file to validate at {path}")
    return _run(path)


def dciodvfy_errors(path_or_dataset: str | os.PathLike[str] | Dataset) -> list[str]:
    """Return dciodvfy's ``Error - ...`` lines for a file or dataset (empty = conformant).

    See :func:`dciodvfy_report` for parameters; warnings are ignored.
    """
    return dciodvfy_report(path_or_dataset).errors
