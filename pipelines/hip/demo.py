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

from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.card import CardError, load_card
from pipelines.common.demobuild import Say, build_demo_model, demo_description
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


def build_hip_demo(
    models_dir: Path,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    data: HipDemoData | None = None,
    recipe: HipRecipe | None = None,
) -> Path:
    """Generate phantoms, pair, train and evaluate the demo; write ``<models_dir>/hip-demo/card.yaml``.

    An existing card whose weights and localiser verify is reused unless ``force``.

    Raises
    ------
    CardError
        If a card exists but does not verify and ``force`` is False.
    """
    data = data or HipDemoData()
    recipe = replace(recipe or DEMO_RECIPE, seed=seed)

    def build(folder: Path, phantoms: Path, say: Say) -> Path:
        say(f"[hip-demo] writing {data.patients} patients' synthetic hip radiographs (seed {seed})")
        dataset = write_hip_dataset(
            phantoms,
            patients=data.patients,
            seed=seed,
            size=data.phantom_size,
            years=data.years,
            osteoporosis_fraction=data.osteoporosis_fraction,
        )
        pairing = pair_dexa(dataset.dicom_dir, dataset.dexa_csv)
        say("[hip-demo] " + pairing.summary().replace("\n", "; "))
        labels = phantoms / "labels.csv"
        write_labels(pairing, labels)
        return train_hip(
            dataset.dicom_dir,
            dataset.voc_dir,
            labels,
            folder,
            recipe,
            name=DEMO_NAME,
            progress=progress,
            synthetic=True,
            description=demo_description(
                "Demo osteoporosis screening on hip / pelvis radiographs (seed 003: Faster R-CNN "
                "femoral-neck localiser + ResNet-18 per neck).",
                "synthetic pelvis phantoms whose trabecular texture and cortex follow a DEXA "
                "T-score,",
            ),
            data_note=(
                f"{len(dataset.images)} synthetic AP pelvis / single-hip DX radiographs "
                f"({data.phantom_size} px wide) of {data.patients} patients, "
                f"{data.years[0]}-{data.years[1]}, LabelImg boxes of each femoral neck, labels "
                f"from a synthetic DEXA export paired within +-182 days "
                f"({len(pairing.paired)} paired); test = Study Date in {recipe.test_year}"
            ),
            say=say,
        )

    return build_demo_model(
        models_dir, DEMO_NAME, build, force=force, progress=progress, verify=_verified
    )
