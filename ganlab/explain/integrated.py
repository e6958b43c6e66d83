"""Integrated gradients (Sundararajan et al. 2017): input gradients along a path from a baseline, times (x - b).

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations


import numpy as np
import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.explain.guided import input_gradient
from ganlab.explain.target import (Baseline, Target, baseline_like, check_baseline, check_inputs, check_model,
                                   eval_mode, target_scores)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(points, weights) of the `steps`-point Gauss-Legendre rule on [0, 1]; the weights sum to 1."""
    points, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1], weights summing to 2
    return (points + 1) / 2, weights / 2


class IntegratedGradients:
    def __init__(self, model: nn.Module, steps: int = 32, baseline: Baseline = 0.0, max_batch: int = 128) -> None:
        self.model = check_model("IntegratedGradients", model)
        for name, value in (("steps", steps), ("max_batch", max_batch)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GanlabError(f"IntegratedGradients: {name} must be an integer >= 1, got {value!r}")
        self.steps, self.baseline, self.max_batch = steps, check_baseline("IntegratedGradients", baseline), max_batch

    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        owner = "IntegratedGradients"
        x = check_inputs(owner, inputs)
        n = x.shape[0]
        with eval_mode(self.model), torch.no_grad():  # a bad target fails here, as for every other method
            target_scores(owner, self.model(x), target, n)
        points, weights = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in gauss_legendre(self.steps))
        per_copy = target.to(x.device) if isinstance(target, Tensor) and target.dim() == 1 else None
        baseline = baseline_like(owner, self.baseline, x)
        delta = x - baseline
        total = torch.zeros_like(x)  # sum_k weight_k * gradient at point k, per image
        copies = n * self.steps  # image-major: copy j is image j // steps at path point j % steps
        for start in range(0, copies, self.max_batch):
            index = torch.arange(start, min(start + self.max_batch, copies), device=x.device)
            image, step = index // self.steps, index % self.steps
            path = baseline[image] + points[step].view(-1, 1, 1, 1) * delta[image]
            grads = input_gradient(owner, self.model, path, target if per_copy is None else per_copy[image], None)
            total.index_add_(0, image, weights[step].view(-1, 1, 1, 1) * grads)
        return delta * total
