"""pix2pix and CycleGAN: losses against hand-computed values on 1x1 linear nets, the image pool, the LR
schedule, and short fits on synthetic batches in the MR/CT data contract (validation metrics, resume)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ganlab.errors import GanlabError
from ganlab.models.cyclegan import CycleGAN
from ganlab.models.image_pool import ImagePool
from ganlab.models.pix2pix import Pix2Pix
from ganlab.models.lr_schedule import LinearDecay
from ganlab.nets.patchgan import PatchGANDiscriminator
from ganlab.nets.resnet_generator import ResnetGenerator
from ganlab.nets.unet import UNetGenerator


class Linear1x1(nn.Module):
    """x -> sum_c w_c x_c + bias per pixel: outputs we can compute by hand."""

    def __init__(self, weights, bias=0.0, cond_channels=0):
        super().__init__()
        self.conv = nn.Conv2d(len(weights), 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(1, -1, 1, 1))
            self.conv.bias.fill_(bias)
        self.in_channels, self.out_channels = len(weights) - cond_channels, 1
        self.cond_channels = cond_channels

    def forward(self, x):
        return self.conv(x)


def _const(value, n=2, size=4):
    return torch.full((n, 1, size, size), value)


@pytest.mark.parametrize("loss", ["nonsaturating", "lsgan"])
def test_pix2pix_losses_match_the_formula(loss):
    # G(a) = 0.1 everywhere; D(a, b) = a + 2 b. a = 0.5, b = -0.25: D(real) = 0, D(fake) = 0.7, |G(a) - b| = 0.35.
    model = Pix2Pix(Linear1x1([0.0], 0.1), Linear1x1([1.0, 2.0], cond_channels=1), loss=loss, lambda_l1=100)
    a, b = _const(0.5), _const(-0.25)
    fake = model.g_ab(a)
    g = model.g_losses(a, b, fake)
    if loss == "nonsaturating":  # -log sigmoid(0) - log(1 - sigmoid(0.7)); G: -log sigmoid(0.7)
        assert model.d_loss(a, b, fake).item() == pytest.approx(math.log(2) + math.log1p(math.exp(0.7)), rel=1e-6)
        assert g["loss_g_adv"].item() == pytest.approx(math.log1p(math.exp(-0.7)), rel=1e-6)
    else:  # 1/2 (0 - 1)^2 + 1/2 0.7^2; G: 1/2 (0.7 - 1)^2
        assert model.d_loss(a, b, fake).item() == pytest.approx(0.5 + 0.245, rel=1e-6)
        assert g["loss_g_adv"].item() == pytest.approx(0.045, rel=1e-5)
    assert g["loss_l1"].item() == pytest.approx(0.35, rel=1e-6)
    assert g["loss_g"].item() == pytest.approx(g["loss_g_adv"].item() + 35.0, rel=1e-6)


def test_pix2pix_l1_in_mask_averages_over_body_pixels_only():
    model = Pix2Pix(Linear1x1([0.0], 0.0), Linear1x1([1.0, 1.0], cond_channels=1), l1_in_mask=True)
    b = _const(0.2)
    b[:, :, :2] = -1.0  # "air" rows, error 1.0 there, outside the mask
    mask = torch.zeros_like(b)
    mask[:, :, 2:] = 1.0
    assert model.g_losses(_const(0.0), b, _const(0.0), mask)["loss_l1"].item() == pytest.approx(0.2)
    model.hparams.l1_in_mask = False
    assert model.g_losses(_const(0.0), b, _const(0.0), mask)["loss_l1"].item() == pytest.approx(0.6)


def test_pix2pix_refuses_unpaired_data_b2a_and_miswired_d():
    g, d = Linear1x1([1.0]), Linear1x1([1.0, 1.0], cond_channels=1)
    with pytest.raises(GanlabError, match="pix2pix needs paired data .* data.paired=false"):
        Pix2Pix(g, d, paired=False)
    with pytest.raises(GanlabError, match="must judge cat\\(a, b\\): cond_channels=1"):
        Pix2Pix(g, Linear1x1([1.0]))
    with pytest.raises(GanlabError, match="translates a2b only"):
        Pix2Pix(g, d).translate(_const(0.0), "b2a")


def _cyclegan(**kwargs):
    # G_ab(x) = x / 2, G_ba(x) = x + 0.2, D_a(x) = x, D_b(x) = 2 x.
    return CycleGAN(Linear1x1([0.5]), Linear1x1([1.0], 0.2), Linear1x1([1.0]), Linear1x1([2.0]), **kwargs)


def test_cyclegan_losses_match_the_formula():
    model = _cyclegan(lambda_cycle=10, lambda_identity=0.5)
    a, b = _const(0.6), _const(-0.6)
    fake_b, fake_a = model.g_ab(a), model.g_ba(b)  # 0.3, -0.4
    g = model.g_losses(a, b, fake_a, fake_b)
    # LSGAN G: 1/2 (D_b(0.3) - 1)^2 + 1/2 (D_a(-0.4) - 1)^2 = 1/2 0.16 + 1/2 1.96
    assert g["loss_g_adv"].item() == pytest.approx(1.06, rel=1e-5)
    # cycle: |G_ba(0.3) - 0.6| + |G_ab(-0.4) + 0.6| = 0.1 + 0.4; identity: |G_ab(b) - b| + |G_ba(a) - a| = 0.3 + 0.2
    assert g["loss_cycle"].item() == pytest.approx(0.5, rel=1e-5)
    assert g["loss_identity"].item() == pytest.approx(0.5, rel=1e-5)
    assert g["loss_g"].item() == pytest.approx(1.06 + 10 * 0.5 + 0.5 * 10 * 0.5, rel=1e-5)
    d = model.d_losses(a, b, fake_a, fake_b)
    assert d["loss_d_a"].item() == pytest.approx(0.5 * 0.16 + 0.5 * 0.16, rel=1e-5)  # D_a(a)=0.6, D_a(fake)=-0.4
    assert d["loss_d_b"].item() == pytest.approx(0.5 * 2.2 ** 2 + 0.5 * 0.36, rel=1e-5)  # D_b(b)=-1.2, fake 0.6
    assert "loss_identity" not in _cyclegan(lambda_identity=0).g_losses(a, b, fake_a, fake_b)


def test_cyclegan_refuses_identity_across_channel_counts_and_miswiring():
    two = ResnetGenerator(2, 1, base_width=2, n_blocks=1), ResnetGenerator(1, 2, base_width=2, n_blocks=1)
    ds = PatchGANDiscriminator(2, base_width=2), PatchGANDiscriminator(1, base_width=2)
    with pytest.raises(GanlabError, match="lambda_identity=0.5 needs as many channels in a as in b"):
        CycleGAN(*two, *ds, lambda_identity=0.5)
    assert CycleGAN(*two, *ds, lambda_identity=0).translate(torch.zeros(1, 1, 8, 8), "b2a").shape == (1, 2, 8, 8)
    with pytest.raises(GanlabError, match="d_a.in_channels=1 \\(expected 2\\)"):
        CycleGAN(*two, ds[1], ds[1], lambda_identity=0)


def test_image_pool_mixes_history_and_round_trips():
    pool = ImagePool(3, seed=0)
    first = pool.query(torch.arange(3.0).view(3, 1))
    assert first.flatten().tolist() == [0, 1, 2] and len(pool) == 3  # filling: new images pass through
    stored, swaps = {0.0, 1.0, 2.0}, 0
    for i in range(3, 403):
        out = float(pool.query(torch.tensor([[float(i)]])))
        if out != i:  # returned an old image, which the new one replaced
            assert out in stored
            stored = stored - {out} | {float(i)}
            swaps += 1
        assert {float(x) for x in pool.images} == stored
    assert 160 < swaps < 240  # probability 1/2 over 400 queries
    clone = ImagePool(3)
    clone.load_state_dict(pool.state_dict())
    probe = torch.arange(500.0, 520.0).view(20, 1)
    assert torch.equal(clone.query(probe), pool.query(probe))  # same history and RNG -> same choices
    assert torch.equal(ImagePool(0).query(probe), probe)


def _one_image_at_a_time(pool: list[torch.Tensor], size: int, rng: torch.Generator, fakes: torch.Tensor):
    """The pool's algorithm as Shrivastava et al. / the CycleGAN reference state it: one image at a time."""
    out = []
    for fake in fakes:
        if len(pool) < size:
            pool.append(fake.clone())
            out.append(fake)
        elif torch.rand((), generator=rng) < 0.5:
            i = int(torch.randint(size, (), generator=rng))
            out.append(pool[i])
            pool[i] = fake.clone()
        else:
            out.append(fake)
    return torch.stack(out)


@pytest.mark.parametrize("size", [1, 4, 7])
def test_image_pool_batched_equals_one_image_at_a_time(size):
    # Batches of 1..6 so that filling ends inside a batch and one slot is often drawn twice in a batch.
    pool, reference, rng = ImagePool(size, seed=5), [], torch.Generator().manual_seed(5)
    batches = [torch.randn(n, 2, 3, 3) for n in [3, 1, 6, 5, 2, 6, 6, 4] * 4]
    for fakes in batches:
        assert torch.equal(pool.query(fakes), _one_image_at_a_time(reference, size, rng, fakes))
        assert torch.equal(pool.images, torch.stack(reference)) and len(pool) == len(reference)
    resumed = ImagePool(size)
    resumed.load_state_dict(pool.state_dict())
    for fakes in batches[:5]:  # a restored pool goes on with the same history and draws
        assert torch.equal(resumed.query(fakes), _one_image_at_a_time(reference, size, rng, fakes))


def test_linear_decay_schedule_per_g_step():
    decay = LinearDecay(total=100, start=50)
    assert [decay(k) for k in (0, 49, 50, 60, 75, 100, 120)] == [1, 1, 1, 0.8, 0.5, 0, 0]
    model = _cyclegan(lambda_identity=0, decay_start=0.5, lr=2e-4)
    model._trainer = SimpleNamespace(max_steps=400)  # 400 optimizer steps = 200 G steps, decay from 100
    (opt_g, opt_d), schedulers = model.configure_optimizers()
    lrs = []
    for _ in range(200):
        lrs.append(opt_g.param_groups[0]["lr"])
        opt_g.step(), opt_d.step()  # (no gradients: a no-op, in the order the scheduler expects)
        for s in schedulers:
            s.step()
    assert lrs[0] == lrs[100] == 2e-4 and lrs[150] == pytest.approx(1e-4) and lrs[199] == pytest.approx(2e-6)
    assert opt_g.param_groups[0]["lr"] == 0 == opt_d.param_groups[0]["lr"]


@pytest.mark.parametrize("decay_start,lr_at", [(1.0, {0: 1e-3, 10: 1e-3, 19: 1e-3}),
                                              (0.5, {0: 1e-3, 10: 1e-3, 15: 5e-4, 19: 1e-4})])
def test_pix2pix_lr_constant_or_linear_decay(decay_start, lr_at):
    model = Pix2Pix(Linear1x1([1.0]), Linear1x1([1.0, 1.0], cond_channels=1), lr_g=1e-3, lr_d=2e-4,
                    decay_start=decay_start)
    model._trainer = SimpleNamespace(max_steps=40)  # 40 optimizer steps = 20 G steps
    (opt_g, opt_d), schedulers = model.configure_optimizers()
    lrs = []
    for _ in range(20):
        lrs.append((opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]))
        opt_g.step(), opt_d.step()
        for s in schedulers:
            s.step()
    for k, lr in lr_at.items():
        assert lrs[k] == (pytest.approx(lr), pytest.approx(lr / 5)), k  # D's rate follows the same factor
    with pytest.raises(GanlabError, match="decay_start"):
        Pix2Pix(Linear1x1([1.0]), Linear1x1([1.0, 1.0], cond_channels=1), decay_start=1.5)


# --- short fits on synthetic data in the mr_ct contract ------------------------------------------------------------

class Slices(Dataset):
    """Patients of 8 slices: MR = a smooth body, CT = a monotone map of it; masks and tissue labels."""

    def __init__(self, patients: int, size: int = 16, val: bool = False):
        g = torch.Generator().manual_seed(1 + val)
        self.items = []
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        for p in range(patients):
            for s in range(8):
                radius = 0.6 + 0.2 * torch.rand((), generator=g)
                mask = ((xx ** 2 + yy ** 2) < radius ** 2).float()[None]
                mr = torch.where(mask > 0, 0.3 * torch.sin(3 * xx + s + p)[None], torch.tensor(-1.0))
                ct = torch.where(mask > 0, -0.4 + 0.3 * mr, torch.tensor(-0.99))
                item = {"a": mr, "b": ct, "mask": mask}
                if val:
                    item.update(patient=torch.tensor(p), slice=torch.tensor(s), tissue=(mask.long() * 2))
                self.items.append(item)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class SliceData(pl.LightningDataModule):
    tissues = ("air", "fat", "soft_tissue")  # the class names of its labels (0 outside, 2 inside the body)

    def train_dataloader(self):
        return DataLoader(Slices(2), batch_size=4, shuffle=True)

    def val_dataloader(self):
        return DataLoader(Slices(2, val=True), batch_size=4)


def _fit(model, tmp_path, max_steps, ckpt_path=None):
    trainer = pl.Trainer(max_steps=max_steps, logger=pl.loggers.TensorBoardLogger(tmp_path, name="tb"),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, accelerator="cpu", log_every_n_steps=1)
    trainer.fit(model, datamodule=SliceData(), ckpt_path=ckpt_path, weights_only=True)
    return trainer


def test_pix2pix_fit_logs_synthrad_metrics_and_panel(tmp_path):
    torch.manual_seed(0)
    model = Pix2Pix(UNetGenerator(1, 1, base_width=4, depth=4), PatchGANDiscriminator(1, 4, 2, cond_channels=1))
    trainer = _fit(model, tmp_path, 8)
    assert trainer.global_step == 8  # one D + one G step per batch
    metrics = trainer.callback_metrics
    assert {"val/mae_hu", "val/psnr", "val/ssim", "val/mae_air", "val/mae_soft_tissue",
            "train/loss_l1", "train/loss_d"} <= set(metrics)
    assert 0 < float(metrics["val/mae_hu"]) < 4024 and -1 <= float(metrics["val/ssim"]) <= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(next((tmp_path / "tb").iterdir())))
    acc.Reload()
    assert "val/mr_sct_ct_error" in acc.Tags()["images"]
    out = model.translate(torch.zeros(3, 1, 16, 16))
    assert out.shape == (3, 1, 16, 16) and model.g_ab.training is True  # translate restores train mode


def test_cyclegan_fit_decays_lr_and_resume_restores_pools_and_schedulers(tmp_path):
    torch.manual_seed(0)

    def build():
        g = lambda: ResnetGenerator(1, 1, base_width=2, n_blocks=1)  # noqa: E731
        d = lambda: PatchGANDiscriminator(1, base_width=2, n_layers=1)  # noqa: E731
        return CycleGAN(g(), g(), d(), d(), pool_size=6)

    model = build()
    trainer = _fit(model, tmp_path, 8)  # 4 batches: 4 G steps, decay over the last 2
    assert len(model.pool_a) == len(model.pool_b) == 6
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0
    assert {"val/mae_hu", "val/psnr", "val/ssim", "train/loss_cycle", "train/loss_identity"} <= set(
        trainer.callback_metrics)
    ckpt = tmp_path / "cycle.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["image_pools"]["a"]["images"].shape == (6, 1, 16, 16)
    assert [s["last_epoch"] for s in saved["lr_schedulers"]] == [4, 4]

    resumed = build()
    assert len(resumed.pool_a) == 0
    trainer = _fit(resumed, tmp_path, 8, ckpt_path=ckpt)  # already at max_steps: restore only
    assert torch.equal(resumed.pool_a.images, model.pool_a.images)
    assert torch.equal(resumed.pool_b.images, model.pool_b.images)
    assert [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs] == [4, 4]
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0  # restored at the end of the decay
    # Resumed with a doubled budget: same step count, the decay now spans G steps 4..8 of the new run.
    longer = build()
    trainer = _fit(longer, tmp_path, 12, ckpt_path=ckpt)
    decay = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert (decay.total, decay.start) == (6, 3) and trainer.lr_scheduler_configs[0].scheduler.last_epoch == 6


# --- validation scores the original voxel grid, as `ganlab sample` does -------------------------------------------

@pytest.mark.parametrize("image_size", [32, 16])
def test_validation_scores_the_original_grid(tmp_path, image_size):
    """A pointwise G (sCT = unit_to_ct(0.5 MR + 0.1)) on a phantom whose 20x27 slice planes are padded to 32
    (padding must not count: not as air, not in SSIM's border) or centre-cropped to 16 (then only the body inside
    rows 2:18, cols 5:21 of each plane is scored): val/* must equal the metrics of the hand-built volumes."""
    from ganlab.data.intensity import unit_to_ct
    from ganlab.data.mr_ct import MRCTDataModule
    from ganlab.data.phantom import TISSUES
    from ganlab.metrics.synthrad import mean_over_patients, synthrad_metrics

    data = MRCTDataModule(cache_dir=str(tmp_path), image_size=image_size, val_patients=2, batch_size=3,
                          phantom={"n_patients": 3, "shape": [20, 27, 10]})
    model = Pix2Pix(Linear1x1([0.5], bias=0.1), Linear1x1([1.0, 1.0], cond_channels=1))
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    (got,) = trainer.validate(model, datamodule=data, verbose=False)

    inside = np.zeros((20, 27, 10), dtype=bool)  # the part of each plane that validation translates
    if image_size == 16:
        inside[2:18, 5:21, :] = True
    else:
        inside[:] = True
    expected = []
    for i in range(2):
        v = data.val_volume(i)
        assert v["a"].shape == (20, 27, 10)
        tissue = np.where(inside, v["tissue"], -1)
        sct = unit_to_ct(0.5 * v["a"] + 0.1)
        expected.append(synthrad_metrics(unit_to_ct(v["b"]), sct, (v["mask"] > 0) & inside, tissue, TISSUES))
    expected = mean_over_patients(expected)
    assert {"mae_hu", "psnr", "ssim", "mae_air", "mae_bone", "mae_brain"} <= set(expected)
    assert set(expected) == {k.removeprefix("val/") for k in got if k != "val/l1"}
    for key, value in expected.items():
        assert got[f"val/{key}"] == pytest.approx(value, rel=1e-4, abs=1e-4), key

    # A truncated validation (2 batches: 6 of the first patient's 10 slices) still scores what it saw.
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=2)
    (partial,) = trainer.validate(model, datamodule=data, verbose=False)
    v = data.val_volume(0)
    error = np.abs(unit_to_ct(v["b"]) - unit_to_ct(0.5 * v["a"] + 0.1))
    seen = ((v["mask"] > 0) & inside)[..., :6]
    assert partial["val/mae_hu"] == pytest.approx(float(error[..., :6][seen].mean()), rel=1e-4)


def test_cyclegan_structure_term_is_mind_of_each_input_against_its_translation():
    model = _cyclegan(lambda_cycle=10, lambda_identity=0, lambda_structure=2.0)
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    fake_b, fake_a = model.g_ab(a), model.g_ba(b)  # affine maps of their inputs: the same structure
    g = model.g_losses(a, b, fake_a, fake_b)
    assert g["loss_structure"].item() < 1e-5
    scrambled = torch.rand(2, 1, 8, 8)
    g = model.g_losses(a, b, fake_a, scrambled)
    assert g["loss_structure"].item() > 0.05
    assert g["loss_g"].item() == pytest.approx(g["loss_g_adv"].item() + 10 * g["loss_cycle"].item()
                                               + 2.0 * g["loss_structure"].item(), rel=1e-5)
    assert "loss_structure" not in _cyclegan().g_losses(a, b, fake_a, fake_b)


def test_air_outside_mask_sets_the_synthetic_ct_outside_the_body_to_air(tmp_path):
    """model.air_outside_mask: validation scores sCT = -1000 HU outside the body mask, G's output inside."""
    from ganlab.data.intensity import unit_to_ct
    from ganlab.data.mr_ct import MRCTDataModule
    from ganlab.data.phantom import TISSUES
    from ganlab.metrics.synthrad import mean_over_patients, synthrad_metrics

    data = MRCTDataModule(cache_dir=str(tmp_path), image_size=32, val_patients=2, batch_size=3,
                          phantom={"n_patients": 3, "shape": [20, 27, 10]})
    results = {}
    for masked in (False, True):
        model = Pix2Pix(Linear1x1([0.5], bias=0.1), Linear1x1([1.0, 1.0], cond_channels=1), air_outside_mask=masked)
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        (results[masked],) = trainer.validate(model, datamodule=data, verbose=False)
    expected = []
    for i in range(2):
        v = data.val_volume(i)
        body = v["mask"] > 0
        sct = np.where(body, unit_to_ct(0.5 * v["a"] + 0.1), -1000.0)
        expected.append(synthrad_metrics(unit_to_ct(v["b"]), sct, body, v["tissue"], TISSUES))
    expected = mean_over_patients(expected)
    for key, value in expected.items():
        assert results[True][f"val/{key}"] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    assert results[True]["val/mae_hu"] == pytest.approx(results[False]["val/mae_hu"], rel=1e-6)  # the body: as is
    assert results[True]["val/mae_air"] < results[False]["val/mae_air"]


def test_cyclegan_histogram_term_compares_intensities_inside_the_masks():
    model = _cyclegan(lambda_cycle=10, lambda_identity=0, lambda_histogram=3.0)
    a, b = _const(0.6), _const(-0.6)
    fake_b, fake_a = model.g_ab(a), model.g_ba(b)  # 0.3 (b is -0.6), -0.4 (a is 0.6)
    mask = torch.ones_like(a)
    g = model.g_losses(a, b, fake_a, fake_b, (mask, mask))
    assert g["loss_histogram"].item() == pytest.approx(0.9 + 1.0, rel=1e-5)
    outside = b.clone()
    outside[:, :, :2] = 5.0  # outside b's mask: ignored
    mask_b = torch.ones_like(b)
    mask_b[:, :, :2] = 0
    g = model.g_losses(a, outside, fake_a, fake_b, (mask, mask_b))
    assert g["loss_histogram"].item() == pytest.approx(1.9, rel=1e-5)
    assert g["loss_g"].item() == pytest.approx(g["loss_g_adv"].item() + 10 * g["loss_cycle"].item() + 3 * 1.9, rel=1e-5)
