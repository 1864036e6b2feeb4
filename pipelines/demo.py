"""Build the demo models every study declares (:mod:`pipelines.study`), cached and in parallel.

The node ships no clinical weights (those are the hospital's). Each study
package declares demo models trained on synthetic phantoms
(``DemoModel`` in its ``STUDY``); their cards say that they are synthetic and
NOT FOR CLINICAL USE. This module builds them: each in one thread, several
side by side, under a CPU code path (:mod:`pipelines.common.codepath`), with a
cache outside the checkout (:mod:`pipelines.common.buildcache`). Run it with
``python -m pipelines.demo --models-dir models`` or ``dicom-node models
build-demo`` (:mod:`pipelines.demo_commands`).

A demo's build cache key hashes the code its builder imports, this module
included; the command line lives apart so that editing it rebuilds nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from pipelines.card import CARD_FILE, CardError, existing_card, mark_building, unmark_building
from pipelines.common import buildcache, codepath
from pipelines.study import demo_models

logger = logging.getLogger(__name__)

#: The checkout's models folder, where the shipped config.yaml expects the demo cards.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def chosen_demos(only: Sequence[str] | None) -> list[str]:
    """The demos to build: ``only``, or every declared one (ValueError naming unknown ones)."""
    known = demo_models()
    names = list(known) if only is None else list(only)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown demo model(s) {unknown}; known: {', '.join(known)}")
    return names


def build_order(names: Sequence[str], workers: int) -> list[str]:
    """The order to start builds in: the ``workers - 1`` longest first, then the rest shortest first.

    The longest builds set when the last one ends, so they start at once on
    all workers but one; that one builds the others shortest first, so that
    a node serving while its demos build (``scripts/run-node``) can analyse
    its first studies minutes after it starts, not when the slowest is done.
    """
    minutes = {name: demo_models()[name][1].minutes for name in names}
    longest = sorted(names, key=lambda n: -minutes[n])[: max(0, workers - 1)]
    return longest + sorted((n for n in names if n not in longest), key=lambda n: minutes[n])


def builder(name: str) -> Callable[..., Path]:
    """The build function of the demo model ``name`` (KeyError if no study declares it)."""
    study, demo = demo_models()[name]
    return study.demo_builder(demo)


def _build_one(name: str, models_dir: Path, seed: int, force: bool, progress: bool) -> Path:
    """Build one demo on one intra-op thread.

    One thread gives the same weights whatever the machine's core count (the
    reduction order of torch's CPU kernels follows the thread count), and on
    two cores two one-thread builds side by side finish far sooner than one
    two-thread build after another: most of a small model's step is not
    parallel.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return builder(name)(models_dir, seed=seed, force=force, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _worker_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def default_jobs() -> int:
    """One build per CPU core, at most one per demo."""
    return max(1, min(len(demo_models()), os.cpu_count() or 1))


#: The lock file in a models folder that one ``build_demo`` at a time holds.
BUILD_LOCK = ".build-demo.lock"


@contextlib.contextmanager
def _one_build_at_a_time(models_dir: Path) -> Iterator[None]:
    """Hold the models folder's build lock; wait (and say so) while another process does.

    Two builds into one folder (``scripts/run-node``'s background build and a
    ``scripts/run-tests`` in the same checkout, or the tests' fixtures while
    the demos build) would train the same model twice and write over each
    other's files. The second one waits, then finds the first one's cards.
    The lock is the kernel's (``flock``): a build killed with ``-9`` lets go.
    """
    import fcntl

    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / BUILD_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            logger.info("waiting for the demo build of %s in %s to finish", holder, models_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """This process's environment replaced by ``env`` while worker processes are started."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build_demo(
    models_dir: Path,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    only: Sequence[str] | None = None,
    jobs: int = 1,
    code_path: str | None = None,
    cache: bool = True,
) -> list[Path]:
    """Build every demo model (or those named in ``only``) that is not built yet.

    With ``jobs`` > 1 the builds run in that many processes, longest first;
    the weights are the same as with ``jobs=1`` (each build uses one thread).
    ``code_path`` (default ``$DICOM_NODE_CODE_PATH``, else ``native``) caps the
    CPU features the math libraries use (:mod:`pipelines.common.codepath`);
    when this process did not start under it, the builds run in new processes
    that do. With ``cache`` a finished build is kept outside the checkout
    (:mod:`pipelines.common.buildcache`, keyed by everything that determines
    its weights) and a missing demo is copied from there instead of trained.

    Returns
    -------
    list of Path
        The card of each demo model, in study order (:func:`pipelines.study.demo_models`).

    Raises
    ------
    ValueError
        If ``only`` names an unknown demo, or ``code_path`` an unknown path or
        one this CPU cannot take.
    CardError
        If an existing card does not verify and ``force`` is False.
    """
    names = chosen_demos(only)
    code_path = code_path or codepath.default_code_path()
    env = codepath.environment(code_path)  # raises for an unknown or impossible path
    models_dir = Path(models_dir)
    with _one_build_at_a_time(models_dir):
        return _build_locked(names, models_dir, seed, force, progress, jobs, code_path, env, cache)


def _build_locked(
    names: list[str],
    models_dir: Path,
    seed: int,
    force: bool,
    progress: bool,
    jobs: int,
    code_path: str,
    env: dict[str, str],
    cache: bool,
) -> list[Path]:
    """:func:`build_demo` once it holds the folder's build lock."""
    keys = (
        {n: buildcache.build_key(n, seed=seed, code_path=code_path) for n in names} if cache else {}
    )
    stale: set[str] = set()
    if cache and not force:
        for name in names:
            folder = models_dir / name
            if (folder / CARD_FILE).is_file() and buildcache.built_key(folder) == keys[name]:
                continue
            # missing, or built by other code (an edit since, another seed or code path)
            models_dir.mkdir(parents=True, exist_ok=True)
            if not buildcache.restore(name, keys[name], folder) and (folder / CARD_FILE).is_file():
                logger.info("%s: its code changed since it was built; building it again", name)
                stale.add(name)
    cards = {name: models_dir / name / CARD_FILE for name in names}
    to_build = [
        name for name in names if not existing_card(cards[name], force=force or name in stale)
    ]
    for name in names:  # jobs for the models to build wait instead of failing (card_state)
        if name in to_build:
            mark_building(cards[name], os.getpid())
        else:
            unmark_building(cards[name])  # built, or restored from the cache

    def finished(name: str, card: Path) -> None:
        cards[name] = card
        unmark_building(card)
        if cache:
            buildcache.mark_built(card.parent, keys[name])
            buildcache.store(name, keys[name], card.parent)

    try:
        if to_build and codepath.in_effect(code_path) and (jobs <= 1 or len(to_build) <= 1):
            for name in build_order(to_build, 1):
                finished(name, _build_one(name, models_dir, seed, force or name in stale, progress))
        elif to_build:
            # spawn: a forked child would inherit the parent's torch thread pool and locks, and
            # the libraries' CPU dispatch, which only a new process chooses afresh from its
            # environment
            context = multiprocessing.get_context("spawn")
            workers = max(1, min(jobs, len(to_build)))
            with (
                _environment(env),
                ProcessPoolExecutor(
                    max_workers=workers, mp_context=context, initializer=_worker_logging
                ) as pool,
            ):
                futures = {
                    pool.submit(
                        _build_one, name, models_dir, seed, force or name in stale, progress
                    ): name
                    for name in build_order(to_build, workers)
                }
                for future in as_completed(futures):
                    finished(futures[future], future.result())
    finally:
        for name in to_build:
            unmark_building(cards[name])
    return [cards[name] for name in names]


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.demo [--models-dir DIR] [--seed N] [--force]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the card exists")
    parser.add_argument(
        "--no-cache", action="store_true", help="neither reuse nor keep builds in the cache"
    )
    parser.add_argument(
        "--only", action="append", choices=list(demo_models()), help="build only this demo"
    )
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="parallel builds")
    parser.add_argument(
        "--code-path",
        choices=list(codepath.CODE_PATHS),
        help=f"CPU code path of the build (default: ${codepath.ENV_VAR}, else native)",
    )
    args = parser.parse_args(argv)
    _worker_logging()
    try:
        paths = build_demo(
            args.models_dir,
            seed=args.seed,
            force=args.force,
            only=args.only,
            jobs=args.jobs,
            code_path=args.code_path,
            cache=not args.no_cache,
        )
    except (CardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
