"""SmoothGrad (Smilkov et al. 2017) for any method: the mean of a method's maps over noisy copies of the input.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ganlab.errors import GanlabError
from ganlab.explain.target import Target, check_inputs


class SmoothGrad:
    def __init__(self, method: Any, samples: int, sigma: float, seed: int = 0) -> None:
        if not callable(getattr(method, "attribute", None)):
            raise GanlabError(f"SmoothGrad: method must have .attribute(inputs, target), got {type(method).__name__}")
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise GanlabError(f"SmoothGrad: samples must be an integer >= 1, got {samples!r}")
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not (math.isfinite(sigma) and sigma > 0):
            raise GanlabError(f"SmoothGrad: sigma must be a positive number (a fraction of each image's value "
                              f"range), got {sigma!r}")
        self.method, self.samples, self.sigma, self.seed = method, samples, float(sigma), seed

    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        x = check_inputs("SmoothGrad", inputs)
        scale = self.sigma * (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True))
        generator = torch.Generator().manual_seed(self.seed)
        total = None
        for _ in range(self.samples):
            noise = torch.randn(x.shape[1:], generator=generator, dtype=x.dtype).to(x.device)
            m = self.method.attribute(x + scale * noise, target)
            total = m if total is None else total + m
        return total / self.samples
