"""Adversarial objectives as small pure functions of discriminator logits.

Every term is written with softplus on logits: log D(x) = -softplus(-l) and log(1 - D(x)) = -softplus(l)
for D(x) = sigmoid(l). Taking log of a sigmoid probability instead overflows to -inf once D saturates,
which is exactly the regime the lecture's "poor gradients" slide is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def d_loss_bce(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D maximises V^(D) = E[log D(x)] + E[log(1 - D(G(z)))]; we minimise its negative."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_minimax(fake_logits: Tensor) -> Tensor:
    """Lecture form 1 (saturating): G minimises E[log(1 - D(G(z)))] = -E[softplus(l)]."""
    return -F.softplus(fake_logits).mean()


def g_loss_nonsaturating(fake_logits: Tensor) -> Tensor:
    """Lecture form 2 (non-saturating): G minimises -E[log D(G(z))] = E[softplus(-l)]."""
    return F.softplus(-fake_logits).mean()


@dataclass(frozen=True)
class AdversarialLoss:
    """A pair (D loss, G loss) selected by name with `model.loss=`."""

    d_loss: Callable[[Tensor, Tensor], Tensor]
    g_loss: Callable[[Tensor], Tensor]


LOSSES: dict[str, AdversarialLoss] = {
    "minimax": AdversarialLoss(d_loss_bce, g_loss_minimax),
    "nonsaturating": AdversarialLoss(d_loss_bce, g_loss_nonsaturating),
}


def get_loss(name: str) -> AdversarialLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"model.loss={name!r} is not a known adversarial loss; "
                         f"expected one of: {', '.join(LOSSES)}") from None


def discriminator_probability(logits: Tensor) -> Tensor:
    """Mean D(.) as a probability, for logging D(x) and D(G(z))."""
    return torch.sigmoid(logits.detach()).mean()
