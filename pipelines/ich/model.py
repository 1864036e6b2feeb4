"""The position-aware slice classifier of seed 002.

::

    3-window CT slice --> backbone (ResNet-50: 2048-d) ----------------\\
                                                                         concat --> Linear --> ReLU
    z in [0, 1] ------> Linear(1, 64) --> ReLU (64-d) -----------------/           --> Dropout --> Linear(6)

The six logits are independent (sigmoid per label, not softmax): a slice can
show subdural and subarachnoid blood at once, and ``any`` is learnt as its
own output rather than derived, as in the RSNA competition.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines.common.models import build_backbone

#: Backbones the card's ``architecture`` may name; the seed uses ResNet-50 (224 px)
#: and EfficientNet-B3 (380 px).
BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b3")


class ICHNet(nn.Module):
    """Backbone features fused with the slice position; ``forward(x, z) -> (N, num_labels)`` logits.

    Parameters
    ----------
    backbone : str
        One of :data:`BACKBONES`.
    num_labels : int
        Outputs (6 for the RSNA labels).
    z_features : int
        Width of the position embedding (the seed: 64).
    hidden : int
        Width of the fusion layer.
    dropout : float
        Dropout before the output layer.
    pretrained_path : str or Path, optional
        Local torchvision ImageNet state dict of the backbone (never downloaded).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_labels: int = 6,
        *,
        z_features: int = 64,
        hidden: int = 512,
        dropout: float = 0.3,
        pretrained_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(
                f"unsupported ICH backbone {backbone!r}; choose one of {', '.join(BACKBONES)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone, self.feature_dim = build_backbone(
            backbone, in_channels=3, pretrained_path=pretrained_path
        )
        self.position = nn.Sequential(nn.Linear(1, z_features), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim + z_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_labels),
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        position = self.position(z.reshape(-1, 1).to(features.dtype))
        return self.head(torch.cat([features, position], dim=1))


class FixedPosition(nn.Module):
    """``model(x)`` for explainers that call a model with one tensor: ``z`` is bound here.

    Grad-CAM hooks sit on the wrapped network's layers, so the target layer
    is resolved on :attr:`net` (e.g. ``backbone.layer4``).
    """

    z: torch.Tensor  # a buffer

    def __init__(self, net: ICHNet, z: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("z", z.reshape(-1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.z[: x.shape[0]])


class WeightedBCE(nn.Module):
    """Binary cross-entropy per label, weighted-averaged over labels, mean over the batch.

    With the RSNA weights (``any`` 2, others 1) this is the competition's
    weighted multi-label log loss; it accepts soft targets (Mixup).
    """

    weights: torch.Tensor  # a buffer

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_label = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), reduction="none"
        )
        w = self.weights.to(per_label.device)
        return (per_label * w).sum(dim=1).div(w.sum()).mean()
