"""``dicom-node`` subcommands of the ctslice pipeline (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines import commands as cli

PIPELINE = "ct-slice-classifier"


def _describe_abdomen(written: tuple[Path, list[Any]], args: argparse.Namespace) -> str:
    csv_path, slices = written
    positives = sum(s.label != "normal" for s in slices)
    series = len({s.series_instance_uid for s in slices})
    return (
        f"wrote {len(slices)} synthetic abdominal CT slices in {series} series of "
        f"{args.patients} patients ({positives} slices with cholecystitis) to "
        f"{Path(args.out) / 'dicom'} and the slice list to {csv_path}"
    )


def _read_slices(args: argparse.Namespace) -> list:
    from pipelines.ctslice.data import read_class_dir, read_slice_csv

    return read_slice_csv(args.slices) if args.slices else read_class_dir(args.class_dir)


#: Help of the recipe options whose field has no ``#:`` comment to show.
_HELP = {
    "window_center": "window centre on HU (abdomen: 40)",
    "window_width": "window width on HU (abdomen: 400)",
    "momentum": "SGD momentum",
    "rotation": "max rotation, degrees",
    "hflip": "horizontal flip probability",
    "select": "validation metric that picks the grid setting",
    "contrast": "the kind of series the model is for (logged when a routed series differs)",
    "pretrained": "local torchvision ImageNet weights of the architecture",
    "cache": "keep slices in memory (--no-cache: read them from disk every epoch)",
}


def cmd_train_ct_slices(args: argparse.Namespace) -> int:
    from pipelines.common.options import recipe_from_args
    from pipelines.ctslice.data import DataError
    from pipelines.ctslice.train import SliceRecipe, load_grid, train_ct_slices

    try:
        size = args.size or (299 if args.architecture == "inception_v3" else 224)
        recipe = recipe_from_args(SliceRecipe, args, size=size)
        grid = load_grid(args.grid) if args.grid else None
        slices = _read_slices(args)
    except (DataError, ValueError) as exc:
        return cli.data_error(exc)
    return cli.run_training(
        train_ct_slices,
        args,
        slices,
        recipe=recipe,
        errors=(DataError, ValueError),
        grid=grid,
        repeats=args.repeats,
        labels=args.labels,
        normal=args.normal_label,
        generator="pipelines.ctslice.synth" if args.synthetic else None,
    )


def cmd_evaluate_ct_slices(args: argparse.Namespace) -> int:
    from pipelines.card import CardError
    from pipelines.ctslice.data import DataError
    from pipelines.ctslice.evaluate import evaluate_ct_slices, format_report

    try:
        slices = _read_slices(args)
    except DataError as exc:
        return cli.data_error(exc)
    return cli.run_evaluation(
        evaluate_ct_slices,
        format_report,
        args,
        slices,
        errors=(CardError, DataError),
        saves=("metrics.json",),
    )


def _data_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--slices", help="slice CSV: path,label[,patient_id,series_instance_uid,...]"
    )
    source.add_argument("--class-dir", help="folder with one subfolder of DICOM files per label")


def add_commands(groups: cli.CommandGroups) -> None:
    """``synth ct-abdomen``, ``train ct-slice-classifier``, ``evaluate ct-slice-classifier``."""
    from pipelines.common.options import add_recipe_arguments
    from pipelines.ctslice.synth import write_abdomen_dataset
    from pipelines.ctslice.train import SliceRecipe

    cli.add_synth_command(
        groups,
        "ct-abdomen",
        write_abdomen_dataset,
        _describe_abdomen,
        help="abdominal CT series with/without contrast and cholecystitis (DICOM + slices.csv)",
        defaults={"patients": 10, "seed": 0},
        flags={"n_slices": "slices"},
    )

    p = groups.train.add_parser(
        PIPELINE,
        help="seed 000: CT slice classifier from a slice CSV or class folders, parameter grid, "
        "repeats with 95 %% CI",
    )
    _data_arguments(p)
    p.add_argument(
        "--labels", nargs="+", help="label order (default: the normal label, then sorted)"
    )
    p.add_argument("--normal-label", default="normal", help="the label that is not a finding")
    p.add_argument("--grid", help="YAML list of settings: the study's parameter table")
    p.add_argument(
        "--repeats",
        type=int,
        default=40,
        help="retrain the chosen setting N times for the mean and 95 %% CI of every metric "
        "(the study's 40, the default; 0: skip)",
    )
    add_recipe_arguments(p, SliceRecipe, skip={"size"}, help=_HELP, choices={"channels": (1, 3)})
    p.add_argument("--size", type=int, help="input pixels (default 224; 299 for inception_v3)")
    cli.add_model_output_arguments(p, example="ct-gb-site")
    p.set_defaults(func=cmd_train_ct_slices)

    p = groups.evaluate.add_parser(
        PIPELINE, help="the study's table per slice and per series with bootstrap 95 %% CIs"
    )
    _data_arguments(p)
    cli.add_evaluation_arguments(p, out="ct-slice-evaluation", saves="metrics.json")
    p.set_defaults(func=cmd_evaluate_ct_slices)
