"""``dicom-node`` subcommands of the generic classifier (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.commands import EXIT_OK, CommandGroups, data_error, model_ready


def cmd_synth_radiograph(args: argparse.Namespace) -> int:
    import csv

    from pipelines.common.phantoms import write_radiograph_dataset

    out = Path(args.out)
    phantoms = write_radiograph_dataset(
        out, n=args.n, seed=args.seed, lesion_fraction=args.lesion_fraction
    )
    with open(out / "labels.csv", "w", newline="") as fh:
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
    print(f"wrote {len(phantoms)} synthetic radiographs (DX) and labels.csv to {out}")
    return EXIT_OK


def cmd_train_generic(args: argparse.Namespace) -> int:
    from pipelines.common.options import recipe_from_args
    from pipelines.generic.recipe import GenericRecipe
    from pipelines.generic.train import DataError, train_generic

    recipe = recipe_from_args(GenericRecipe, args)
    try:
        card = train_generic(
            args.images,
            args.labels,
            args.out,
            recipe,
            name=args.name,
            normal_label=args.normal_label,
            device=args.device,
            synthetic=args.synthetic,
            say=print,
        )
    except DataError as exc:
        return data_error(exc)
    return model_ready(card)


def cmd_evaluate_generic(args: argparse.Namespace) -> int:
    from pipelines.generic.train import DataError, evaluate_generic

    try:
        report = evaluate_generic(
            args.model, args.images, args.labels, args.out, n_bootstrap=args.bootstrap
        )
    except DataError as exc:
        return data_error(exc)
    print(f"{report['n']} images, accuracy {report['report']['accuracy']:.3f}")
    for name, entry in report["per_class"].items():
        cells = ", ".join(
            f"{metric} {entry[metric]['value']:.3f} [{entry[metric]['ci_low']:.3f}, "
            f"{entry[metric]['ci_high']:.3f}]"
            for metric in ("recall", "specificity", "f1")
            if entry[metric]["value"] is not None
            and entry[metric]["value"] == entry[metric]["value"]
        )
        print(f"  {name} (n+ {entry['n_positive']}): {cells}")
    confusion = report["confusion"]
    print(f"confusion (rows true, columns predicted; {', '.join(confusion['classes'])}):")
    for row in confusion["matrix"]:
        print("  " + " ".join(f"{n:6d}" for n in row))
    print(f"saved {Path(args.out) / 'metrics.json'}")
    return EXIT_OK


def add_commands(groups: CommandGroups) -> None:
    from pipelines.common.options import add_recipe_arguments
    from pipelines.generic.recipe import GenericRecipe  # plain data: --help stays quick

    p = groups.synth.add_parser(
        "radiograph", help="chest-like DX radiographs, some with a bright round lesion"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=10, help="number of single-image studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesion-fraction", type=float, default=0.5)
    p.set_defaults(func=cmd_synth_radiograph)

    p = groups.train.add_parser(
        "generic",
        help="seed 004 recipe (ResNet-18, new head, SGD) from labelled DICOM or PNG/JPEG, k-fold CV",
    )
    p.add_argument("--images", required=True, help="folder of the images the CSV names")
    p.add_argument("--labels", required=True, help="CSV with file, label (and patient) columns")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/site-xr")
    p.add_argument("--name", help="card name (default: the folder name)")
    p.add_argument("--normal-label", default="normal", help="the class not reported as a finding")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
    p.add_argument("--synthetic", action="store_true", help="the images are generated phantoms")
    add_recipe_arguments(p, GenericRecipe)  # every recipe field, its default from the recipe
    p.set_defaults(func=cmd_train_generic)

    p = groups.evaluate.add_parser("generic", help="measure a generic model on labelled images")
    p.add_argument("--model", required=True, help="model folder (with card.yaml) or the card")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True, help="CSV with file and label columns")
    p.add_argument("--out", default="generic-evaluation", help="folder for metrics.json")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.set_defaults(func=cmd_evaluate_generic)
