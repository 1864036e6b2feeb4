"""Uploaded files, streamed to a temporary folder with a size limit (the dry run, the Try page)."""

from __future__ import annotations

from pathlib import Path

from fastapi import UploadFile

#: the largest file a page accepts
MAX_UPLOAD_BYTES = 64 << 20


class TooLarge(ValueError):
    """The upload is larger than :data:`MAX_UPLOAD_BYTES`."""

    def __init__(self) -> None:
        super().__init__(f"The file is larger than {MAX_UPLOAD_BYTES >> 20} MiB.")


async def save_upload(file: UploadFile, target: Path) -> Path:
    """Write ``file`` to ``target`` in 1 MiB pieces; raise :class:`TooLarge` past the limit."""
    size = 0
    with target.open("wb") as out:
        while chunk := await file.read(1 << 20):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise TooLarge()
            out.write(chunk)
    return target
