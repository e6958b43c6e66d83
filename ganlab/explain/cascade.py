"""Cascading randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps", figs. 2 and 4).

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.explain.evaluation import Method, normalize_map, own_parameters, randomise_parameters, rank_similarity
from ganlab.explain.target import Target, check_inputs, eval_mode

TRAINED = "trained"  # the first step of every cascade: the trained model against itself
MEASURES = ("spearman", "ssim", "hog")
HOG_ORIENTATIONS = 9  # unsigned gradient orientations, as Dalal & Triggs and skimage's default


@dataclass
class CascadeResult:
    """One method's cascade. ``layers[0]`` is ``TRAINED``, then the randomised layers, top to bottom; every
    list has one entry per layer: the similarities per image (N,) and |map| summed over channels (N, 1, H, W)."""

    layers: list[str]
    spearman: list[Tensor]
    ssim: list[Tensor]
    hog: list[Tensor]
    maps: list[Tensor]

    def add(self, layer: str, maps: Tensor, similarities: dict[str, Tensor]) -> None:
        self.layers.append(layer)
        self.maps.append(maps)
        for name in MEASURES:
            self.measure(name).append(similarities[name])

    def measure(self, name: str) -> list[Tensor]:
        if name not in MEASURES:
            raise GanlabError(f"CascadeResult: unknown measure {name!r}; expected one of {', '.join(MEASURES)}")
        return getattr(self, name)

    def mean(self, name: str) -> list[float]:
        """Mean over images per layer, ignoring NaN (undefined similarities; NaN if all are)."""
        return [float(torch.nanmean(v.double())) for v in self.measure(name)]

    def standard_error(self, name: str) -> list[float]:
        """Standard error of that mean per layer (0 for one defined value, NaN for none)."""
        errors = []
        for v in self.measure(name):
            v = v.double()[~torch.isnan(v.double())]
            errors.append(float(v.std() / len(v) ** 0.5) if len(v) > 1 else 0.0 if len(v) else float("nan"))
        return errors

    def summary(self, digits: int = 4) -> dict[str, list[float | None]]:
        """measure -> mean per layer, rounded; None where undefined (for YAML)."""
        return {name: [None if np.isnan(m) else round(m, digits) for m in self.mean(name)] for name in MEASURES}

    @classmethod
    def concat(cls, parts: list[CascadeResult]) -> CascadeResult:
        """The cascades of successive batches of images (same model, same layers) as one."""
        if not parts or any(p.layers != parts[0].layers for p in parts):
            raise GanlabError("CascadeResult.concat: need one or more cascades over the same layers")
        fields = {name: [torch.cat(step) for step in zip(*(getattr(p, name) for p in parts))]
                  for name in (*MEASURES, "maps")}
        return cls(layers=list(parts[0].layers), **fields)


def parameterised_layers(model: nn.Module, inputs: Tensor) -> list[str]:
    """Names of the modules that own parameters, in the order a forward pass of ``inputs[:1]`` calls them.

    Forward order, not definition order: a network may define its layers in another order than it runs
    them, or hold layers it does not run. A spectrally normalised layer owns its weight's original.
    """
    x = check_inputs("parameterised_layers", inputs)
    owners = {name: m for name, m in model.named_modules()
              if own_parameters(m) and "parametrizations" not in name.split(".")}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda module, args, name=name: order.append(name))
             for name, m in owners.items()]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(order))  # first call of each, for modules called more than once


def randomisation_steps(model: nn.Module, inputs: Tensor) -> list[tuple[str, list[str]]]:
    """(step name, modules randomised in that step), bottom to top: see the module docstring."""
    modules = dict(model.named_modules())
    steps: list[tuple[str, list[str]]] = []
    for name in parameterised_layers(model, inputs):
        if not steps or any(p.dim() >= 2 for p in own_parameters(modules[name])):
            steps.append((name, [name]))
        else:
            steps[-1][1].append(name)
    return steps


def cascading_randomisation(method_factory: Callable[[nn.Module], Method], model: nn.Module, inputs: Tensor,
                            target: Target = None, seed: int = 0) -> CascadeResult:
    """The cascade of one method on ``inputs``: randomise the steps top to bottom, cumulatively, and compare.

    Each step redraws its modules' parameters with ``randomise_parameters`` (seed ``seed + k`` for the k-th
    step) in a copy of the previous step's model, so ``model`` itself is never touched.
    """
    x = check_inputs("cascading_randomisation", inputs)
    steps = randomisation_steps(model, x)
    if not steps:
        raise GanlabError(f"cascading_randomisation: {type(model).__name__} has no parameters to randomise")

    def abs_maps(net: nn.Module) -> Tensor:
        return method_factory(net).attribute(x, target).detach().abs().sum(dim=1, keepdim=True).float().cpu()

    trained = abs_maps(model)
    result = CascadeResult([], [], [], [], [])
    result.add(TRAINED, trained, map_similarities(trained, trained))
    current = model
    for k, (name, modules) in enumerate(reversed(steps)):
        current = randomise_parameters(current, seed + k, modules)
        maps = abs_maps(current)
        if maps.shape != trained.shape:
            raise GanlabError(f"cascading_randomisation: maps changed shape {tuple(trained.shape)} -> "
                              f"{tuple(maps.shape)} after randomising {name}")
        result.add(name, maps, map_similarities(trained, maps))
    return result


def map_similarities(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """``MEASURES`` -> (N,) similarities of two batches of non-negative maps (N, 1, H, W); NaN where either
    map is constant (blank: there is no ranking or structure to compare)."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # slow import: here

    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 1:
        raise GanlabError(f"map_similarities: need two (N, 1, H, W) batches of the same shape, got "
                          f"{tuple(a.shape)} and {tuple(b.shape)}")
    na, nb = normalize_map(a).float(), normalize_map(b).float()
    side = min(a.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)  # the paper's 11x11 Gaussian window, smaller for tiny maps
    ssim = structural_similarity_index_measure(na, nb, data_range=1.0, kernel_size=kernel, reduction="none")
    # Two blank maps would score SSIM 1 ("identical") where Spearman and HOG have nothing to compare: NaN too.
    constant = (a.flatten(1).amax(1) == a.flatten(1).amin(1)) | (b.flatten(1).amax(1) == b.flatten(1).amin(1))
    ssim = ssim.reshape(-1).double().masked_fill(constant, float("nan"))
    return {"spearman": rank_similarity(a, b), "ssim": ssim, "hog": hog_correlation(na, nb)}


def hog_cell(size: tuple[int, int]) -> int:
    """HOG cell side: 4 px for MNIST's 28, 8 px for PCam's 96 (~12 cells across), at least 2 cells per side."""
    side = min(size)
    return max(1, min(max(4, round(side / 12)), side // 2))


def hog_features(images: Tensor) -> Tensor:
    """HOG descriptors (N, F) of grey images (N, 1, H, W): ``HOG_ORIENTATIONS`` unsigned bins per
    ``hog_cell`` cell, 2x2-cell blocks with L2-Hys normalisation (skimage.feature.hog)."""
    from skimage.feature import hog  # skimage: a dependency already (the PCam fixture); slow import

    if images.dim() != 4 or images.shape[1] != 1:
        raise GanlabError(f"hog_features: need grey images (N, 1, H, W), got {tuple(images.shape)}")
    cell = hog_cell(tuple(images.shape[-2:]))
    arrays = images.detach().double().cpu().numpy()
    return torch.from_numpy(np.stack([hog(a[0], orientations=HOG_ORIENTATIONS, pixels_per_cell=(cell, cell),
                                          cells_per_block=(2, 2), block_norm="L2-Hys") for a in arrays]))


def hog_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the HOG descriptors of two batches of grey images, (N,); NaN where either
    descriptor is constant (an all-zero map has no edges to compare)."""
    fa, fb = hog_features(a), hog_features(b)
    fa, fb = fa - fa.mean(dim=1, keepdim=True), fb - fb.mean(dim=1, keepdim=True)
    norm = fa.norm(dim=1) * fb.norm(dim=1)
    return torch.where(norm > 0, (fa * fb).sum(dim=1) / norm.clamp(min=1e-300), torch.full_like(norm, float("nan")))
