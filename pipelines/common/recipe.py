"""The fields and checks every study's training recipe shares: plain data, no torch.

A study's recipe is a frozen dataclass of every training choice, written
whole to its card's provenance and turned into command-line options by
:mod:`pipelines.common.options`. The choices every study makes the same way
live here once: :class:`Recipe` (weights to start from, caching, the
bootstrap, the seed) and :class:`SplitRecipe` (a patient split into train,
validation and held-out test shares). Their fields are keyword-only and come
after a study's own in its signature; a study re-declares one only to change
its default.

:func:`one_of` is the check a recipe runs on a named choice (architecture,
schedule, optimizer...), so every recipe refuses a bad value with the same
kind of message: what was given and what is allowed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


def one_of(name: str, value: object, allowed: Collection[object]) -> None:
    """Refuse ``value`` for the recipe field ``name`` unless it is ``allowed``.

    Raises
    ------
    ValueError
        ``unknown <name> <value>; use one of <allowed>``.
    """
    if value not in allowed:
        raise ValueError(
            f"unknown {name} {value!r}; use one of {', '.join(str(a) for a in allowed)}"
        )


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The choices every study's recipe has; subclass it with the study's own fields."""

    #: local torchvision weights of the architecture (never downloaded); "" = from scratch
    pretrained: str = ""
    #: keep prepared inputs in memory between epochs (small data sets)
    cache: bool = False
    #: bootstrap resamples behind every 95 % interval of the metrics
    bootstrap_resamples: int = 1000
    #: seed of the split, the initial weights, shuffling and augmentation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bootstrap_resamples < 0:
            raise ValueError(f"bootstrap_resamples must be >= 0, got {self.bootstrap_resamples}")


@dataclass(frozen=True, kw_only=True)
class SplitRecipe(Recipe):
    """A :class:`Recipe` whose data are split by patient into three shares."""

    #: train / validation / held-out test shares of the patients
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.split) != 3 or self.split[0] <= 0 or self.split[1] <= 0:
            raise ValueError(
                f"split must be three shares with train and validation > 0: {self.split}"
            )
