"""Log lines stay lines: what a peer sends cannot forge a line or escape a terminal, whoever logs it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from dicom_node.logs import escape_controls, setup_logging


@pytest.fixture
def node_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("pynetdicom").level
    yield
    root.handlers[:], level, pynetdicom_level = saved
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)


def test_a_library_message_with_a_forged_line_stays_one_line(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", process="receiver-0")
    # what pynetdicom logs for a malformed UID, quoting the peer's bytes
    logging.getLogger("pynetdicom.dsutils").error(
        "Invalid 'Affected SOP Instance UID' value '%s'",
        "1.2.3\n2026-11-22 00:00:00 INFO main dicom_node: admin logged in\x1b[2J",
    )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "1.2.3\\n2026-11-22" in lines[0] and "\\x1b[2J" in lines[0]
    assert "ERROR receiver-0 pynetdicom.dsutils" in lines[0]


def test_tracebacks_keep_their_lines(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("dicom_node.jobs").exception("job 1 failed")
    err = capsys.readouterr().err
    assert "job 1 failed" in err and "Traceback (most recent call last)" in err
    assert len(err.splitlines()) > 3


def test_tabs_and_text_pass_unchanged() -> None:
    assert escape_controls("CT\tÄrztin 1.2.840") == "CT\tÄrztin 1.2.840"
    assert escape_controls("a\r\nb\x00") == "a\\r\\nb\\x00"
