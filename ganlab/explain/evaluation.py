"""Is a map faithful to the model? Deletion/insertion, ROAD, the randomisation sanity check, mass in a region.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ganlab.errors import GanlabError
from ganlab.explain.artifacts import mass_in_mask
from ganlab.explain.target import Target, check_inputs, eval_mode, probabilities

SANITY_THRESHOLD = 0.5  # rank correlation above this after randomising the model: the map ignores the model
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # Rong et al. 2022 remove 10%, 20%, ... 90%
# Noisy linear imputation (Rong et al. 2022, their road/imputations.py): a removed pixel is the weighted mean
# of its 8 neighbours, 1/6 for the direct and 1/12 for the diagonal ones (renormalised at the border).
ROAD_DIRECT, ROAD_DIAGONAL = 1 / 6, 1 / 12


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
    rank = _pixel_rank(maps)
    fill = torch.full_like(x, float(baseline))
    curves = torch.empty(2, n, steps + 1, dtype=torch.float64, device=x.device)
    with eval_mode(model):
        for k in range(steps + 1):
            changed = rank < round(k * h * w / steps)
            batch = torch.cat([torch.where(changed, fill, x), torch.where(changed, x, fill)])
            prob = probabilities("deletion_insertion_auc", model(batch), _repeat(target, 2), 2 * n)
            curves[:, :, k] = prob.view(2, n).double()
    area = torch.trapezoid(curves, dx=1.0 / steps, dim=2)
    return {"deletion": area[0], "insertion": area[1]}


def _pixel_rank(maps: Tensor, descending: bool = True) -> Tensor:
    """Each pixel's rank by the channel-summed map, (N, 1, H, W): 0 = most positive (``descending``)."""
    n, _, h, w = maps.shape
    order = maps.sum(dim=1).flatten(1).argsort(dim=1, descending=descending, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=maps.device).expand(n, -1))
    return rank.view(n, 1, h, w)


def _repeat(target: Target, times: int) -> Target:
    """The target of a batch that stacks `times` perturbed copies of the images."""
    return target.repeat(times) if isinstance(target, Tensor) and target.dim() == 1 else target


def noisy_linear_imputation(inputs: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0,
                            tol: float = 1e-4, max_iter: int = 2000) -> Tensor:
    """``inputs`` with the ``removed`` pixels (a bool (N, 1, H, W) mask, all channels) filled in as ROAD does.

    Each removed pixel equals the weighted mean of its 8 neighbours (``ROAD_DIRECT`` for the direct,
    ``ROAD_DIAGONAL`` for the diagonal ones), removed or not, so the values are solved jointly: a discrete
    harmonic fill, exact for images that are linear in (row, column), that leaves no constant patch whose
    edge would tell the model where pixels were removed. Rong et al. solve the sparse system with scipy per
    image; here it is the same symmetric positive definite system (W_i x_i - sum_j w_ij x_j = the known
    neighbours' sum, W_i the weight of i's in-image neighbours), solved for every image and channel at once
    by conjugate gradients to relative residual ``tol`` (1e-4: errors ~1e-3, well below the noise). Gaussian
    noise of std ``noise`` (absolute, their default 0.01) is then added to the filled pixels, drawn on the
    CPU from ``seed``.
    """
    x = check_inputs("noisy_linear_imputation", inputs)
    if removed.shape != (x.shape[0], 1, *x.shape[2:]) or removed.dtype != torch.bool:
        raise GanlabError(f"noisy_linear_imputation: removed must be a bool (N, 1, H, W) mask for inputs "
                          f"{tuple(x.shape)}, got {removed.dtype} {tuple(removed.shape)}")
    n, c, h, w = x.shape
    hole = removed.to(x.device).expand(n, c, h, w).reshape(n * c, 1, h, w).to(x.dtype)
    filled = _harmonic_fill(x.reshape(n * c, 1, h, w) * (1 - hole), hole, tol, max_iter)
    generator = torch.Generator().manual_seed(seed)
    jitter = noise * torch.randn(hole.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (filled + hole * jitter).reshape(n, c, h, w)


def _harmonic_fill(known: Tensor, hole: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solve for the ``hole`` pixels (1 = unknown) of (B, 1, H, W) images, ``known`` being zero there.
    Conjugate gradients take about one iteration per pixel of a hole's diameter (~150 for 90% of a 96x96
    image removed around its centre); a coarse-to-fine start did not reduce that."""
    weight = _neighbours(torch.ones_like(hole[:1]))  # W_i: < 1 at the border

    def system(u: Tensor) -> Tensor:  # A u, for u zero outside the holes
        return hole * (weight * u - _neighbours(u))

    b = hole * _neighbours(known)
    u = b / weight  # a start: each hole pixel from its known neighbours only
    r = b - system(u)
    p, rs = r.clone(), _dot(r, r)
    stop = tol ** 2 * _dot(b, b)
    for _ in range(max_iter):
        if bool((rs <= stop).all()):
            break
        ap = system(p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rs / pap, torch.zeros_like(pap))
        u, r = u + alpha * p, r - alpha * ap
        rs_new = _dot(r, r)
        p = r + torch.where(rs > 0, rs_new / rs, torch.zeros_like(rs)) * p
        rs = rs_new
    return known + u


def _neighbours(u: Tensor) -> Tensor:
    """sum_j w_ij u_j over the 8 neighbours of each pixel of (B, 1, H, W) (none outside the image).
    Shifted slices, not a 1-channel conv2d: 5-10x faster on a CPU."""
    p = F.pad(u, (1, 1, 1, 1))
    vertical = p[..., :-2, :] + p[..., 2:, :]       # up + down, (H, W + 2)
    horizontal = p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonal = vertical[..., :-2] + vertical[..., 2:]
    return (vertical[..., 1:-1] + horizontal) * ROAD_DIRECT + diagonal * ROAD_DIAGONAL


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=(1, 2, 3), keepdim=True)


@torch.no_grad()
def road_auc(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None,
             fractions: Iterable[float] = ROAD_FRACTIONS, order: Literal["morf", "lerf"] = "morf",
             noise: float = 0.01, seed: int = 0) -> Tensor:
    """ROAD (remove and debias, Rong et al. 2022): the target's mean probability over ``fractions`` of pixels
    removed, (N,) in [0, 1].

    MoRF removes the most positive pixels of the channel-summed map first (a faithful map: *low*), LeRF the
    least positive first (*high*). Removed pixels are filled by ``noisy_linear_imputation``, not by a constant:
    deletion's fill (0 = mid-grey) is itself out of distribution (MNIST's background is -1), so the model
    reacts to the fill's shape, which is the map's, rather than to the missing evidence. The mean over
    equally spaced fractions stands in for the area under the paper's curve; ``seed`` draws the noise.
    """
    x = check_inputs("road_auc", inputs)
    maps = _check_maps("road_auc", maps, x)
    if order not in ("morf", "lerf"):
        raise GanlabError(f"road_auc: order must be morf (most relevant first) or lerf (least relevant first), "
                          f"got {order!r}")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise GanlabError(f"road_auc: fractions must be values in [0, 1), got {fractions}")
    n, _, h, w = x.shape
    rank = _pixel_rank(maps, descending=order == "morf")
    probs = torch.empty(len(fractions), n, dtype=torch.float64, device=x.device)
    with eval_mode(model):
        for i, fraction in enumerate(fractions):
            imputed = noisy_linear_imputation(x, rank < round(fraction * h * w), noise, seed + i)
            probs[i] = probabilities("road_auc", model(imputed), target, n).double()
    return probs.mean(dim=0)


def own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters a module holds itself, counting a parametrised weight's original (spectral norm
    keeps it in ``module.parametrizations``) as the module's own."""
    own = list(module.parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own += list(module.parametrizations.parameters())
    return own


def randomise_parameters(model: nn.Module, seed: int = 0, modules: Iterable[str] | None = None) -> nn.Module:
    """A copy of ``model`` with every parameter (or only those of the named ``modules``, their own ones)
    redrawn from a Gaussian of that tensor's own mean and std.

    Adebayo et al. re-initialise layers; keeping each tensor's scale keeps the activations in their
    trained range (BatchNorm statistics stay valid), so only the learned *structure* is destroyed.
    Naming every module draws the same values as ``modules=None``.
    """
    rand = copy.deepcopy(model)
    params = list(rand.parameters())
    if modules is not None:
        named = dict(rand.named_modules())
        unknown = [name for name in modules if name not in named]
        if unknown:
            raise GanlabError(f"randomise_parameters: no module named {', '.join(map(repr, unknown))} in "
                              f"{type(model).__name__}")
        chosen = {id(p) for name in modules for p in own_parameters(named[name])}
        params = [p for p in params if id(p) in chosen]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
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
    trained = method_factory(model).attribute(inputs, target).detach()
    randomised = method_factory(randomise_parameters(model, seed)).attribute(inputs, target).detach()
    if trained.shape != randomised.shape:
        raise GanlabError(f"randomisation_sanity: maps changed shape {tuple(trained.shape)} -> "
                          f"{tuple(randomised.shape)} with the randomised model")
    return rank_similarity(trained.abs(), randomised.abs())


def rank_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of two batches of maps (N, ...), per image, (N,); NaN where either map is
    constant (no ranking: torchmetrics returns 0 there, which would read as "passes")."""
    from torchmetrics.functional.regression import spearman_corrcoef  # here: importing torchmetrics takes seconds

    a, b = a.detach().flatten(1).T.double(), b.detach().flatten(1).T.double()
    similarity = spearman_corrcoef(a, b).reshape(a.shape[1])
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
    mask = torch.zeros(maps.shape[0], 1, *maps.shape[-2:], dtype=torch.bool, device=maps.device)
    mask[..., top: top + height, left: left + width] = True
    return mass_in_mask(maps, mask)


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
