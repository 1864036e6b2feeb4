"""Command-line options derived from a recipe dataclass, so no default is written twice.

A study's recipe (a frozen dataclass of every training choice) is the one
place its defaults live: :func:`add_recipe_arguments` gives each field of a
plain type an option (``lr`` -> ``--lr``, a bool -> ``--x/--no-x``) whose
default and help come from the field (its ``metadata["help"]``), and
:func:`recipe_from_args` builds the recipe back from the parsed options.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

RecipeT = TypeVar("RecipeT", bound="DataclassInstance")

_PLAIN = (int, float, str)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def add_recipe_arguments(
    parser: argparse.ArgumentParser,
    recipe: type[DataclassInstance],
    *,
    skip: Collection[str] = (),
) -> None:
    """One option per field of ``recipe`` with a bool, int, float or str default."""
    for field in dataclasses.fields(recipe):
        default = _default(field)
        if field.name in skip or default is dataclasses.MISSING:
            continue
        flag = "--" + field.name.replace("_", "-")
        text = field.metadata.get("help", field.name.replace("_", " "))
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
        elif isinstance(default, _PLAIN):
            parser.add_argument(
                flag,
                type=type(default),
                default=default,
                help=f"{text} (default: {default})",
                dest=field.name,
            )


def recipe_from_args(recipe: type[RecipeT], args: argparse.Namespace) -> RecipeT:
    """The recipe with every field the options set (the others keep their defaults)."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(recipe) if hasattr(args, f.name)
    }
    return recipe(**given)
