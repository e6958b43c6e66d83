"""DCGAN and MLP networks: shapes, conditioning, and the discriminator options (SN, minibatch std, PacGAN)."""

import pytest
import torch
from torch import nn

from ganlab.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from ganlab.nets.layers import MinibatchStdDev
from ganlab.nets.mlp import MLPDiscriminator, MLPGenerator


def _seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 28, 32, 64])
def test_dcgan_shapes_and_range(size, channels):
    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=8, out_shape=(channels, size, size), base_width=4)
    d = DCGANDiscriminator(in_shape=(channels, size, size), base_width=4)
    d_packed = DCGANDiscriminator(in_shape=(channels, size, size), base_width=4, pack=2, minibatch_std=True)
    x = g(torch.randn(4, 8))
    assert x.shape == (4, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0  # Tanh by default
    assert d(x).shape == (4,)
    assert d_packed(x).shape == (2,)


def test_dcgan_widths_follow_the_paper_for_64x64():
    g = DCGANGenerator(latent_dim=100, out_shape=(3, 64, 64))
    d = DCGANDiscriminator(in_shape=(3, 64, 64))
    g_convs = [(m.in_channels, m.out_channels) for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert g_convs == [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    d_convs = [(m.in_channels, m.out_channels) for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert d_convs == [(3, 64), (64, 128), (128, 256), (256, 512)]
    assert d.head.in_features == 512 * 4 * 4
    # BatchNorm from D's second block on, never on its input layer.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3


def test_dcgan_28x28_goes_through_7x7():
    d = DCGANDiscriminator(in_shape=(1, 28, 28), base_width=4)
    assert d.head.in_features == 8 * 7 * 7
    g = DCGANGenerator(latent_dim=8, out_shape=(1, 28, 28), base_width=4)
    first = next(m for m in g.modules() if isinstance(m, nn.ConvTranspose2d))
    assert first.kernel_size == (7, 7)


@pytest.mark.parametrize("shape", [(1, 12, 12), (3, 30, 30), (1, 512, 512), (1, 4, 4), (1, 32, 16)])
def test_dcgan_rejects_unsupported_sizes_naming_them(shape):
    size = f"{shape[1]}x{shape[2]}"
    with pytest.raises(ValueError, match=size):
        DCGANGenerator(latent_dim=8, out_shape=shape)
    with pytest.raises(ValueError, match=size):
        DCGANDiscriminator(in_shape=shape)


def test_bad_options_fail_in_the_constructor():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        DCGANDiscriminator(in_shape=(32, 32))
    with pytest.raises(ValueError, match="conditioning must be one of projection, concat; got 'proj'"):
        MLPDiscriminator(in_shape=[4], hidden=[8], num_classes=3, conditioning="proj")
    with pytest.raises(ValueError, match="pack=2 cannot be combined with num_classes=3"):
        DCGANDiscriminator(in_shape=(1, 8, 8), num_classes=3, pack=2)
    with pytest.raises(ValueError, match="pack=0"):
        MLPDiscriminator(in_shape=[4], hidden=[8], pack=0)
    with pytest.raises(ValueError, match=r"hidden=\[8, 0\]"):
        MLPGenerator(latent_dim=2, hidden=[8, 0], out_shape=[4])
    with pytest.raises(ValueError, match="base_width=0"):
        DCGANGenerator(latent_dim=2, out_shape=(1, 8, 8), base_width=0)
    with pytest.raises(ValueError, match="group_size"):
        MinibatchStdDev(group_size=0)


def test_batch_not_divisible_by_pack_is_refused():
    d = MLPDiscriminator(in_shape=[4], hidden=[8], pack=3)
    with pytest.raises(ValueError, match="batch size 4 is not divisible by pack=3"):
        d(torch.zeros(4, 4))


def test_mlp_unconditional_state_dict_keys_unchanged():
    # The layout of checkpoints written before conditioning existed; resume compares these keys.
    d = MLPDiscriminator(in_shape=[1, 28, 28], hidden=[1024, 512, 256])
    assert list(d.state_dict()) == [f"net.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]
    g = MLPGenerator(latent_dim=10, hidden=[256], out_shape=[4], batchnorm=False)
    assert list(g.state_dict()) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


# ---------------------------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("make_g", [
    lambda: MLPGenerator(latent_dim=4, hidden=[16], out_shape=[1, 8, 8], num_classes=3),
    lambda: DCGANGenerator(latent_dim=4, out_shape=(1, 8, 8), base_width=4, num_classes=3, embed_dim=5),
])
def test_conditional_generator_uses_labels(make_g):
    torch.manual_seed(0)
    g = make_g().eval()
    z = torch.randn(1, 4).expand(3, 4)  # one z, three labels
    x = g(z, torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8)
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])
    assert torch.allclose(g(z, torch.tensor([1, 1, 1]))[0], x[1], atol=1e-6)  # same (z, y) -> same output
    with pytest.raises(ValueError, match="conditional \\(num_classes=3\\): forward needs labels y"):
        g(z)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        g(z, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        g(z, torch.tensor([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("net", [
    MLPGenerator(latent_dim=4, hidden=[8], out_shape=[4]),
    DCGANGenerator(latent_dim=4, out_shape=(1, 8, 8), base_width=2),
])
def test_unconditional_generator_refuses_labels(net):
    with pytest.raises(ValueError, match="unconditional \\(num_classes=0\\) but labels y were passed"):
        net(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"expects z of shape \(N, 4\)"):
        net(torch.zeros(2, 5))


@pytest.mark.parametrize("conditioning", ["projection", "concat"])
@pytest.mark.parametrize("make_d", [
    lambda c: MLPDiscriminator(in_shape=[1, 8, 8], hidden=[16], num_classes=3, conditioning=c),
    lambda c: DCGANDiscriminator(in_shape=(1, 8, 8), base_width=4, num_classes=3, conditioning=c, embed_dim=2),
])
def test_conditional_discriminator_uses_labels(make_d, conditioning):
    torch.manual_seed(0)
    d = make_d(conditioning).eval()
    x = torch.randn(1, 1, 8, 8).expand(3, -1, -1, -1)
    logits = d(x, torch.tensor([0, 1, 2]))
    assert logits.shape == (3,) and len(set(logits.tolist())) == 3
    with pytest.raises(ValueError, match="forward needs labels y"):
        d(x)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        d(x, torch.tensor([0, 1]))


@pytest.mark.parametrize("d", [
    MLPDiscriminator(in_shape=[1, 8, 8], hidden=[4]),
    DCGANDiscriminator(in_shape=(1, 8, 8), base_width=2),
])
def test_unconditional_discriminator_refuses_labels(d):
    with pytest.raises(ValueError, match="unconditional \\(num_classes=0\\) but labels y were passed"):
        d(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))


def test_dcgan_output_activation_is_configurable():
    g = DCGANGenerator(latent_dim=2, out_shape=(1, 8, 8), base_width=2, out_activation=nn.Identity())
    assert isinstance(g.net[-1], nn.Identity)
    assert isinstance(DCGANGenerator(latent_dim=2, out_shape=(1, 8, 8), base_width=2).net[-1], nn.Tanh)


def test_concat_conditioning_widens_the_first_layer():
    d = MLPDiscriminator(in_shape=[1, 8, 8], hidden=[16], num_classes=10, conditioning="concat", embed_dim=6)
    assert d.net[0].in_features == 64 + 6
    conv = DCGANDiscriminator(in_shape=(3, 16, 16), base_width=4, num_classes=10, conditioning="concat")
    assert conv.body[0].in_channels == 3 + 10  # embed_dim defaults to num_classes: label maps as channels


def test_concat_label_maps_are_the_embedding_broadcast_over_the_image():
    d = DCGANDiscriminator(in_shape=(1, 8, 8), base_width=1, num_classes=2, conditioning="concat", embed_dim=1)
    with torch.no_grad():
        d.label.embed.weight.copy_(torch.tensor([[0.0], [3.0]]))
    seen = {}
    d.body[0].register_forward_pre_hook(lambda m, inp: seen.update(input=inp[0]))
    x = torch.randn(2, 1, 8, 8)
    d(x, torch.tensor([1, 0]))
    assert seen["input"].shape == (2, 2, 8, 8)
    assert torch.equal(seen["input"][:, 0], x[:, 0])
    assert torch.all(seen["input"][0, 1] == 3.0) and torch.all(seen["input"][1, 1] == 0.0)


def test_projection_term_hand_computed_mlp():
    d = MLPDiscriminator(in_shape=[2], hidden=[2], num_classes=3, negative_slope=0.2)
    with torch.no_grad():
        d.net[0].weight.copy_(torch.eye(2))
        d.net[0].bias.zero_()
        d.net[-1].weight.copy_(torch.tensor([[0.5, 1.0]]))
        d.net[-1].bias.fill_(0.25)
        d.projection.embed.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 5.0]]))
    # phi(x) = LeakyReLU_0.2([1, -2]) = [1, -0.4]; head: 0.5*1 + 1*(-0.4) + 0.25 = 0.35.
    # projection: class 2 -> <[3, 5], [1, -0.4]> = 1.0; class 1 -> 0.6; class 0 -> 0.
    x = torch.tensor([[1.0, -2.0]]).expand(3, 2)
    logits = d(x, torch.tensor([2, 1, 0]))
    assert torch.allclose(logits, torch.tensor([1.35, 0.95, 0.35]))


def test_projection_term_hand_computed_dcgan():
    d = DCGANDiscriminator(in_shape=(1, 8, 8), base_width=1, num_classes=2)
    with torch.no_grad():
        conv = d.body[0]
        conv.weight.zero_()
        conv.bias.fill_(0.5)  # every unit of the 1x4x4 map is LeakyReLU(0.5) = 0.5, whatever x is
        d.head.weight.zero_()
        d.head.bias.fill_(-1.0)
        d.projection.embed.weight.copy_(torch.stack([torch.zeros(16), torch.arange(16.0)]))
    logits = d(torch.randn(2, 1, 8, 8), torch.tensor([1, 0]))
    # class 1: -1 + 0.5 * (0 + 1 + ... + 15) = -1 + 60; class 0: -1 + 0.
    assert torch.allclose(logits, torch.tensor([59.0, -1.0]))


# ---------------------------------------------------------------------------------------------- D options


def test_minibatch_std_hand_computed():
    layer = MinibatchStdDev(group_size=2)
    # Groups {0,1} and {2,3}: per-feature (biased) std [1, 2] -> mean 1.5; identical samples -> sqrt(1e-8).
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    out = layer(x)
    assert out.shape == (4, 3) and torch.equal(out[:, :2], x)
    assert torch.allclose(out[:, 2], torch.tensor([1.5, 1.5, 1e-4, 1e-4]), atol=1e-7)
    # 3 samples do not split into groups of 2: the whole batch is one group, std of {0, 1, 2} = sqrt(2/3).
    out = layer(torch.tensor([[0.0], [1.0], [2.0]]))
    assert torch.allclose(out[:, 1], torch.full((3,), (2 / 3) ** 0.5))


def test_minibatch_std_on_maps_adds_one_constant_channel():
    x = torch.zeros(2, 1, 2, 2)
    x[1] = torch.tensor([[2.0, 2.0], [2.0, 6.0]])  # per-pixel std over the pair: [1, 1, 1, 3] -> mean 1.5
    out = MinibatchStdDev(group_size=2)(x)
    assert out.shape == (2, 2, 2, 2) and torch.equal(out[:, :1], x)
    assert torch.allclose(out[:, 1], torch.full((2, 2, 2), 1.5))


def _weight_matrices(module):
    return [(m.weight, m.parametrizations.weight.original) for m in module.modules()
            if hasattr(m, "parametrizations")]


@pytest.mark.parametrize("make_d", [
    lambda: MLPDiscriminator(in_shape=[1, 8, 8], hidden=[32, 16], spectral_norm=True, num_classes=3),
    lambda: DCGANDiscriminator(in_shape=(3, 16, 16), base_width=8, spectral_norm=True, num_classes=3),
])
def test_spectral_norm_makes_every_weight_1_lipschitz(make_d):
    torch.manual_seed(0)
    d = make_d().train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())  # SN-GAN: no BatchNorm
    assert not hasattr(d.projection.embed, "parametrizations")        # embeddings are not normalised
    x, y = torch.randn(4, *d.in_shape), torch.tensor([0, 1, 2, 0])
    for _ in range(10):
        d(x, y)
    pairs = _weight_matrices(d)
    n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in d.modules())
    assert len(pairs) == n_layers >= 3
    for w, original in pairs:
        sigma = torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2)
        raw = torch.linalg.matrix_norm(original.detach().reshape(w.shape[0], -1), ord=2)
        assert sigma == pytest.approx(1.0, abs=1e-2)
        assert abs(raw - 1.0) > 0.05  # the normalisation did something


@pytest.mark.parametrize("make_d", [
    lambda shape, pack: MLPDiscriminator(in_shape=shape, hidden=[16, 8], pack=pack, minibatch_std=True),
    lambda shape, pack: DCGANDiscriminator(in_shape=shape, base_width=4, pack=pack),
])
def test_pack_equals_d_on_manually_concatenated_pairs(make_d):
    torch.manual_seed(0)
    packed = make_d((1, 8, 8), 2)
    plain = make_d((2, 8, 8), 1)  # one sample of 2 channels = a pair of 1-channel samples
    plain.load_state_dict(packed.state_dict())
    x = torch.randn(6, 1, 8, 8)
    pairs = torch.cat([x[0::2], x[1::2]], dim=1)  # pairs (x0, x1), (x2, x3), (x4, x5)
    assert pairs.shape == (3, 2, 8, 8)
    assert torch.allclose(packed(x), plain(pairs), atol=1e-6)
    assert packed(x).shape == (3,)
