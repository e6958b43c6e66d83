"""ganlab.explain: hand-computed oracles, the rectifier rules, model-state hygiene, GAN discriminators, targets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganlab.errors import GanlabError
from ganlab.explain import CAM, METHODS, Deconvnet, GradCAM, GuidedBackprop, GuidedGradCAM, Occlusion
from ganlab.explain.guided import input_gradient
from ganlab.explain.rectifiers import ModifiedRectifiers
from ganlab.nets.classifier import CNNClassifier
from ganlab.nets.dcgan import DCGANDiscriminator
from ganlab.nets.mlp import MLPDiscriminator


def test_methods_in_the_lecture_panel_order() -> None:
    assert list(METHODS) == ["guided_backprop", "gradcam", "guided_gradcam", "occlusion", "cam", "deconvnet",
                             "integrated_gradients"]


class LinearModel(nn.Module):
    """logits = W flatten(x): every gradient method gives W[c], occlusion sums W[c] (x - baseline)."""

    def __init__(self, shape: tuple[int, int, int], classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(shape[0] * shape[1] * shape[2], classes, bias=False).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_linear_model_closed_form() -> None:
    torch.manual_seed(0)
    model = LinearModel((2, 4, 4), 3)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    target = torch.tensor([2, 0])
    w = model.linear.weight.detach().view(3, 2, 4, 4)[target]  # (N, C, H, W)
    for method in (GuidedBackprop, Deconvnet):  # no rectifiers: the plain gradient
        torch.testing.assert_close(method(model).attribute(x, target), w, rtol=0, atol=1e-15)
    contribution = (w * (x - 0.5)).sum(dim=1, keepdim=True)  # per pixel, all channels
    pixelwise = Occlusion(model, window=1, stride=1, baseline=0.5).attribute(x, target)
    torch.testing.assert_close(pixelwise, contribution, rtol=0, atol=1e-12)
    blocks = Occlusion(model, window=2, stride=2, baseline=0.5).attribute(x, target)  # non-overlapping 2x2 sums
    expected = F.avg_pool2d(contribution, 2).mul(4).repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(blocks, expected, rtol=0, atol=1e-12)


RECTIFIERS = {"leaky_module": lambda t: nn.LeakyReLU(0.2)(t), "leaky_functional": lambda t: F.leaky_relu(t, 0.2),
              "torch_relu": torch.relu, "tensor_relu_": lambda t: t.relu_(), "functional_relu": F.relu}


class TwoLayer(nn.Module):
    """x (1, 1, 1, 2) -> U x -> rectifier -> v . h, with hidden units of every sign combination:
    h = U [1, 1] = [1, 2, -1, -3] (+, +, -, -) and v = [1, -1, 2, -2] (+, -, +, -)."""

    def __init__(self, rectifier: str) -> None:
        super().__init__()
        self.rectifier = rectifier
        self.u = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -3.0]], dtype=torch.float64))
        self.v = nn.Parameter(torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1) @ self.u.T
        return RECTIFIERS[self.rectifier](h) @ self.v


# By hand, with g = v at the hidden layer and U^T mapping hidden gradients back to x:
#   plain    : U^T (v * f'(h))      leaky: v * [1, 1, .2, .2] = [1, -1, .4, -.4] -> [.6, -.8]
#   guided   : U^T (f'(h) relu(v))  leaky: [1, 0, .4, 0]                        -> [.6, 0]
#   deconvnet: U^T f(v)             leaky: [1, -.2, 2, -.4]                     -> [-1, .8]
# and for ReLU (f'(h) = [1, 1, 0, 0]): plain [1, -2], guided [1, 0], deconvnet U^T [1, 0, 2, 0] = [-1, 0].
HAND = {"leaky": {None: [0.6, -0.8], "guided": [0.6, 0.0], "deconvnet": [-1.0, 0.8]},
        "relu": {None: [1.0, -2.0], "guided": [1.0, 0.0], "deconvnet": [-1.0, 0.0]}}


@pytest.mark.parametrize("rectifier", list(RECTIFIERS))
def test_rectifier_rules_by_hand(rectifier: str) -> None:
    model = TwoLayer(rectifier)
    x = torch.ones(1, 1, 1, 2, dtype=torch.float64)
    expected = HAND["leaky" if rectifier.startswith("leaky") else "relu"]
    for rule, values in expected.items():
        grad = input_gradient("test", model, x, None, rule)
        torch.testing.assert_close(grad.flatten(), torch.tensor(values, dtype=torch.float64), rtol=0, atol=1e-12)


class Mixed(nn.Module):
    """Every rectifier spelling, BatchNorm (train/eval matters) and a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.act1, self.conv2 = nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1)
        self.leaky, self.conv3 = nn.LeakyReLU(0.1), nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5, 3)
        self.conv2.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn(self.conv1(x)))
        h = F.relu(self.conv2(h)) + self.leaky(h)
        h = F.leaky_relu(self.conv3(h), 0.3).relu_()
        return self.head(torch.relu(h).mean(dim=(2, 3)))


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_forward_is_bit_identical_under_the_mode(rule: str) -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.randn(2, 3, 8, 8)
    reference = model(x)
    with ModifiedRectifiers(rule):
        explained = model(x.clone().requires_grad_(True))
    assert torch.equal(explained, reference)
    assert torch._C._len_torch_function_stack() == 0
    plain = input_gradient("test", model, x, 1, None)
    assert not torch.allclose(input_gradient("test", model, x, 1, rule), plain)  # every spelling was caught


@pytest.mark.parametrize("name", list(METHODS))
def test_model_state_is_restored_even_after_an_error(name: str) -> None:
    torch.manual_seed(0)
    model = Mixed().train()
    model.conv3.eval()  # a mixed state must come back as it was
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    options = {"layer": "conv3"} if "gradcam" in name else {}
    if name == "cam":
        with pytest.raises(GanlabError, match="feature_maps"):
            METHODS[name](model)
        return
    method = METHODS[name](model, **options)
    assert method.attribute(x, torch.tensor([0, 2])).shape[-2:] == (8, 8)
    with pytest.raises(GanlabError, match=r"\[0, 2\]"):
        method.attribute(x, 5)  # fails after the forward pass
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN stats untouched (eval)
    assert torch._C._len_torch_function_stack() == 0
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())


def test_cam_equals_gradcam_up_to_scale() -> None:
    torch.manual_seed(0)
    net = CNNClassifier(3, 4, widths=(4, 6), strides=(1, 1)).double().eval()  # maps at input size: no upsampling
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([3, 0, 1])
    cam = CAM(net).attribute(x, target)
    assert (cam < 0).any() and (cam > 0).any()
    # Grad-CAM's alpha_k = W[c, k] / (h w) for a GAP + linear head, so Grad-CAM = ReLU(CAM) / (h w)
    torch.testing.assert_close(GradCAM(net).attribute(x, target) * 64, cam.clamp(min=0), rtol=1e-10, atol=1e-12)


class LeftHalf(nn.Module):
    """A CNN that only looks at the left 4 columns of an 8x8 image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[..., :4])


def test_occluding_an_ignored_region_changes_nothing() -> None:
    torch.manual_seed(0)
    maps = Occlusion(LeftHalf(), window=2, stride=2).attribute(torch.randn(2, 1, 8, 8), 1)
    assert torch.equal(maps[..., 4:], torch.zeros_like(maps[..., 4:]))
    assert (maps[..., :4].abs() > 0).float().mean() > 0.9


def test_occlusion_chunk_follows_the_memory_budget() -> None:
    model = LinearModel((1, 4, 4), 2)
    occlusion = Occlusion(model, window=2, stride=2)
    per_copy = occlusion.bytes_per_copy(torch.zeros(1, 1, 4, 4, dtype=torch.float64))
    assert per_copy == 16 * 8 + 2 * 8  # the input and the linear layer's two logits
    occlusion.max_batch_bytes = 3 * per_copy
    occlusion.attribute(torch.zeros(2, 1, 4, 4, dtype=torch.float64), 0)
    assert occlusion.chunk == 3


def discriminators() -> list:
    torch.manual_seed(0)
    return [pytest.param(DCGANDiscriminator((1, 16, 16), base_width=4), id="dcgan"),
            pytest.param(DCGANDiscriminator((3, 16, 16), base_width=4, spectral_norm=True), id="dcgan-sn"),
            pytest.param(MLPDiscriminator((1, 8, 8), hidden=[8]), id="mlp")]


@pytest.mark.parametrize("disc", discriminators())
def test_gan_discriminators(disc: nn.Module) -> None:
    x = torch.randn(2, *disc.in_shape)
    spatial = isinstance(disc, DCGANDiscriminator)
    for name, method in METHODS.items():
        if name == "cam" or (name.endswith("gradcam") and not spatial):
            with pytest.raises(GanlabError, match="feature_maps" if name == "cam" else "no feature maps"):
                method(disc).attribute(x)
            continue
        options = {"window": 4, "stride": 2} if name == "occlusion" else {}
        maps = method(disc, **options).attribute(x)  # target None: the realness logit
        assert maps.shape == (2, 1 if name in ("gradcam", "occlusion") else x.shape[1], *x.shape[-2:])
        assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    if spatial:  # the default Grad-CAM layer is the last LeakyReLU before the flatten
        gradcam = GradCAM(disc)
        gradcam.attribute(x)
        assert isinstance(dict(disc.named_modules())[gradcam.layer], nn.LeakyReLU)
    # LeakyReLU is modified: guided backprop is not the plain gradient
    assert not torch.allclose(GuidedBackprop(disc).attribute(x), input_gradient("t", disc, x, None, None))
    with pytest.raises(GanlabError, match="target=None"):
        GuidedBackprop(disc).attribute(x, 1)


def test_per_image_targets_equal_single_class_calls() -> None:
    torch.manual_seed(0)
    net = CNNClassifier(3, 3, widths=(4, 4), strides=(2, 1)).eval()
    x = torch.randn(3, 3, 8, 8)
    target = torch.tensor([2, 0, 1])
    for name, method in METHODS.items():
        options = {"window": 4, "stride": 2} if name == "occlusion" else {}
        batch = method(net, **options).attribute(x, target)
        for i in range(3):
            one = method(net, **options).attribute(x[i:i + 1], int(target[i]))
            torch.testing.assert_close(batch[i:i + 1], one, rtol=1e-5, atol=1e-7)


def test_bad_targets_and_layers_are_clear_errors() -> None:
    net = CNNClassifier(1, 3, widths=(4, 4), strides=(2, 1)).eval()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(GanlabError, match="pass target="):
        GuidedBackprop(net).attribute(x)
    with pytest.raises(GanlabError, match=r"\(2,\) tensor"):
        GradCAM(net).attribute(x, torch.tensor([0, 1, 2]))
    with pytest.raises(GanlabError, match="integer class"):
        Occlusion(net).attribute(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(GanlabError, match="not a submodule"):
        GuidedGradCAM(net, layer="features.9")
    with pytest.raises(GanlabError, match="larger than"):
        Occlusion(net, window=9).attribute(x, 0)
    with pytest.raises(GanlabError, match=r"\(N, C, H, W\)"):
        CAM(net).attribute(x[0], 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    net = CNNClassifier(3, 3, widths=(4, 8), strides=(2, 1)).double().eval()
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 2])
    for name, method in METHODS.items():
        cpu = method(net).attribute(x, target)
        gpu = method(net.cuda()).attribute(x.cuda(), target.cuda())
        net.cpu()
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-9)


def test_ganlab_explain_does_not_import_captum() -> None:
    """Captum is a test dependency only."""
    code = ("import sys, ganlab.explain, ganlab.explain.evaluation; "
            "sys.exit(any(m.split('.')[0] == 'captum' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
