"""Occlusion (Zeiler & Fergus 2014): how much the target score drops when a baseline-filled window hides a pixel.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.errors import GanlabError
from ganlab.explain.target import (Baseline, Target, baseline_like, check_baseline, check_inputs, check_model,
                                   eval_mode, target_scores)

# Bytes of activations per forward pass when max_batch_bytes is None. On a CPU, chunks beyond a few tens of
# copies fall out of cache and get slower (benchmarks/explain.md); a GPU wants large batches.
DEFAULT_BUDGET = {"cpu": 64 * 2**20, "cuda": 2**30}


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise GanlabError(f"Occlusion: {name} must be a positive int or a pair (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


class Occlusion:
    def __init__(self, model: nn.Module, window: int | tuple[int, int] = 8, stride: int | tuple[int, int] = 4,
                 baseline: Baseline = 0.0, max_batch_bytes: int | None = None,
                 max_batch: int | None = None) -> None:
        self.model = check_model("Occlusion", model)
        self.window, self.stride = _pair("window", window), _pair("stride", stride)
        if (max_batch_bytes is not None and max_batch_bytes < 1) or (max_batch is not None and max_batch < 1):
            raise GanlabError(f"Occlusion: max_batch_bytes and max_batch must be >= 1, got {max_batch_bytes}, "
                              f"{max_batch}")
        self.baseline = check_baseline("Occlusion", baseline)
        self.max_batch_bytes, self.max_batch = max_batch_bytes, max_batch
        self.chunk: int | None = None  # copies per forward pass of the last call, for benchmarks and tests

    def positions(self, size: tuple[int, int]) -> tuple[list[int], list[int]]:
        """Top rows and left columns of the windows, e.g. H=10, window 4, stride 3 -> 0, 3, 6 (clipped: 9)."""
        out = []
        for dim, w, s, axis in zip(size, self.window, self.stride, ("height", "width")):
            if w > dim:
                raise GanlabError(f"Occlusion: window {self.window} is larger than the images' {axis} {dim}")
            if s > w and w < dim:
                raise GanlabError(f"Occlusion: stride {self.stride} exceeds window {self.window}: some pixels would "
                                  f"never be occluded")
            out.append([k * s for k in range(math.ceil((dim - w) / s) + 1)])
        return out[0], out[1]

    def bytes_per_copy(self, image: Tensor) -> int:
        """Input bytes + every leaf module's output bytes for one image (a probe forward pass)."""
        total = [image.numel() * image.element_size()]

        def count(_m: nn.Module, _a: object, out: object) -> None:
            if isinstance(out, Tensor):
                total.append(out.numel() * out.element_size())

        handles = [m.register_forward_hook(count) for m in self.model.modules() if not any(m.children())]
        try:
            self.model(image)
        finally:
            for handle in handles:
                handle.remove()
        return sum(total)

    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        x = check_inputs("Occlusion", inputs)
        n, c, h, w = x.shape
        rows, cols = self.positions((h, w))
        per_image = len(rows) * len(cols)
        baseline = baseline_like("Occlusion", self.baseline, x)
        per_copy_target = target.to(x.device) if isinstance(target, Tensor) and target.dim() == 1 else None
        with eval_mode(self.model), torch.no_grad():
            full = target_scores("Occlusion", self.model(x), target, n)
            budget = self.max_batch_bytes or DEFAULT_BUDGET.get(x.device.type, DEFAULT_BUDGET["cpu"])
            chunk = max(1, budget // self.bytes_per_copy(x[:1]))
            self.chunk = chunk = min(chunk, self.max_batch or chunk, n * per_image)
            top = torch.tensor(rows, device=x.device).repeat_interleave(len(cols))
            left = torch.tensor(cols, device=x.device).repeat(len(rows))
            ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
            drops = torch.empty(n * per_image, dtype=full.dtype, device=x.device)
            for start in range(0, n * per_image, chunk):
                index = torch.arange(start, min(start + chunk, n * per_image), device=x.device)
                image, window = index // per_image, index % per_image
                r0, c0 = top[window, None], left[window, None]
                inside = (((ys >= r0) & (ys < r0 + self.window[0]))[:, :, None]
                          & ((xs >= c0) & (xs < c0 + self.window[1]))[:, None, :])
                copies = torch.where(inside[:, None], baseline[image], x[image])
                sub_target = per_copy_target[image] if per_copy_target is not None else target
                scores = target_scores("Occlusion", self.model(copies), sub_target, len(index))
                drops[index] = full[image] - scores
        return self._average(drops.view(n, per_image), (h, w), (rows[-1], cols[-1]))

    def _average(self, drops: Tensor, size: tuple[int, int], last: tuple[int, int]) -> Tensor:
        """Sum each window's score drop over its pixels and divide by how many windows cover each pixel."""
        padded = (last[0] + self.window[0], last[1] + self.window[1])  # the clipped windows, unclipped
        area = self.window[0] * self.window[1]

        def fold(values: Tensor) -> Tensor:
            return F.fold(values[:, None, :].expand(-1, area, -1), padded, self.window, stride=self.stride)

        total = fold(drops)[..., : size[0], : size[1]]
        covers = fold(torch.ones_like(drops[:1]))[..., : size[0], : size[1]]
        return total / covers
