"""``dicom-node`` subcommands of the generic classifier (see :mod:`pipelines.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.commands import EXIT_OK, CommandGroups


def cmd_synth_radiograph(args: argparse.Namespace) -> int:
    import csv

    from pipelines.common.phantoms import write_radiograph_dataset

    out = Path(args.out)
    phantoms = write_radiograph_dataset(
        out, n=args.n, seed=args.seed, lesion_fraction=args.lesion_fraction
    )
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "sop_instance_uid", "lesion", "row", "col", "radius"])
        for p in phantoms:
            lesion = p.lesion
            writer.writerow(
                [
                    p.path.name,
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


def add_commands(groups: CommandGroups) -> None:
    p = groups.synth.add_parser(
        "radiograph", help="chest-like DX radiographs, some with a bright round lesion"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=10, help="number of single-image studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesion-fraction", type=float, default=0.5)
    p.set_defaults(func=cmd_synth_radiograph)
