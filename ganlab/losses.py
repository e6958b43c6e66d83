"""Adversarial objectives as small pure functions of discriminator outputs, plus the two gradient penalties.

BCE-based terms are written with softplus on logits: log D(x) = -softplus(-l) and log(1 - D(x)) =
-softplus(l) for D(x) = sigmoid(l). Taking the log of a sigmoid probability instead overflows to -inf
once D saturates, which is exactly the regime of the lecture's "poor gradients" slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.errors import GanlabError


def d_loss_bce(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    """D maximises V^(D) = E[log D(x)] + E[log(1 - D(G(z)))]; we minimise its negative.

    real_label < 1 is one-sided label smoothing (Salimans et al. 2016): the real target becomes
    real_label, i.e. real_label * -log D(x) + (1 - real_label) * -log(1 - D(x)).
    """
    real_term = real_label * F.softplus(-real) + (1.0 - real_label) * F.softplus(real)
    return real_term.mean() + F.softplus(fake).mean()


def g_loss_minimax(fake: Tensor) -> Tensor:
    """Lecture form 1 (saturating): G minimises E[log(1 - D(G(z)))] = -E[softplus(l)]."""
    return -F.softplus(fake).mean()


def g_loss_nonsaturating(fake: Tensor) -> Tensor:
    """Lecture form 2 (non-saturating): G minimises -E[log D(G(z))] = E[softplus(-l)]."""
    return F.softplus(-fake).mean()


def d_loss_lsgan(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    """LSGAN (Mao et al. 2017), targets b=real_label for real, a=0 for fake: 1/2 E[(D(x)-b)^2] + 1/2 E[D(G(z))^2]."""
    return 0.5 * (real - real_label).pow(2).mean() + 0.5 * fake.pow(2).mean()


def g_loss_lsgan(fake: Tensor) -> Tensor:
    """LSGAN generator, target c=1: 1/2 E[(D(G(z)) - 1)^2]."""
    return 0.5 * (fake - 1.0).pow(2).mean()


def d_loss_hinge(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    _no_smoothing("hinge", real_label)
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def d_loss_wasserstein(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    """WGAN critic (Arjovsky et al. 2017): E[D(G(z))] - E[D(x)]; the Lipschitz constraint comes from the GP."""
    _no_smoothing("wgan_gp", real_label)
    return fake.mean() - real.mean()


def g_loss_score(fake: Tensor) -> Tensor:
    """Hinge and WGAN generator: -E[D(G(z))]."""
    return -fake.mean()


def _no_smoothing(name: str, real_label: float) -> None:
    if real_label != 1.0:
        raise GanlabError(f"model.label_smoothing applies to minimax, nonsaturating and lsgan, not {name}")


def gradient_penalty(discriminator: nn.Module, real: Tensor, fake: Tensor, y: Tensor | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x D(x_hat)||_2 - 1)^2], x_hat on lines between real and fake."""
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x_hat, y).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(discriminator: nn.Module, real: Tensor, y: Tensor | None = None) -> Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||^2] on real data; the caller scales it by gamma / 2."""
    x = real.detach().requires_grad_(True)
    return r1_of_outputs(discriminator(x, y), x)


def r1_of_outputs(real_out: Tensor, x: Tensor) -> Tensor:
    """R1 from D's outputs on inputs `x` that require grad: reuses the D forward the D loss already made."""
    (grad,) = torch.autograd.grad(real_out.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


@dataclass(frozen=True)
class AdversarialLoss:
    """One `model.loss=` choice: the D and G objectives, and whether D's output is a logit of D(x)."""

    d_loss: Callable[..., Tensor]
    g_loss: Callable[[Tensor], Tensor]
    outputs_logits: bool = False  # log sigmoid(D) as D(x), D(G(z)) only when it is a probability's logit
    gradient_penalty: bool = False


# `model.loss=` is a value, not a config group, so the names map here (and nowhere else).
LOSSES: dict[str, AdversarialLoss] = {
    "minimax": AdversarialLoss(d_loss_bce, g_loss_minimax, outputs_logits=True),
    "nonsaturating": AdversarialLoss(d_loss_bce, g_loss_nonsaturating, outputs_logits=True),
    "lsgan": AdversarialLoss(d_loss_lsgan, g_loss_lsgan),
    "hinge": AdversarialLoss(d_loss_hinge, g_loss_score),
    "wgan_gp": AdversarialLoss(d_loss_wasserstein, g_loss_score, gradient_penalty=True),
}


def get_loss(name: str) -> AdversarialLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise GanlabError(f"model.loss={name!r} is not a known adversarial loss; "
                          f"expected one of: {', '.join(LOSSES)}") from None


def discriminator_probability(logits: Tensor) -> Tensor:
    """Mean D(.) as a probability, for logging D(x) and D(G(z))."""
    return torch.sigmoid(logits.detach()).mean()
