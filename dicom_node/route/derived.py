"""Routing keys the node derives from several attributes, for what DICOM does not state once.

A rule's ``match`` names DICOM keywords, plus the lower-case keys listed in
:data:`DERIVED`; each maps a series' header to one of a few values and says
which attribute decided, so ``route --explain`` can show the reasoning.

* ``contrast``: ``enhanced`` or ``unenhanced`` (:mod:`imaging.contrast`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imaging.contrast import CONTRAST_STATES, contrast_decision
from imaging.values import Attributes


@dataclass(frozen=True)
class DerivedKey:
    """A derived routing key: its possible ``values`` and ``decide(attrs) -> (value, because)``."""

    values: tuple[str, ...]
    decide: Callable[[Attributes], tuple[str, str]]


def _contrast(attrs: Attributes) -> tuple[str, str]:
    decision = contrast_decision(attrs)
    return decision.state, decision.because


#: Derived key -> how it is computed.
DERIVED: dict[str, DerivedKey] = {"contrast": DerivedKey(CONTRAST_STATES, _contrast)}
