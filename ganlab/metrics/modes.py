"""Mode coverage of a gaussian-mixture target, as PacGAN (Lin et al. 2018, section 5) counts it.

A generated sample is *high quality* if it lies within `3 * std` of the nearest mode centre; it is then
registered to that mode. A mode is *captured* if at least 20 of 2,500 samples are registered to it
(0.8 %). The *reverse KL* is KL(p || uniform) = log K - H(p), where p is the histogram of the high-quality
samples over the K modes (0 when every mode gets the same share; log K when all sit on one mode; 0 log 0 = 0).
For other sample counts the threshold scales with n: a mode needs `count * 2500 >= 20 * n`,
i.e. 8 of 1,000 or 40 of 5,000, so results stay comparable to the paper's tables at any n.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ganlab.errors import GanlabError

PACGAN_SAMPLES = 2500
PACGAN_MIN_PER_MODE = 20
PACGAN_STD_RADIUS = 3.0


class ModeCoverage(NamedTuple):
    modes_captured: int
    high_quality: float  # fraction of all samples that are high quality, in [0, 1]
    per_mode: Tensor  # (K,) high-quality samples registered to each mode
    reverse_kl: float  # KL(p || uniform) in nats of the high-quality samples' mode histogram p


def mode_coverage(samples: Tensor, centers: Tensor, std: float, std_radius: float = PACGAN_STD_RADIUS,
                  min_per_mode: int = PACGAN_MIN_PER_MODE, reference_n: int = PACGAN_SAMPLES) -> ModeCoverage:
    """Modes captured and high-quality fraction of (n, d) `samples` against (K, d) mode `centers`.

    A mode counts as captured when `per_mode * reference_n >= min_per_mode * n` (integer arithmetic, so
    20 of 2,500 passes and 19 does not).
    """
    if samples.ndim != 2 or centers.ndim != 2 or samples.shape[1] != centers.shape[1] or len(samples) == 0:
        raise GanlabError(f"mode_coverage: need samples (n, d) and centers (K, d) with n >= 1, got "
                          f"{tuple(samples.shape)} and {tuple(centers.shape)}")
    samples, centers = samples.detach().double().cpu(), centers.detach().double().cpu()
    distance, nearest = torch.cdist(samples, centers).min(dim=1)
    good = distance <= std_radius * std
    per_mode = torch.bincount(nearest[good], minlength=len(centers))
    captured = int((per_mode * reference_n >= min_per_mode * len(samples)).sum())
    return ModeCoverage(captured, good.double().mean().item(), per_mode, reverse_kl(per_mode))


def reverse_kl(per_mode: Tensor) -> float:
    """KL(p || uniform) = log K - H(p) of a mode histogram (PacGAN's reverse KL); log K for an empty one."""
    total = per_mode.sum()
    if total == 0:
        return float(torch.log(torch.tensor(float(len(per_mode)))))
    p = per_mode.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(torch.log(torch.tensor(float(len(per_mode)), dtype=torch.float64)) - entropy)
