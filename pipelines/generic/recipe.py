"""The generic classifier's training recipe: plain data, no torch (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenericRecipe:
    """Every training choice (seed 004's, and what it leaves open); all of it goes to the card."""

    architecture: str = field(
        default="resnet18",
        metadata={"help": "torchvision backbone with a new head (seed: resnet18)"},
    )
    size: int = field(default=224, metadata={"help": "input pixels"})
    epochs: int = field(default=10, metadata={"help": "epochs per fold (the best one is kept)"})
    batch_size: int = 16
    lr: float = field(default=0.001, metadata={"help": "SGD learning rate (seed: 0.001)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (seed: 0.9)"})
    weight_decay: float = 0.0
    folds: int = field(default=5, metadata={"help": "cross-validation folds"})
    test_fraction: float = field(
        default=0.2, metadata={"help": "share of the images (patients) held out as test"}
    )
    threshold: float = field(
        default=0.5, metadata={"help": "probability at or above which a class is reported"}
    )
    hflip_probability: float = field(
        default=0.0, metadata={"help": "left-right flips while training (off: a side may matter)"}
    )
    target_layer: str = field(default="layer4", metadata={"help": "Grad-CAM layer"})
    bootstrap_resamples: int = 1000
    seed: int = 0
