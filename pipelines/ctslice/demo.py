"""Build the ``ct-gb-contrast-demo`` and ``ct-gb-noncontrast-demo`` models (seed 000).

The study trained one cholecystitis model on contrast-enhanced abdominal CT
and another on non-contrast CT; the node ships one demo of each, routed by
the series' contrast state. Both are trained on synthetic abdominal CT
phantoms (:mod:`pipelines.ctslice.synth`) of their own kind by the same
code a hospital runs on its own data
(:func:`pipelines.ctslice.train.train_ct_slices`), with the study's best
architecture for each: MobileNet-v3-large for contrast-enhanced CT and
MobileNet-v3-small (tied with ResNet-18 in the study) for non-contrast CT.

What differs from the study, so that both builds together take about two
minutes on two CPU cores in CI, is written to each card: trained from
scratch (no ImageNet weights can be downloaded), 128-pixel input rendered
at 128 pixels (the gallbladder wall and the pericholecystic fluid keep 2-3
pixels), a few hundred slices, a few epochs with a one-cycle learning rate,
residual blocks started as the identity, no horizontal flips for the
contrast model (see :data:`CONTRAST_RECIPE`), one setting instead of a
parameter grid and no repeats (the trainer does both when asked:
``--grid``, ``--repeats``). The cards say, in their
description and provenance, that the models are synthetic and NOT FOR
CLINICAL USE.

Everything is derived from ``seed``: the phantoms (patients ``0..n-1`` of
seed ``seed * 1000 + 11`` for the contrast demo, ``+ 12`` for the
non-contrast one), initialisation, shuffling and augmentation, so a rebuild
on the same machine gives the same weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipelines.common.demobuild import DemoSpec, Phantoms, Say, demo_description
from pipelines.ctslice.data import read_slice_csv
from pipelines.ctslice.synth import Contrast, write_abdomen_dataset
from pipelines.ctslice.train import SliceRecipe, train_ct_slices

CONTRAST_DEMO = "ct-gb-contrast-demo"
NONCONTRAST_DEMO = "ct-gb-noncontrast-demo"


@dataclass(frozen=True)
class CtDemoData:
    """The synthetic data set of one demo build."""

    patients: int = 80
    slices: int = 8
    phantom_size: int = 128
    positive_fraction: float = 0.65
    #: the kind of series: each demo is trained on its own kind
    contrast: Contrast = "enhanced"

    def write(self, folder: Path, seed: int, say: Say | None = None) -> Phantoms:
        """Write the phantoms of a build with ``seed`` into ``folder`` (bit for bit the same;
        their own seed is :func:`phantom_seed`)."""
        contrast = self.contrast
        pseed = phantom_seed(seed, contrast)
        if say:
            say(
                f"[{_DEMOS[contrast]}] writing {self.patients} synthetic {contrast} abdominal CT "
                f"series (seed {pseed})"
            )
        csv_path, _ = write_abdomen_dataset(
            folder,
            patients=self.patients,
            seed=pseed,
            contrast=contrast,
            n_slices=self.slices,
            size=self.phantom_size,
            positive_fraction=self.positive_fraction,
        )
        return Phantoms(
            (read_slice_csv(csv_path),),
            f"{self.patients} synthetic {_KIND[contrast]} abdominal CT series ({self.slices} "
            f"axial slices of {self.phantom_size}x{self.phantom_size}, "
            f"{self.positive_fraction:.0%} of the patients with acute cholecystitis drawn on "
            f"every gallbladder slice), phantom seed {pseed}, slice CSV, split by patient; "
            f"demo data settings {asdict(self)}",
        )


#: The shared part of both demo recipes (the study's protocol at CPU scale).
_BASE = SliceRecipe(
    size=128,
    epochs=5,
    batch_size=16,
    lr=2e-3,
    optimizer="adamw",
    schedule="onecycle",
    rotation=10.0,
    hflip=0.5,
    split=(0.7, 0.15, 0.15),
    aggregation="top_k_mean",
    aggregation_k=3,
    heatmap_top_k=2,
    bootstrap_resamples=1000,
)

#: Contrast-enhanced CT: MobileNet-v3-large, the study's best contrast model.
#: Grad-CAM on ``features.12`` (the last stride-16 block, 8 x 8 at 128 px):
#: the last block's 4 x 4 grid is too coarse to point at a gallbladder.
#: One epoch more than the small model, and no horizontal flips: trained from scratch on a
#: few hundred slices, the larger network learnt mirrored gallbladders too slowly for the
#: build budget (it sat at the class prior for several epochs on some seeds); rotation stays.
CONTRAST_RECIPE = replace(
    _BASE,
    architecture="mobilenet_v3_large",
    epochs=6,
    hflip=0.0,
    contrast="enhanced",
    target_layer="features.12",
)
#: Non-contrast CT: MobileNet-v3-small; ``features.8`` is its last stride-16 block.
NONCONTRAST_RECIPE = replace(
    _BASE, architecture="mobilenet_v3_small", contrast="unenhanced", target_layer="features.8"
)

_PHANTOM_SEED_OFFSET: dict[str, int] = {"enhanced": 11, "unenhanced": 12}
_KIND: dict[str, str] = {"enhanced": "contrast-enhanced", "unenhanced": "non-contrast"}
_DEMOS: dict[str, str] = {"enhanced": CONTRAST_DEMO, "unenhanced": NONCONTRAST_DEMO}


def phantom_seed(seed: int, contrast: Contrast) -> int:
    """Seed of a demo's phantoms; held-out tests use seeds not of this form."""
    return seed * 1000 + _PHANTOM_SEED_OFFSET[contrast]


def _demo(name: str, contrast: Contrast, recipe: SliceRecipe) -> DemoSpec:
    return DemoSpec(
        name,
        CtDemoData(contrast=contrast),
        recipe,
        train_ct_slices,
        demo_description(
            f"Demo acute cholecystitis classifier for {_KIND[contrast]} abdominal CT (seed 000 "
            f"protocol, {recipe.architecture}): slice probabilities aggregated per series.",
            "synthetic abdominal CT phantoms",
        ),
        options={"generator": "pipelines.ctslice.synth.write_abdomen_dataset"},
    )


#: The demos, declared once (``STUDY``'s ``demo:CONTRAST_DEMO_SPEC`` and
#: ``demo:NONCONTRAST_DEMO_SPEC``): MobileNet-v3-large and -small.
CONTRAST_DEMO_SPEC = _demo(CONTRAST_DEMO, "enhanced", CONTRAST_RECIPE)
NONCONTRAST_DEMO_SPEC = _demo(NONCONTRAST_DEMO, "unenhanced", NONCONTRAST_RECIPE)
