"""``dicom-node`` subcommands of the hip pipeline (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines import commands as cli


def _describe_hip(data: Any, args: argparse.Namespace) -> str:
    positives = sum(image.label for image in data.images)
    return (
        f"wrote {len(data.images)} synthetic hip radiographs (DX) of {args.patients} patients "
        f"({positives} osteoporotic by their T-score) to {data.dicom_dir}, LabelImg boxes to "
        f"{data.voc_dir} and DEXA results to {data.dexa_csv}"
    )


def cmd_pair_dexa(args: argparse.Namespace) -> int:
    from pipelines.hip.dexa import DexaError, pair_dexa, write_labels, write_unpaired

    out = Path(args.out)
    unpaired = Path(args.unpaired) if args.unpaired else out.with_name(f"{out.stem}.unpaired.csv")
    try:
        report = pair_dexa(
            args.dicom_dir,
            args.dexa_csv,
            window_days=args.window_days,
            patient_column=args.patient_column,
            date_column=args.date_column,
            t_score_column=args.t_score_column,
        )
    except (DexaError, ValueError) as exc:  # ValueError: a negative window
        return cli.data_error(exc)
    write_labels(report, out)
    write_unpaired(report, unpaired)
    print(report.summary())
    print(
        f"wrote {out} ({len(report.paired)} labels) and {unpaired} ({len(report.unpaired)} files)"
    )
    return cli.EXIT_OK


def _year(text: str) -> int | str | None:
    if text in ("latest", "none"):
        return None if text == "none" else text
    return int(text)


def _test_year(chosen: int | str | None, labels_csv: str) -> int | None:
    """The held-out year: as given, or the study's choice, the latest year in the labels."""
    if chosen != "latest":
        return chosen if isinstance(chosen, int) else None
    from pipelines.hip.dexa import read_labels

    years = {row.image_date.year for row in read_labels(labels_csv).values() if row.image_date}
    if not years:
        raise ValueError(
            f"{labels_csv} has no image dates to hold out the latest year; "
            "give --test-year YEAR or --test-year none"
        )
    return max(years)


#: The classifier's augmentation takes plain options (--rotation, --zoom); the localiser's
#: recipe takes --localiser-* (--localiser-size, --localiser-augment-rotation).
_FLAT = {"augment"}
#: The study's protocol, where the recipe's default is the quick single split of the demo.
_PROTOCOL = {"folds": 5, "test_year": "latest"}
#: Help of the recipe options whose field has no ``#:`` comment to show.
_HELP = {
    "architecture": "classifier: a torchvision name (study: resnet18)",
    "size": "classifier input (crop) size, pixels",
    "step_size": "StepLR step, epochs",
    "gamma": "StepLR factor",
    "localiser_architecture": "torchvision detector of the femoral necks",
    "localiser_max_size": "cap on the localiser input's longer side, pixels",
    "pretrained": "local torchvision ImageNet weights of the classifier",
}


def _data_errors() -> tuple[type[Exception], ...]:
    """What the trainer and evaluator raise for data they cannot use (imported when needed)."""
    from pipelines.hip.data import HipDataError
    from pipelines.hip.dexa import DexaError
    from pipelines.hip.voc import VocError

    return (HipDataError, DexaError, VocError)


def cmd_train_hip(args: argparse.Namespace) -> int:
    from pipelines.common.options import recipe_from_args
    from pipelines.hip.train import HipRecipe, train_hip

    try:
        args.localiser_max_size = max(args.localiser_max_size, args.localiser_size)
        recipe = recipe_from_args(
            HipRecipe, args, flatten=_FLAT, test_year=_test_year(args.test_year, args.labels)
        )
    except ValueError as exc:
        return cli.data_error(exc)
    inputs = (args.dicom_dir, args.voc_dir, args.labels)
    return cli.run_training(train_hip, args, *inputs, recipe=recipe, errors=_data_errors())


def cmd_evaluate_hip(args: argparse.Namespace) -> int:
    from pipelines.hip.evaluate import evaluate_hip, format_report

    inputs = (args.dicom_dir, args.voc_dir, args.labels)
    return cli.run_evaluation(
        evaluate_hip,
        format_report,
        args,
        *inputs,
        errors=_data_errors(),
        saves=("metrics.json",),
        test_year=args.test_year,
    )


def add_commands(groups: cli.CommandGroups) -> None:
    """``synth hip``, ``dataset pair-dexa``, ``train hip-osteoporosis``, ``evaluate hip-osteoporosis``."""
    from pipelines.common.options import add_recipe_arguments
    from pipelines.hip.synth import write_hip_dataset
    from pipelines.hip.train import HipRecipe

    cli.add_synth_command(
        groups,
        "hip",
        write_hip_dataset,
        _describe_hip,
        help="hip / pelvis radiographs (DX) with LabelImg neck boxes and a DEXA CSV",
        defaults={"patients": 20, "seed": 0},
    )

    p = groups.dataset.add_parser(
        "pair-dexa",
        help="label hip radiographs from the nearest DEXA femoral-neck T-score (seed 003)",
    )
    p.add_argument(
        "--dicom-dir", required=True, help="folder of radiographs (searched recursively)"
    )
    p.add_argument("--dexa-csv", required=True, help="DEXA results: Patient ID, date, T-score")
    p.add_argument("--out", required=True, help="labels CSV to write")
    p.add_argument(
        "--unpaired", help="CSV of the files left out with reasons (default OUT.unpaired.csv)"
    )
    p.add_argument(
        "--window-days", type=int, default=182, help="largest radiograph-DEXA distance, days"
    )
    p.add_argument("--patient-column", default="patient_id")
    p.add_argument("--date-column", default="scan_date")
    p.add_argument("--t-score-column", default="neck_t_score", help="femoral-neck T-score column")
    p.set_defaults(func=cmd_pair_dexa)

    p = groups.train.add_parser(
        "hip-osteoporosis",
        help="seed 003: femoral-neck localiser + ResNet-18 from radiographs, VOC boxes, labels",
    )
    p.add_argument("--dicom-dir", required=True, help="folder of radiographs")
    p.add_argument("--voc-dir", required=True, help="LabelImg XML files (same stem as the DICOM)")
    p.add_argument("--labels", required=True, help="labels CSV of 'dataset pair-dexa'")
    add_recipe_arguments(
        p,
        HipRecipe,
        skip={"test_year", "options"},
        flatten=_FLAT,
        help=_HELP,
        defaults=_PROTOCOL,
    )
    p.add_argument(
        "--test-year",
        type=_year,
        default=_PROTOCOL["test_year"],
        help="hold out images whose Study Date is in this year (study: the latest year of the "
        "labels, the default; 'none': hold out patients instead)",
    )
    cli.add_model_output_arguments(p, example="hip-site")
    p.set_defaults(func=cmd_train_hip)

    p = groups.evaluate.add_parser(
        "hip-osteoporosis",
        help="classification report per class, osteoporosis recall with 95 %% CI, localiser IoU",
    )
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--voc-dir", required=True)
    p.add_argument("--labels", required=True, help="labels CSV of 'dataset pair-dexa'")
    p.add_argument("--test-year", type=int, help="only images whose Study Date is in this year")
    cli.add_evaluation_arguments(p, out="hip-evaluation", saves="metrics.json")
    p.set_defaults(func=cmd_evaluate_hip)
