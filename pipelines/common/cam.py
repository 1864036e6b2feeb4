"""Class-activation heatmaps, shared by every pipeline, on top of ``pytorch_grad_cam``.

A radiologist must be able to see *where* a model looked, so pipelines
return a :class:`pipelines.base.Heatmap` per explained image: float32,
values in [0, 1], the source image's Rows x Columns. This module hides the
library's details (hooks that must be released, gradients that must be on
even when the caller runs under ``torch.inference_mode``, the resize back to
the source grid).

Methods are looked up by the card's ``explainer.method``. Gradient methods
(``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam``, ``layercam``)
explain a class score; gradient-free ones (``eigencam``, ``ablationcam``)
suit detectors whose outputs are not one score per class: such a pipeline
passes its own ``targets`` (``pytorch_grad_cam.utils.model_targets``) and,
for transformer or detection backbones, a ``reshape_transform``. A pipeline
that needs another method registers it with :func:`register_cam_method`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam import ablation_cam as _ablation_cam
from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pipelines.common.models import target_layer as resolve_layer

logger = logging.getLogger(__name__)

# AblationCAM draws a tqdm bar on stderr for every explained image; in a service that is log
# noise (one bar per heatmap in the journal). Its module-level ``tqdm`` is replaced by a
# pass-through; nothing else in the library uses it.
_ablation_cam.tqdm = type("_Quiet", (), {"tqdm": staticmethod(lambda iterable, **_: iterable)})

#: ``factory(model, target_layers, reshape_transform, **method_options) -> BaseCAM``
CamFactory = Callable[..., BaseCAM]


def _simple(cls: type[BaseCAM]) -> CamFactory:
    def make(
        model: nn.Module,
        layers: list[nn.Module],
        reshape: Callable[..., Any] | None,
        **options: Any,
    ) -> BaseCAM:
        return cls(model=model, target_layers=layers, reshape_transform=reshape, **options)

    return make


_METHODS: dict[str, CamFactory] = {
    "gradcam": _simple(GradCAM),
    "gradcam++": _simple(GradCAMPlusPlus),
    "hirescam": _simple(HiResCAM),
    "xgradcam": _simple(XGradCAM),
    "layercam": _simple(LayerCAM),
    "eigencam": _simple(EigenCAM),
    "eigengradcam": _simple(EigenGradCAM),
    "ablationcam": _simple(AblationCAM),
}


def register_cam_method(name: str, factory: CamFactory) -> None:
    """Make ``name`` usable as a card's ``explainer.method``.

    Raises
    ------
    ValueError
        If ``name`` is already registered.
    """
    key = name.lower()
    if key in _METHODS:
        raise ValueError(f"CAM method {name!r} is already registered")
    _METHODS[key] = factory


def cam_methods() -> list[str]:
    """Names accepted as ``method``, sorted."""
    return sorted(_METHODS)


def check_cam_method(method: str) -> None:
    """Raise a ValueError naming the known methods if ``method`` is unknown."""
    if method.lower() not in _METHODS:
        raise ValueError(
            f"unknown explainer method {method!r}; a card's explainer.method must be one of "
            f"{', '.join(cam_methods())}"
        )


class FpnAblationLayer(AblationLayerFasterRCNN):
    """AblationCAM's Faster R-CNN layer for any FPN, not only ResNet's five levels.

    The library's layer maps ablated channel ``i`` to pyramid level
    ``i // 256`` by the key names of torchvision's ResNet-FPN ('0'..'3',
    'pool'); the MobileNet-v3 FPN returns three levels ('0', '1', 'pool'),
    so channels of its last level would look up a level '2' that does not
    exist. This layer takes the levels in the order the backbone returns
    them, which is the order ``fasterrcnn_reshape_transform`` concatenates.
    """

    def __call__(self, x: Any) -> Any:
        result = self.activations
        levels = list(result.keys())
        channels = next(iter(result.values())).shape[1]
        for i in range(next(iter(result.values())).shape[0]):
            level, channel = divmod(int(self.indices[i]), channels)
            result[levels[level]][i, channel, :, :] = -1000
        return result


def fpn_reshape_transform(features: Mapping[str, torch.Tensor], max_side: int = 64) -> torch.Tensor:
    """A detector backbone's FPN levels as one (N, levels x C, h, w) activation map for a CAM.

    Every level is resized to the finest level's grid (at most ``max_side``
    cells on its longer side, to bound AblationCAM's memory) and the levels
    are concatenated in the backbone's order. The library's own transform
    resizes to the coarsest level instead ('pool', stride 64: a 4 x 4 map
    for a 256-pixel radiograph), far too coarse to show where a finding is.
    """
    levels = list(features.values())
    height, width = (int(v) for v in levels[0].shape[-2:])
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.cat(
        [
            F.interpolate(torch.abs(level), size, mode="bilinear", align_corners=False)
            for level in levels
        ],
        dim=1,
    )


def _graph_starts_here(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: the layer's output becomes the leaf the explanation's gradients flow to."""
    if isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return None


def resize_heatmap(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one map to ``shape`` (Rows, Columns), clipped to [0, 1], float32."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=tuple(int(v) for v in shape), mode="bilinear", align_corners=False)
    return np.clip(out[0, 0].numpy(), 0.0, 1.0).astype(np.float32)


def compute_heatmaps(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target_layer: nn.Module | str,
    class_indices: Sequence[int] | None = None,
    targets: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    output_shapes: Sequence[tuple[int, int]] | None = None,
    method: str = "gradcam",
    reshape_transform: Callable[..., Any] | None = None,
    batch_size: int = 8,
    method_options: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Explain ``model``'s outputs for a batch of preprocessed inputs.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is put in eval mode (the library does so) and must not
        be shared with a thread running inference at the same time, because
        hooks are attached while this runs.
    inputs : torch.Tensor
        (N, C, H, W) batch exactly as fed to the model.
    target_layer : nn.Module or str
        The layer whose activations are weighted, or its dotted name
        (``"layer4"``). Later layers are more semantic but coarser.
    class_indices : sequence of int, optional
        Output index to explain per input (e.g. the positive label).
    targets : sequence of callables, optional
        ``pytorch_grad_cam`` targets per input, for outputs that are not one
        score per class (detectors). Overrides ``class_indices``. With
        neither, the highest-scoring class is explained.
    output_shapes : sequence of (int, int), optional
        (Rows, Columns) of each source image; default the input's H x W.
    method : str
        See :func:`cam_methods`.
    reshape_transform : callable, optional
        Turns the target layer's activations into (N, C, h, w) (ViT, detectors).
    batch_size : int
        Inputs explained per backward pass (bounds memory).
    method_options : mapping, optional
        Keyword arguments of the method's class, e.g. AblationCAM's
        ``ablation_layer`` (a detector's), ``batch_size`` (ablated copies per
        forward pass) and ``ratio_channels_to_ablate``.

    Returns
    -------
    list of numpy.ndarray
        One float32 map in [0, 1] per input, at its output shape. A map is
        all zeros when nothing in the layer supports the explained output.
    """
    check_cam_method(method)
    n = inputs.shape[0]
    if class_indices is not None and len(class_indices) != n:
        raise ValueError(f"got {len(class_indices)} class indices for {n} inputs")
    if targets is not None and len(targets) != n:
        raise ValueError(f"got {len(targets)} targets for {n} inputs")
    if output_shapes is not None and len(output_shapes) != n:
        raise ValueError(f"got {len(output_shapes)} output shapes for {n} inputs")
    layer = resolve_layer(model, target_layer) if isinstance(target_layer, str) else target_layer
    if targets is None and class_indices is not None:
        targets = [ClassifierOutputTarget(int(i)) for i in class_indices]

    device = next(model.parameters()).device
    # Gradients are only needed from the output back to the target layer. With the
    # parameters frozen and the layer's output made a leaf that requires grad, autograd
    # records nothing below that layer: the backbone runs at inference cost and the
    # backward pass stops at the layer (the maps are the same as with a full graph).
    trainable = [p for p in model.parameters() if p.requires_grad]
    # registered before the CAM's own hooks, so that they see the leaf it makes
    start_graph = layer.register_forward_hook(_graph_starts_here)
    try:
        cam = _METHODS[method.lower()](model, [layer], reshape_transform, **(method_options or {}))
    except BaseException:
        start_graph.remove()
        raise
    maps: list[np.ndarray] = []
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, n, max(1, batch_size)):
                # a fresh tensor: inference-mode inputs cannot enter an autograd graph
                chunk = inputs[start : start + batch_size].detach().clone().to(device)
                chunk_targets = list(targets[start : start + batch_size]) if targets else None
                maps.extend(np.asarray(cam(input_tensor=chunk, targets=chunk_targets)))
    finally:
        start_graph.remove()
        cam.activations_and_grads.release()
        for p in trainable:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)  # do not keep a model-sized gradient alive
    out = []
    for i, m in enumerate(maps):
        rows, cols = inputs.shape[-2:]
        shape = output_shapes[i] if output_shapes is not None else (int(rows), int(cols))
        out.append(resize_heatmap(np.nan_to_num(m, nan=0.0), shape))
    return out
