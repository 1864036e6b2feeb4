"""From slice probabilities to one decision per series, and the slices that carry it.

Slice classifiers (seed 002's hemorrhage model, seed 000's CT slice
classifier) score every slice, but a radiologist reads a series: the node
reports one finding per label and series, and references the slices the
decision rests on so that the viewer can jump to them. Both pipelines
aggregate the same way, with the rule their card names:

``max``
    The series probability is its highest slice probability: the series is
    positive exactly when one slice crosses the label's threshold, which is
    how per-slice thresholds are chosen and how a finding visible on one
    slice is read. Sensitive, but one noisy slice decides.
``top_k_mean``
    The mean of the ``k`` highest slice probabilities (all slices when the
    series has fewer): a finding must be seen on several neighbouring
    slices, which trades some sensitivity for robustness to a single
    spurious slice. With ``k = 1`` it is ``max``.
``mean``
    The mean over all slices: for findings that fill the series (diffuse
    disease); it dilutes focal findings and is rarely the right choice.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Aggregation = Literal["max", "top_k_mean", "mean"]
AGGREGATIONS: tuple[str, ...] = ("max", "top_k_mean", "mean")


def aggregate(probabilities: np.ndarray, how: str, k: int) -> np.ndarray:
    """Series-level probability per label from (slices, labels) slice probabilities.

    Raises
    ------
    ValueError
        If the array is not (slices >= 1, labels), ``how`` is unknown or ``k`` < 1.
    """
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(f"expected (slices, labels) probabilities, got {probabilities.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if how == "max":
        return probabilities.max(axis=0)
    if how == "top_k_mean":
        top = np.sort(probabilities, axis=0)[::-1][: min(k, probabilities.shape[0])]
        return top.mean(axis=0)
    if how == "mean":
        return probabilities.mean(axis=0)
    raise ValueError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")


def key_slices(
    probabilities: np.ndarray, how: str, k: int, threshold: float, limit: int
) -> list[int]:
    """Indices of the slices a series decision of one label rests on, most probable first.

    They are the slices the aggregation drew on (the top one for ``max``, the
    top ``k`` for ``top_k_mean``, the top ``k`` as the most suspicious ones
    for ``mean``) followed by every other slice at or above ``threshold``,
    at most ``limit`` in all. A negative series so still names its most
    suspicious slices, which the reader can check.

    Parameters
    ----------
    probabilities : numpy.ndarray
        (slices,) probabilities of one label.
    how, k
        The aggregation (see :func:`aggregate`).
    threshold : float
        The label's threshold.
    limit : int
        The most slices to return (>= 1).
    """
    column = np.asarray(probabilities, dtype=np.float64)
    if column.ndim != 1 or column.size == 0:
        raise ValueError(f"expected (slices,) probabilities, got shape {column.shape}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    order = [int(i) for i in np.argsort(-column, kind="stable")]
    used = 1 if how == "max" else min(k, column.size)
    chosen = order[:used] + [i for i in order[used:] if column[i] >= threshold]
    return chosen[:limit]
