"""ganlab.explain against Captum (the reference implementation) on small ReLU CNNs, float64, CPU."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop as CaptumGuidedBackprop, GuidedGradCam, LayerAttribution
from captum.attr import LayerGradCam, Occlusion as CaptumOcclusion
from torch import nn

from ganlab.explain import Deconvnet, GradCAM, GuidedBackprop, GuidedGradCAM, Occlusion
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
