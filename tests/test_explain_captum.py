"""ganlab.explain against Captum (the reference implementation) on small ReLU CNNs, float64, CPU; and, where
Captum's numbers cannot be compared (SmoothGrad's noise draws), hand-computed oracles."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop as CaptumGuidedBackprop, GuidedGradCam, LayerAttribution
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import LayerGradCam, Occlusion as CaptumOcclusion
from torch import nn

from ganlab.errors import GanlabError
from ganlab.explain import (METHODS, Deconvnet, GradCAM, GuidedBackprop, GuidedGradCAM, IntegratedGradients,
                            Occlusion, SmoothGrad)
from ganlab.explain.guided import input_gradient
from ganlab.nets.classifier import CNNClassifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about hooks and requires_grad


def relu_cnn(in_channels: int) -> nn.Sequential:
    """Mixed in-place and out-of-place nn.ReLU, a stride-2 layer, GAP + linear head; 3 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).double().eval()


def classifier(in_channels: int) -> CNNClassifier:
    torch.manual_seed(1)
    net = CNNClassifier(in_channels, 3, widths=(4, 6, 8)).double().eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net


def cases():
    for channels in (1, 3):
        yield pytest.param(relu_cnn(channels), "5", channels, id=f"relu_cnn-{channels}ch")
        yield pytest.param(classifier(channels), "features", channels, id=f"CNNClassifier-{channels}ch")


TARGET = torch.tensor([0, 2, 1])  # a different class per image


def images(channels: int, size: tuple[int, int] = (10, 12)) -> torch.Tensor:
    return torch.randn(3, channels, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-7) -> None:
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 0  # a vacuous all-zero comparison would prove nothing
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * float(theirs.abs().max()))


@pytest.mark.parametrize(("net", "layer", "channels"), cases())
def test_guided_backprop_and_deconvnet_match_captum(net: nn.Module, layer: str, channels: int) -> None:
    x = images(channels)
    close(GuidedBackprop(net).attribute(x, TARGET), CaptumGuidedBackprop(net).attribute(x, target=TARGET))
    close(Deconvnet(net).attribute(x, TARGET), Deconvolution(net).attribute(x, target=TARGET))


@pytest.mark.parametrize(("net", "layer", "channels"), cases())
def test_gradcam_and_guided_gradcam_match_captum(net: nn.Module, layer: str, channels: int) -> None:
    x = images(channels)
    module = dict(net.named_modules())[layer]
    ours = GradCAM(net)  # the default layer is the last spatial feature maps
    cam = ours.attribute(x, TARGET)
    assert ours.layer == layer
    coarse = LayerGradCam(net, module).attribute(x, target=TARGET, relu_attributions=True)
    assert coarse.shape[-2:] != x.shape[-2:]  # the upsampling is exercised
    close(cam, LayerAttribution.interpolate(coarse, tuple(x.shape[-2:]), interpolate_mode="bilinear"))
    theirs = GuidedGradCam(net, module).attribute(x, target=TARGET, interpolate_mode="bilinear")
    close(GuidedGradCAM(net, layer=layer).attribute(x, TARGET), theirs)


@pytest.mark.parametrize(("net", "layer", "channels"), cases())
@pytest.mark.parametrize(("window", "stride"), [(4, 3), ((3, 5), (2, 1))])
def test_occlusion_matches_captum_for_any_chunk_size(net: nn.Module, layer: str, channels: int, window, stride) -> None:
    x = images(channels, size=(11, 10))  # window positions that do not tile the image: clipped last windows
    win = (window, window) if isinstance(window, int) else window
    st = (stride, stride) if isinstance(stride, int) else stride
    theirs = CaptumOcclusion(net).attribute(x, sliding_window_shapes=(channels, *win), strides=(channels, *st),
                                            baselines=0.25, target=TARGET)
    assert torch.equal(theirs, theirs[:, :1].expand_as(theirs))  # all-channel windows: one map per image
    maps = []
    for max_batch in (1, 7, None):
        occlusion = Occlusion(net, window=window, stride=stride, baseline=0.25, max_batch=max_batch)
        maps.append(occlusion.attribute(x, TARGET))
        assert occlusion.chunk == max_batch or max_batch is None
    close(maps[0], theirs[:, :1].double(), rtol=1e-6)  # Captum divides by the window counts in float32
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("net", "layer", "channels"), cases())
def test_mean_baseline_is_each_images_mean_colour(net: nn.Module, layer: str, channels: int) -> None:
    x = images(channels) + torch.arange(3, dtype=torch.float64).view(3, 1, 1, 1)  # a different mean per image
    fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    theirs = CaptumOcclusion(net).attribute(x, sliding_window_shapes=(channels, 4, 4), strides=(channels, 2, 2),
                                            baselines=fill, target=TARGET)
    close(Occlusion(net, window=4, stride=2, baseline="mean").attribute(x, TARGET), theirs[:, :1].double(),
          rtol=1e-6)
    theirs = CaptumIntegratedGradients(net).attribute(x, baselines=fill, target=TARGET, n_steps=6,
                                                      method="gausslegendre")
    close(IntegratedGradients(net, steps=6, baseline="mean").attribute(x, TARGET), theirs)
    with pytest.raises(GanlabError, match="'mean'"):
        Occlusion(net, baseline="median")


@pytest.mark.parametrize(("net", "layer", "channels"), cases())
@pytest.mark.parametrize(("steps", "baseline"), [(8, 0.0), (5, -1)])
def test_integrated_gradients_matches_captum_for_any_chunk_size(net: nn.Module, layer: str, channels: int,
                                                                steps: int, baseline: float) -> None:
    x = images(channels)
    theirs = CaptumIntegratedGradients(net).attribute(x, baselines=float(baseline), target=TARGET, n_steps=steps,
                                                      method="gausslegendre")
    maps = [IntegratedGradients(net, steps=steps, baseline=baseline, max_batch=b).attribute(x, TARGET)
            for b in (1, 7, 128)]  # 7: chunks that straddle two images
    close(maps[0], theirs)
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=0, atol=1e-12)


class Affine(nn.Module):
    """logits = W flatten(x) + c: the gradient is W[target] everywhere on the path."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.linear = nn.Linear(2 * 4 * 4, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class Gradient:
    """The plain input gradient as a method (what SmoothGrad was defined on)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        return input_gradient("Gradient", self.model, inputs, target, None)


def test_integrated_gradients_of_a_linear_model_is_exact() -> None:
    model = Affine()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = model.linear.weight.detach().view(3, 2, 4, 4)[TARGET]
    for steps in (1, 4):  # Gauss-Legendre integrates a constant exactly with one point
        for baseline in (0.0, -1.0):
            ig = IntegratedGradients(model, steps=steps, baseline=baseline).attribute(x, TARGET)
            torch.testing.assert_close(ig, (x - baseline) * w, rtol=0, atol=1e-14)


def test_integrated_gradients_completeness_on_a_relu_net() -> None:
    """sum(map) = score(x) - score(baseline), up to the quadrature error of a piecewise-constant gradient."""
    net, x = relu_cnn(3), images(3)
    with torch.no_grad():
        gap = (net(x) - net(torch.full_like(x, -1.0))).gather(1, TARGET[:, None])[:, 0]
    errors = {}
    for steps in (4, 256):
        total = IntegratedGradients(net, steps=steps, baseline=-1).attribute(x, TARGET).sum(dim=(1, 2, 3))
        errors[steps] = float((total - gap).abs().max() / gap.abs().max())
    assert errors[256] < 5e-3 and errors[256] < errors[4] / 10  # measured: 0.10 at 4 steps, 0.001 at 256


def test_bad_integrated_gradients_and_smoothgrad_options_are_clear_errors() -> None:
    net = relu_cnn(1)
    for options, message in (({"steps": 0}, "steps must be an integer >= 1"), ({"max_batch": 2.5}, "max_batch"),
                             ({"baseline": "min"}, "baseline must be a finite number")):
        with pytest.raises(GanlabError, match=message):
            IntegratedGradients(net, **options)
    with pytest.raises(GanlabError, match=r"\(3,\) tensor"):
        IntegratedGradients(net).attribute(images(1), torch.tensor([0, 1]))  # before any path image is built
    for samples, sigma, message in ((0, 0.1, "samples"), (2, 0.0, "sigma"), (2, float("nan"), "sigma")):
        with pytest.raises(GanlabError, match=message):
            SmoothGrad(GuidedBackprop(net), samples, sigma)
    with pytest.raises(GanlabError, match="attribute"):
        SmoothGrad(net, 2, 0.1)


def test_smoothgrad_with_tiny_noise_is_the_wrapped_method() -> None:
    net, x = classifier(3), images(3, size=(12, 12))
    for name, method in METHODS.items():
        plain = method(net).attribute(x, TARGET)
        smooth = SmoothGrad(method(net), samples=3, sigma=1e-12).attribute(x, TARGET)
        assert smooth.shape == plain.shape, name
        torch.testing.assert_close(smooth, plain, rtol=1e-6, atol=1e-9 * float(plain.abs().max())), name


def test_smoothgrad_is_seeded_and_per_image() -> None:
    net, x = relu_cnn(3), images(3)
    first = SmoothGrad(GuidedBackprop(net), samples=4, sigma=0.2, seed=5).attribute(x, TARGET)
    assert torch.equal(SmoothGrad(GuidedBackprop(net), samples=4, sigma=0.2, seed=5).attribute(x, TARGET), first)
    assert not torch.allclose(SmoothGrad(GuidedBackprop(net), 4, 0.2, seed=6).attribute(x, TARGET), first)
    assert not torch.allclose(GuidedBackprop(net).attribute(x, TARGET), first)
    alone = SmoothGrad(GuidedBackprop(net), samples=4, sigma=0.2, seed=5).attribute(x[1:2], TARGET[1:2])
    torch.testing.assert_close(alone, first[1:2], rtol=1e-10, atol=1e-12)  # the batch's other images don't matter


def test_smoothgrad_of_a_linear_model_is_its_gradient() -> None:
    model = Affine()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    smooth = SmoothGrad(Gradient(model), samples=5, sigma=0.5).attribute(x, TARGET)
    torch.testing.assert_close(smooth, model.linear.weight.detach().view(3, 2, 4, 4)[TARGET], rtol=0, atol=1e-14)


class SumOfRelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).flatten(1).sum(1)


def test_smoothgrad_of_sum_relu_is_the_normal_cdf() -> None:
    """d/dx relu(x + s n) = [x + s n > 0]: its mean over n ~ N(0, 1) is Phi(x / s), 1/2 at x = 0."""
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    x[0, 0, 0, 0] = 1.0  # value range 1: the noise std is sigma
    smooth = SmoothGrad(Gradient(SumOfRelu()), samples=4000, sigma=0.5).attribute(x, None)[0, 0]
    at_zero = smooth.flatten()[1:]
    assert abs(float(at_zero.mean()) - 0.5) < 0.005 and float((at_zero - 0.5).abs().max()) < 0.04
    phi = 0.5 * (1 + math.erf(2 / math.sqrt(2)))  # Phi(1 / 0.5) = 0.977
    assert abs(float(smooth[0, 0]) - phi) < 0.01
