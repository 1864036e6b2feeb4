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

from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.common.demobuild import Say, build_demo_model, demo_description
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


def build_ich_demo(
    models_dir: Path,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    data: IchDemoData | None = None,
    recipe: IchRecipe | None = None,
) -> Path:
    """Generate phantoms, train and evaluate the demo, write ``<models_dir>/ich-demo/card.yaml``.

    An existing card that verifies is reused unless ``force``.

    Raises
    ------
    CardError
        If a card exists but does not verify and ``force`` is False.
    """
    data = data or IchDemoData()
    recipe = replace(recipe or DEMO_RECIPE, seed=seed)

    def build(folder: Path, phantoms: Path, say: Say) -> Path:
        say(f"[ich-demo] writing {data.patients} synthetic head CT series (seed {seed})")
        labels_csv, _ = write_rsna_dataset(
            phantoms,
            patients=data.patients,
            seed=seed,
            n_slices=data.slices,
            size=data.phantom_size,
            positive_fraction=data.positive_fraction,
        )
        return train_ich(
            phantoms / "dicom",
            labels_csv,
            folder,
            recipe,
            name=DEMO_NAME,
            progress=progress,
            synthetic=True,
            description=demo_description(
                "Demo intracranial hemorrhage model (seed 002 architecture, ResNet-18 backbone) "
                "for head CT.",
                "synthetic head-CT phantoms",
            ),
            data_note=(
                f"{data.patients} synthetic head CT series ({data.slices} axial slices of "
                f"{data.phantom_size}x{data.phantom_size}, {data.positive_fraction:.0%} with one "
                "or two hemorrhage subtypes drawn where they occur), RSNA format, split by patient"
            ),
            say=say,
        )

    return build_demo_model(models_dir, DEMO_NAME, build, force=force, progress=progress)
