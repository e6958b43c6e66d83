"""Distribution metrics against closed forms, network shapes, and the sampling interpolation."""

import pytest
import torch

from ganlab.metrics.distribution import ks_1d, wasserstein1_1d
from ganlab.nets.mlp import MLPDiscriminator, MLPGenerator
from ganlab.tasks.sample import slerp


def test_wasserstein1_of_a_shift_is_the_shift():
    a = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    assert wasserstein1_1d(a + 0.7, a) == pytest.approx(0.7, abs=1e-6)
    assert wasserstein1_1d(a, a) == 0.0


def test_wasserstein1_hand_computed_with_unequal_sizes():
    # Quantile functions: a = {0, 2}, b = {1}; |0-1| and |2-1| over half the mass each -> 1.
    assert wasserstein1_1d(torch.tensor([0.0, 2.0]), torch.tensor([1.0])) == pytest.approx(1.0)


def test_ks_disjoint_and_identical():
    assert ks_1d(torch.tensor([0.0, 1.0]), torch.tensor([5.0, 6.0])) == 1.0
    assert ks_1d(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])) == 0.0
    # Hand-computed: a={0,1,2,3}, b={2,3,4,5}: at x=1, F_a=0.5, F_b=0 -> 0.5 is the largest gap.
    assert ks_1d(torch.tensor([0.0, 1, 2, 3]), torch.tensor([2.0, 3, 4, 5])) == pytest.approx(0.5)


def test_lecture_mnist_networks_shapes_and_range():
    g = MLPGenerator(latent_dim=10, hidden=[256, 512, 1024], out_shape=[1, 28, 28], out_activation=torch.nn.Tanh())
    d = MLPDiscriminator(in_shape=[1, 28, 28], hidden=[1024, 512, 256])
    linear_sizes = [(m.in_features, m.out_features) for m in g.modules() if isinstance(m, torch.nn.Linear)]
    assert linear_sizes == [(10, 256), (256, 512), (512, 1024), (1024, 784)]
    linear_sizes = [(m.in_features, m.out_features) for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert linear_sizes == [(784, 1024), (1024, 512), (512, 256), (256, 1)]
    x = g(torch.randn(5, 10))
    assert x.shape == (5, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (5,)


def test_discriminator_rejects_wrong_shape_clearly():
    d = MLPDiscriminator(in_shape=[1, 28, 28], hidden=[8])
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        d(torch.zeros(2, 1, 32, 32))


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g)
    path = slerp(z0, z1, 7)
    assert path.shape == (3, 7, 64)
    assert torch.allclose(path[:, 0], z0, atol=1e-5) and torch.allclose(path[:, -1], z1, atol=1e-5)
    # Same-norm endpoints stay on their sphere (a linear path would dip towards the origin).
    z1n = z1 / z1.norm(dim=1, keepdim=True) * z0.norm(dim=1, keepdim=True)
    norms = slerp(z0, z1n, 5).norm(dim=2)
    assert torch.allclose(norms, z0.norm(dim=1, keepdim=True).expand(-1, 5), rtol=1e-4)
