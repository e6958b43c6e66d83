"""Is a map faithful to the model? Deletion/insertion (Petsiuk et al. 2018), the randomisation sanity check
(Adebayo et al. 2018), attribution mass inside a known region, and a display normalisation.

All functions work per image and return (N,) tensors.
"""

from __future__ import annotations

import copy
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.explain.target import Target, check_inputs, eval_mode, probabilities

SANITY_THRESHOLD = 0.5  # rank correlation above this after randomising the model: the map ignores the model


class Method(Protocol):
    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor: ...


def _check_maps(owner: str, maps: Tensor, inputs: Tensor) -> Tensor:
    if maps.dim() != 4 or maps.shape[0] != inputs.shape[0] or maps.shape[-2:] != inputs.shape[-2:]:
        raise GanlabError(f"{owner}: maps must be (N, 1 or C, H, W) matching inputs {tuple(inputs.shape)}, "
                          f"got {tuple(maps.shape)}")
    return maps.detach().to(inputs.device)


@torch.no_grad()
def deletion_insertion_auc(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None,
                           steps: int = 32, baseline: float = 0.0) -> dict[str, Tensor]:
    """Areas under the deletion and insertion curves, each (N,) in [0, 1].

    Pixels are ranked by the map (summed over channels; most positive first). Deletion replaces the top
    k/steps of them by ``baseline`` (0 = mid-grey for images in [-1, 1]) for k = 0..steps; insertion starts
    from the all-baseline image and restores them in the same order. The curve is the model's probability
    of the target (softmax over K logits, sigmoid of a single logit) against the fraction of pixels changed,
    and its area (trapezoid rule over [0, 1]) is therefore in [0, 1]. A faithful map gives a *low* deletion
    and a *high* insertion area. Petsiuk et al. insert into a blurred image; a constant baseline is used
    here for both curves so that the two are mirror images of one perturbation.
    """
    x = check_inputs("deletion_insertion_auc", inputs)
    maps = _check_maps("deletion_insertion_auc", maps, x)
    if steps < 1:
        raise GanlabError(f"deletion_insertion_auc: steps must be >= 1, got {steps}")
    n, _, h, w = x.shape
    order = maps.sum(dim=1).flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    fill = torch.full_like(x, float(baseline))
    curves = torch.empty(2, n, steps + 1, dtype=torch.float64, device=x.device)
    with eval_mode(model):
        for k in range(steps + 1):
            changed = rank < round(k * h * w / steps)
            batch = torch.cat([torch.where(changed, fill, x), torch.where(changed, x, fill)])
            prob = probabilities("deletion_insertion_auc", model(batch), _twice(target), 2 * n)
            curves[:, :, k] = prob.view(2, n).double()
    area = torch.trapezoid(curves, dx=1.0 / steps, dim=2)
    return {"deletion": area[0], "insertion": area[1]}


def _twice(target: Target) -> Target:
    return torch.cat([target, target]) if isinstance(target, Tensor) and target.dim() == 1 else target


def randomise_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter redrawn from a Gaussian of that tensor's own mean and std.

    Adebayo et al. re-initialise layers; keeping each tensor's scale keeps the activations in their
    trained range (BatchNorm statistics stay valid), so only the learned *structure* is destroyed.
    """
    rand = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rand.parameters():
            std = p.std() if p.numel() > 1 else p.abs().reshape(())
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.copy_((noise.to(p.device, p.dtype) * std + p.mean()))
    return rand


def randomisation_sanity(method_factory: Callable[[nn.Module], Method], model: nn.Module, inputs: Tensor,
                         target: Target = None, seed: int = 0) -> Tensor:
    """Spearman rank correlation of |maps| for the trained vs a parameter-randomised model, (N,).

    A method that explains the model gives maps that change when the model's weights are destroyed (low
    correlation); one that ignores the model (an edge detector, or a method dominated by the input) gives
    ~1. Values above ``SANITY_THRESHOLD`` flag the method (see ``fails_sanity``).
    """
    from torchmetrics.functional.regression import spearman_corrcoef  # here: importing torchmetrics takes seconds

    trained = method_factory(model).attribute(inputs, target).detach()
    randomised = method_factory(randomise_parameters(model, seed)).attribute(inputs, target).detach()
    if trained.shape != randomised.shape:
        raise GanlabError(f"randomisation_sanity: maps changed shape {tuple(trained.shape)} -> "
                          f"{tuple(randomised.shape)} with the randomised model")
    a, b = trained.abs().flatten(1).T.double(), randomised.abs().flatten(1).T.double()
    similarity = spearman_corrcoef(a, b).reshape(trained.shape[0])
    # A constant map has no ranking: torchmetrics returns 0 there, which would read as "passes". NaN instead.
    constant = (a.amax(0) == a.amin(0)) | (b.amax(0) == b.amin(0))
    return similarity.masked_fill(constant, float("nan"))


def fails_sanity(similarity: Tensor, threshold: float = SANITY_THRESHOLD) -> Tensor:
    """True per image where the map hardly changed after randomising the model."""
    return similarity > threshold


def centre_box(size: tuple[int, int], box: int = 32) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred box; PCam's label refers to the centre 32 x 32 of 96 x 96."""
    h, w = size
    if box > min(h, w):
        raise GanlabError(f"centre_box: box {box} is larger than the image {h}x{w}")
    return (h - box) // 2, (w - box) // 2, box, box


def mass_in_box(maps: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """Fraction of the positive attribution mass inside ``box`` = (top, left, height, width), (N,).

    Channels are summed first. An image whose map has no positive mass gets NaN (undefined, not 0).
    """
    if maps.dim() != 4:
        raise GanlabError(f"mass_in_box: maps must be (N, C, H, W), got {tuple(maps.shape)}")
    top, left, height, width = box
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > maps.shape[2] or left + width > maps.shape[3]:
        raise GanlabError(f"mass_in_box: box {box} (top, left, height, width) is not inside the "
                          f"{maps.shape[2]}x{maps.shape[3]} maps")
    positive = maps.detach().sum(dim=1).clamp(min=0)
    total = positive.flatten(1).sum(dim=1)
    inside = positive[:, top: top + height, left: left + width].flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total, torch.full_like(total, float("nan")))


def normalize_map(maps: Tensor, percentile: float = 99.0) -> Tensor:
    """For display: the positive part divided by its per-image ``percentile``, clipped to [0, 1].

    Monotone in the attribution, so the hottest region stays hottest, and one hot pixel cannot wash out
    the rest (unlike dividing by the max). No min-max: a shift by the minimum would turn "no evidence"
    into mid-range heat and could flatten a map whose values are all large. Shape is kept.
    """
    if maps.dim() < 2 or not 0 < percentile <= 100:
        raise GanlabError(f"normalize_map: need maps (N, ...) and a percentile in (0, 100], got "
                          f"{tuple(maps.shape)} and {percentile}")
    positive = maps.detach().clamp(min=0)
    flat = positive.flatten(1).float()
    scale = torch.quantile(flat, percentile / 100, dim=1)
    scale = torch.where(scale > 0, scale, flat.amax(dim=1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (positive / scale.view(-1, *[1] * (maps.dim() - 1)).to(positive.dtype)).clamp(max=1)
