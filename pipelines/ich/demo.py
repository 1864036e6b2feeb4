"""Build the ``ich-demo`` model: seed 002 trained on synthetic head-CT phantoms.

The phantoms (:mod:`pipelines.ich.synth`) are written in the RSNA format and
the model is trained by the same code a hospital runs on its own data
(:func:`pipelines.ich.train.train_ich`), so the demo exercises the whole
training path. What differs from the seed's recipe, so that the build takes
a few minutes on two CPU cores inside CI, is written to the card: a
ResNet-18 backbone instead of ResNet-50, 128-pixel input instead of 224, no
ImageNet initialisation and fewer epochs. The card says, in its description
and provenance, that the model is synthetic and NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.common.demobuild import DemoSpec, Phantoms, Say, demo_description
from pipelines.ich.synth import write_rsna_dataset
from pipelines.ich.train import IchRecipe, train_ich

DEMO_NAME = "ich-demo"


@dataclass(frozen=True)
class IchDemoData:
    """The synthetic data set of the demo build."""

    patients: int = 60
    slices: int = 20
    phantom_size: int = 256
    positive_fraction: float = 0.75

    def write(self, folder: Path, seed: int, say: Say | None = None) -> Phantoms:
        """Write the phantoms of a build with ``seed`` into ``folder`` (bit for bit the same)."""
        if say:
            say(f"[{DEMO_NAME}] writing {self.patients} synthetic head CT series (seed {seed})")
        labels_csv, _ = write_rsna_dataset(
            folder,
            patients=self.patients,
            seed=seed,
            n_slices=self.slices,
            size=self.phantom_size,
            positive_fraction=self.positive_fraction,
        )
        return Phantoms(
            (folder / "dicom", labels_csv),
            f"{self.patients} synthetic head CT series ({self.slices} axial slices of "
            f"{self.phantom_size}x{self.phantom_size}, {self.positive_fraction:.0%} with one or "
            "two hemorrhage subtypes drawn where they occur), RSNA format, split by patient",
        )


#: The demo's training recipe: the seed's, scaled to a CPU build (see the module docstring).
DEMO_RECIPE = IchRecipe(
    backbone="resnet18",
    size=128,
    epochs=12,
    batch_size=16,
    lr=1e-3,
    weight_decay=1e-4,
    hidden=256,
    # 12 validation patients: enough positives of every subtype to pick thresholds
    split=(0.6, 0.2, 0.2),
    # layer4 of ResNet-18 is a 4x4 grid at 128 px: too coarse to point at a bleed
    target_layer="backbone.layer3",
    cache=True,
    bootstrap_resamples=1000,
    # the seed's flips without its rotations: half the views, for the CPU
    tta_rotations=(),
)


#: The demo, declared once (``STUDY``'s ``demo:ICH_DEMO``).
ICH_DEMO = DemoSpec(
    DEMO_NAME,
    IchDemoData(),
    DEMO_RECIPE,
    train_ich,
    demo_description(
        "Demo intracranial hemorrhage model (seed 002 architecture, ResNet-18 backbone) "
        "for head CT.",
        "synthetic head-CT phantoms",
    ),
)
