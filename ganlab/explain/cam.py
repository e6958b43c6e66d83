"""Class activation maps: CAM (Zhou et al. 2016), Grad-CAM and guided Grad-CAM (Selvaraju et al. 2017).

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.explain.guided import input_gradient
from ganlab.explain.target import (Target, check_inputs, check_model, class_index, eval_mode,
                                   target_scores)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, 1, h, w) -> (N, 1, H, W), bilinear."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class CAM:
    """Zhou et al. 2016: M_c = sum_k W[c, k] A_k, for logits = W GAP(A) + b; (N, 1, H, W), signed.

    Needs ``feature_maps(x)`` (A, (N, K, h, w)) and ``head`` (nn.Linear(K, classes)) with
    forward(x) = head(mean over h, w of feature_maps(x)); this is checked on every call. The map is not
    rectified (the paper's definition); Grad-CAM of the same layer equals max(CAM, 0) / (h w).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = check_model("CAM", model)
        missing = [what for what, ok in (
            ("a feature_maps(x) method", callable(getattr(model, "feature_maps", None))),
            ("a head that is an nn.Linear", isinstance(getattr(model, "head", None), nn.Linear)),
        ) if not ok]
        if missing:
            raise GanlabError(f"CAM: {type(model).__name__} lacks {' and '.join(missing)}; CAM needs global average "
                              f"pooling + a linear head (e.g. ganlab.nets.classifier.CNNClassifier); "
                              f"use gradcam for other networks")

    @torch.no_grad()
    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        x = check_inputs("CAM", inputs)
        head: nn.Linear = self.model.head
        with eval_mode(self.model):
            maps = self.model.feature_maps(x)
            if maps.dim() != 4 or maps.shape[1] != head.in_features:
                raise GanlabError(f"CAM: feature_maps returned {tuple(maps.shape)}; expected (N, {head.in_features}, "
                                  f"h, w) to match head.in_features")
            logits = self.model(x)
            expected = head(maps.mean(dim=(2, 3)))
            if logits.shape != expected.shape and logits.numel() == expected.numel():
                logits = logits.reshape(expected.shape)
            if logits.shape != expected.shape or not torch.allclose(logits, expected, rtol=1e-4, atol=1e-5):
                raise GanlabError(f"CAM: {type(self.model).__name__}'s forward is not head(GAP(feature_maps(x))); "
                                  f"CAM would not explain its output; use gradcam")
        if head.out_features == 1:
            target_scores("CAM", expected, target, x.shape[0])  # only checks: target must be None (or 0)
            index = torch.zeros(x.shape[0], dtype=torch.long)
        else:
            if target is None:
                target_scores("CAM", expected, target, x.shape[0])  # raises the "pass target=" error
            index = class_index("CAM", target, x.shape[0], head.out_features)
        weights = head.weight[index.to(head.weight.device)]  # (N, K)
        cam = torch.einsum("nk,nkhw->nhw", weights.to(maps.dtype), maps)[:, None]
        return upsample(cam, tuple(x.shape[-2:]))


class GradCAM:
    """Selvaraju et al. 2017: ReLU(sum_k alpha_k A_k), alpha_k = mean over h, w of d score / d A_k;
    (N, 1, H, W), >= 0. ``layer``: a name from ``model.named_modules()``, None for the default (see module doc).
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = check_model(type(self).__name__, model)
        self.layer = layer if layer is not None else getattr(model, "cam_layer", None)
        if self.layer is not None:
            names = dict(model.named_modules())
            if self.layer not in names or self.layer == "":
                raise GanlabError(f"{type(self).__name__}: layer {self.layer!r} is not a submodule of "
                                  f"{type(model).__name__}; choose one of model.named_modules(), e.g. "
                                  f"{', '.join(repr(n) for n in list(names)[1:6])}")

    def resolve_layer(self, x: Tensor) -> str:
        """The layer name in use; the default is found with one no-grad forward pass on ``x``."""
        if self.layer is None:
            self.layer = last_spatial_layer(type(self).__name__, self.model, x)
        return self.layer

    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        owner = type(self).__name__
        x = check_inputs(owner, inputs).clone().requires_grad_(True)
        module = dict(self.model.named_modules())[self.resolve_layer(x)]
        kept: list[Tensor] = []

        def keep(_module: nn.Module, _args: object, output: object) -> Tensor:
            if not isinstance(output, Tensor) or output.dim() != 4:
                raise GanlabError(f"{owner}: layer {self.layer!r} returned "
                                  f"{tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}; "
                                  f"Grad-CAM needs a layer whose output is feature maps (N, K, h, w)")
            kept.append(output)
            return output.clone()  # later in-place ops (ReLU(inplace=True)) then leave the kept maps alone

        with eval_mode(self.model), torch.enable_grad():
            handle = module.register_forward_hook(keep)
            try:
                outputs = self.model(x)
            finally:
                handle.remove()
            scores = target_scores(owner, outputs, target, x.shape[0])
            (acts,) = kept[-1:] or (None,)
            if acts is None:
                raise GanlabError(f"{owner}: layer {self.layer!r} was not called by the forward pass")
            (grads,) = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
            grads = torch.zeros_like(acts) if grads is None else grads
        alpha = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((alpha * acts.detach()).sum(dim=1, keepdim=True))
        return upsample(cam, tuple(x.shape[-2:]))


class GuidedGradCAM(GradCAM):
    """Guided backprop (N, C, H, W) times the upsampled Grad-CAM map (Selvaraju et al. 2017); (N, C, H, W)."""

    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        cam = super().attribute(inputs, target)
        return input_gradient(type(self).__name__, self.model, inputs, target, "guided") * cam


def last_spatial_layer(owner: str, model: nn.Module, x: Tensor) -> str:
    """Name of the last module (in the order their forwards finish) to return (N, K, h, w), h * w > 1."""
    found: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name and "parametrizations" not in name.split("."):  # spectral norm's weight modules are not layers
            handles.append(module.register_forward_hook(
                lambda _m, _a, out, name=name: found.append(name)
                if isinstance(out, Tensor) and out.dim() == 4 and out.shape[0] == x.shape[0]
                and out.shape[2] * out.shape[3] > 1 else None))
    try:
        with eval_mode(model), torch.no_grad():
            model(x.detach())
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise GanlabError(f"{owner}: {type(model).__name__} computes no feature maps (N, K, h, w), so Grad-CAM has "
                          f"no layer to explain; use guided_backprop, deconvnet or occlusion for this network")
    return found[-1]
