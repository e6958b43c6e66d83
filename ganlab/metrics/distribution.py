"""Exact distances between 1-D sample sets (generated vs held-out target)."""

from __future__ import annotations

import torch
from torch import Tensor


def wasserstein1_1d(a: Tensor, b: Tensor) -> float:
    """W1 between two empirical 1-D distributions: the area between their quantile functions.

    Both sets are sorted and compared on a common grid of quantiles, so sizes may differ.
    """
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    n = max(a.numel(), b.numel())
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    qa = a[(q * a.numel()).long().clamp(max=a.numel() - 1)]
    qb = b[(q * b.numel()).long().clamp(max=b.numel() - 1)]
    return (qa - qb).abs().mean().item()


def ks_1d(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return (cdf_a - cdf_b).abs().max().item()
