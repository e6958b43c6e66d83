"""The SynthRAD2023 image metrics of a synthetic CT against the real one, per patient volume, in HU.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from ganlab.data.intensity import HU_MAX, HU_MIN
from ganlab.errors import GanlabError

SSIM_WINDOW = 7
VolumeLike = Tensor | np.ndarray


def _as_volumes(ct: VolumeLike, sct: VolumeLike, mask: VolumeLike | None) -> tuple[Tensor, Tensor, Tensor]:
    ct, sct = torch.as_tensor(ct).double(), torch.as_tensor(sct).double()
    if ct.shape != sct.shape:
        raise GanlabError(f"synthetic CT shape {tuple(sct.shape)} differs from the real CT's {tuple(ct.shape)}")
    mask = torch.ones_like(ct, dtype=torch.bool) if mask is None else torch.as_tensor(mask) > 0
    if mask.shape != ct.shape:
        raise GanlabError(f"mask shape {tuple(mask.shape)} differs from the CT's {tuple(ct.shape)}")
    if not mask.any():
        raise GanlabError("the body mask is empty: no voxels to compute the metrics on")
    return ct, sct, mask


def mae_hu(ct: VolumeLike, sct: VolumeLike, mask: VolumeLike | None = None) -> float:
    """Mean absolute error in HU inside the mask (no clipping)."""
    ct, sct, mask = _as_volumes(ct, sct, mask)
    return float((ct - sct).abs()[mask].mean())


def psnr_hu(ct: VolumeLike, sct: VolumeLike, mask: VolumeLike | None = None,
            hu_range: tuple[float, float] = (HU_MIN, HU_MAX)) -> float:
    """PSNR = 10 log10(range^2 / MSE) on HU clipped to `hu_range`, MSE over the mask voxels."""
    ct, sct, mask = _as_volumes(ct, sct, mask)
    lo, hi = hu_range
    mse = (ct.clamp(lo, hi) - sct.clamp(lo, hi)).pow(2)[mask].mean()
    return float(10 * torch.log10((hi - lo) ** 2 / mse)) if mse > 0 else float("inf")


def ssim_hu(ct: VolumeLike, sct: VolumeLike, mask: VolumeLike | None = None,
            hu_range: tuple[float, float] = (HU_MIN, HU_MAX)) -> float:
    """SynthRAD2023's masked SSIM of a (D, H, W) volume (or one (H, W) slice); see the module docstring."""
    ct, sct, mask = _as_volumes(ct, sct, mask)
    lo, hi = hu_range
    ct, sct = (torch.where(mask, v.clamp(lo, hi), lo) - lo for v in (ct, sct))
    pad = (SSIM_WINDOW - 1) // 2
    if ct.dim() == 2:
        ct, sct, mask = ct[None], sct[None], mask[None]
    if ct.dim() != 3 or min(ct.shape[-2:]) < SSIM_WINDOW:
        raise GanlabError(f"SSIM needs a (D, H, W) volume or (H, W) slice of at least {SSIM_WINDOW} pixels a "
                          f"side, got {tuple(ct.shape)}")
    three_d = ct.shape[0] >= SSIM_WINDOW
    if three_d:  # (1, 1, D, H, W)
        x, y, kernel = sct[None, None], ct[None, None], (SSIM_WINDOW,) * 3
    else:  # slices as a batch of 2-D images
        x, y, kernel = sct[:, None], ct[:, None], (SSIM_WINDOW,) * 2
    _, ssim_map = structural_similarity_index_measure(
        x, y, gaussian_kernel=False, kernel_size=kernel, data_range=hi - lo, return_full_image=True)
    ssim_map = ssim_map[:, 0]
    inner = ssim_map[..., pad:-pad, pad:-pad]
    inner_mask = mask[..., pad:-pad, pad:-pad]
    if three_d:
        inner, inner_mask = inner[:, pad:-pad], inner_mask[pad:-pad]
    inner = inner.reshape(inner_mask.shape)
    if not inner_mask.any():
        raise GanlabError(f"the body mask has no voxels {pad} or more voxels away from the border; SSIM is undefined")
    return float(inner[inner_mask].mean())


def mae_per_tissue(ct: VolumeLike, sct: VolumeLike, tissue: VolumeLike, names: Sequence[str]) -> dict[str, float]:
    """{name: MAE in HU over the voxels labelled with that class}; classes absent from the volume are left out."""
    ct, sct, _ = _as_volumes(ct, sct, None)
    tissue = torch.as_tensor(tissue)
    if tissue.shape != ct.shape:
        raise GanlabError(f"tissue label shape {tuple(tissue.shape)} differs from the CT's {tuple(ct.shape)}")
    error = (ct - sct).abs()
    return {name: float(error[tissue == k].mean()) for k, name in enumerate(names) if (tissue == k).any()}


def synthrad_metrics(ct: VolumeLike, sct: VolumeLike, mask: VolumeLike | None = None,
                     tissue: VolumeLike | None = None, tissue_names: Sequence[str] | None = None) -> dict[str, float]:
    """All metrics of one patient: {"mae_hu", "psnr", "ssim"} plus "mae_<tissue>" per labelled class."""
    scores = {"mae_hu": mae_hu(ct, sct, mask), "psnr": psnr_hu(ct, sct, mask), "ssim": ssim_hu(ct, sct, mask)}
    if tissue is not None:
        names = tissue_names or [f"tissue{k}" for k in range(int(torch.as_tensor(tissue).max()) + 1)]
        scores.update({f"mae_{name}": v for name, v in mae_per_tissue(ct, sct, tissue, names).items()})
    return scores


def mean_over_patients(per_patient: Sequence[dict[str, float]]) -> dict[str, float]:
    """The challenge ranks on the mean over patients; a tissue absent in some patients averages the others."""
    values: dict[str, list[float]] = defaultdict(list)
    for scores in per_patient:
        for key, value in scores.items():
            values[key].append(value)
    return {key: float(np.mean(v)) for key, v in values.items()}


class PatientSlices:
    """Collects 2-D slices (from shuffled-free validation batches) into one 3-D volume per patient.

    `add(patient, slice, **images)` takes batch tensors with a leading batch axis, e.g. sct=(N, H, W);
    `volumes()` yields (patient, {name: (D, H, W) tensor}) with slices in ascending slice index.
    """

    def __init__(self) -> None:
        self._slices: dict[int, dict[int, dict[str, Tensor]]] = defaultdict(dict)

    def __len__(self) -> int:
        return len(self._slices)

    def add(self, patient: Tensor, slice_index: Tensor, **images: Tensor) -> None:
        patient, slice_index = patient.tolist(), slice_index.tolist()
        images = {k: v.detach().cpu() for k, v in images.items()}
        for i, (p, s) in enumerate(zip(patient, slice_index)):
            self._slices[int(p)][int(s)] = {k: v[i] for k, v in images.items()}

    def volumes(self):
        for patient in sorted(self._slices):
            slices = self._slices[patient]
            order = sorted(slices)
            yield patient, {k: torch.stack([slices[s][k] for s in order]) for k in slices[order[0]]}

    def clear(self) -> None:
        self._slices.clear()
