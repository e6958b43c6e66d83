"""Intensity-blind structure descriptors for cross-modality losses: MIND (Heinrich et al. 2012), as the
structure-consistency term of MR->CT CycleGANs (Yang et al. 2018).

Hand-written: neither torchmetrics nor torchvision has MIND, and it is a few tensor operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The four in-plane neighbours a pixel's patch is compared with (dy, dx).
SHIFTS = ((0, 1), (1, 0), (0, -1), (-1, 0))


def mind(x: Tensor, patch: int = 3, distance: int = 1) -> Tensor:
    """(N, C, H, W) -> (N, 4C, H, W) in (0, 1]: for each neighbour shift r, exp(-D(x, r) / V(x)), where D is
    the patch mean of the squared difference to the shifted image and V the mean of D over the shifts.

    Dividing by V makes the descriptor independent of contrast and of the sign of an edge, so MR and CT of
    the same anatomy give the same descriptor although their intensities differ (bone: dark in T1, bright
    in CT). V is clamped to [1e-3, 1e3] times its image mean so flat, noise-only regions stay finite.
    """
    k = distance
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    h, w = x.shape[-2:]
    dists = []
    for dy, dx in SHIFTS:
        shifted = padded[..., k + dy * k: k + dy * k + h, k + dx * k: k + dx * k + w]
        dists.append(F.avg_pool2d((x - shifted) ** 2, patch, 1, patch // 2, count_include_pad=False))
    d = torch.stack(dists, dim=2)  # (N, C, 4, H, W)
    v = d.mean(dim=2, keepdim=True)
    mean_v = v.mean(dim=(-2, -1), keepdim=True)
    v = v.clamp(min=1e-3 * mean_v + 1e-12, max=1e3 * mean_v)
    return torch.exp(-d / v).flatten(1, 2)


def mind_loss(x: Tensor, y: Tensor) -> Tensor:
    """Mean |MIND(x) - MIND(y)|: 0 when x and y show the same structure, whatever their intensities."""
    return (mind(x) - mind(y)).abs().mean()


def quantile_loss(x: Tensor, x_mask: Tensor, y: Tensor, y_mask: Tensor, levels: int = 64) -> Tensor:
    """Mean |Q_x(q) - Q_y(q)| over `levels` quantiles of the values inside each mask: the 1-D Wasserstein-1
    distance between the two intensity histograms. Unpaired: x and y need not show the same anatomy."""
    q = torch.linspace(0.0, 1.0, levels, device=x.device, dtype=x.dtype)
    return (torch.quantile(x[x_mask > 0.5], q) - torch.quantile(y[y_mask > 0.5], q)).abs().mean()
