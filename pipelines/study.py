"""What a study package declares about itself, once, and how the node finds it.

A study (one of the seed papers, or a hospital's own family of models) is a
package that sets ``STUDY = Study(__name__, ...)`` in its ``__init__``: the
modules that register its pipelines, the module that adds its ``dicom-node``
subcommands, its demo models and its benchmark. Everything that lists studies
reads these declarations: the pipeline registry (:mod:`pipelines.registry`),
the command line (:mod:`pipelines.commands`), the demo builder
(:mod:`pipelines.demo`) and CI's benchmark smoke runs (``python -m bench``).
A new study is a new package; nothing else is edited.

Where studies come from:

* the sub-packages of :mod:`pipelines` that define ``STUDY`` (the seeds' and
  the generic classifier), and
* packages of other distributions that register under the
  ``dicom_node.studies`` entry-point group, e.g. in their ``pyproject.toml``::

      [project.entry-points."dicom_node.studies"]
      knee = "knee_ai:STUDY"

Declarations are plain data and importing a study package imports nothing
heavy (no torch), so ``dicom-node --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ENTRY_POINT_GROUP = "dicom_node.studies"


@dataclass(frozen=True)
class DemoModel:
    """A demo model a study ships the recipe for (trained on phantoms, never clinical).

    ``builder`` is ``"module:name"`` (module relative to the study's package
    when it has no dot) of a callable ``(models_dir, *, seed, force, progress)
    -> card path``: usually a :class:`pipelines.common.demobuild.DemoSpec`,
    which declares the demo's phantoms, recipe and trainer; ``minutes`` is how
    long one build takes on one thread of the 2-core CI machine, a hint to
    start the longest first.
    """

    name: str
    builder: str
    minutes: float


@dataclass(frozen=True)
class Study:
    """One study's declaration (see the module).

    Parameters
    ----------
    package : str
        The declaring package's ``__name__``; module names below without a
        dot are relative to it.
    seed : str
        The seed study's number (``"002"``) or another sort key: studies are
        listed in this order.
    demos : tuple of DemoModel
        The study's demo models.
    bench : str or None
        Benchmark module, run as ``python -m MODULE --smoke`` by CI.
    pipelines : tuple of str
        Modules whose import registers pipeline classes (``@register``);
        default ``pipeline``.
    commands : str or None
        Module with ``add_commands(groups)`` for ``synth`` / ``dataset`` /
        ``train`` / ``evaluate`` subcommands; default ``commands``.

    The study's one-line title is the first line of its package docstring.
    """

    package: str
    seed: str
    demos: tuple[DemoModel, ...] = ()
    bench: str | None = None
    pipelines: tuple[str, ...] = ("pipeline",)
    commands: str | None = "commands"

    @property
    def title(self) -> str:
        """The first line of the package's docstring."""
        doc = importlib.import_module(self.package).__doc__ or self.name
        return doc.strip().splitlines()[0]

    @property
    def name(self) -> str:
        """The package's last component (``ich``)."""
        return self.package.rpartition(".")[2]

    def module(self, name: str) -> str:
        """A declared module name made absolute."""
        return name if "." in name else f"{self.package}.{name}"

    def demo_builder(self, demo: DemoModel) -> Callable[..., Path]:
        """Import and return a demo's builder (a ``DemoSpec`` or a build function)."""
        module, _, function = demo.builder.partition(":")
        builder: Callable[..., Path] = getattr(
            importlib.import_module(self.module(module)), function
        )
        return builder


class StudyError(RuntimeError):
    """Two studies claim the same name or demo, or an entry point is not a Study."""


def _in_tree() -> list[Study]:
    import pipelines

    found = []
    for info in pkgutil.iter_modules(pipelines.__path__, "pipelines."):
        if info.ispkg:
            declared = getattr(importlib.import_module(info.name), "STUDY", None)
            if declared is not None:
                found.append(declared)
    return found


def _installed() -> list[Study]:
    found = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        declared = entry.load()
        if not isinstance(declared, Study):
            raise StudyError(
                f"entry point {entry.name!r} ({entry.value}) in group {ENTRY_POINT_GROUP!r} "
                f"is a {type(declared).__name__}, not a pipelines.study.Study"
            )
        found.append(declared)
    return found


@functools.cache
def studies() -> tuple[Study, ...]:
    """Every declared study, in ``seed`` order (in-tree first on a tie).

    Raises
    ------
    StudyError
        If two studies share a package name or a demo model name.
    """
    found: dict[str, Study] = {}
    for study in _in_tree() + _installed():
        if study.package in found:
            if found[study.package] == study:
                continue  # an in-tree package also registered as an entry point
            raise StudyError(f"study package {study.package!r} is declared twice")
        found[study.package] = study
    ordered = tuple(sorted(found.values(), key=lambda s: s.seed))
    owners: dict[str, str] = {}
    for study in ordered:
        for demo in study.demos:
            if demo.name in owners:
                raise StudyError(
                    f"demo model {demo.name!r} is declared by both {owners[demo.name]} "
                    f"and {study.package}; rename one"
                )
            owners[demo.name] = study.package
    return ordered


def demo_models() -> dict[str, tuple[Study, DemoModel]]:
    """Every demo model by name, with the study that declares it, in study order."""
    return {demo.name: (study, demo) for study in studies() for demo in study.demos}
