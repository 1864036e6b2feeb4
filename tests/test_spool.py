"""The spool: atomic durable writes, UID checks, no way out of the spool folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dicom_node.spool import InvalidUIDError, Spool, check_uid


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0.1", "2.25.123456789"])
def test_valid_uids_pass(uid: str) -> None:
    assert check_uid(uid + "\x00", "UID") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        None,
        "1.02.3",
        "1..2",
        "1.2.",
        ".1.2",
        "1.2.3a",
        "../../etc/passwd",
        "1/2",
        "1.2\\3",
        "1" * 65,
    ],
)
def test_invalid_uids_are_refused(uid: object) -> None:
    with pytest.raises(InvalidUIDError):
        check_uid(uid, "SOP Instance UID")


def test_write_is_atomic_private_and_leaves_no_temp(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    relative = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    path = spool.write(relative, b"DICM" * 100)
    assert path == tmp_path / "spool" / "instances" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICM" * 100
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    assert list(spool.tmp.iterdir()) == []
    # a second copy replaces the first in place
    spool.write(relative, b"second")
    assert path.read_bytes() == b"second"


def test_paths_cannot_leave_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUIDError):
        spool.write("../escaped.dcm", b"x")
    assert not (tmp_path / "escaped.dcm").exists()


def test_partial_writes_from_a_crash_are_cleaned(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.tmp / "abc.part").write_bytes(b"half")
    assert spool.clean_tmp() == 1
    assert list(spool.tmp.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        spool.write(spool.instance_path("1.2", "1.2.3", "1.2.3.4"), b"data")
    monkeypatch.undo()
    assert list(spool.tmp.iterdir()) == []
    assert not (spool.root / "instances" / "1.2" / "1.2.3" / "1.2.3.4.dcm").exists()
