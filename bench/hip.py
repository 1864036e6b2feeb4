"""Hip osteoporosis pipeline benchmark: images/s against a bare batched forward, and Grad-CAM cost.

For synthetic AP pelvis radiographs (DX, ``--size`` columns) it times

* the node's ``hip-osteoporosis`` pipeline without heatmaps: read, guard,
  localiser input, batched localiser, sides, crops, batched classifier,
  findings — the scoring path of a job;
* a bare batched forward of the same two models on already prepared tensors
  in memory (the baseline: nothing but the models, same batch size: the
  localiser on the prepared images, the classifier on two prepared crops per
  image);
* the seconds one heatmap (Grad-CAM of both necks of one image) adds to a job.

and prints images/s and the pipeline's ratio to the baseline.

Models: the demo card (``models/hip-demo``: localiser at 160 px, classifier
at 64 px) and, with ``--seed-sizes``, the same architectures at the study's
sizes (classifier 224 px, localiser 512 px) with random weights (speed does
not depend on the weights; the localiser then takes every candidate as a
neck). The tiny demo models leave the time to reading and displaying the
radiograph, which grows with its pixels: compare ``--size`` 512 and 2048.

Run: ``.venv/bin/python -m bench.hip [--card models/hip-demo/card.yaml] [--images 16]
[--size 1024] [--seed-sizes]`` (``--smoke`` uses 2 small images and one repeat: CI runs it
so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from bench import best_of
from pipelines.base import SeriesInput
from pipelines.card import ModelCard, load_card
from pipelines.common.detector import as_model_image
from pipelines.common.preprocess import to_model_input
from pipelines.common.train import resolve_device
from pipelines.hip.pipeline import HipOsteoporosis, find_necks
from pipelines.hip.synth import write_hip_dataset

REPO = Path(__file__).resolve().parent.parent
DEMO_CARD = REPO / "models" / "hip-demo" / "card.yaml"


def seed_sized_card(demo: ModelCard, folder: Path) -> Path:
    """A card like ``demo`` at the study's sizes (224 px crops, 512 px localiser), random weights."""
    from pipelines.card import sha256_file, write_card
    from pipelines.hip.model import (
        LOCALISER_FILE,
        build_localiser,
        build_osteoporosis_classifier,
        parse_options,
    )

    folder.mkdir(parents=True, exist_ok=True)
    options = parse_options(demo)
    localiser = options.localiser.model_copy(
        update={"size": 512, "max_size": 683, "score_threshold": 0.0}
    )
    torch.save(build_localiser(localiser).state_dict(), folder / LOCALISER_FILE)
    localiser = localiser.model_copy(update={"sha256": sha256_file(folder / LOCALISER_FILE)})
    torch.save(build_osteoporosis_classifier(demo.architecture).state_dict(), folder / "weights.pt")
    card = demo.model_copy(
        update={
            "name": f"{demo.name}-seed-sizes",
            "input": demo.input.model_copy(update={"size": 224}),
            "weights": demo.weights.model_copy(
                update={"sha256": sha256_file(folder / "weights.pt")}
            ),
            "explainer": demo.explainer.model_copy(update={"target_layer": "layer4"}),
            "options": options.model_copy(update={"localiser": localiser}).model_dump(mode="json"),
        }
    )
    write_card(card, folder / "card.yaml")
    return folder / "card.yaml"


def _with_top_k(card: ModelCard, top_k: int) -> ModelCard:
    return card.model_copy(update={"explainer": card.explainer.model_copy(update={"top_k": top_k})})


def measure(card_path: Path, files: tuple[Path, ...], repeats: int, device: torch.device) -> dict:
    card = load_card(card_path)
    series = [SeriesInput("bench", files)]
    scoring = HipOsteoporosis(_with_top_k(card, 0), device)
    scoring.run(series)  # warm-up: allocator, kernels, page cache
    t_scoring = best_of(lambda: scoring.run(series), repeats)

    # baseline: both models, same batch size, on inputs prepared in memory
    prepared = [scoring.prepare_file(f) for f in files]
    images = [as_model_image(p.image, device) for p in prepared]
    crops = [
        n.crop
        for s in find_necks(scoring.localiser, prepared, device, scoring.options)
        for n in s.necks
    ]
    crop_batch = to_model_input(crops, card.input).to(device)
    batch = scoring.options.batch_size

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                scoring.localiser(images[i : i + batch])
            for i in range(0, len(crop_batch), batch):
                scoring.classifier(crop_batch[i : i + batch])

    bare()
    t_bare = best_of(bare, repeats)
    one = [SeriesInput("bench", files[:1])]
    explained = HipOsteoporosis(_with_top_k(card, 1), device)
    explained.run(one)
    # one image is quick: more repeats, so that other load does not swamp the difference
    tries = max(3, 2 * repeats)
    explain = best_of(lambda: explained.run(one), tries) - best_of(lambda: scoring.run(one), tries)
    return {
        "model": f"{card.name} ({scoring.options.localiser.architecture} "
        f"{scoring.options.localiser.size} px + {card.architecture} {card.input.size} px)",
        "images": len(files),
        "necks": len(crops),
        "scoring_ips": len(files) / t_scoring,
        "bare_ips": len(files) / t_bare,
        "gradcam_s": explain,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, default=DEMO_CARD)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024, help="columns of the phantoms")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--seed-sizes",
        action="store_true",
        help="also the study's sizes (224 px crops, 512 px localiser) with random weights",
    )
    parser.add_argument("--smoke", action="store_true", help="2 small images, one repeat")
    args = parser.parse_args(argv)
    if not args.card.is_file():
        print(
            f"no card at {args.card}: build it with 'dicom-node models build-demo --only hip-demo'",
            file=sys.stderr,
        )
        return 1
    device = resolve_device(args.device)
    size = 320 if args.smoke else args.size
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory(prefix="bench-hip-") as tmp:
        # enough patients for the images asked for; only AP pelvis views, not flipped
        data = write_hip_dataset(
            Path(tmp),
            patients=2 if args.smoke else args.images,
            seed=7,
            size=size,
            second_image_fraction=0.0,
            single_hip_fraction=0.0,
            flipped_fraction=0.0,
        )
        files = tuple(image.path for image in data.images)[: 2 if args.smoke else args.images]
        print(
            f"device {device}, torch threads {torch.get_num_threads()}, {len(files)} images of {size} px"
        )
        cards = [args.card]
        if args.seed_sizes:
            cards.append(seed_sized_card(load_card(args.card), Path(tmp) / "seed-sizes"))
        print(f"{'model':<82}{'pipeline':>10}{'bare fwd':>10}{'ratio':>8}{'+gradcam':>10}")
        for card in cards:
            r = measure(card, files, repeats, device)
            print(
                f"{r['model']:<82}{r['scoring_ips']:>10.2f}{r['bare_ips']:>10.2f}"
                f"{r['scoring_ips'] / r['bare_ips']:>8.2f}{r['gradcam_s']:>9.2f}s"
            )
        print(
            "(images/s; pipeline = read + preprocess + localise + crop + classify + findings, "
            "no heatmap; +gradcam = seconds one heatmap adds to a job)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
