"""SynthRAD2023 metrics on hand-made volumes, the SSIM against skimage (the challenge's implementation),
the per-patient accumulation of validation slices, and the two MR-to-CT baselines."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from skimage.util import crop

from ganlab.errors import GanlabError
from ganlab.metrics.mr2ct_baselines import IntensityLookup, water_baseline
from ganlab.metrics.synthrad import (PatientSlices, mae_hu, mae_per_tissue, mean_over_patients, psnr_hu, ssim_hu,
                                     synthrad_metrics)


def _head(shape=(9, 16, 16)):
    """A box-shaped 'body' (mask) of tissue values in a -1000 HU background."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[1:-1, 3:-3, 2:-2] = True
    ct = torch.where(mask, torch.rand(shape, generator=g) * 1500 - 100, torch.tensor(-1000.0))
    return ct, mask


def test_mae_of_a_constant_offset_is_the_offset_and_ignores_outside_voxels():
    ct, mask = _head()
    sct = ct + 37.0
    sct[~mask] = 2500.0  # wild errors outside the body must not count
    assert mae_hu(ct, sct, mask) == pytest.approx(37.0)
    assert mae_hu(ct, ct + 37.0) == pytest.approx(37.0)  # no mask: every voxel


def test_psnr_closed_form_and_clipping():
    ct, mask = _head()
    assert psnr_hu(ct, ct + 40.0, mask) == pytest.approx(10 * math.log10(4024 ** 2 / 40 ** 2))
    # Values beyond [-1024, 3000] are clipped first: 3000 + 500 vs 3000 is no error at all.
    ct_bone = torch.full((4, 8, 8), 3000.0)
    assert psnr_hu(ct_bone, ct_bone + 500.0) == math.inf
    low = torch.full((4, 8, 8), -1024.0)
    sct = low.clone()
    sct[0, 0, 0] = -5000.0  # clipped to -1024: no error
    sct[1, 1, 1] = -824.0  # 200 HU error in one of 256 voxels
    assert psnr_hu(low, sct) == pytest.approx(10 * math.log10(4024 ** 2 / (200 ** 2 / 256)))
    # MAE is not clipped (the challenge's definition).
    assert mae_hu(low, sct) == pytest.approx((5000 - 1024 + 200) / 256)


def test_ssim_identity_mask_and_skimage_reference():
    ct, mask = _head((12, 20, 24))
    assert ssim_hu(ct, ct, mask) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    sct = ct + torch.randn(ct.shape, generator=g) * 200
    outside_changed = torch.where(mask, sct, torch.tensor(2000.0))
    assert ssim_hu(ct, outside_changed, mask) == pytest.approx(ssim_hu(ct, sct, mask))  # outside mask -> -1024
    # SynthRAD2023's image_metrics.ssim: clip, set outside to -1024, shift, skimage SSIM, masked mean of the
    # map cropped by 3. torchmetrics uses population instead of sample covariance: ~1e-4 apart at most.
    gt = np.clip(ct.numpy().astype(np.float64), -1024, 3000)
    pred = np.clip(sct.numpy().astype(np.float64), -1024, 3000)
    m = mask.numpy()
    gt, pred = np.where(m, gt, -1024) + 1024, np.where(m, pred, -1024) + 1024
    _, ssim_map = structural_similarity(gt, pred, data_range=4024, full=True)
    reference = crop(ssim_map, 3)[crop(m, 3)].mean()
    assert ssim_hu(ct, sct, mask) == pytest.approx(reference, abs=1e-4)
    assert 0.5 < reference < 0.999  # a real difference was measured


def test_ssim_falls_back_to_slices_for_thin_volumes():
    ct, mask = _head((3, 16, 16))
    g = torch.Generator().manual_seed(2)
    sct = ct + torch.randn(ct.shape, generator=g) * 100
    per_slice = []
    for k in range(1, 2):  # only slice 1 has body voxels
        gt = np.where(mask[k].numpy(), ct[k].numpy().astype(np.float64), -1024) + 1024
        pr = np.where(mask[k].numpy(), sct[k].numpy().astype(np.float64), -1024) + 1024
        _, smap = structural_similarity(gt, pr, data_range=4024, full=True)
        per_slice.append(crop(smap, 3)[crop(mask[k].numpy(), 3)])
    assert ssim_hu(ct, sct, mask) == pytest.approx(np.concatenate(per_slice).mean(), abs=1e-4)


def test_tissue_mae_and_all_metrics():
    ct, mask = _head()
    tissue = mask.long() * 2  # background "air" = 0, body = class 2; class 1 absent
    sct = ct + torch.where(mask, torch.tensor(10.0), torch.tensor(-30.0))
    assert mae_per_tissue(ct, sct, tissue, ["air", "fat", "soft"]) == {"air": pytest.approx(30.0),
                                                                        "soft": pytest.approx(10.0)}
    scores = synthrad_metrics(ct, sct, mask, tissue, ["air", "fat", "soft"])
    assert set(scores) == {"mae_hu", "psnr", "ssim", "mae_air", "mae_soft"}
    assert scores["mae_hu"] == pytest.approx(10.0)
    assert mean_over_patients([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 2.0, "b": 2.0}


def test_shape_mismatch_and_empty_mask_are_clear_errors():
    ct, mask = _head()
    with pytest.raises(GanlabError, match="differs"):
        mae_hu(ct, ct[:-1])
    with pytest.raises(GanlabError, match="mask is empty"):
        psnr_hu(ct, ct, torch.zeros_like(mask))


def test_patient_slices_stack_volumes_in_slice_order():
    acc = PatientSlices()
    vol = torch.arange(2 * 5 * 4 * 4, dtype=torch.float32).view(2, 5, 4, 4)  # 2 patients x 5 slices
    order = [(0, 3), (1, 0), (0, 0), (0, 4), (1, 4), (1, 1), (0, 1), (0, 2), (1, 2), (1, 3)]  # any batch order
    for start in range(0, len(order), 4):
        chunk = order[start:start + 4]
        p, s = torch.tensor([c[0] for c in chunk]), torch.tensor([c[1] for c in chunk])
        acc.add(p, s, ct=vol[p, s], mask=vol[p, s] > 10)
    got = dict(acc.volumes())
    assert sorted(got) == [0, 1] and len(acc) == 2
    assert torch.equal(got[0]["ct"], vol[0]) and torch.equal(got[1]["ct"], vol[1])
    assert torch.equal(got[1]["mask"], vol[1] > 10)


def test_water_baseline():
    ct, mask = _head()
    water = water_baseline(mask)
    assert torch.equal(water, torch.where(mask, torch.tensor(0.0), torch.tensor(-1000.0)))
    assert mae_hu(ct, water, mask) == pytest.approx(float(ct[mask].abs().mean()))


def test_intensity_lookup_recovers_a_piecewise_mapping_on_held_out_volumes():
    # CT is a step function of the MR intensity: fitting on one "patient" and applying to another recovers it.
    g = torch.Generator().manual_seed(3)
    mapping = lambda mr: torch.where(mr < 0, torch.tensor(1200.0), torch.tensor(40.0))  # dark = bone, bright = soft
    mr_train, mr_test = torch.rand(2, 4, 16, 16, generator=g) * 2 - 1
    mask = torch.ones(4, 16, 16, dtype=torch.bool)
    mask[:, :2] = False
    lookup = IntensityLookup(bins=8).fit([(mr_train, mapping(mr_train), mask)])
    pred = lookup.predict(mr_test, mask)
    assert mae_hu(mapping(mr_test), pred, mask) == pytest.approx(0.0, abs=1e-6)
    assert torch.all(pred[~mask] == -1000.0)
    # A bin no training voxel fell into borrows from its nearest filled neighbours.
    lookup = IntensityLookup(bins=4).fit([(torch.tensor([-0.9, 0.9]), torch.tensor([100.0, 300.0]), None)])
    expected = [100, 100 + 200 / 3, 100 + 400 / 3, 300]  # bins 1, 2 interpolated between the centres of 0 and 3
    assert lookup.predict(torch.tensor([-0.9, -0.2, 0.2, 0.9])).tolist() == pytest.approx(expected)
