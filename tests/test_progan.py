"""ProGAN: equalized-LR layers, pixel norm, growing networks and their fade-in, the schedule, and exact resume."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_experiment, run_dirs, run_ganlab
from ganlab.errors import GanlabError
from ganlab.models.progan import ProGAN, ema_beta, real_at
from ganlab.models.progan_schedule import GrowthSchedule
from ganlab.nets.progan import (EqualizedConv2d, EqualizedLinear, PixelNorm, ProGANDiscriminator,
                                ProGANGenerator)


def _nets(size=32, latent=8):
    torch.manual_seed(0)
    return (ProGANGenerator(latent, (1, size, size), base_width=4, max_width=16),
            ProGANDiscriminator((1, size, size), base_width=4, max_width=16))


# --- layers -----------------------------------------------------------------------------------------------
def test_equalized_conv_stores_unit_normal_weights_and_scales_them_at_runtime():
    torch.manual_seed(0)
    conv = EqualizedConv2d(32, 64, 3)
    assert abs(conv.weight.std().item() - 1.0) < 0.02 and abs(conv.weight.mean().item()) < 0.02
    assert conv.scale == pytest.approx(math.sqrt(2 / (32 * 3 * 3)))
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 32, 5, 5)
    expected = F.conv2d(x, conv.weight * math.sqrt(2 / 288), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    # The scale is applied in forward, not baked into the parameter: changing the weight changes the output.
    with torch.no_grad():
        conv.weight.mul_(2)
    torch.testing.assert_close(conv(x) - conv.bias.view(1, -1, 1, 1), 2 * (expected - conv.bias.view(1, -1, 1, 1)))


def test_equalized_linear_uses_he_constant():
    torch.manual_seed(0)
    lin = EqualizedLinear(50, 3, gain=1.0)
    x = torch.randn(4, 50)
    torch.testing.assert_close(lin(x), x @ (lin.weight / math.sqrt(50)).T)
    assert EqualizedLinear(8, 1).scale == pytest.approx(0.5)  # sqrt(2 / 8)


def test_pixel_norm_by_hand():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).repeat(1, 1, 2, 2)
    x[0, :, 1, 1] = torch.tensor([0.0, 2.0])
    out = PixelNorm()(x)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([3.0, 4.0]) / math.sqrt(12.5))
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([0.0, math.sqrt(2.0)]))


# --- networks ---------------------------------------------------------------------------------------------
def test_shapes_at_every_stage():
    g, d = _nets()
    z = torch.randn(4, 8)
    assert g.resolutions == [4, 8, 16, 32] and g.widths == [16, 16, 8, 4]
    for res in g.resolutions:
        for alpha in (0.0, 0.5, 1.0):
            x = g(z, resolution=res, alpha=alpha)
            assert x.shape == (4, 1, res, res)
            assert d(x, alpha=alpha).shape == (4,)
    assert g(z).shape == (4, 1, 32, 32)  # no resolution: the full size


def test_generator_fade_in_blends_old_and_new_paths():
    g, _ = _nets()
    z = torch.randn(3, 8)
    with torch.no_grad():
        h = g.blocks[1](g.blocks[0](z))  # features at 8x8
        old = F.interpolate(g.to_rgb[1](h), scale_factor=2, mode="nearest")
        new = g.to_rgb[2](g.blocks[2](h))
        torch.testing.assert_close(g(z, resolution=16, alpha=0.0), old)
        torch.testing.assert_close(g(z, resolution=16, alpha=0.0),
                                   F.interpolate(g(z, resolution=8), scale_factor=2, mode="nearest"))
        torch.testing.assert_close(g(z, resolution=16, alpha=1.0), new)
        torch.testing.assert_close(g(z, resolution=16, alpha=0.25), 0.75 * old + 0.25 * new)


def test_discriminator_fade_in_blends_old_and_new_paths():
    _, d = _nets()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        old = d.from_rgb[0](F.avg_pool2d(x, 2))
        new = d.blocks[1](d.from_rgb[1](x))
        torch.testing.assert_close(d(x, alpha=0.0), d(F.avg_pool2d(x, 2)))  # the 4x4 network on pooled x
        torch.testing.assert_close(d(x, alpha=1.0), d.blocks[0](new).squeeze(1))
        torch.testing.assert_close(d(x, alpha=0.25), d.blocks[0](0.75 * old + 0.25 * new).squeeze(1))


def test_inactive_blocks_get_no_gradient():
    g, d = _nets()
    d(g(torch.randn(4, 8), resolution=8, alpha=1.0), alpha=1.0).mean().backward()
    for net, rgb in ((g, g.to_rgb), (d, d.from_rgb)):
        assert all(p.grad is not None for p in [*net.blocks[0].parameters(), *net.blocks[1].parameters()])
        assert all(p.grad is None for p in [*net.blocks[2].parameters(), *net.blocks[3].parameters()])
        assert [rgb[i].parameters().__next__().grad is not None for i in range(4)] == [False, True, False, False]


def test_real_images_are_pooled_and_blended_like_the_generator():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(real_at(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(real_at(x, 4), x)
    torch.testing.assert_close(real_at(x, 2, alpha=0.0), torch.full((1, 1, 2, 2), 7.5))  # up(pool(pool(x)))
    torch.testing.assert_close(real_at(x, 2, alpha=0.5), (real_at(x, 2) + 7.5) / 2)


@pytest.mark.parametrize("size", [28, 2, 48])
def test_non_power_of_two_sizes_are_refused(size):
    with pytest.raises(GanlabError, match=f"data.image_size={size}: .*power of two"):
        ProGANGenerator(8, (1, size, size))


# --- schedule ---------------------------------------------------------------------------------------------
def test_schedule_math_by_hand():
    s = GrowthSchedule(16, stabilize_images=100, fade_images=40, batch_sizes=(10, 8, 4, 1))
    expected = {  # images -> (resolution, alpha, phase, index)
        0: (4, 1.0, "stabilize", 0), 99: (4, 1.0, "stabilize", 0),
        100: (8, 0.0, "fade", 1), 110: (8, 0.25, "fade", 1), 139: (8, 39 / 40, "fade", 1),
        140: (8, 1.0, "stabilize", 2), 239: (8, 1.0, "stabilize", 2),
        240: (16, 0.0, "fade", 3), 270: (16, 0.75, "fade", 3), 280: (16, 1.0, "stabilize", 4),
        379: (16, 1.0, "stabilize", 4), 380: (16, 1.0, "stabilize", 4), 10**9: (16, 1.0, "stabilize", 4),
    }
    for images, want in expected.items():
        st = s.stage(images)
        assert (st.resolution, st.alpha, st.phase, st.index) == want, images
    assert s.growth_images == 380 and s.largest_batch == 10 and s.batch_size(16) == 4
    # D+G iterations: 4x4 100/10 = 10; 8x8 fade 40/8 = 5, stabilise 100/8 -> 13 (ends at 244, 4 into the
    # 16x16 fade); 16x16 fade (280-244)/4 = 9, stabilise 100/4 = 25.
    assert s.growth_iterations() == 10 + 5 + 13 + 9 + 25


def test_schedule_refuses_missing_batch_sizes():
    with pytest.raises(GanlabError, match=r"model.batch_sizes=\[8, 8\].*\[4, 8, 16\]"):
        GrowthSchedule(16, 10, 10, (8, 8))


# --- EMA generator ----------------------------------------------------------------------------------------
def test_ema_beta_schedule_by_hand():
    # Half-life = min(ema_kimg * 1000, images_seen * ema_rampup) images; beta = 0.5 ** (batch / half_life).
    assert ema_beta(0, 32, ema_kimg=10, ema_rampup=0.05) == 0.0  # step one copies G
    assert ema_beta(640, 32, 10, 0.05) == pytest.approx(0.5)  # half-life 640 * 0.05 = 32 images = one batch
    assert ema_beta(1280, 32, 10, 0.05) == pytest.approx(math.sqrt(0.5))  # 64 images: two batches
    assert ema_beta(12_800, 16, 10, 0.05) == pytest.approx(0.5 ** (16 / 640))  # still ramping: 640 < 10,000
    assert ema_beta(200_000, 32, 10, 0.05) == pytest.approx(0.5 ** (32 / 10_000))  # 10k < 200k * 0.05: capped
    assert ema_beta(0, 32, 10, None) == pytest.approx(0.5 ** 0.0032)  # no ramp-up: the full half-life at once
    # The name's promise: after half_life / batch steps at a fixed beta, a weight's old value keeps half its say.
    assert ema_beta(10**6, 20, 10, 0.05) ** 500 == pytest.approx(0.5)
    # Counting images, not steps: the same images in batches of 8 or 32 decay the average equally.
    assert ema_beta(10**6, 8, 10, 0.05) ** 4 == pytest.approx(ema_beta(10**6, 32, 10, 0.05))


def test_ema_generator_follows_g_with_the_scheduled_beta():
    g, d = _nets()
    model = ProGAN(g, d, stabilize_images=10, fade_images=10, batch_sizes=[16, 8, 8, 8], ema_kimg=10, ema_rampup=0.05)
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    old = [p.clone() for p in model.generator_ema.parameters()]
    model.images_seen.fill_(640)  # half-life 32 images: one step of 32 images halves the gap
    model._update_ema(32)
    for ema, before, param in zip(model.generator_ema.parameters(), old, model.generator.parameters()):
        torch.testing.assert_close(ema, (before + param) / 2)
    assert ProGAN(*_nets(), stabilize_images=10, fade_images=10, batch_sizes=[8] * 4, ema_kimg=0).generator_ema is None
    with pytest.raises(GanlabError, match=r"model.ema_kimg >= 0, model.ema_rampup > 0 or null.*got -1"):
        ProGAN(*_nets(), stabilize_images=10, fade_images=10, batch_sizes=[8] * 4, ema_kimg=-1)


TINY_PROGAN = [
    "+experiment=progan_mnist", "+debug=fast", "logger=none", "data.batch_size=16", "data.train_range=[0,0.02]",
    "model.generator.latent_dim=8", "model.generator.base_width=2", "model.generator.max_width=8",
    "model.stabilize_images=32", "model.fade_images=64", "model.batch_sizes=[16,8,8,8]",
]


def test_progan_mnist_grows_to_32_within_its_budget():
    cfg = compose_experiment("progan_mnist")
    schedule = GrowthSchedule(cfg.data.image_size, cfg.model.stabilize_images, cfg.model.fade_images,
                              tuple(cfg.model.batch_sizes))
    assert schedule.resolutions == [4, 8, 16, 32] and cfg.data.batch_size >= schedule.largest_batch
    assert 2 * schedule.growth_iterations() < cfg.trainer.max_steps  # D + G: two optimizer steps per batch


def test_a_data_batch_smaller_than_the_schedule_needs_is_refused():
    g, d = _nets()
    model = ProGAN(g, d, stabilize_images=10, fade_images=10, batch_sizes=[16, 8, 8, 8])
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=8))  # what Trainer.fit attaches
    with pytest.raises(GanlabError, match=r"data.batch_size=8 is smaller than the largest of model.batch_sizes"):
        model.on_fit_start()
    model._trainer.datamodule.batch_size = 16
    model.on_fit_start()


# --- exact resume through the console script --------------------------------------------------------------


def _state(path):
    ckpt = torch.load(path, weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"], ckpt["optimizer_states"]


def _assert_same_state(a, b):
    (step_a, weights_a, opt_a), (step_b, weights_b, opt_b) = _state(a), _state(b)
    assert step_a == step_b and weights_a.keys() == weights_b.keys()
    for key in weights_a:  # G, D, the EMA generator and the image counter, bit for bit
        assert torch.equal(weights_a[key], weights_b[key]), key
    for opt_1, opt_2 in zip(opt_a, opt_b):  # Adam's steps and moments for G and D
        assert opt_1["state"].keys() == opt_2["state"].keys()
        for i in opt_1["state"]:
            for name in opt_1["state"][i]:
                assert torch.equal(opt_1["state"][i][name], opt_2["state"][i][name]), (i, name)


def test_resume_in_the_middle_of_a_fade_matches_an_uninterrupted_run(tmp_path, data_dir):
    """90 digits in batches of 16: an epoch is 5 D+G iterations = 10 optimizer steps. After one epoch the
    schedule is 5 iterations in (2 at 4x4, 3 of the 8x8 fade: alpha 0.375). Resumed to 20 steps, from a run
    stopped there (trainer.max_steps=10) and from the straight run's periodic checkpoint at step 10, both
    end bit-identical to the straight run."""
    common = [*TINY_PROGAN, f"paths.data_dir={data_dir}"]
    run_ganlab("train", *common, "trainer.max_steps=20", "name=straight", "callbacks.checkpoint.every_n_train_steps=10",
               "callbacks.checkpoint.save_top_k=-1", cwd=tmp_path)
    run_ganlab("train", *common, "trainer.max_steps=10", "name=stopped", cwd=tmp_path)
    (straight,), (stopped,) = run_dirs(tmp_path, "straight"), run_dirs(tmp_path, "stopped")
    snapshot = straight / "checkpoints" / "step0000010.ckpt"
    _assert_same_state(stopped / "checkpoints" / "last.ckpt", snapshot)
    step, half, opt_half = _state(snapshot)
    stage = GrowthSchedule(32, 32, 64, (16, 8, 8, 8)).stage(int(half["images_seen"]))
    assert step == 10 and int(half["images_seen"]) == 56 and (stage.resolution, stage.alpha) == (8, 0.375)
    # Every parameter is in Adam from the start, but only what has trained holds state: G's 4x4 and 8x8
    # blocks and toRGB layers, nothing yet for 16x16 and 32x32.
    names = [name for name, _ in ProGANGenerator(8, (1, 32, 32), base_width=2, max_width=8).named_parameters()]
    trained = {i for i, name in enumerate(names) if name.split(".")[1] in ("0", "1")}
    assert len(opt_half[0]["param_groups"][0]["params"]) == len(names) > len(trained)
    assert set(opt_half[0]["state"]) == trained

    run_ganlab("train", *common, "trainer.max_steps=20", "name=resumed", f"ckpt_path={stopped}", cwd=tmp_path)
    run_ganlab("train", *common, "trainer.max_steps=20", "name=from_snapshot", f"ckpt_path={snapshot}", cwd=tmp_path)
    final = straight / "checkpoints" / "last.ckpt"
    _, weights, _ = _state(final)
    assert int(weights["images_seen"]) == 96  # the fade is over: stabilising 8x8
    assert not torch.equal(weights["generator.blocks.1.1.weight"], half["generator.blocks.1.1.weight"])
    for name in ("resumed", "from_snapshot"):
        (run_dir,) = run_dirs(tmp_path, name)
        _assert_same_state(final, run_dir / "checkpoints" / "last.ckpt")
