"""Checkerboard share and stroke mass: hand-computed values, and the property the classifier default buys."""

from __future__ import annotations

import math

import pytest
import torch

from ganlab.errors import GanlabError
from ganlab.explain import Deconvnet, GuidedBackprop
from ganlab.explain.artifacts import checkerboard_ratio, mass_in_mask, nyquist_share, stroke_mask
from ganlab.nets.classifier import CNNClassifier


def test_a_checkerboard_is_all_nyquist_and_a_ramp_almost_none() -> None:
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = ((i + j) % 2).double()[None, None] * 2 - 1
    stripes = (j % 2).double()[None, None]  # period 2 along W only: still on the Nyquist column
    wave = torch.cos(2 * math.pi * j / 8).double()[None, None]  # one period across the image: frequency 1 of 8
    shares = nyquist_share(torch.cat([board, stripes, wave]))
    assert shares[0] == pytest.approx(1.0) and shares[1] == pytest.approx(1.0)
    assert shares[2] < 1e-6


def test_white_noise_spreads_its_variance_evenly() -> None:
    noise = torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = (16 + 16 - 1) / (16 * 16 - 1)  # Nyquist row + column over all non-DC frequencies
    assert float(nyquist_share(noise).mean()) == pytest.approx(expected, rel=0.1)


def test_channels_are_summed_and_constant_images_are_undefined() -> None:
    board = ((torch.arange(4)[:, None] + torch.arange(4)) % 2).float()
    two = torch.stack([board, board])[None]
    assert float(nyquist_share(two)) == pytest.approx(1.0)
    assert torch.isnan(nyquist_share(torch.ones(1, 1, 4, 4))).all()
    with pytest.raises(GanlabError, match="even H and W"):
        nyquist_share(torch.zeros(1, 1, 5, 4))


def test_checkerboard_ratio_is_maps_share_over_inputs_share() -> None:
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(4, 1, 8, 8, generator=g)
    board = ((torch.arange(8)[:, None] + torch.arange(8)) % 2).float().expand(4, 1, 8, 8)
    assert checkerboard_ratio(inputs, inputs) == pytest.approx(1.0)
    assert checkerboard_ratio(board, inputs) == pytest.approx(1.0 / float(nyquist_share(inputs).mean()))


def test_stroke_mask_dilates_by_the_given_pixels_and_mass_counts_positive_mass_only() -> None:
    image = -torch.ones(1, 1, 7, 7)
    image[0, 0, 3, 3] = 1.0
    assert stroke_mask(image, dilation=0).sum() == 1
    assert stroke_mask(image, dilation=1).sum() == 9
    maps = torch.zeros(1, 2, 7, 7)
    maps[0, 0, 3, 3] = 3.0   # inside, positive
    maps[0, 1, 0, 0] = 1.0   # outside, positive
    maps[0, 0, 6, 6] = -5.0  # negative mass is not counted
    assert float(mass_in_mask(maps, stroke_mask(image, dilation=1))) == pytest.approx(0.75)
    assert torch.isnan(mass_in_mask(-maps.abs(), stroke_mask(image)))


@pytest.mark.parametrize("method", [GuidedBackprop, Deconvnet])
def test_pooled_downsampling_removes_the_strided_checkerboard(method) -> None:
    """The same random-weight net, strided 3x3 convs vs stride-1 convs + 2x2 average pooling: the backward
    pass of the strided one prints a 2-pixel period into a smooth input's map, the pooled one far less."""
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.randn(8, 1, 36, 36), 9, stride=1)  # smooth 28x28 blobs
    ratios = {}
    for downsample in ("stride", "avgpool"):
        torch.manual_seed(0)
        net = CNNClassifier(1, 3, widths=(8, 16, 16), strides=(2, 2, 1), downsample=downsample).eval()
        ratios[downsample] = checkerboard_ratio(method(net).attribute(x, target=0), x)
    assert ratios["avgpool"] * 5 < ratios["stride"]


def test_deconvnet_sees_the_image_only_through_max_pooling_switches() -> None:
    """Deconvnet's backward ignores forward activations, so without max pooling (whose switches depend on
    the input) every image gets the same map; with anti-aliased max pooling the maps differ."""
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = {}
    for downsample in ("avgpool", "maxblurpool"):
        torch.manual_seed(0)
        net = CNNClassifier(1, 3, widths=(4, 8), strides=(2, 1), downsample=downsample).eval()
        maps[downsample] = Deconvnet(net).attribute(x, target=1)
    assert torch.allclose(maps["avgpool"][0], maps["avgpool"][1])
    assert not torch.allclose(maps["maxblurpool"][0], maps["maxblurpool"][1], atol=1e-4)
