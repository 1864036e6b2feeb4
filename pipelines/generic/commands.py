"""``dicom-node`` subcommands of the generic classifier (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from pipelines import commands as cli


def _write_labelled_radiographs(out_dir: Path, **options: Any) -> list[Any]:
    """:func:`~pipelines.common.phantoms.write_radiograph_dataset`, then the labels CSV
    ``train generic`` reads (``file, label, sop_instance_uid`` and the lesion)."""
    import csv

    from pipelines.common.phantoms import write_radiograph_dataset

    phantoms = write_radiograph_dataset(out_dir, **options)
    with open(out_dir / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "sop_instance_uid", "lesion", "row", "col", "radius"])
        for p in phantoms:
            lesion = p.lesion
            writer.writerow(
                [
                    p.path.name,
                    "lesion" if p.has_lesion else "normal",
                    p.sop_instance_uid,
                    int(p.has_lesion),
                    *(
                        (f"{lesion.row:.1f}", f"{lesion.col:.1f}", f"{lesion.radius:.1f}")
                        if lesion
                        else ("", "", "")
                    ),
                ]
            )
    return phantoms


def cmd_train_generic(args: argparse.Namespace) -> int:
    from pipelines.common.options import recipe_from_args
    from pipelines.generic.recipe import GenericRecipe
    from pipelines.generic.train import DataError, train_generic

    recipe = recipe_from_args(GenericRecipe, args)
    return cli.run_training(
        train_generic,
        args,
        args.images,
        args.labels,
        recipe=recipe,
        errors=(DataError,),
        normal_label=args.normal_label,
    )


def format_report(report: dict) -> str:
    """``evaluate generic``'s summary: accuracy, each class's recall, specificity and F1 with
    their 95 % CIs, and the confusion matrix."""
    lines = [f"{report['n']} images, accuracy {report['report']['accuracy']:.3f}"]
    for name, entry in report["per_class"].items():
        cells = ", ".join(
            f"{metric} {entry[metric]['value']:.3f} [{entry[metric]['ci_low']:.3f}, "
            f"{entry[metric]['ci_high']:.3f}]"
            for metric in ("recall", "specificity", "f1")
            if entry[metric]["value"] is not None
            and entry[metric]["value"] == entry[metric]["value"]
        )
        lines.append(f"  {name} (n+ {entry['n_positive']}): {cells}")
    confusion = report["confusion"]
    lines.append(f"confusion (rows true, columns predicted; {', '.join(confusion['classes'])}):")
    lines.extend("  " + " ".join(f"{n:6d}" for n in row) for row in confusion["matrix"])
    return "\n".join(lines)


def cmd_evaluate_generic(args: argparse.Namespace) -> int:
    from pipelines.generic.train import DataError, evaluate_generic

    return cli.run_evaluation(
        evaluate_generic,
        format_report,
        args,
        args.images,
        args.labels,
        errors=(DataError,),
        saves=("metrics.json",),
    )


def add_commands(groups: cli.CommandGroups) -> None:
    from pipelines.common.options import add_recipe_arguments
    from pipelines.common.phantoms import write_radiograph_dataset
    from pipelines.generic.recipe import GenericRecipe  # plain data: --help stays quick

    cli.add_synth_command(
        groups,
        "radiograph",
        functools.wraps(write_radiograph_dataset)(_write_labelled_radiographs),
        lambda phantoms, args: (
            f"wrote {len(phantoms)} synthetic radiographs (DX) and labels.csv to {args.out}"
        ),
        help="chest-like DX radiographs, some with a bright round lesion",
        defaults={"n": 10, "seed": 0},
    )

    p = groups.train.add_parser(
        "generic",
        help="seed 004 recipe (ResNet-18, new head, SGD) from labelled DICOM or PNG/JPEG, k-fold CV",
    )
    p.add_argument("--images", required=True, help="folder of the images the CSV names")
    p.add_argument("--labels", required=True, help="CSV with file, label (and patient) columns")
    p.add_argument("--normal-label", default="normal", help="the class not reported as a finding")
    cli.add_model_output_arguments(p, example="site-xr")
    add_recipe_arguments(p, GenericRecipe)  # every recipe field, its default from the recipe
    p.set_defaults(func=cmd_train_generic)

    p = groups.evaluate.add_parser("generic", help="measure a generic model on labelled images")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True, help="CSV with file and label columns")
    cli.add_evaluation_arguments(p, out="generic-evaluation", saves="metrics.json", device=False)
    p.set_defaults(func=cmd_evaluate_generic)
