"""Build the ``hip-demo`` model: seed 003's localiser and classifier trained on phantoms.

The phantoms (:mod:`pipelines.hip.synth`) come as DICOM radiographs,
LabelImg VOC boxes and a DEXA export; the build pairs them with
:func:`pipelines.hip.dexa.pair_dexa` and trains with
:func:`pipelines.hip.train.train_hip`, the code a hospital runs on its own
data, with the study's temporal split (the last year held out as the test).
What differs from the study's recipe, so that the build takes a few minutes
on two CPU cores inside CI, is written to the card: crops of 64 pixels
instead of 224 (a phantom's neck region is about 35 source pixels, so
nothing is lost), batch 16, 12 epochs with the learning rate 0.01 stepped
down after 8, one validation split instead of five folds; the localiser is
the MobileNet-v3 FPN Faster R-CNN trained from scratch at 160 pixels for 14
epochs with a one-cycle learning rate peaking at 0.02, fewer proposals and
a 256-wide box head. Nothing is pretrained (no weights can be downloaded).
The build runs torch on one intra-op thread, so the weights are the same
whatever the machine's core count. The card says, in its description and
provenance, that the model is synthetic and NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.card import CardError, load_card
from pipelines.common.demobuild import DemoSpec, Phantoms, Say, demo_description
from pipelines.hip.dexa import pair_dexa, write_labels
from pipelines.hip.model import parse_options, verify_localiser
from pipelines.hip.synth import write_hip_dataset
from pipelines.hip.train import SEED_AUGMENT, HipRecipe, LocaliserRecipe, train_hip

DEMO_NAME = "hip-demo"


@dataclass(frozen=True)
class HipDemoData:
    """The synthetic data set of the demo build."""

    patients: int = 130
    phantom_size: int = 320
    years: tuple[int, int] = (2018, 2022)
    osteoporosis_fraction: float = 0.45

    def write(self, folder: Path, seed: int, say: Say | None = None) -> Phantoms:
        """Write the phantoms of a build with ``seed`` into ``folder`` (bit for bit the same),
        paired with their DEXA export as a hospital's would be."""
        if say:
            say(
                f"[{DEMO_NAME}] writing {self.patients} patients' synthetic hip radiographs "
                f"(seed {seed})"
            )
        dataset = write_hip_dataset(
            folder,
            patients=self.patients,
            seed=seed,
            size=self.phantom_size,
            years=self.years,
            osteoporosis_fraction=self.osteoporosis_fraction,
        )
        pairing = pair_dexa(dataset.dicom_dir, dataset.dexa_csv)
        if say:
            say(f"[{DEMO_NAME}] " + pairing.summary().replace("\n", "; "))
        labels = folder / "labels.csv"
        write_labels(pairing, labels)
        return Phantoms(
            (dataset.dicom_dir, dataset.voc_dir, labels),
            f"{len(dataset.images)} synthetic AP pelvis / single-hip DX radiographs "
            f"({self.phantom_size} px wide) of {self.patients} patients, "
            f"{self.years[0]}-{self.years[1]}, LabelImg boxes of each femoral neck, labels "
            f"from a synthetic DEXA export paired within +-182 days "
            f"({len(pairing.paired)} paired); the recipe's test_year is the held-out test",
        )


#: The demo's recipe: the study's, scaled to a CPU build (see the module docstring).
DEMO_RECIPE = HipRecipe(
    architecture="resnet18",
    size=64,
    epochs=12,
    batch_size=16,
    lr=0.01,
    momentum=0.9,
    step_size=8,
    gamma=0.1,
    augment=SEED_AUGMENT,
    crop_margin=0.15,
    threshold=0.5,
    folds=0,
    test_year=2022,
    val_fraction=0.2,
    target_layer="layer3",
    heatmap_top_k=1,
    localiser=LocaliserRecipe(
        architecture="fasterrcnn_mobilenet_v3_large_fpn",
        size=160,
        max_size=214,
        epochs=14,
        batch_size=4,
        lr=0.02,
        schedule="onecycle",
        score_threshold=0.5,
        options={
            "rpn_pre_nms_top_n_train": 300,
            "rpn_post_nms_top_n_train": 100,
            "rpn_pre_nms_top_n_test": 150,
            "rpn_post_nms_top_n_test": 30,
            "box_batch_size_per_image": 32,
            "representation_size": 256,
        },
    ),
    cache=True,
    bootstrap_resamples=1000,
)


def _verified(card_path: Path) -> bool:
    """``existing_card`` that also checks the localiser's sha256 (CardError naming --force)."""
    try:
        card = load_card(card_path)
        verify_localiser(card, parse_options(card).localiser)
    except CardError as exc:
        raise CardError(f"{exc}. Rebuild the demo model with force=True (--force).") from exc
    return True


#: The demo, declared once (``STUDY``'s ``demo:HIP_DEMO``).
HIP_DEMO = DemoSpec(
    DEMO_NAME,
    HipDemoData(),
    DEMO_RECIPE,
    train_hip,
    demo_description(
        "Demo osteoporosis screening on hip / pelvis radiographs (seed 003: Faster R-CNN "
        "femoral-neck localiser + ResNet-18 per neck).",
        "synthetic pelvis phantoms whose trabecular texture and cortex follow a DEXA T-score,",
    ),
    verify=_verified,
)
