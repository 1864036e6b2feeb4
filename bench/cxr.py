"""Chest findings detector benchmark: images/s against a bare batched forward, and explainer cost.

For synthetic PA chest radiographs (1024 x 1024 DX by default) it times, per model,

* the node's ``cxr-findings`` pipeline without heatmaps: read, guard, the
  seed's log transform + color balance, batched detection, findings — the
  scoring path of a job;
* a bare batched forward of the same detector on already prepared tensors in
  memory (the baseline: nothing but the model, same batch size);
* the seconds one heatmap adds to a job, for EigenCAM and for AblationCAM.

and prints images/s and the pipeline's ratio to the baseline (target >= 0.8).

Models: the demo card (``models/cxr-demo``, MobileNet-v3 FPN at 256 px) and,
with ``--architectures``, e.g. the seed's ResNet-50-FPN and the MobileNet-v3
FPN variant at the seed's 800 px, with random weights (speed does not
depend on the weights). ``--explainers`` picks the CAMs timed (AblationCAM
of a ResNet-50-FPN at 800 px runs the detector ~130 times per image: minutes
on a CPU).

Run: ``.venv/bin/python -m bench.cxr [--architectures fasterrcnn_resnet50_fpn
fasterrcnn_mobilenet_v3_large_fpn] [--explainers eigencam ablationcam]``
(``--smoke`` uses 2 small images and one repeat: CI runs it so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from bench import best_of
from pipelines.base import SeriesInput
from pipelines.card import ModelCard, load_card, sha256_file, write_card
from pipelines.common.train import resolve_device
from pipelines.cxr.model import as_model_image
from pipelines.cxr.pipeline import ChestFindings, build_model
from pipelines.cxr.synth import write_cxr_dataset

REPO = Path(__file__).resolve().parent.parent
DEMO_CARD = REPO / "models" / "cxr-demo" / "card.yaml"


def seed_card(demo: ModelCard, folder: Path, architecture: str, size: int) -> Path:
    """A card like ``demo`` for ``architecture`` at ``size`` px with random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    card = demo.model_copy(
        update={
            "name": f"{architecture}-{size}-bench",
            "architecture": architecture,
            "input": demo.input.model_copy(update={"size": size}),
            # torchvision's default proposal counts, as the seed ran them
            "options": {"max_size": 1333},
        }
    )
    model = build_model(card)
    torch.save(model.state_dict(), folder / "weights.pt")
    card = card.model_copy(
        update={
            "weights": demo.weights.model_copy(
                update={"sha256": sha256_file(folder / "weights.pt")}
            )
        }
    )
    write_card(card, folder / "card.yaml")
    return folder / "card.yaml"


def _with_explainer(card: ModelCard, method: str, top_k: int) -> ModelCard:
    return card.model_copy(
        update={"explainer": card.explainer.model_copy(update={"method": method, "top_k": top_k})}
    )


def measure(
    card_path: Path,
    files: tuple[Path, ...],
    repeats: int,
    device: torch.device,
    explainers: tuple[str, ...] = ("eigencam", "ablationcam"),
) -> dict:
    card = load_card(card_path)
    series = [SeriesInput("bench", files)]
    scoring = ChestFindings(_with_explainer(card, card.explainer.method, 0), device)
    scoring.run(series)  # warm-up: allocator, kernels, page cache
    t_scoring = best_of(lambda: scoring.run(series), repeats)

    # baseline: the same detector and batch size on prepared images already in memory
    images = [as_model_image(scoring.prepare_file(f).image, device) for f in files]
    batch = scoring.options.batch_size
    model = scoring.model

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                model(images[i : i + batch])

    bare()
    t_bare = best_of(bare, repeats)
    one = [SeriesInput("bench", files[:1])]
    explain = {}
    for method in explainers:
        pipeline = ChestFindings(_with_explainer(card, method, 1), device)
        plain = ChestFindings(_with_explainer(card, method, 0), device)
        pipeline.run(one)
        explain[method] = best_of(lambda p=pipeline: p.run(one), repeats) - best_of(
            lambda p=plain: p.run(one), repeats
        )
    return {
        "model": f"{card.name} ({card.architecture}, {card.input.size} px)",
        "images": len(files),
        "scoring_ips": len(files) / t_scoring,
        "bare_ips": len(files) / t_bare,
        "explain_s": explain,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, default=DEMO_CARD)
    parser.add_argument(
        "--architectures",
        nargs="*",
        default=[],
        help="also these detectors at --arch-size px with random weights "
        "(e.g. fasterrcnn_resnet50_fpn fasterrcnn_mobilenet_v3_large_fpn)",
    )
    parser.add_argument("--arch-size", type=int, default=800, help="input size of --architectures")
    parser.add_argument(
        "--explainers", nargs="*", default=["eigencam", "ablationcam"], help="CAMs to time"
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="rows = columns of the phantoms")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true", help="2 small images, one repeat")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    n = 2 if args.smoke else args.images
    size = 256 if args.smoke else args.size
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory(prefix="bench-cxr-") as tmp:
        root = Path(tmp)
        cards = [args.card]
        for arch in args.architectures:
            cards.append(seed_card(load_card(args.card), root / arch, arch, args.arch_size))
        data = write_cxr_dataset(root / "data", n=n, seed=7, size=size)
        files = tuple(image.path for image in data.images)
        print(f"device {device}, torch threads {torch.get_num_threads()}, {n} images of {size}^2")
        print(
            f"{'model':<58}{'pipeline':>10}{'bare fwd':>10}{'ratio':>8}"
            f"{'+eigencam':>11}{'+ablationcam':>14}"
        )
        for card in cards:
            r = measure(card, files, repeats, device, tuple(args.explainers))
            cams = {m: f"{r['explain_s'][m]:.2f}s" for m in r["explain_s"]}
            print(
                f"{r['model']:<58}{r['scoring_ips']:>10.2f}{r['bare_ips']:>10.2f}"
                f"{r['scoring_ips'] / r['bare_ips']:>8.2f}"
                f"{cams.get('eigencam', 'n/a'):>11}{cams.get('ablationcam', 'n/a'):>14}"
            )
        print(
            "(images/s; pipeline = read + preprocess + detect + findings, no heatmap; "
            "+cam = seconds one heatmap adds to a job)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
