"""Command-line options derived from a recipe dataclass, so no default is written twice.

A study's recipe (a frozen dataclass of every training choice) is the one
place its defaults live: :func:`add_recipe_arguments` gives each field an
option (``lr`` -> ``--lr``, a bool -> ``--x/--no-x``, a ``Literal`` -> its
choices, a tuple of numbers -> several values) whose default comes from the
field and whose help from the ``help`` mapping, its ``metadata["help"]`` or
the ``#:`` comment above it (:func:`field_docs`);
and :func:`recipe_from_args` builds the recipe back from the parsed options.

A field that is itself a dataclass (an augmentation spec, the hip
localiser's recipe) gets its fields as options too: under its own prefix
(``localiser.size`` -> ``--localiser-size``), or flat when named in
``flatten`` (``augment.rotation`` -> ``--rotation``). Its defaults are the
recipe's instance, so a study whose default augmentation differs from the
spec's class defaults shows and uses its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

RecipeT = TypeVar("RecipeT", bound="DataclassInstance")

_PLAIN = (int, float, str)
#: A dataclass field's line: four spaces, its name, a colon.
_FIELD = re.compile(r"^    ([a-z_][a-z0-9_]*)\s*:")


def _default(field: dataclasses.Field[Any], instance: object | None) -> Any:
    if instance is not None:
        return getattr(instance, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comments above each field of a dataclass (what Sphinx shows), by field name.

    They are the recipe's documentation, written once; the options show them
    as their help. A comment over several lines is joined; a field without
    one is absent. Base classes' comments count, a subclass's win.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a base's field documented once serves every study
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            text = line.strip()
            if text.startswith("#:"):
                pending.append(text[2:].strip())
                continue
            match = _FIELD.match(line)
            if match and pending:
                docs[match.group(1)] = " ".join(pending)
            pending = []
    return docs


def _optional_of(hint: Any) -> Any:
    """``X`` for ``X | None`` (either spelling), else None."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _walk(
    recipe: type[DataclassInstance],
    instance: object | None,
    *,
    prefix: str,
    where: str,
    skip: Collection[str],
    flatten: Collection[str],
) -> list[tuple[str, str, Any, Any, str]]:
    """(dotted path, option dest, default, type hint, help) of every option-worthy field.

    ``prefix`` is the dest's (empty below a flattened field), ``where`` the
    field's dotted path in the recipe.
    """
    hints = typing.get_type_hints(recipe)
    docs = field_docs(recipe)
    out = []
    # a study's own fields first, then the keyword-only ones every recipe shares
    for field in sorted(dataclasses.fields(recipe), key=lambda f: bool(f.kw_only)):
        path, dest = f"{where}{field.name}", f"{prefix}{field.name}"
        default = _default(field, instance)
        if path in skip or field.name in skip or default is dataclasses.MISSING:
            continue
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            inner = "" if path in flatten else f"{dest}_"
            out += _walk(
                type(default), default, prefix=inner, where=f"{path}.", skip=skip, flatten=flatten
            )
            continue
        doc = field.metadata.get("help") or docs.get(field.name) or field.name.replace("_", " ")
        out.append((path, dest, default, hints[field.name], doc))
    return out


def add_recipe_arguments(
    parser: argparse.ArgumentParser,
    recipe: type[DataclassInstance],
    *,
    skip: Collection[str] = (),
    flatten: Collection[str] = (),
    help: Mapping[str, str] | None = None,  # noqa: A002 - argparse's own word
    defaults: Mapping[str, Any] | None = None,
    choices: Mapping[str, Collection[Any]] | None = None,
) -> None:
    """One option per field of ``recipe`` (and of its dataclass fields).

    Parameters
    ----------
    skip : collection of str
        Field names (or dotted paths, ``localiser.options``) the command
        handles itself.
    flatten : collection of str
        Dataclass fields whose own fields take no prefix.
    help : mapping, optional
        Help text by field name (else the field's ``metadata["help"]``).
    defaults : mapping, optional
        A command's own defaults (the study's protocol where the recipe's
        default is the quick demo's), by dest name.
    choices : mapping, optional
        Allowed values of a ``str`` field that is not typed as a ``Literal``,
        by dest name.

    Raises
    ------
    ValueError
        If two fields would share one option (a flattened field named like
        a recipe field).
    """
    texts = dict(help or {})
    own = dict(defaults or {})
    seen: dict[str, str] = {}
    for path, dest, default, hint, doc in _walk(
        recipe, None, prefix="", where="", skip=skip, flatten=flatten
    ):
        if dest in seen:
            raise ValueError(f"{path} and {seen[dest]} would both be --{dest.replace('_', '-')}")
        seen[dest] = path
        default = own.get(dest, default)
        flag = "--" + dest.replace("_", "-")
        name = path.rsplit(".", 1)[-1]
        # argparse formats help with %: a documented "95 %" must reach it as "95 %%"
        text = texts.get(dest, texts.get(name, doc)).replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": dest, "default": default}
        element = _optional_of(hint)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text, **kwargs)
            continue
        allowed = (choices or {}).get(dest)
        if typing.get_origin(hint) is Literal or allowed is not None:
            values = tuple(allowed) if allowed is not None else typing.get_args(hint)
            kwargs.update(type=type(values[0]), choices=values)
        elif isinstance(default, tuple) and all(isinstance(v, _PLAIN) for v in default):
            args = typing.get_args(hint)
            if len(args) == 2 and args[1] is Ellipsis:
                kwargs.update(type=args[0], nargs="*")
            elif args:
                kwargs.update(type=args[0], nargs=len(args))
            else:
                continue
            kwargs["metavar"] = name.upper()
        elif isinstance(default, _PLAIN):
            kwargs["type"] = type(default)
        elif default is None and element in _PLAIN:
            kwargs["type"] = element
        else:
            continue  # dicts and other shapes: the command or the card sets them
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(flag, help=f"{text} (default: {shown})", **kwargs)


def recipe_from_args(
    recipe: type[RecipeT],
    args: argparse.Namespace,
    *,
    flatten: Collection[str] = (),
    **overrides: Any,
) -> RecipeT:
    """The recipe with every field the options set; ``overrides`` win (by field name).

    Lists from several-value options become tuples; a dataclass field is
    rebuilt from its own options on top of the recipe's default instance.
    """
    return _build(recipe, None, args, prefix="", where="", flatten=flatten, overrides=overrides)


def _build(
    recipe: type[RecipeT],
    instance: object | None,
    args: argparse.Namespace,
    *,
    prefix: str,
    where: str,
    flatten: Collection[str],
    overrides: Mapping[str, Any],
) -> RecipeT:
    given: dict[str, Any] = {}
    for field in dataclasses.fields(recipe):
        path, dest = f"{where}{field.name}", f"{prefix}{field.name}"
        if not where and field.name in overrides:
            given[field.name] = overrides[field.name]
            continue
        default = _default(field, instance)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            given[field.name] = _build(
                type(default),
                default,
                args,
                prefix="" if path in flatten else f"{dest}_",
                where=f"{path}.",
                flatten=flatten,
                overrides={},
            )
            continue
        if hasattr(args, dest):
            value = getattr(args, dest)
            given[field.name] = tuple(value) if isinstance(value, list) else value
    if instance is not None:
        return dataclasses.replace(instance, **given)  # type: ignore[type-var,return-value]
    return recipe(**given)
