"""CT slice classifier benchmark: images/s against a bare batched forward, and Grad-CAM cost.

For a synthetic abdominal CT series (40 slices of 512 x 512 by default, like
a clinical scanner) it times, per model,

* the node's ``ct-slice-classifier`` pipeline without heatmaps
  (``explainer.top_k = 0``): order the series, read, HU, window, resize,
  batched softmax, series aggregation, findings with key slices — the
  scoring path of a job;
* a bare batched forward + softmax of the same model on already prepared
  tensors in memory (the baseline: nothing but the model, same batch size);
* the seconds the card's Grad-CAM heatmaps (``explainer.top_k`` slices) add
  to a job;

and prints images/s and the pipeline's ratio to the baseline.

Models: both demo cards (``models/ct-gb-contrast-demo``, MobileNet-v3-large,
and ``models/ct-gb-noncontrast-demo``, MobileNet-v3-small, at 128 px) and,
with ``--architectures``, the study's other architectures at the study's
sizes (e.g. ``inception_v3`` at 299, ``resnet18`` at 224) with random
weights (speed does not depend on the weights).

Run: ``.venv/bin/python -m bench.ctslice [--architectures resnet18 inception_v3]``
(``--smoke`` uses 4 small slices, one repeat and the non-contrast demo:
CI runs it so the benchmark cannot rot; it takes well under a minute).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from bench import best_of
from pipelines.base import SeriesInput
from pipelines.card import ModelCard, load_card, sha256_file, write_card
from pipelines.common.models import default_target_layer
from pipelines.common.preprocess import to_model_input
from pipelines.common.slices import read_slice
from pipelines.common.train import resolve_device
from pipelines.ctslice.pipeline import CtSliceClassifier, build_model
from pipelines.ctslice.synth import write_abdomen_series

REPO = Path(__file__).resolve().parent.parent
DEMO_CARDS = (
    REPO / "models" / "ct-gb-contrast-demo" / "card.yaml",
    REPO / "models" / "ct-gb-noncontrast-demo" / "card.yaml",
)
#: The study's input size of each architecture it compared.
STUDY_SIZES = {"inception_v3": 299}


def seed_card(demo: ModelCard, folder: Path, architecture: str, size: int) -> Path:
    """A card like ``demo`` for ``architecture`` at ``size`` px with random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    card = demo.model_copy(
        update={
            "name": f"{architecture}-{size}-bench",
            "architecture": architecture,
            "input": demo.input.model_copy(update={"size": size}),
            "explainer": demo.explainer.model_copy(
                update={"target_layer": default_target_layer(architecture)}
            ),
        }
    )
    torch.save(build_model(card).state_dict(), folder / "weights.pt")
    card = card.model_copy(
        update={
            "weights": demo.weights.model_copy(
                update={"sha256": sha256_file(folder / "weights.pt")}
            )
        }
    )
    write_card(card, folder / "card.yaml")
    return folder / "card.yaml"


def _top_k(card: ModelCard, k: int) -> ModelCard:
    return card.model_copy(update={"explainer": card.explainer.model_copy(update={"top_k": k})})


def measure(card_path: Path, series: SeriesInput, repeats: int, device: torch.device) -> dict:
    card = load_card(card_path)
    scoring = CtSliceClassifier(_top_k(card, 0), device)
    full = CtSliceClassifier(card, device)
    n = len(series.files)
    scoring.run([series])  # warm-up: allocator, kernels, page cache
    full.run([series])
    t_scoring = best_of(lambda: scoring.run([series]), repeats)
    t_full = best_of(lambda: full.run([series]), repeats)

    # baseline: the same model and batch size on inputs already prepared in memory
    x = to_model_input([read_slice(p, scoring.spec)[1] for p in series.files], scoring.spec)
    x = x.to(device)
    batch = scoring.options.batch_size
    model = scoring.model

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, n, batch):
                torch.softmax(model(x[i : i + batch]).float(), dim=1).cpu()

    bare()
    t_bare = best_of(bare, repeats)
    return {
        "model": f"{card.name} ({card.architecture}, {card.input.size} px)",
        "images": n,
        "scoring_ips": n / t_scoring,
        "bare_ips": n / t_bare,
        "cam_s": t_full - t_scoring,
        "heatmaps": card.explainer.top_k,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, action="append", help="card(s); default both demos")
    parser.add_argument(
        "--architectures",
        nargs="*",
        default=[],
        help="also these architectures at the study's size (224; inception_v3 299), random weights",
    )
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of the phantoms")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="4 slices of 128 px, one repeat, one demo"
    )
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    n = 4 if args.smoke else args.slices
    size = 128 if args.smoke else args.size
    repeats = 1 if args.smoke else args.repeats
    cards = list(args.card or (DEMO_CARDS[1:] if args.smoke else DEMO_CARDS))
    missing = [c for c in cards if not c.is_file()]
    if missing:
        print(
            f"missing card(s) {', '.join(map(str, missing))}: run 'dicom-node models build-demo "
            "--only ct-gb-contrast-demo --only ct-gb-noncontrast-demo' first",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-ctslice-") as tmp:
        root = Path(tmp)
        for arch in args.architectures:
            cards.append(
                seed_card(load_card(cards[0]), root / arch, arch, STUDY_SIZES.get(arch, 224))
            )
        series = {}
        for kind in ("enhanced", "unenhanced"):  # each card gets the kind it was trained on
            slices = write_abdomen_series(
                root / kind, seed=7, index=0, contrast=kind, cholecystitis=True,
                n_slices=n, size=size,
            )  # fmt: skip
            series[kind] = SeriesInput(slices[0].series_instance_uid, tuple(s.path for s in slices))
        print(f"device {device}, torch threads {torch.get_num_threads()}, {n} slices of {size}^2")
        print(f"{'model':<52}{'pipeline':>10}{'bare fwd':>10}{'ratio':>8}{'+Grad-CAM':>12}")
        for card in cards:
            kind = load_card(card).options.get("contrast", "enhanced")
            r = measure(card, series.get(kind, series["enhanced"]), repeats, device)
            print(
                f"{r['model']:<52}{r['scoring_ips']:>10.1f}{r['bare_ips']:>10.1f}"
                f"{r['scoring_ips'] / r['bare_ips']:>8.2f}"
                f"{r['cam_s']:>9.2f}s/{r['heatmaps']}"
            )
        print(
            "(images/s; pipeline = order + read + HU window + resize + forward + series "
            "findings, no heatmap; bare fwd = the model on prepared tensors; +Grad-CAM = "
            "seconds the card's top-k heatmaps add to a job)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
