"""``dicom-node`` subcommands of the cxr pipeline (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines import commands as cli


def _describe_cxr(data: Any, args: argparse.Namespace) -> str:
    boxes = json.loads(data.annotations.read_text())["annotations"]
    return (
        f"wrote {len(data.images)} synthetic chest radiographs (DX) of {len(data.patients)} "
        f"patients to {data.images_dir}, finding masks to {data.masks_dir} and {len(boxes)} "
        f"COCO boxes to {data.annotations}"
    )


def cmd_masks_to_coco(args: argparse.Namespace) -> int:
    from pipelines.cxr.coco import CocoError, masks_to_coco, split_by_patient, write_coco

    out = Path(args.out)
    try:
        coco = masks_to_coco(
            Path(args.images), Path(args.masks), args.classes or None, min_pixels=args.min_pixels
        )
        write_coco(coco, out)
        print(
            f"wrote {out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
            f"classes {', '.join(c['name'] for c in coco['categories'])}"
        )
        if args.split:
            names = ("train", "val", "test")[: len(args.split)]
            parts = split_by_patient(coco, args.split, seed=args.seed, images_dir=Path(args.images))
            for name, part in zip(names, parts, strict=True):
                path = out.with_name(f"{out.stem}.{name}{out.suffix}")
                write_coco(part, path)
                patients = len({img["patient_id"] for img in part["images"]})
                print(f"wrote {path}: {len(part['images'])} images of {patients} patients")
    except CocoError as exc:
        return cli.data_error(exc)
    return cli.EXIT_OK


#: The augmentation spec takes plain options (--rotation, --brightness, --contrast).
_FLAT = {"augment"}
#: Help of the recipe options whose field has no ``#:`` comment to show.
_HELP = {
    "architecture": "fasterrcnn_resnet50_fpn (seed), fasterrcnn_mobilenet_v3_large_fpn (CPU "
    "sites), fasterrcnn_resnet18_fpn",
    "max_size": "cap on the longer side, pixels",
    "nesterov": "Nesterov momentum (--no-nesterov: plain momentum)",
    "explainer": "heatmap method of the detector",
}
_CHOICES = {"schedule": ("constant", "onecycle"), "explainer": ("ablationcam", "eigencam")}


def _data_errors() -> tuple[type[Exception], ...]:
    """What the trainer and evaluator raise for data they cannot use (imported when needed)."""
    from pipelines.cxr.coco import CocoError
    from pipelines.cxr.data import DetectionDataError

    return (CocoError, DetectionDataError)


def cmd_train_cxr(args: argparse.Namespace) -> int:
    from pipelines.common.options import recipe_from_args
    from pipelines.cxr.train import CxrRecipe, train_cxr

    args.max_size = max(args.max_size, args.size)
    recipe = recipe_from_args(CxrRecipe, args, flatten=_FLAT)
    return cli.run_training(
        train_cxr, args, args.images, args.coco, recipe=recipe, errors=_data_errors()
    )


def cmd_evaluate_cxr(args: argparse.Namespace) -> int:
    from pipelines.cxr.evaluate import evaluate_cxr, format_report

    return cli.run_evaluation(
        evaluate_cxr,
        format_report,
        args,
        args.images,
        args.coco,
        errors=_data_errors(),
        saves=("metrics.json", "precision_recall.png"),
    )


def add_commands(groups: cli.CommandGroups) -> None:
    """``synth cxr``, ``dataset masks-to-coco``, ``train cxr-findings``, ``evaluate cxr-findings``."""
    from pipelines.common.options import add_recipe_arguments
    from pipelines.cxr.synth import write_cxr_dataset
    from pipelines.cxr.train import CxrRecipe

    cli.add_synth_command(
        groups,
        "cxr",
        write_cxr_dataset,
        _describe_cxr,
        help="chest radiographs with findings: DX DICOM, binary masks and COCO boxes",
        defaults={"n": 20, "seed": 0},
    )

    p = groups.dataset.add_parser(
        "masks-to-coco",
        help="binary finding masks (MASKS/<class>/<image stem>.png) to COCO boxes (seed 001)",
    )
    p.add_argument("--images", required=True, help="folder of the DICOM images")
    p.add_argument(
        "--masks", required=True, help="folder with one subfolder of PNG masks per class"
    )
    p.add_argument("--out", required=True, help="COCO JSON to write")
    p.add_argument(
        "--classes", nargs="+", help="class names in label order (default: the mask folders)"
    )
    p.add_argument("--min-pixels", type=int, default=4, help="smaller mask components are noise")
    p.add_argument(
        "--split",
        nargs="+",
        type=float,
        metavar="SHARE",
        help="also write OUT.train/.val[/.test].json split by Patient ID, e.g. 0.8 0.2",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    p.set_defaults(func=cmd_masks_to_coco)

    p = groups.train.add_parser(
        "cxr-findings", help="seed 001 Faster R-CNN from DICOM chest radiographs + COCO boxes"
    )
    p.add_argument("--images", required=True, help="folder the COCO file_name entries are in")
    p.add_argument("--coco", required=True, help="COCO detection JSON (see dataset masks-to-coco)")
    add_recipe_arguments(p, CxrRecipe, flatten=_FLAT, help=_HELP, choices=_CHOICES)
    cli.add_model_output_arguments(p, example="cxr-site", reads="images")
    p.set_defaults(func=cmd_train_cxr)

    p = groups.evaluate.add_parser(
        "cxr-findings", help="COCO AP/AR summary, per-class AP50 with 95 %% CI, PR curves"
    )
    p.add_argument("--images", required=True, help="folder the COCO file_name entries are in")
    p.add_argument("--coco", required=True, help="COCO detection JSON with the true boxes")
    cli.add_evaluation_arguments(p, out="cxr-evaluation", saves="metrics.json and the PNG")
    p.set_defaults(func=cmd_evaluate_cxr)
