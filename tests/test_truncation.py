"""The truncation trick (`ganlab sample truncation=0.7`, ganlab/tasks/sample_truncation.py), in process on
untrained tiny generators: the redraw itself, and the strip for unconditional and class-conditional image GANs.
The CLI path on a trained run is tests/test_runs_listing.py::test_sample_the_winner_with_truncation."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_experiment
from hydra.utils import instantiate
from torchvision.io import read_image

from ganlab.errors import GanlabError
from ganlab.tasks.sample_truncation import STRIP_FILE, check_thresholds, latents, truncate, write_strip


class Gaussian:
    """Just the `sample_z` of a GAN with a 16-d standard normal latent."""

    def sample_z(self, n, generator=None):
        return torch.randn(n, 16, generator=generator)


def test_truncate_redraws_only_entries_beyond_the_threshold():
    z = Gaussian().sample_z(500, torch.Generator().manual_seed(0))
    inside = z.abs() <= 0.5
    out = truncate(z, 0.5, Gaussian(), torch.Generator().manual_seed(1))
    assert out.abs().max() <= 0.5 and out.shape == z.shape
    assert torch.equal(out[inside], z[inside])  # kept as they were
    assert not torch.equal(out, z)
    # Redrawn entries follow N(0, 1) truncated to [-0.5, 0.5]: close to uniform there, std 0.28 (not 1)
    assert 0.26 < out[~inside].std().item() < 0.30
    again = truncate(z, 0.5, Gaussian(), torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # the same generator state gives the same samples


def test_latents_without_truncation_is_plain_sample_z():
    plain = latents(Gaussian(), 8, torch.Generator().manual_seed(3), None)
    assert torch.equal(plain, Gaussian().sample_z(8, torch.Generator().manual_seed(3)))


def test_strip_thresholds_are_checked_and_sorted():
    assert check_thresholds(0.7, [2.0, 0.5]) == [0.5, 0.7, 2.0]
    assert check_thresholds(0.7, None) == [0.7]
    for bad in ([0, 1], [-1.0], ["x"], [float("inf")]):
        with pytest.raises(GanlabError, match="truncation_strip=.*expected positive numbers"):
            check_thresholds(0.7, bad)


@pytest.mark.parametrize("experiment, labels", [("gan_mnist", None), ("cgan_mnist", [3, 7])])
def test_strip_is_one_row_per_threshold_and_one_latent_per_column(experiment, labels, tmp_path):
    cfg = compose_experiment(experiment)
    cfg.model.generator.hidden = [16]
    cfg.model.discriminator.hidden = [16]
    model = instantiate(cfg.model).eval()
    y = None if labels is None else torch.tensor(labels)
    columns = 4
    seen = []
    generate = model.generate
    model.generate = lambda z, y=None: seen.append((z, y)) or generate(z, y)
    assert write_strip(model, y, [0.5, 1.0], columns, seed=0, device=torch.device("cpu"), out_dir=tmp_path) \
        == STRIP_FILE
    image = read_image(str(tmp_path / STRIP_FILE))
    # rows: 0.5, 1.0, no truncation; 28x28 digits with 2-pixel padding
    assert tuple(image.shape[1:]) == (3 * 30 + 2, columns * 30 + 2)
    (z05, y05), (z1, _), (z_none, _) = seen
    assert z05.abs().max() <= 0.5 and z1.abs().max() <= 1.0 and z_none.abs().max() > 1.0
    kept = z_none.abs() <= 0.5  # one latent per column: what is inside every threshold is the same in every row
    assert torch.equal(z05[kept], z_none[kept]) and torch.equal(z1[kept], z_none[kept])
    assert (y05 is None) if labels is None else y05.tolist() == [3, 7, 3, 7]  # conditional: columns cycle labels


@pytest.mark.parametrize("value", ["-1", "0", "abc"])
def test_truncation_value_is_checked_before_anything_runs(value):
    from hydra import compose, initialize_config_module

    from ganlab.config_checks import check_values

    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[f"truncation={value}"])
    with pytest.raises(GanlabError, match=f"^truncation={value}: expected a positive number"):
        check_values(cfg, "sample")
