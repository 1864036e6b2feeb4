"""ICH pipeline benchmark: slices/s against a bare batched forward, and peak RSS, in one run.

For a synthetic 40-slice head CT (512x512, like a clinical scanner) it times

* the node's ``ich`` pipeline end to end: order the series, read and window
  every slice, batched forward (card TTA), six findings, Grad-CAM heatmaps
  of the top-k slices — what a job costs;
* the same without heatmaps (``explainer.top_k = 0``): the scoring path;
* a bare batched ``model(x, z)`` of the same network on already
  preprocessed tensors in memory (the baseline: nothing but the model);

and prints slices/s and the pipeline's ratio to the baseline (target >= 0.8).
Then, in a fresh process, it runs the pipeline on a 300-slice series and
reports the peak resident memory against the peak of a 40-slice job in the
same process, to show that memory is bounded by the batch, not the series.

Models: the demo card (``models/ich-demo``, ResNet-18 at 128 px) and, with
``--seed-architecture``, the seed's ResNet-50 at 224 px with random weights
(speed does not depend on the weights).

Run: ``.venv/bin/python -m bench.ich [--card models/ich-demo/card.yaml] [--seed-architecture]``
(``--smoke`` uses 4 slices and no RSS run: CI runs it so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pydicom
import torch
from pydicom.uid import generate_uid

from bench import best_of, status_mb
from pipelines.base import SeriesInput
from pipelines.card import ModelCard, load_card, sha256_file, write_card
from pipelines.common.slices import read_slice
from pipelines.common.train import resolve_device
from pipelines.ich.model import ICHNet
from pipelines.ich.pipeline import IntracranialHemorrhage
from pipelines.ich.synth import write_head_ct_series

REPO = Path(__file__).resolve().parent.parent
DEMO_CARD = REPO / "models" / "ich-demo" / "card.yaml"


def seed_card(demo: ModelCard, folder: Path) -> Path:
    """A card for the seed's ResNet-50 at 224 px, random weights, else like ``demo``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = ICHNet("resnet50", len(demo.labels))
    torch.save(model.state_dict(), folder / "weights.pt")
    card = demo.model_copy(
        update={
            "name": "ich-resnet50-bench",
            "architecture": "resnet50",
            "input": demo.input.model_copy(update={"size": 224}),
            "explainer": demo.explainer.model_copy(update={"target_layer": "backbone.layer4"}),
            "weights": demo.weights.model_copy(
                update={"sha256": sha256_file(folder / "weights.pt")}
            ),
            "options": {**demo.options, "hidden": 512},
        }
    )
    write_card(card, folder / "card.yaml")
    return folder / "card.yaml"


def tall_series(files: Sequence, folder: Path, n: int) -> Path:  # type: ignore[type-arg]
    """A series of ``n`` slices made by repeating the slices of ``files`` further up the head.

    Rendering a 512x512 phantom volume costs ~40 MB per slice; the memory
    measurement needs many slices on disk, not a new phantom.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources = [pydicom.dcmread(f.path) for f in files]
    series_uid = generate_uid()
    thickness = float(sources[0].SliceThickness)
    z0 = float(sources[0].ImagePositionPatient[2])
    for k in range(n):
        ds = sources[k % len(sources)]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], round(z0 + k * thickness, 3)]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return folder


def measure(card_path: Path, series: SeriesInput, repeats: int, device: torch.device) -> dict:
    card = load_card(card_path)
    full = IntracranialHemorrhage(card, device)
    scoring = IntracranialHemorrhage(
        card.model_copy(update={"explainer": card.explainer.model_copy(update={"top_k": 0})}),
        device,
    )
    n = len(series.files)
    full.run([series])  # warm-up: allocator, kernels, page cache
    scoring.run([series])
    t_full = best_of(lambda: full.run([series]), repeats)
    t_scoring = best_of(lambda: scoring.run([series]), repeats)

    # baseline: the same network, same batch size, inputs already preprocessed in memory
    from pipelines.common.preprocess import to_model_input

    x = to_model_input([read_slice(p, card.input)[1] for p in series.files], card.input).to(device)
    z = torch.linspace(0, 1, n, device=device)
    batch = scoring.options.batch_size
    views = scoring.options.tta.views
    model = scoring.model

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, n, batch):
                for _ in range(views):
                    torch.sigmoid(model(x[i : i + batch], z[i : i + batch])).cpu()

    bare()
    t_bare = best_of(bare, repeats)
    return {
        "model": f"{card.name} ({card.architecture}, {card.input.size} px, TTA views {views})",
        "slices": n,
        "pipeline_sps": n / t_full,
        "scoring_sps": n / t_scoring,
        "bare_sps": n / t_bare,
        "heatmaps": card.explainer.top_k,
    }


def rss_child(card_path: str, folder: str, device: str) -> None:
    """In a fresh process: load, note RSS, run on the series, print peak RSS (JSON)."""
    card = load_card(card_path)
    pipeline = IntracranialHemorrhage(card, torch.device(device))
    files = tuple(sorted(Path(folder).glob("*.dcm")))
    pipeline.run([SeriesInput("warm-up", files[:40])])
    loaded = status_mb("VmHWM")  # peak so far: imports, model, a 40-slice job
    result = pipeline.run([SeriesInput("bench", files)])
    peak = status_mb("VmHWM")
    print(
        json.dumps(
            {
                "slices": len(files),
                "loaded_mb": loaded,
                "peak_mb": peak,
                "findings": len(result.findings),
                "bytes_on_disk_mb": sum(f.stat().st_size for f in files) / 2**20,
            }
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, default=DEMO_CARD)
    parser.add_argument("--seed-architecture", action="store_true", help="also ResNet-50 at 224")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--rss-slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true", help="4 slices, no RSS run")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    device = resolve_device(args.device)
    slices = 4 if args.smoke else args.slices
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="bench-ich-") as tmp:
        root = Path(tmp)
        cards = [args.card]
        if args.seed_architecture:
            cards.append(seed_card(load_card(args.card), root / "seed-card"))
        files = write_head_ct_series(
            root / "series",
            seed=7,
            index=0,
            hemorrhages=("subdural",),
            n_slices=slices,
            size=128 if args.smoke else args.size,
        )
        series = SeriesInput(files[0].series_instance_uid, tuple(f.path for f in files))
        print(
            f"device {device}, torch threads {torch.get_num_threads()}, {slices} slices of {args.size}^2"
        )
        print(
            f"{'model':<58}{'pipeline':>10}{'scoring':>10}{'bare fwd':>10}{'ratio':>8}{'score/bare':>12}"
        )
        for card in cards:
            r = measure(card, series, 1 if args.smoke else args.repeats, device)
            print(
                f"{r['model']:<58}{r['pipeline_sps']:>10.1f}{r['scoring_sps']:>10.1f}"
                f"{r['bare_sps']:>10.1f}{r['pipeline_sps'] / r['bare_sps']:>8.2f}"
                f"{r['scoring_sps'] / r['bare_sps']:>12.2f}"
            )
        print(
            "(slices/s; pipeline = whole job incl. Grad-CAM of the top-k slices; ratio = pipeline / bare)"
        )
        if args.smoke:
            return 0
        big = tall_series(files, root / "big", args.rss_slices)
        for card in cards:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.ich",
                    "--rss-child",
                    str(card),
                    str(big),
                    str(device),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            )
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"peak RSS {load_card(card).name}: {m['peak_mb']:.0f} MiB for {m['slices']} slices "
                f"({m['bytes_on_disk_mb']:.0f} MiB of DICOM); peak after a 40-slice job "
                f"{m['loaded_mb']:.0f} MiB: {m['peak_mb'] - m['loaded_mb']:+.0f} MiB for 7.5x the slices"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
