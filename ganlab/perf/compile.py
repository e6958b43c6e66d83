"""torch.compile for a model's networks, with a per-network fallback to eager when compiling fails.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ganlab.errors import first_line


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


def set_memory_format(net: nn.Module, memory_format: torch.memory_format,
                      optimizers: Iterable[torch.optim.Optimizer] = ()) -> None:
    """`net`'s 4-D weights in `memory_format` (the same Parameter objects), and the optimizers' per-weight state
    (Adam's moments) with them, so a fused step sees one layout."""
    net.to(memory_format=memory_format)
    params = {id(p): p for p in net.parameters()}
    for optimizer in optimizers:
        for param, state in optimizer.state.items():
            if id(param) in params and param.dim() == 4:
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                        state[key] = value.new_empty_strided(param.shape, param.stride()).copy_(value)


def has_channels_last_weights(net: nn.Module) -> bool:
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in net.parameters())


class CompiledNetworks:
    """Compile `networks` (name -> module) with `torch.compile(**options)` after one recorded eager step.

    `record()` before the first step, `finish()` after it; `compiled`, `failed` and `contiguous` (compiled after
    a channels-last failure) say what happened. `optimizers`: whose state follows a network's weight layout."""

    def __init__(self, networks: dict[str, nn.Module], optimizers: Callable[[], Iterable[torch.optim.Optimizer]] =
                 tuple, **options: Any) -> None:
        self.networks, self.options, self.optimizers = networks, options, optimizers
        self.calls: dict[str, dict[tuple, _Call]] = {name: {} for name in networks}
        self.compiled: list[str] = []
        self.failed: dict[str, str] = {}
        self.contiguous: dict[str, str] = {}
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
            error = self._compile(net, calls)
            if error and has_channels_last_weights(net):
                set_memory_format(net, torch.contiguous_format, self.optimizers())
                if self._compile(net, calls) is None:
                    self.contiguous[name] = error
                    warnings.warn(f"torch.compile failed for {name} ({type(net).__name__}) with channels-last "
                                  f"weights ({error}); compiled with contiguous weights instead", stacklevel=2)
                    error = None
                else:
                    set_memory_format(net, torch.channels_last, self.optimizers())
            if error:
                self.failed[name] = error
                warnings.warn(f"torch.compile failed for {name} ({type(net).__name__}); it runs eagerly: "
                              f"{error}", stacklevel=2)
            else:
                self.compiled.append(name)
        self.calls.clear()

    def _compile(self, net: nn.Module, calls: list[_Call]) -> str | None:
        """Compile `net` in place and probe every call; on any compiler failure undo it and return the error."""
        eager = type(net).forward.__get__(net)
        net.forward = _train_mode_dispatch(net, torch.compile(eager, **self.options), eager)
        try:
            for call in calls:
                _probe(net, call)
        except Exception as err:
            del net.forward
            err = getattr(err, "inner_exception", None) or err  # dynamo's BackendCompilerFailed wraps the cause
            return f"{type(err).__name__}: {first_line(err)[:300]}"
        return None


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
