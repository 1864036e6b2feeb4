"""``dicom-node`` subcommands of the ich pipeline (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.commands import EXIT_OK, CommandGroups, data_error, model_ready


def cmd_synth_ich(args: argparse.Namespace) -> int:
    from pipelines.ich.synth import write_rsna_dataset

    labels, slices = write_rsna_dataset(
        Path(args.out),
        patients=args.patients,
        seed=args.seed,
        n_slices=args.slices,
        size=args.size,
        positive_fraction=args.positive_fraction,
    )
    positives = sum(s.labels["any"] for s in slices)
    print(
        f"wrote {len(slices)} synthetic head CT slices of {args.patients} patients "
        f"({positives} with hemorrhage) to {Path(args.out) / 'dicom'} and labels to {labels}"
    )
    return EXIT_OK


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
    try:
        card = train_ich(
            args.dicom_dir,
            args.labels,
            args.out,
            recipe,
            name=args.name,
            device=args.device,
            synthetic=args.synthetic,
            workers=args.workers,
            say=print,
        )
    except DataError as exc:
        return data_error(exc)
    return model_ready(card)


def cmd_evaluate_ich(args: argparse.Namespace) -> int:
    from pipelines.ich.data import DataError
    from pipelines.ich.evaluate import evaluate_ich, format_report

    try:
        report = evaluate_ich(
            args.model,
            args.dicom_dir,
            args.labels,
            args.out,
            device=args.device,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            tta=args.tta,
        )
    except DataError as exc:
        return data_error(exc)
    print(format_report(report))
    print(f"saved {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'roc.png'}")
    return EXIT_OK


def add_commands(groups: CommandGroups) -> None:
    """``synth ich``, ``train ich``, ``evaluate ich``."""
    from pipelines.common.options import add_recipe_arguments
    from pipelines.ich.train import IchRecipe

    p = groups.synth.add_parser(
        "ich", help="head CT series in RSNA hemorrhage format (DICOM + labels.csv)"
    )
    p.add_argument("--out", required=True, help="output folder (dicom/, labels.csv)")
    p.add_argument("--patients", type=int, default=10, help="number of patients (one series each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=24, help="axial slices per series")
    p.add_argument("--size", type=int, default=256, help="rows = columns of each slice")
    p.add_argument("--positive-fraction", type=float, default=0.6)
    p.set_defaults(func=cmd_synth_ich)

    p = groups.train.add_parser(
        "ich", help="seed 002 from RSNA-format head CT (ID_<sop>_<subtype>,Label)"
    )
    p.add_argument(
        "--dicom-dir", required=True, help="folder of DICOM slices (searched recursively)"
    )
    p.add_argument("--labels", required=True, help="RSNA labels CSV")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/ich-site")
    p.add_argument("--name", help="card name (default: the folder name)")
    add_recipe_arguments(p, IchRecipe, skip={"size"}, flatten=_FLAT, help=_HELP)
    p.add_argument("--size", type=int, help="input pixels (default 224; 380 for EfficientNet-B3)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading slices")
    p.add_argument("--synthetic", action="store_true", help="the data are generated phantoms")
    p.set_defaults(func=cmd_train_ich)

    p = groups.evaluate.add_parser(
        "ich", help="per-label precision/recall/F1/AUC and weighted log loss"
    )
    p.add_argument("--model", required=True, help="model folder (with card.yaml) or the card")
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--labels", required=True, help="RSNA labels CSV")
    p.add_argument("--out", default="ich-evaluation", help="folder for metrics.json and roc.png")
    p.add_argument("--device")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score with the card's test-time augmentation, as the node does (--no-tta: "
        "the identity view only, to measure what TTA adds)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate_ich)
