"""``dicom-node`` subcommands of the ich pipeline (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines import commands as cli


def _describe_rsna(written: tuple[Path, list[Any]], args: argparse.Namespace) -> str:
    labels, slices = written
    positives = sum(s.labels["any"] for s in slices)
    return (
        f"wrote {len(slices)} synthetic head CT slices of {args.patients} patients "
        f"({positives} with hemorrhage) to {Path(args.out) / 'dicom'} and labels to {labels}"
    )


#: The recipe's nested augmentation spec takes plain options (--rotation, --mixup-alpha).
_FLAT = {"augment"}
#: Help of the recipe options whose field has no ``#:`` comment to show.
_HELP = {
    "backbone": "resnet50 (seed) or efficientnet_b3, resnet18/34/101",
    "tta_rotations": "test-time rotations in degrees averaged in (seed: -10 10; none: no values)",
    "z_features": "width of the slice-position branch, Linear(1, z)",
    "hidden": "width of the fusion layer",
    "dropout": "dropout before the last layer",
    "hflip": "probability of a horizontal flip",
}


def cmd_train_ich(args: argparse.Namespace) -> int:
    from pipelines.common.options import recipe_from_args
    from pipelines.ich.data import DataError
    from pipelines.ich.train import IchRecipe, train_ich

    size = args.size or (380 if args.backbone.startswith("efficientnet") else 224)
    recipe = recipe_from_args(IchRecipe, args, flatten=_FLAT, size=size)
    return cli.run_training(
        train_ich, args, args.dicom_dir, args.labels, recipe=recipe, errors=(DataError,)
    )


def cmd_evaluate_ich(args: argparse.Namespace) -> int:
    from pipelines.ich.data import DataError
    from pipelines.ich.evaluate import evaluate_ich, format_report

    return cli.run_evaluation(
        evaluate_ich,
        format_report,
        args,
        args.dicom_dir,
        args.labels,
        errors=(DataError,),
        saves=("metrics.json", "roc.png"),
        tta=args.tta,
    )


def add_commands(groups: cli.CommandGroups) -> None:
    """``synth ich``, ``train ich``, ``evaluate ich``."""
    from pipelines.common.options import add_recipe_arguments
    from pipelines.ich.synth import write_rsna_dataset
    from pipelines.ich.train import IchRecipe

    cli.add_synth_command(
        groups,
        "ich",
        write_rsna_dataset,
        _describe_rsna,
        help="head CT series in RSNA hemorrhage format (DICOM + labels.csv)",
        defaults={"patients": 10, "seed": 0},
        flags={"n_slices": "slices"},
    )

    p = groups.train.add_parser(
        "ich", help="seed 002 from RSNA-format head CT (ID_<sop>_<subtype>,Label)"
    )
    p.add_argument(
        "--dicom-dir", required=True, help="folder of DICOM slices (searched recursively)"
    )
    p.add_argument("--labels", required=True, help="RSNA labels CSV")
    add_recipe_arguments(p, IchRecipe, skip={"size"}, flatten=_FLAT, help=_HELP)
    p.add_argument("--size", type=int, help="input pixels (default 224; 380 for EfficientNet-B3)")
    cli.add_model_output_arguments(p, example="ich-site", reads="slices")
    p.set_defaults(func=cmd_train_ich)

    p = groups.evaluate.add_parser(
        "ich", help="per-label precision/recall/F1/AUC and weighted log loss"
    )
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--labels", required=True, help="RSNA labels CSV")
    cli.add_evaluation_arguments(p, out="ich-evaluation", saves="metrics.json and roc.png")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score with the card's test-time augmentation, as the node does (--no-tta: "
        "the identity view only, to measure what TTA adds)",
    )
    p.set_defaults(func=cmd_evaluate_ich)
