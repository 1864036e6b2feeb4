"""Destination kinds: one registry that maps a kind to the sender that delivers to it.

Today there is one kind, ``dicom`` (C-STORE SCU). A new kind (DICOMweb
STOW-RS, a folder) registers a sender here and needs no change elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from dicom_node.config import Destination


class SendError(RuntimeError):
    """Delivery failed; the message says why (shown in status and the log)."""


class Sender(Protocol):
    def __call__(
        self, destination: Destination, files: Sequence[Path], *, calling_ae: str, timeout: float
    ) -> None:
        """Deliver all files or raise :class:`SendError`."""


_SENDERS: dict[str, Sender] = {}


def register(kind: str) -> Callable[[Sender], Sender]:
    def decorator(sender: Sender) -> Sender:
        if kind in _SENDERS:
            raise ValueError(f"destination kind {kind!r} is already registered")
        _SENDERS[kind] = sender
        return sender

    return decorator


def sender_for(kind: str) -> Sender:
    from dicom_node.dispatch import scu  # noqa: F401  (registers "dicom")

    try:
        return _SENDERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown destination kind {kind!r}; known kinds: {', '.join(sorted(_SENDERS))}"
        ) from None
