"""torch.compile for a model's networks, with a per-network fallback to eager when compiling fails.

Why a probe: torch.compile works lazily, so a network whose forward compiles can still fail when its
backward is compiled in the middle of a GAN step, after one optimizer has already stepped (the issue saw
DCGAN's backward fail this way). So the first training step runs eagerly while forward pre-hooks record how
each network is called: argument shapes, dtypes and requires_grad, grad mode, autocast, and which of its
parameters train (toggled optimizers freeze D during G's step, and each of these is a separate compiled
graph). After that step every distinct call is replayed through the compiled network, forward and backward,
on clones of the recorded inputs, with the network's buffers (BatchNorm statistics) and the RNG streams put
back afterwards and gradients taken with autograd.grad (so no .grad is touched). Compile time is paid there;
a network that fails stays eager, with one warning naming it and the error, and training goes on.

Compiled code runs only in training mode: validation and sampling (eval mode, no grad) stay eager, so they
neither recompile nor can fail to compile.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn


@dataclass
class _Call:
    args: tuple[Any, ...]
    grad_enabled: bool
    autocast: tuple[str, torch.dtype, bool] | None  # device type, dtype, cache enabled
    trainable: tuple[bool, ...]


def _signature(args: tuple[Any, ...], trainable: tuple[bool, ...], grad: bool, autocast: Any) -> tuple:
    def one(a: Any) -> Any:
        if isinstance(a, Tensor):
            return ("T", tuple(a.shape), a.dtype, a.requires_grad, a.device.type)
        return ("V", repr(a))
    return tuple(one(a) for a in args), trainable, grad, autocast


def _autocast_state(device_type: str) -> tuple[str, torch.dtype, bool] | None:
    """As the step runs it (Lightning's bf16 autocast has its cache off), so the probe compiles the same variant."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type), torch.is_autocast_cache_enabled()


class CompiledNetworks:
    """Compile `networks` (name -> module) with `torch.compile(**options)` after one recorded eager step.

    `record()` before the first step, `finish()` after it; `compiled` and `failed` say what happened."""

    def __init__(self, networks: dict[str, nn.Module], **options: Any) -> None:
        self.networks, self.options = networks, options
        self.calls: dict[str, dict[tuple, _Call]] = {name: {} for name in networks}
        self.compiled: list[str] = []
        self.failed: dict[str, str] = {}
        self._hooks: list[Any] = []

    def record(self) -> None:
        for name, net in self.networks.items():
            self._hooks.append(net.register_forward_pre_hook(self._recorder(name, net)))

    def _recorder(self, name: str, net: nn.Module) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training:
                return
            device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
            trainable = tuple(p.requires_grad for p in net.parameters())
            grad, autocast = torch.is_grad_enabled(), _autocast_state(device)
            key = _signature(args, trainable, grad, autocast)
            if key not in self.calls[name]:
                clones = tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a
                               for a in args)
                self.calls[name][key] = _Call(clones, grad, autocast, trainable)
        return hook

    def finish(self) -> None:
        """Stop recording; compile each network and probe every recorded call; keep what works."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for name, net in self.networks.items():
            calls = list(self.calls[name].values())
            if not calls:
                continue  # never called in training: nothing to gain
            eager = type(net).forward.__get__(net)
            compiled = torch.compile(eager, **self.options)
            net.forward = _train_mode_dispatch(net, compiled, eager)
            try:
                for call in calls:
                    _probe(net, call)
            except Exception as err:  # any compiler failure: this network stays eager
                del net.forward
                first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                self.failed[name] = f"{type(err).__name__}: {first_line}"
                warnings.warn(f"torch.compile failed for {name} ({type(net).__name__}); it runs eagerly: "
                              f"{self.failed[name]}", stacklevel=2)
            else:
                self.compiled.append(name)
        self.calls.clear()


def _train_mode_dispatch(net: nn.Module, compiled: Callable[..., Any], eager: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return (compiled if net.training else eager)(*args, **kwargs)
    return forward


def _probe(net: nn.Module, call: _Call) -> None:
    """One forward (and backward, if the call built a graph) through `net` as recorded, without side effects."""
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    buffers = [(b, b.detach().clone()) for b in net.buffers()]
    devices = sorted({a.device.index or 0 for a in call.args if isinstance(a, Tensor) and a.is_cuda})
    args = tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a
                 for a in call.args)
    autocast = (torch.autocast(call.autocast[0], dtype=call.autocast[1], cache_enabled=call.autocast[2])
                if call.autocast else torch.autocast("cpu", enabled=False))
    try:
        for p, trainable in zip(params, call.trainable):
            p.requires_grad_(trainable)
        with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(call.grad_enabled), autocast:
            out = net(*args)
            outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,))
                    if isinstance(o, Tensor) and o.requires_grad]
            wrt = [p for p in params if p.requires_grad] + [a for a in args if isinstance(a, Tensor) and a.requires_grad]
            if outs and wrt:
                total = sum(o.float().sum() for o in outs)
                torch.autograd.grad(total, wrt, allow_unused=True)
    finally:
        for p, trainable in zip(params, flags):
            p.requires_grad_(trainable)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
