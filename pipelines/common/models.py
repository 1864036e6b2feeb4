"""torchvision classifiers with a new head, and layer lookup for explainers.

Cards name an ``architecture`` (a torchvision model builder) and a number of
labels; this module turns that into an ``nn.Module`` whose last layer has one
output per label. Models are always built with ``weights=None``: the node
never downloads anything. A hospital that wants ImageNet initialisation puts
the torchvision weights file on disk and passes its path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
import torchvision
from torch import nn

from pipelines.card import CardError, ModelCard

logger = logging.getLogger(__name__)


def _replace_linear(parent: nn.Module, attr: str, num_classes: int) -> None:
    old = getattr(parent, attr)
    if isinstance(old, nn.Sequential):  # mobilenet / efficientnet: the last entry is the Linear
        _replace_linear(old, str(len(old) - 1), num_classes)
        return
    if not isinstance(old, nn.Linear):
        raise TypeError(f"expected a Linear head at {attr!r}, found {type(old).__name__}")
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def _resnet_head(model: nn.Module, num_classes: int) -> None:
    _replace_linear(model, "fc", num_classes)


def _classifier_head(model: nn.Module, num_classes: int) -> None:
    _replace_linear(model, "classifier", num_classes)


def _inception_head(model: nn.Module, num_classes: int) -> None:
    """Inception-v3: the main ``fc`` and, when the model has one, the auxiliary ``AuxLogits.fc``.

    The auxiliary classifier only runs in training mode (its loss is added
    to the main one, 0.4 x aux in torchvision's reference recipe); in eval
    mode the model returns the main logits alone.
    """
    _replace_linear(model, "fc", num_classes)
    aux = getattr(model, "AuxLogits", None)
    if aux is not None:
        _replace_linear(aux, "fc", num_classes)


#: architecture name -> (function that swaps the head, dotted name of the stem conv,
#: conventional Grad-CAM layer)
_ARCHITECTURES: dict[str, tuple[Callable[[nn.Module, int], None], str, str]] = {
    "resnet18": (_resnet_head, "conv1", "layer4"),
    "resnet34": (_resnet_head, "conv1", "layer4"),
    "resnet50": (_resnet_head, "conv1", "layer4"),
    "resnet101": (_resnet_head, "conv1", "layer4"),
    "densenet121": (_classifier_head, "features.conv0", "features.denseblock4"),
    "densenet169": (_classifier_head, "features.conv0", "features.denseblock4"),
    "mobilenet_v3_small": (_classifier_head, "features.0.0", "features.-1"),
    "mobilenet_v3_large": (_classifier_head, "features.0.0", "features.-1"),
    "efficientnet_b0": (_classifier_head, "features.0.0", "features.-1"),
    "efficientnet_b3": (_classifier_head, "features.0.0", "features.-1"),
    "convnext_tiny": (_classifier_head, "features.0.0", "features.-1"),
    "inception_v3": (_inception_head, "Conv2d_1a_3x3.conv", "Mixed_7c"),
}

#: Builder arguments beyond ``weights=None``: torchvision warns that Inception-v3's default
#: initialisation will change unless it is asked for explicitly (the same truncated normal).
_BUILD_KWARGS: dict[str, dict[str, bool]] = {"inception_v3": {"init_weights": True}}

#: Smallest input (pixels) each architecture accepts, where it is more than a few pixels.
#: Inception-v3 needs 75 px to run and 299 px (its native size) to train its auxiliary
#: classifier, whose 5 x 5 convolution needs a 17 x 17 Mixed_6e map.
MIN_INPUT_SIZE: dict[str, int] = {"inception_v3": 75}
MIN_TRAIN_SIZE: dict[str, int] = {"inception_v3": 299}


def supported_architectures() -> list[str]:
    """Architecture names that :func:`build_classifier` accepts, sorted."""
    return sorted(_ARCHITECTURES)


def default_target_layer(architecture: str) -> str:
    """The conventional Grad-CAM layer of an architecture (its last feature block)."""
    _check_architecture(architecture)
    return _ARCHITECTURES[architecture][2]


def _check_architecture(architecture: str) -> None:
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {architecture!r}; a card's 'architecture' must be one of "
            f"{', '.join(supported_architectures())}"
        )


def _adapt_stem(model: nn.Module, stem: str, in_channels: int) -> None:
    """Replace the first convolution for ``in_channels`` inputs.

    Existing (e.g. ImageNet) filters are averaged over their RGB inputs and
    repeated, so a greyscale model keeps what the pretrained stem had learnt.
    """
    old = model.get_submodule(stem)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"expected a Conv2d stem at {stem!r}, found {type(old).__name__}")
    if old.in_channels == in_channels:
        return
    pair = tuple[int, int]
    padding = old.padding if isinstance(old.padding, str) else cast(pair, old.padding)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=cast(pair, old.kernel_size),
        stride=cast(pair, old.stride),
        padding=padding,
        dilation=cast(pair, old.dilation),
        groups=old.groups,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        mean = old.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (old.in_channels / in_channels))
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, attr = stem.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def build_classifier(
    architecture: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    pretrained_path: str | Path | None = None,
) -> nn.Module:
    """Build a torchvision classifier with a new ``num_classes`` head.

    Parameters
    ----------
    architecture : str
        A torchvision builder name, see :func:`supported_architectures`.
    num_classes : int
        Outputs of the new head (one per card label).
    in_channels : int
        Input channels (1-3); the stem convolution is replaced when not 3.
    pretrained_path : str or Path or None
        Optional local torchvision state dict of the *original* 1000-class
        model (e.g. the ImageNet file a hospital copied next to the card). It
        is loaded strictly before the head is replaced, so a wrong file fails
        loudly instead of silently leaving layers random. Never downloaded.
        (Inception-v3's ImageNet weights expect inputs scaled to [-1, 1]:
        give such a card ``mean`` 0.5 and ``std`` 0.5.)

    Returns
    -------
    torch.nn.Module
        The model, in training mode, on the CPU.

    Raises
    ------
    ValueError
        If the architecture is unknown or ``num_classes`` < 1.
    FileNotFoundError
        If ``pretrained_path`` is given but does not exist.
    """
    _check_architecture(architecture)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 1 <= in_channels <= 3:
        raise ValueError(f"in_channels must be 1, 2 or 3, got {in_channels}")
    swap_head, stem, _ = _ARCHITECTURES[architecture]
    model = torchvision.models.get_model(
        architecture, weights=None, **_BUILD_KWARGS.get(architecture, {})
    )
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights {path} do not exist; copy the torchvision state dict for "
                f"{architecture} there or leave pretrained_path unset to train from scratch"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        logger.info("loaded pretrained %s weights from %s", architecture, path)
    swap_head(model, num_classes)
    _adapt_stem(model, stem, in_channels)
    return model


def _head_path(architecture: str) -> tuple[str, ...]:
    """Dotted path of the final Linear layer of a model built by :func:`build_classifier`."""
    swap_head, _, _ = _ARCHITECTURES[architecture]
    return ("fc",) if swap_head in (_resnet_head, _inception_head) else ("classifier",)


def build_backbone(
    architecture: str,
    *,
    in_channels: int = 3,
    pretrained_path: str | Path | None = None,
) -> tuple[nn.Module, int]:
    """A torchvision classifier without its head: image batch -> pooled feature vectors.

    The final Linear layer is replaced by ``nn.Identity``, so the module returns
    the globally pooled features (2048-d for ResNet-50, 1536-d for
    EfficientNet-B3) that a task-specific head (e.g. fused with other inputs)
    consumes. Layer names are torchvision's, so Grad-CAM layers such as
    ``layer4`` or ``features.-1`` resolve as for :func:`build_classifier`.

    Returns
    -------
    (module, feature_dim)
    """
    model = build_classifier(
        architecture, 1, in_channels=in_channels, pretrained_path=pretrained_path
    )
    parent: nn.Module = model
    (attr,) = _head_path(architecture)
    head = getattr(parent, attr)
    if isinstance(head, nn.Sequential):  # mobilenet / efficientnet: [..., Linear]
        parent, attr = head, str(len(head) - 1)
        head = head[-1]
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a Linear head in {architecture}, found {type(head).__name__}")
    setattr(parent, attr, nn.Identity())
    return model, head.in_features


def target_layer(model: nn.Module, name: str) -> nn.Module:
    """Resolve a dotted layer name such as ``"layer4"`` or ``"features.-1"``.

    Integer parts index into ``nn.Sequential``/``nn.ModuleList`` containers
    and may be negative, so cards can say "the last feature block" without
    knowing its length.

    Raises
    ------
    ValueError
        If a part of the name does not exist; the message lists the children
        available at that point.
    """
    module = model
    for part in name.split("."):
        children = dict(module.named_children())
        if part in children:
            module = children[part]
            continue
        try:
            index = int(part)
        except ValueError:
            index = None
        if index is not None and isinstance(module, nn.Sequential | nn.ModuleList):
            try:
                module = module[index]
                continue
            except IndexError:
                pass
        raise ValueError(
            f"layer {name!r} not found: no child {part!r} in {type(module).__name__} "
            f"(children: {', '.join(children) or 'none'})"
        )
    return module


def load_weights(model: torch.nn.Module, card: ModelCard) -> None:
    """Load the card's weights file (a state dict) into ``model``.

    The sha256 was checked by :func:`pipelines.card.load_card`; this checks
    that the tensors fit the card's architecture and label count.

    Raises
    ------
    CardError
        If the file cannot be read or does not fit the model.
    """
    path = card.weights_path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable / unsafe files
        raise CardError(
            f"cannot read weights {path} of card {card.name!r}: {exc}; "
            "the file must be a torch state dict saved with torch.save(model.state_dict())"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise CardError(
            f"weights {path} do not fit the {card.pipeline!r} model with a {card.architecture} "
            f"backbone, {len(card.labels)} outputs and {card.input.channels} input channel(s) "
            f"as card {card.name!r} says: {exc}"
        ) from exc
