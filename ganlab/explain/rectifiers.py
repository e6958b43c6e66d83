"""Rectifiers with a modified backward pass, for guided backprop and deconvnet, on every relu a net calls.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ganlab.errors import GanlabError

RULES = ("guided", "deconvnet")


class _Rectify(torch.autograd.Function):
    """Forward: relu or leaky_relu exactly as torch computes them. Backward: the guided/deconvnet rule."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, slope: float, rule: str) -> Tensor:  # type: ignore[override]
        ctx.slope, ctx.rule = slope, rule
        if rule == "guided":
            ctx.save_for_backward(x > 0)
        return torch.relu(x) if slope is None else F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        slope = 0.0 if ctx.slope is None else ctx.slope
        if ctx.rule == "guided":
            (positive,) = ctx.saved_tensors
            return torch.where(positive, grad, slope * grad) * (grad > 0), None, None
        return torch.where(grad > 0, grad, slope * grad), None, None


# The functions that compute a rectifier -> (slope or None for relu, in-place?). nn.ReLU calls F.relu,
# nn.LeakyReLU calls F.leaky_relu; F.relu_ is torch.relu_ and F.leaky_relu_ is torch._C._nn.leaky_relu_.
_RELU = {F.relu: False, torch.relu: False, Tensor.relu: False, torch.relu_: True, Tensor.relu_: True}
_LEAKY = {F.leaky_relu: False, torch._C._nn.leaky_relu: False, torch._C._nn.leaky_relu_: True}


def _parse(func: Any, args: tuple, kwargs: dict) -> tuple[Tensor, float | None, bool] | None:
    """(input, slope, inplace) when ``func`` is a rectifier call, else None."""
    if func in _RELU:
        x = args[0] if args else kwargs["input"]
        inplace = _RELU[func] or bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        return x, None, inplace
    if func in _LEAKY:
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        slope = float(args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01))
        inplace = _LEAKY[func] or bool(args[2] if len(args) > 2 else kwargs.get("inplace", False))
        return x, slope, inplace
    return None


class ModifiedRectifiers(TorchFunctionMode):
    """While active, relu/leaky_relu calls on tensors that need a gradient use the ``rule``'s backward."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        if rule not in RULES:
            raise GanlabError(f"ModifiedRectifiers: rule must be one of {RULES}, got {rule!r}")
        self.rule = rule

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = _parse(func, args, kwargs) if func in _RELU or func in _LEAKY else None
        if call is None or not (torch.is_grad_enabled() and isinstance(call[0], Tensor) and call[0].requires_grad):
            return func(*args, **kwargs)
        x, slope, inplace = call
        out = _Rectify.apply(x, slope, self.rule)
        if inplace:  # keep the in-place contract (callers may use x afterwards); copy_ routes grads to `out`
            return x.copy_(out)
        return out


@contextmanager
def modified_rectifiers(rule: str) -> Iterator[None]:
    """Context manager form: ``with modified_rectifiers("guided"): out = model(x)``."""
    with ModifiedRectifiers(rule):
        yield
