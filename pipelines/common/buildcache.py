"""A cache of built demo models, outside the checkout, keyed by what determines their weights.

A demo build takes minutes to twenty minutes of CPU, and its weights are a
function of a few things only: the demo and its seed, the code that builds it
(every source file under ``pipelines/``), the library versions, the CPU code
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


@cache
def _source_digest() -> str:
    """sha256 over every ``pipelines/**/*.py`` file, path and content."""
    digest = hashlib.sha256()
    for path in sorted(_PIPELINES.rglob("*.py")):
        digest.update(path.relative_to(_PIPELINES).as_posix().encode())
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

    path = codepath.CODE_PATHS[code_path]
    parts = [
        demo,
        str(seed),
        code_path,
        repr(sorted(path.variables.items())),
        _source_digest(),
        f"torch {torch.__version__} torchvision {torchvision.__version__}",
        f"numpy {numpy.__version__} pydicom {pydicom.__version__}",
        f"python {platform.python_version()}",
        _cpu(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


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
