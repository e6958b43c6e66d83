"""CT and MR intensities to ganlab's [-1, 1] and back.

CT is quantitative (Hounsfield units), so it gets one fixed linear map for every patient and can be inverted
exactly to HU for metrics (MAE in HU) and for writing synthetic CTs. MR intensities are arbitrary per scanner
and per scan, so each volume is normalised on its own statistics, taken inside the body mask so that the
amount of air around the head does not shift them.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from ganlab.errors import GanlabError

HU_MIN = -1024.0  # air and anything below (the scanner's floor) maps to -1
AIR_HU = -1000.0  # air by definition of the Hounsfield scale
HU_MAX = 3000.0  # dense cortical bone / dental fillings; above is clipped to +1
MR_METHODS = ("percentile", "zscore")
ZSCORE_SPAN = 3.0  # zscore: mean +- 3 std maps to +-1

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _clip(x: Array, lo: float, hi: float) -> Array:
    if isinstance(x, torch.Tensor):
        x = x if x.is_floating_point() else x.float()
        return x.clamp(lo, hi)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    return np.clip(x, lo, hi)


def ct_to_unit(hu: Array) -> Array:
    """HU -> [-1, 1]: clip to [HU_MIN, HU_MAX], then map linearly (HU_MIN -> -1, HU_MAX -> +1)."""
    return (_clip(hu, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN) * 2.0 - 1.0


def unit_to_ct(x: Array) -> Array:
    """[-1, 1] -> HU, the inverse of `ct_to_unit` on [HU_MIN, HU_MAX]; inputs outside [-1, 1] are clipped
    first, so a generator's output always lands in the HU range the model was trained on."""
    return (_clip(x, -1.0, 1.0) + 1.0) / 2.0 * (HU_MAX - HU_MIN) + HU_MIN


def mr_statistics(volume: np.ndarray, mask: np.ndarray | None = None, method: str = "percentile",
                  percentiles: tuple[float, float] = (0.5, 99.5), source: str = "MR volume") -> tuple[float, float]:
    """The (lo, hi) intensities that `normalize_mr` maps to -1 and +1."""
    if method not in MR_METHODS:
        raise GanlabError(f"data.mr_norm={method!r}: expected one of {', '.join(MR_METHODS)}")
    volume = np.asarray(volume)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != volume.shape:
            raise GanlabError(f"{source}: mask shape {mask.shape} differs from the volume's {volume.shape}")
        values = volume[mask > 0]
    else:
        values = volume.ravel()
    if values.size == 0:
        raise GanlabError(f"{source}: the mask is empty, no voxels to take MR statistics from")
    values = values.astype(np.float64)
    if method == "percentile":
        p_lo, p_hi = percentiles
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise GanlabError(f"data.mr_percentiles={list(percentiles)}: expected 0 <= low < high <= 100")
        lo, hi = (float(v) for v in np.percentile(values, [p_lo, p_hi]))
    else:
        mean, std = float(values.mean()), float(values.std())
        lo, hi = mean - ZSCORE_SPAN * std, mean + ZSCORE_SPAN * std
    if not hi > lo:
        raise GanlabError(f"{source}: constant intensity {lo} inside the mask; cannot normalise the MR")
    return lo, hi


def normalize_mr(volume: np.ndarray, mask: np.ndarray | None = None, method: str = "percentile",
                 percentiles: tuple[float, float] = (0.5, 99.5), source: str = "MR volume") -> np.ndarray:
    """One MR volume -> float32 in [-1, 1], on statistics taken inside `mask` (whole volume if None).

    percentile: the `percentiles` (low, high) of the masked intensities map to -1 and +1, values beyond are
    clipped (robust to a few hot voxels). zscore: mean - 3 std -> -1, mean + 3 std -> +1, then clipped,
    so about 99.7 % of gaussian-distributed tissue stays unclipped.
    """
    lo, hi = mr_statistics(volume, mask, method, percentiles, source)
    unit = (np.asarray(volume, dtype=np.float64) - lo) * (2.0 / (hi - lo)) - 1.0
    return np.clip(unit, -1.0, 1.0).astype(np.float32)
