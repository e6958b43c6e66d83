"""SmoothGrad (Smilkov et al. 2017) for any method: the mean of a method's maps over noisy copies of the input.

Gradient maps flicker from pixel to pixel because a ReLU network's gradient is only piecewise constant;
averaging over ``samples`` copies with Gaussian noise of std ``sigma * (max - min)`` of each image (the
paper's noise level, 10-20% of the value range) keeps what is stable in a neighbourhood of the image. Any
method can be wrapped (occlusion, CAM: their maps are averaged the same way), and the result has the
wrapped method's shape.

The noise is drawn on the CPU from ``seed`` (so the maps are the same on every device and every call) as
``samples`` (C, H, W) draws shared by all images of the batch: an image's map depends on that image only,
not on which other images (or how many) are explained with it. A constant image gets no noise.
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
