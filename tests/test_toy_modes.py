"""2-D mode-collapse toys: exact mixture layouts, seeding, PacGAN's mode count, the scatter picture."""

import math
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch

from ganlab.callbacks.mode_metrics import ModeCoverageMetrics2D
from ganlab.callbacks.sample_logger import GeneratedSamplesLogger
from ganlab.data.gaussian_mixture import GaussianMixtureDataModule, grid_centers, ring_centers
from ganlab.nets.mlp import Maxout, MLPDiscriminator
from ganlab.metrics.modes import mode_coverage
from ganlab.plots import scatter_figure, snapshot_strip_figure

RING = ring_centers(8, 2.0)


def _ring8(**kwargs) -> GaussianMixtureDataModule:
    return GaussianMixtureDataModule(centers=RING, std=0.02, **{"batch_size": 4000, **kwargs})


def test_ring_centers_radius_and_angles():
    assert RING.shape == (8, 2) and RING.dtype == torch.float32
    assert torch.allclose(RING.norm(dim=1), torch.full((8,), 2.0))
    angles = torch.atan2(RING[:, 1], RING[:, 0]).remainder(2 * math.pi)
    assert torch.allclose(angles, torch.arange(8) * math.pi / 4, atol=1e-6)
    assert torch.allclose(RING[1], torch.tensor([math.sqrt(2), math.sqrt(2)]))


def test_grid_centers_coordinates():
    grid = grid_centers(5, 2.0)
    assert grid.shape == (25, 2)
    coords = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    assert torch.equal(grid[:, 0], coords.repeat_interleave(5)) and torch.equal(grid[:, 1], coords.repeat(5))
    assert torch.equal(grid[7], torch.tensor([-2.0, 0.0]))  # row-major: index i * 5 + j = (coords[i], coords[j])


def test_batches_per_mode_std_and_labels():
    batch = next(iter(_ring8().train_dataloader()))
    x, y = batch["image"], batch["label"]
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and y.shape == (4000,) and y.dtype == torch.long
    counts = torch.bincount(y, minlength=8)
    assert counts.min() > 400 and counts.max() < 600  # uniform over 8 modes: 500 +- ~3.5 sigma
    offsets = x - RING[y]  # each point sits around the centre of the mode it is labelled with
    for k in range(8):
        std = offsets[y == k].std(dim=0)
        assert torch.all((std > 0.018) & (std < 0.022)), (k, std)
    assert offsets.norm(dim=1).max() < 6 * 0.02


def test_seeding_epochs_and_resume():
    a, b, c = _ring8(seed=3), _ring8(seed=3), _ring8(seed=4)
    first = next(iter(a.train_dataloader()))["image"]
    assert torch.equal(first, next(iter(b.train_dataloader()))["image"])  # same seed, same draw
    assert not torch.equal(first, next(iter(c.train_dataloader()))["image"])
    second = next(iter(a.train_dataloader()))["image"]
    assert not torch.equal(first, second)  # a new draw each epoch
    resumed = _ring8(seed=3)
    resumed.load_state_dict(b.state_dict())  # b has drawn one epoch, like a checkpoint after epoch 1
    assert b.state_dict() == {"epoch": 1} and torch.equal(next(iter(resumed.train_dataloader()))["image"], second)


def test_held_out_set_is_independent_of_training_draws():
    dm = _ring8(seed=0, val_samples=500)
    assert dm.val_set.shape == (500, 2) and torch.equal(dm.val_set, _ring8(seed=0, val_samples=500).val_set)
    train = next(iter(dm.train_dataloader()))["image"]
    assert not any(torch.equal(dm.val_set[:10], train[i:i + 10]) for i in range(len(train) - 10))
    val = next(iter(dm.val_dataloader()))
    assert torch.allclose(val["image"], RING[val["label"]], atol=6 * 0.02)


def test_data_rejects_other_dims_and_shapes():
    with pytest.raises(ValueError, match="data.dim must be 2, got 3"):
        GaussianMixtureDataModule(centers=RING, std=0.02, dim=3)
    with pytest.raises(ValueError, match=r"shape \(K, 2\)"):
        GaussianMixtureDataModule(centers=[[0.0, 0.0, 0.0]], std=0.02)


def _at_centers(modes: list[int], n: int = 2500) -> torch.Tensor:
    return RING[torch.tensor(modes).repeat_interleave(n // len(modes))]


def test_samples_on_four_centres_capture_four_modes():
    result = mode_coverage(_at_centers([0, 2, 4, 6]), RING, 0.02)
    assert result.modes_captured == 4 and result.high_quality == 1.0
    assert result.per_mode.tolist() == [625, 0, 625, 0, 625, 0, 625, 0]
    assert result.reverse_kl == pytest.approx(math.log(8) - math.log(4))  # uniform over 4 of 8: log 2


def test_reverse_kl_by_hand():
    """KL(p || uniform) = log K - H(p): 0 when uniform, log K on one mode, by hand for 3:1 over two modes."""
    assert mode_coverage(_at_centers(list(range(8))), RING, 0.02).reverse_kl == pytest.approx(0.0, abs=1e-12)
    assert mode_coverage(_at_centers([5]), RING, 0.02).reverse_kl == pytest.approx(math.log(8))
    skewed = torch.cat([RING[[0]].repeat(750, 1), RING[[1]].repeat(250, 1), torch.full((500, 2), 9.0)])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # off-mode samples (at 9, 9) do not count
    assert mode_coverage(skewed, RING, 0.02).reverse_kl == pytest.approx(math.log(8) - entropy)


def test_samples_four_std_away_are_low_quality():
    away = _at_centers(list(range(8))) * (1 + 4 * 0.02 / 2.0)  # radially 4 std out from each centre
    result = mode_coverage(away, RING, 0.02)
    assert result.modes_captured == 0 and result.high_quality == 0.0
    inside = _at_centers(list(range(8))) * (1 + 2.9 * 0.02 / 2.0)  # 2.9 std: still high quality
    assert mode_coverage(inside, RING, 0.02).high_quality == 1.0


@pytest.mark.parametrize(("on_mode_1", "captured"), [(19, 1), (20, 2)])
def test_capture_threshold_is_twenty_of_2500(on_mode_1, captured):
    samples = torch.cat([RING[[0]].repeat(2500 - on_mode_1, 1), RING[[1]].repeat(on_mode_1, 1)])
    assert mode_coverage(samples, RING, 0.02).modes_captured == captured


def test_capture_threshold_scales_with_n():
    # 1,000 samples: a mode needs 8 (0.8 %); 7 is not enough.
    for on_mode_1, captured in ((7, 1), (8, 2)):
        samples = torch.cat([RING[[0]].repeat(1000 - on_mode_1, 1), RING[[1]].repeat(on_mode_1, 1)])
        assert mode_coverage(samples, RING, 0.02).modes_captured == captured


def test_callback_logs_coverage_of_fresh_samples():
    """A stand-in module whose G maps every latent onto mode 3: 1 of 8 modes, all high quality."""
    logged = {}
    module = SimpleNamespace(
        sample_shape=(2,), fixed_z=torch.zeros(1, 4),
        sample_z=lambda n, generator: torch.randn(n, 4, generator=generator),
        generate=lambda z: RING[3].expand(len(z), 2) + 0.001 * z[:, :2],
        log_dict=logged.update,
    )
    trainer = SimpleNamespace(sanity_checking=False, datamodule=_ring8())
    ModeCoverageMetrics2D(num_samples=100).on_validation_epoch_end(trainer, module)
    assert logged == {"val/modes_captured": 1.0, "val/high_quality": 1.0, "val/reverse_kl": pytest.approx(math.log(8))}
    trainer.datamodule = SimpleNamespace()
    with pytest.raises(ValueError, match="centers"):
        ModeCoverageMetrics2D().on_validation_epoch_end(trainer, module)


def test_scatter_figure_draws_points_over_centres():
    points = torch.randn(300, 2)
    fig = scatter_figure(points, RING, title="step 0")
    ax = fig.axes[0]
    generated, centres = ax.collections
    assert torch.allclose(torch.as_tensor(generated.get_offsets().data, dtype=torch.float32), points)
    assert torch.allclose(torch.as_tensor(centres.get_offsets().data, dtype=torch.float32), RING)
    assert ax.get_title() == "step 0"
    assert len(scatter_figure(points).axes[0].collections) == 1  # no centres known: points only
    plt.close("all")


def test_fixed_training_points_are_reshuffled_each_epoch_and_never_redrawn():
    """PacGAN's protocol: one draw of N points; every batch is a subset of it, a new order each epoch."""
    data = _ring8(seed=5, batch_size=100, batches_per_epoch=30, train_points=1000)
    points = data.train_batches.points
    first = torch.cat([b["image"] for b in data.train_dataloader()])
    second = torch.cat([b["image"] for b in data.train_dataloader()])
    assert first.shape == (3000, 2)
    assert torch.equal(first[:1000].sort(dim=0).values, points.sort(dim=0).values)  # a permutation of the set
    assert not torch.equal(first, second)
    assert torch.isin(second[:, 0], points[:, 0]).all()  # no point outside the fixed set
    assert torch.equal(points, _ring8(seed=5, batch_size=100, train_points=1000).train_batches.points)
    with pytest.raises(ValueError, match="train_points"):
        _ring8(batch_size=100, train_points=50)


def test_maxout_discriminator_keeps_the_largest_piece():
    layer = Maxout(2, 3, pieces=5)
    x = torch.randn(7, 2)
    by_hand = (x @ layer.linear.weight.T + layer.linear.bias).view(7, 3, 5).max(dim=-1).values
    assert torch.allclose(layer(x), by_hand)
    d = MLPDiscriminator(in_shape=[2], hidden=[200, 200, 200], maxout_pieces=5, pack=2)
    assert [m.linear.in_features for m in d.net if isinstance(m, Maxout)] == [4, 200, 200]
    assert d(torch.randn(10, 2)).shape == (5,)


def test_collapse_strip_snapshots_survive_a_checkpoint_and_draw_in_order():
    logger = GeneratedSamplesLogger(every_n_steps=10, num_scatter_samples=50, num_snapshot_samples=20)
    module = SimpleNamespace(
        sample_shape=(2,), fixed_z=torch.zeros(1, 4),
        sample_z=lambda n, generator: torch.randn(n, 4, generator=generator),
        generate=lambda z: z[:, :2],
    )
    for step in (0, 10, 20):
        logger._maybe_log(SimpleNamespace(global_step=step, is_global_zero=True, loggers=[]), module, None)
    state = logger.state_dict()
    assert state["snapshot_steps"] == [0, 10, 20] and state["snapshot_points"].shape == (3, 20, 2)
    restored = GeneratedSamplesLogger()
    restored.load_state_dict(state)
    fig = snapshot_strip_figure(restored.snapshots, RING)
    assert [ax.get_title() for ax in fig.axes] == ["step 0", "step 10", "step 20"]
    many = [(step, torch.randn(5, 2)) for step in range(20)]
    titles = [ax.get_title() for ax in snapshot_strip_figure(many, max_panels=8).axes]
    assert len(titles) == 8 and titles[0] == "step 0" and titles[-1] == "step 19"
    plt.close("all")
