"""The registry of pipelines: one place that maps a card's ``pipeline`` key to a class.

Pipelines register with a decorator at import time; :func:`get` imports the
pipeline modules the studies declare (:mod:`pipelines.study`) the first time
it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from pipelines.base import AnyPipeline, Pipeline
from pipelines.commands import CommandGroups, add_pipeline_commands
from pipelines.study import studies

_REGISTRY: dict[str, type[AnyPipeline]] = {}

P = TypeVar("P", bound=AnyPipeline)
_loaded = False


def register(name: str) -> Callable[[type[P]], type[P]]:
    """Class decorator that registers a :class:`Pipeline` subclass under ``name``.

    Raises
    ------
    TypeError
        If the decorated object is not a Pipeline subclass.
    ValueError
        If ``name`` is empty or already registered to another class.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"pipeline name must be a non-empty string, got {name!r}")

    def decorator(cls: type[P]) -> type[P]:
        if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
            raise TypeError(f"@register({name!r}) expects a Pipeline subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"pipeline {name!r} is already registered to {existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for study in studies():
            for module in study.pipelines:
                importlib.import_module(study.module(module))
        _loaded = True


def names() -> list[str]:
    """Names of all registered pipelines, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type[AnyPipeline]:
    """Return the pipeline class registered as ``name``.

    Raises
    ------
    ValueError
        If no pipeline of that name exists; the message lists the known ones.
    """
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown pipeline {name!r}; known pipelines: {', '.join(sorted(_REGISTRY))}"
        ) from None


#: The node's command line reaches the studies' commands through the registry.
add_commands = add_pipeline_commands

__all__ = ["AnyPipeline", "CommandGroups", "add_commands", "get", "names", "register"]
