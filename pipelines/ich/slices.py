"""A CT slice as the ICH model sees it: the seed's three windows (brain / subdural / bone).

Reading and windowing are the shared slice reader's
(:func:`pipelines.common.slices.read_slice`); this module says which windows
and statistics the ICH card's input uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.card import InputSpec
from pipelines.ich.labels import WINDOWS


def input_spec(size: int, mean: Sequence[float], std: Sequence[float]) -> InputSpec:
    """The card input of an ICH model: the seed's three windows at ``size`` pixels."""
    return InputSpec(size=size, channels=3, mean=list(mean), std=list(std), windows=list(WINDOWS))
