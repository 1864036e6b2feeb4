"""A cache of built demo models, outside the checkout, keyed by what determines their weights.

A demo build takes minutes to twenty minutes of CPU, and its weights are a
function of a few things only: the demo and its seed, the code that builds it
(every ``pipelines`` and ``imaging`` module its builder imports, directly or
not, and the builder of builds), the library versions, the CPU code
path (:mod:`pipelines.common.codepath`) and the CPU itself (another CPU adds
in another order). :func:`build_key` hashes exactly those, so a second
checkout on the same machine (a CI clone, a second ``scripts/run-tests``)
copies a finished build instead of training again, and any change to one of
them trains afresh. A copy is verified like any card (the weights' sha256)
before it is used.

The cache lives in ``$DICOM_NODE_CACHE`` (default
``$XDG_CACHE_HOME/dicom-node``, else ``~/.cache/dicom-node``), under
``demo-models/<demo>-<key>/``. It is only a cache: delete it at any time.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import platform
import shutil
import uuid
from functools import cache
from pathlib import Path

from pipelines.common import codepath

logger = logging.getLogger(__name__)

CACHE_ENV = "DICOM_NODE_CACHE"
_PIPELINES = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """``$DICOM_NODE_CACHE``, else ``$XDG_CACHE_HOME/dicom-node``, else ``~/.cache/dicom-node``."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dicom-node"


#: The checkout's packages whose code can shape a demo's weights.
_PACKAGES = ("pipelines", "imaging")
_ROOT = _PIPELINES.parent

#: Modules a build imports (the registry re-exports the command line to the node) but never
#: runs: a build calls the phantom writers and trainers itself, not through the ``dicom-node``
#: command line. Leaving them out of the key lets the CLI change without retraining the demos.
_COMMAND_LINE = frozenset({"pipelines.commands", "pipelines.demo_commands"})


def _ours(name: str) -> bool:
    return name.split(".")[0] in _PACKAGES


def _module_file(name: str) -> Path | None:
    """The source file of one of our modules or packages, if it exists."""
    relative = Path(*name.split("."))
    for candidate in (_ROOT / relative / "__init__.py", _ROOT / f"{relative}.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """Every module of ours ``path`` imports anywhere (lazy imports in functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            # "from pipelines.ich import slices" imports a module, not a name
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if _ours(n)}


@cache
def source_files(*roots: str) -> tuple[Path, ...]:
    """The source files of our modules (``pipelines``, ``imaging``) ``roots`` import, transitively.

    Parent packages count (their ``__init__`` runs on import). A demo's
    weights depend on these files only, so a change elsewhere (another
    study, the node's inference of this one when training does not import
    it) keeps its cached build.
    """
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            if module in seen or module in _COMMAND_LINE:
                continue
            path = _module_file(module)
            if path is None:
                continue
            seen[module] = path
            todo.extend(_imported(path))
    return tuple(sorted(set(seen.values())))


@cache
def _source_digest(builder_module: str) -> str:
    """sha256 over the path and content of every file :func:`source_files` finds."""
    digest = hashlib.sha256()
    for path in source_files(builder_module, "pipelines.demo"):
        digest.update(path.relative_to(_ROOT).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _cpu() -> str:
    model = codepath.cpu_model() or platform.processor()
    return f"{platform.machine()}|{model}|{' '.join(sorted(codepath.cpu_flags()))}"


def build_key(demo: str, *, seed: int, code_path: str) -> str:
    """The cache key of a demo build: 24 hex digits of a sha256 over what sets its weights."""
    import numpy
    import pydicom
    import torch
    import torchvision

    from pipelines.study import demo_models

    study, model = demo_models()[demo]
    path = codepath.CODE_PATHS[code_path]
    parts = [
        demo,
        str(seed),
        code_path,
        repr(sorted(path.variables.items())),
        _source_digest(study.module(model.builder.partition(":")[0])),
        f"torch {torch.__version__} torchvision {torchvision.__version__}",
        f"numpy {numpy.__version__} pydicom {pydicom.__version__}",
        f"python {platform.python_version()}",
        _cpu(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


#: In a built model's folder: the key of the build it holds (:func:`built_key`).
KEY_FILE = ".build-key"


def built_key(folder: Path) -> str | None:
    """The build key a model folder was built or restored under (None: unknown)."""
    try:
        return (folder / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def mark_built(folder: Path, key: str) -> None:
    """Record in ``folder`` that it holds the build ``key``."""
    (folder / KEY_FILE).write_text(key + "\n")


def _entry(demo: str, key: str) -> Path:
    return cache_root() / "demo-models" / f"{demo}-{key}"


def restore(demo: str, key: str, target: Path) -> bool:
    """Copy the cached build ``key`` of ``demo`` to ``target`` (absent); whether it was there.

    A cached card that does not verify is removed from the cache and not used.
    """
    from pipelines.card import CARD_FILE, CardError, load_card

    entry = _entry(demo, key)
    if not (entry / CARD_FILE).is_file():
        return False
    try:
        load_card(entry / CARD_FILE)
    except CardError as exc:
        logger.warning("cached %s build %s does not verify (%s); removing it", demo, key, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return False
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    shutil.copytree(entry, staging)
    mark_built(staging, key)
    if target.exists():  # a partial build (e.g. an interrupted train/ folder) makes way
        shutil.rmtree(target)
    staging.rename(target)
    logger.info("%s: reused the cached build %s from %s", demo, key, entry)
    return True


def store(demo: str, key: str, source: Path) -> None:
    """Keep a copy of the finished build in ``source`` under ``key`` (best effort)."""
    entry = _entry(demo, key)
    if entry.exists():
        return
    staging = entry.with_name(f".{entry.name}.{uuid.uuid4().hex[:8]}")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, staging)
        staging.rename(entry)
    except OSError as exc:  # a full or read-only cache costs a rebuild next time, nothing more
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning("could not cache the %s build in %s: %s", demo, entry, exc)
