"""Build the ``cxr-demo`` model: seed 001's detector trained on synthetic chest radiographs.

The phantoms (:mod:`pipelines.cxr.synth`) come as DICOM images, binary
finding masks and the COCO file made from those masks, and the model is
trained by the same code a hospital runs on its own data
(:func:`pipelines.cxr.train.train_cxr`), so the demo exercises the whole
training path. What differs from the seed's recipe, so that the build takes
minutes on two CPU cores inside CI, is written to the card: the
MobileNet-v3 FPN variant instead of ResNet-50, trained from scratch (no
COCO weights can be downloaded here) at 256 pixels with a one-cycle learning
rate peaking at 0.02, and fewer proposals per image. The card says, in its
description and provenance, that the model is synthetic and NOT FOR
CLINICAL USE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.common.demobuild import DemoSpec, Phantoms, Say, demo_description
from pipelines.cxr.synth import write_cxr_dataset
from pipelines.cxr.train import CxrRecipe, train_cxr

DEMO_NAME = "cxr-demo"


@dataclass(frozen=True)
class CxrDemoData:
    """The synthetic data set of the demo build."""

    images: int = 240
    phantom_size: int = 256
    finding_rate: float = 0.5

    def write(self, folder: Path, seed: int, say: Say | None = None) -> Phantoms:
        """Write the phantoms of a build with ``seed`` into ``folder`` (bit for bit the same)."""
        if say:
            say(f"[{DEMO_NAME}] writing {self.images} synthetic chest radiographs (seed {seed})")
        dataset = write_cxr_dataset(
            folder, n=self.images, seed=seed, size=self.phantom_size, finding_rate=self.finding_rate
        )
        return Phantoms(
            (dataset.images_dir, dataset.annotations),
            f"{self.images} synthetic PA chest radiographs ({self.phantom_size}x"
            f"{self.phantom_size} DX, two per patient, each finding present with probability "
            f"{self.finding_rate:.0%}), boxes from binary finding masks, split by patient",
        )


#: The demo's training recipe: the seed's, scaled to a CPU build (see the module docstring).
DEMO_RECIPE = CxrRecipe(
    architecture="fasterrcnn_mobilenet_v3_large_fpn",
    size=256,
    max_size=256,
    epochs=18,
    batch_size=4,
    lr=0.02,
    schedule="onecycle",
    split=(0.7, 0.15, 0.15),
    options={
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 600,
        "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 128,
    },
    explainer="ablationcam",
    heatmap_top_k=1,
    cache=True,
    bootstrap_resamples=1000,
)


#: The demo, declared once (``STUDY``'s ``demo:CXR_DEMO``).
CXR_DEMO = DemoSpec(
    DEMO_NAME,
    CxrDemoData(),
    DEMO_RECIPE,
    train_cxr,
    demo_description(
        "Demo chest radiograph findings detector (seed 001: Faster R-CNN, MobileNet-v3 "
        "FPN variant) for aortic calcification, lung infiltrates and cardiac enlargement.",
        "synthetic chest radiograph phantoms",
    ),
)
