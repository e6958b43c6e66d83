"""What every attribution method shares: checking (model, inputs, target) and reading the target's score.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Union

import torch
from torch import Tensor, nn

from ganlab.errors import GanlabError

Target = Union[int, Tensor, None]
Baseline = Union[float, Tensor, str]  # a value, a tensor broadcasting to the inputs, or "mean"


def check_model(owner: str, model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise GanlabError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_inputs(owner: str, inputs: object) -> Tensor:
    """Images (N, C, H, W), floating point; returned detached so the caller's tensor is never touched."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise GanlabError(f"{owner}: inputs must be a floating-point image batch (N, C, H, W), got {shape}")
    return inputs.detach()


def target_scores(owner: str, outputs: Tensor, target: Target, batch: int) -> Tensor:
    """The score of each image, (N,): outputs[n, target[n]], or the single output when target is None."""
    if outputs.shape[:1] != (batch,):
        raise GanlabError(f"{owner}: the model returned {tuple(outputs.shape)} for {batch} images; it must return "
                          f"one row per image (a packed discriminator, pack > 1, cannot be explained per image)")
    single = outputs.dim() == 1 or (outputs.dim() == 2 and outputs.shape[1] == 1)
    if single:
        if target is not None and not _all_zero(target):
            raise GanlabError(f"{owner}: the model has one output per image {tuple(outputs.shape)}; "
                              f"use target=None (got target={_describe(target)})")
        return outputs.reshape(batch)
    if outputs.dim() != 2:
        raise GanlabError(f"{owner}: expected model outputs (N,), (N, 1) or logits (N, K), got {tuple(outputs.shape)}")
    classes = outputs.shape[1]
    if target is None:
        raise GanlabError(f"{owner}: the model returns {classes} scores per image; pass target= a class index "
                          f"in [0, {classes - 1}] (an int, or a (N,) tensor with one class per image)")
    index = class_index(owner, target, batch, classes).to(outputs.device)
    return outputs.gather(1, index[:, None]).squeeze(1)


def class_index(owner: str, target: int | Tensor, batch: int, classes: int) -> Tensor:
    """The target as a (N,) long tensor of classes in [0, classes), checked."""
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise GanlabError(f"{owner}: target must hold integer class indices, got dtype {target.dtype}")
        if target.dim() == 0:
            target = target.reshape(1).expand(batch)
        if tuple(target.shape) != (batch,):
            raise GanlabError(f"{owner}: target must be an int or a ({batch},) tensor, got shape {tuple(target.shape)}")
        index = target.long()
    elif isinstance(target, int) and not isinstance(target, bool):
        index = torch.full((batch,), target, dtype=torch.long)
    else:
        raise GanlabError(f"{owner}: target must be an int, a (N,) tensor or None, got {type(target).__name__}")
    if batch and (int(index.min()) < 0 or int(index.max()) >= classes):
        raise GanlabError(f"{owner}: target classes must lie in [0, {classes - 1}], got {_describe(target)}")
    return index


def probabilities(owner: str, outputs: Tensor, target: Target, batch: int) -> Tensor:
    """The target's probability, (N,): softmax over K > 1 logits, sigmoid of a single logit."""
    if outputs.dim() == 2 and outputs.shape[1] > 1:
        return target_scores(owner, outputs.softmax(dim=1), target, batch)
    return torch.sigmoid(target_scores(owner, outputs, target, batch))


def check_baseline(owner: str, baseline: object) -> Baseline:
    """A finite number, a tensor, or "mean"; anything else is refused when the method is built."""
    if isinstance(baseline, Tensor) or baseline == "mean":
        return baseline  # type: ignore[return-value]
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool) and math.isfinite(baseline):
        return float(baseline)
    raise GanlabError(f"{owner}: baseline must be a finite number (0 = mid-grey in [-1, 1], -1 MNIST's background), "
                      f"a tensor or 'mean' (each image's own mean colour), got {baseline!r}")


def baseline_like(owner: str, baseline: Baseline, x: Tensor) -> Tensor:
    """The baseline image of each input, shaped like ``x``: "mean" fills it with the image's mean colour per
    channel, an image-like fill (dark on MNIST, pink on PCam) where a mid-grey one would look like content."""
    if isinstance(baseline, str):
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    value = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return value.expand_as(x)
    except RuntimeError:
        raise GanlabError(f"{owner}: baseline of shape {tuple(value.shape)} does not broadcast to the inputs "
                          f"{tuple(x.shape)}") from None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and give every submodule its own train/eval flag back afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training  # per module: nn.Module.train() would recurse


def _all_zero(target: int | Tensor) -> bool:
    if isinstance(target, Tensor):
        return not target.is_floating_point() and bool((target == 0).all())
    return isinstance(target, int) and target == 0


def _describe(target: object) -> str:
    if isinstance(target, Tensor):
        return f"tensor of shape {tuple(target.shape)}, values {target.flatten()[:8].tolist()}"
    return repr(target)
