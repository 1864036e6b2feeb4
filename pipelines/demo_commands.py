"""``dicom-node models build-demo``: the demo builder's command (:mod:`pipelines.demo`).

Kept out of :mod:`pipelines.demo`, whose source is part of every demo's build
cache key (:mod:`pipelines.common.buildcache`): a change to the command line
must not retrain six models.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipelines import demo
from pipelines.card import CARD_FILE, mark_building
from pipelines.commands import EXIT_OK, EXIT_USAGE, CommandGroups
from pipelines.common import codepath


def _build_demo_in_background(args: argparse.Namespace, argv: list[str]) -> int:
    """Start ``models build-demo`` (without ``--background``) in a process of its own.

    The models it will build are marked as building (with that process's id)
    before this returns, so a node started right after keeps their jobs
    waiting instead of failing them.
    """
    try:  # refuse here what the background build would refuse: nothing is marked then
        names = demo.chosen_demos(args.only)
        codepath.environment(args.code_path or codepath.default_code_path())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = [
        n for n in names if args.force or not (Path(args.models_dir) / n / CARD_FILE).is_file()
    ]
    if not missing:
        print("demo models ready: nothing to build")
        return EXIT_OK
    log_path = Path(args.background)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    for name in missing:
        mark_building(Path(args.models_dir) / name / CARD_FILE, child.pid)
    print(
        f"building {len(missing)} demo model(s) in the background (process {child.pid}, "
        f"log {log_path}): {', '.join(missing)}"
    )
    return EXIT_OK


def cmd_build_demo(args: argparse.Namespace) -> int:
    """``dicom-node models build-demo``."""
    if args.background:
        argv = [
            "models",
            "build-demo",
            "--models-dir",
            str(args.models_dir),
            "--seed",
            str(args.seed),
        ]
        argv += ["--force"] * args.force + [a for n in args.only or () for a in ("--only", n)]
        argv += ["--jobs", str(args.jobs)] if args.jobs else []
        argv += ["--code-path", args.code_path] if args.code_path else []
        return _build_demo_in_background(args, argv)
    try:
        cards = demo.build_demo(
            Path(args.models_dir),
            seed=args.seed,
            force=args.force,
            only=args.only,
            jobs=args.jobs or demo.default_jobs(),
            code_path=args.code_path,
        )
    except ValueError as exc:  # an unknown demo, or a code path this CPU cannot take
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for card in cards:
        print(f"demo model ready: {card}")
    return EXIT_OK


def add_commands(groups: CommandGroups) -> None:
    """``dicom-node models build-demo`` (:mod:`pipelines.commands`)."""
    p = groups.models.add_parser(
        "build-demo", help="train the demo models on generated phantoms (not for clinical use)"
    )
    p.add_argument("--models-dir", default=str(demo.MODELS_DIR))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the cards exist")
    p.add_argument(
        "--only", action="append", metavar="NAME", help="build only this demo (repeatable)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="builds in parallel, one thread each (default: one per CPU core); "
        "the weights do not depend on it",
    )
    p.add_argument(
        "--code-path",
        choices=list(codepath.CODE_PATHS),
        help="CPU code path to train under, as another machine would (default: "
        "$DICOM_NODE_CODE_PATH, else native); see models/README.md",
    )
    p.add_argument(
        "--background",
        metavar="LOG",
        help="return at once and build in a background process that writes to LOG; until a "
        "model is built, the node keeps its jobs waiting (shown by 'dicom-node status')",
    )
    p.set_defaults(func=cmd_build_demo, log_level="INFO")
