"""Two learning-free MR -> CT baselines that any synthesis model must beat by a wide margin.

- Water: every body voxel is water (0 HU), the rest air (-1000 HU), i.e. bulk-density assignment, the
  oldest MR-only planning shortcut. It scores how much the body outline alone explains.
- Intensity lookup: bin the (already normalised) MR intensity of body voxels and predict each bin's mean
  CT HU on the training patients. It captures everything one voxel's MR value says about its CT, and
  nothing from anatomy: it cannot tell dark bone from dark air or CSF, the ambiguity GANs must resolve.

Both return HU volumes that are scored with `ganlab.metrics.synthrad` like a generator's output.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from ganlab.data.intensity import AIR_HU
from ganlab.errors import GanlabError

WATER_HU = 0.0


def water_baseline(mask: Tensor) -> Tensor:
    """0 HU inside the body mask, -1000 HU outside."""
    mask = torch.as_tensor(mask) > 0
    return torch.where(mask, torch.tensor(WATER_HU), torch.tensor(AIR_HU))


class IntensityLookup:
    """Normalised MR intensity in [-1, 1] -> mean CT HU of that intensity bin on the training voxels."""

    def __init__(self, bins: int = 64, lo: float = -1.0, hi: float = 1.0) -> None:
        if bins < 1 or not hi > lo:
            raise GanlabError(f"intensity lookup needs bins >= 1 and hi > lo, got bins={bins}, lo={lo}, hi={hi}")
        self.bins, self.lo, self.hi = bins, lo, hi
        self.table: Tensor | None = None

    def _bin(self, mr: Tensor) -> Tensor:
        index = ((mr.double() - self.lo) / (self.hi - self.lo) * self.bins).floor().long()
        return index.clamp(0, self.bins - 1)

    def fit(self, volumes: Iterable[tuple[Tensor, Tensor, Tensor | None]]) -> "IntensityLookup":
        """volumes: (MR, CT in HU, body mask or None) per training patient or batch, same shapes; MR as the
        data module gives it (first channel if several)."""
        sums = torch.zeros(self.bins, dtype=torch.float64)
        counts = torch.zeros(self.bins, dtype=torch.float64)
        for mr, ct, mask in volumes:
            mr, ct = torch.as_tensor(mr), torch.as_tensor(ct)
            keep = torch.ones_like(mr, dtype=torch.bool) if mask is None else torch.as_tensor(mask) > 0
            index = self._bin(mr[keep])
            sums.index_add_(0, index, ct[keep].double())
            counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        filled = counts > 0
        if not filled.any():
            raise GanlabError("intensity lookup: no training voxels inside the body mask to fit on")
        centres = self.lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (self.hi - self.lo) / self.bins
        # Empty bins take the value interpolated between the nearest filled bins (constant beyond the ends).
        means = (sums[filled] / counts[filled]).numpy()
        self.table = torch.from_numpy(np.interp(centres.numpy(), centres[filled].numpy(), means))
        return self

    def predict(self, mr: Tensor, mask: Tensor | None = None) -> Tensor:
        """HU volume: the lookup inside the mask (everywhere without one), -1000 HU outside."""
        if self.table is None:
            raise GanlabError("intensity lookup: call fit() on training patients before predict()")
        mr = torch.as_tensor(mr)
        hu = self.table[self._bin(mr)].float()
        if mask is None:
            return hu
        return torch.where(torch.as_tensor(mask) > 0, hu, torch.tensor(AIR_HU))
