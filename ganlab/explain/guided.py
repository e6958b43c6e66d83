"""Guided backprop (Springenberg et al. 2015) and deconvnet (Zeiler & Fergus 2014): input gradients, modified relus.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ganlab.explain.rectifiers import ModifiedRectifiers
from ganlab.explain.target import Target, check_inputs, check_model, eval_mode, target_scores


def input_gradient(owner: str, model: nn.Module, inputs: Tensor, target: Target, rule: str | None) -> Tensor:
    """d score / d inputs, (N, C, H, W), with rectifiers following ``rule`` (None: the plain gradient)."""
    x = check_inputs(owner, inputs).clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        if rule is None:
            outputs = model(x)
        else:
            with ModifiedRectifiers(rule):
                outputs = model(x)
        scores = target_scores(owner, outputs, target, x.shape[0])
        (grad,) = torch.autograd.grad(scores.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad  # None: the score ignores the input


class GuidedBackprop:
    """Guided backpropagation: positive gradients through positive activations; (N, C, H, W)."""

    rule = "guided"

    def __init__(self, model: nn.Module) -> None:
        self.model = check_model(type(self).__name__, model)

    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        return input_gradient(type(self).__name__, self.model, inputs, target, self.rule)


class Deconvnet(GuidedBackprop):
    """Deconvnet: the backward signal rectified at every ReLU regardless of the forward input; (N, C, H, W)."""

    rule = "deconvnet"
