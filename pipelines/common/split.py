"""Data splits that never put one patient in two parts, stratified by finding.

Every study the node serves splits its data by patient (seed 001: "by
Patient ID so no patient is in both train and validation"; seed 002: by
patient / study; seed 003: cross-validation folds). A patient's images are
correlated, so a split by image leaks and flatters the validation metrics.
This module is the one place that does it, for any kind of item.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def grouped_split(
    items: Sequence[T],
    fractions: Sequence[float],
    *,
    group: Callable[[T], str],
    classes: Callable[[T], Collection[Hashable]],
    class_order: Sequence[Hashable],
    seed: int = 0,
) -> list[list[T]]:
    """Split ``items`` into ``len(fractions)`` parts, never splitting a group.

    Parameters
    ----------
    items : sequence
        What to split (slices, images...), kept in their order within a part.
    fractions : sequence of float
        Relative part sizes, counted in groups (e.g. ``(0.8, 0.2)``).
    group : callable
        ``group(item)``: the patient (or study) an item belongs to.
    classes : callable
        ``classes(item)``: the findings an item shows (empty for a normal one).
    class_order : sequence
        Every class ``classes`` may return; breaks ties between equally rare classes.
    seed : int
        Seed of the shuffle within each stratum.

    Each group is stratified by its rarest class (by the number of groups
    showing it; groups with none form their own stratum); each stratum,
    shuffled with ``seed``, is dealt to the part furthest below its share
    within the stratum (ties: overall), so every part gets a similar mix of
    findings and of normal patients. A part with a positive share that would
    stay empty takes a group from the largest part, as long as there are
    enough groups.

    Raises
    ------
    ValueError
        If ``fractions`` are negative or sum to zero, or an item has a class
        missing from ``class_order``.
    """
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {fractions}")
    weights = np.asarray(fractions, dtype=np.float64) / float(sum(fractions))
    rank = {c: i for i, c in enumerate(class_order)}
    groups: dict[str, list[T]] = defaultdict(list)
    present: dict[str, set[int]] = defaultdict(set)
    for item in items:
        key = group(item)
        groups[key].append(item)
        for c in classes(item):
            if c not in rank:
                raise ValueError(f"class {c!r} of group {key!r} is not in class_order")
            present[key].add(rank[c])
    prevalence: dict[int, int] = defaultdict(int)
    for found in present.values():
        for i in found:
            prevalence[i] += 1

    def stratum(key: str) -> int:
        found = present.get(key)
        return min(found, key=lambda i: (prevalence[i], i)) if found else -1

    strata: dict[int, list[str]] = defaultdict(list)
    for key in sorted(groups):
        strata[stratum(key)].append(key)
    rng = np.random.default_rng(seed)
    assigned: list[list[str]] = [[] for _ in fractions]
    for _, keys in sorted(strata.items()):
        taken = np.zeros(len(fractions))
        for n, index in enumerate(rng.permutation(len(keys))):
            total = np.array([len(a) for a in assigned], dtype=np.float64)
            # the part furthest below its share in this stratum; ties: overall
            score = 1000.0 * (weights * (n + 1) - taken) + weights * (total.sum() + 1) - total
            target = int(np.argmax(score))
            taken[target] += 1
            assigned[target].append(keys[index])
    for i, share in enumerate(weights):
        largest = max(range(len(assigned)), key=lambda j: len(assigned[j]))
        if share > 0 and not assigned[i] and len(assigned[largest]) > 1:
            assigned[i].append(assigned[largest].pop())
    return [[item for key in keys for item in groups[key]] for keys in assigned]
