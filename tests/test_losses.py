"""The lecture's objectives against hand-computed values, including saturated discriminators."""

import math

import pytest
import torch

from ganlab.losses import LOSSES, d_loss_bce, g_loss_minimax, g_loss_nonsaturating, get_loss

LOG2 = math.log(2.0)


def test_values_at_undecided_discriminator():
    # D(x) = sigmoid(0) = 1/2 everywhere: V^(D) = 2 log 1/2, so the D loss is 2 log 2.
    zero = torch.zeros(5)
    assert d_loss_bce(zero, zero).item() == pytest.approx(2 * LOG2)
    assert g_loss_minimax(zero).item() == pytest.approx(-LOG2)  # log(1 - 1/2)
    assert g_loss_nonsaturating(zero).item() == pytest.approx(LOG2)  # -log(1/2)


@pytest.mark.parametrize("logit", [-3.0, -0.5, 0.7, 2.5])
def test_match_probability_formulas_on_moderate_logits(logit):
    l = torch.tensor([logit])
    d = torch.sigmoid(l)
    assert g_loss_minimax(l).item() == pytest.approx(torch.log(1 - d).item(), rel=1e-5)
    assert g_loss_nonsaturating(l).item() == pytest.approx(-torch.log(d).item(), rel=1e-5)
    assert d_loss_bce(l, -l).item() == pytest.approx((-torch.log(d) - torch.log(1 - torch.sigmoid(-l))).item(), rel=1e-5)


@pytest.mark.parametrize("logit", [-1e4, -100.0, 100.0, 1e4])
def test_finite_loss_and_gradient_at_saturation(logit):
    for fn in (g_loss_minimax, g_loss_nonsaturating):
        l = torch.tensor([logit], requires_grad=True)
        loss = fn(l)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(l.grad).all()
    real = torch.tensor([logit], requires_grad=True)
    fake = torch.tensor([-logit], requires_grad=True)
    loss = d_loss_bce(real, fake)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(real.grad).all() and torch.isfinite(fake.grad).all()


def test_minimax_saturates_where_nonsaturating_does_not():
    # D confidently rejects the fake (logit -10, D(G(z)) ~ 4.5e-5): the lecture's "poor gradients" case.
    # d/dl log(1 - sigmoid(l)) = -sigmoid(l) ~ -4.5e-5; d/dl -log sigmoid(l) = -(1 - sigmoid(l)) ~ -1.
    l1 = torch.tensor([-10.0], requires_grad=True)
    g_loss_minimax(l1).backward()
    l2 = torch.tensor([-10.0], requires_grad=True)
    g_loss_nonsaturating(l2).backward()
    assert l1.grad.item() == pytest.approx(-torch.sigmoid(torch.tensor(-10.0)).item(), rel=1e-4)
    assert l2.grad.item() == pytest.approx(-(1 - torch.sigmoid(torch.tensor(-10.0))).item(), rel=1e-4)
    assert abs(l2.grad.item()) > 1e4 * abs(l1.grad.item())


def test_unknown_loss_names_the_choices():
    assert set(LOSSES) >= {"minimax", "nonsaturating"}
    with pytest.raises(ValueError, match="minimax.*nonsaturating"):
        get_loss("wassersteinn")
