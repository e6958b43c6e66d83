"""A whole training step (both players' forward, backward and optimizer steps) replayed as one CUDA graph.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from ganlab.errors import first_line

StepFn = Callable[[dict[str, Tensor]], dict[str, Tensor]]


class StepGraph:
    def __init__(self, step: StepFn, warmup: int = 3, on_capture_failure: Callable[[], None] | None = None) -> None:
        self.step, self.warmup, self.on_capture_failure = step, warmup, on_capture_failure
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self._inputs: dict[str, Tensor] = {}
        self._outputs: dict[str, Tensor] = {}

    def __call__(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.calls += 1
        if self.failed is not None:
            return self.step(inputs)
        if self.graph is None and self.calls <= self.warmup:
            return self._side_stream(inputs)
        if self.graph is None:
            self._capture(inputs)
            if self.graph is None:
                return self.step(inputs)
        if any(v.shape != self._inputs[k].shape or v.dtype != self._inputs[k].dtype for k, v in inputs.items()):
            return self.step(inputs)  # e.g. a ragged batch: eager, the graph stays for the next full one
        for key, value in inputs.items():
            self._inputs[key].copy_(value, non_blocking=True)
        self.graph.replay()
        return {key: value.clone() for key, value in self._outputs.items()}

    def _side_stream(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        # Warm-up on a side stream, as the capture recipe asks (cuBLAS/cuDNN workspaces and lazy inits happen
        # outside the graph).
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.step(inputs)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, inputs: dict[str, Tensor]) -> None:
        self._inputs = {key: value.clone() for key, value in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._outputs = self.step(self._inputs)
        except Exception as err:  # not capturable (e.g. a host sync inside the step): stay eager
            self.failed = f"{type(err).__name__}: {first_line(err)[:300]}"
            self._inputs, self._outputs = {}, {}
            if self.on_capture_failure is not None:
                self.on_capture_failure()
            warnings.warn(f"CUDA graph capture of the training step failed; training continues eagerly: "
                          f"{self.failed}", stacklevel=2)
            return
        self.graph = graph  # capture only recorded the step: the caller replays it for this batch


def optimizer_step_graph(step: StepFn, optimizers: list[torch.optim.Optimizer]) -> StepGraph:
    """A StepGraph over a step that updates these (capturable) optimizers. Their learning rates become device
    tensors first: a float is baked into the captured kernels, a tensor is read at every replay, so an LR
    schedule stepped outside the graph (it fills the tensor in place) still acts."""
    for opt in optimizers:
        device = next((p.device for group in opt.param_groups for p in group["params"]), None)
        for group in opt.param_groups:
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)

    def reset_grads() -> None:  # a failed capture may leave gradients in the discarded graph's memory
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)

    return StepGraph(step, on_capture_failure=reset_grads)


def count_optimizer_steps(trainer: object, n: int) -> None:
    """Advance Lightning's step counter (trainer.global_step) by `n` optimizer steps taken inside a graph.

    Under manual optimization Lightning counts the steps its optimizer wrappers take; a replayed graph steps
    the raw optimizers, so the count (max_steps, checkpoint names, log steps) is kept here instead."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for _ in range(n):
        progress.increment_ready()
        progress.increment_completed()


class CapturableIteration:
    """Mixin for a manual-optimization LightningModule whose training iteration is
    `iteration(inputs, *optimizers, backward) -> values to log`: `run_iteration` replays it as one CUDA graph once
    the Performance callback has set `step_graph` (from `capture_step`), else runs it eagerly through Lightning's
    optimizer wrappers and `manual_backward`. The same code thus runs both ways."""

    step_graph: StepGraph | None = None
    cuda_graph_auto = True  # whether perf.cuda_graph=auto turns the graph on (measured to pay on a GPU)

    def iteration(self, inputs: dict[str, Tensor], *args: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    def cuda_graph_unsupported(self) -> str | None:
        """Why the iteration cannot be one CUDA graph, or None if it can."""
        return None

    def run_iteration(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.step_graph is None:
            return self.iteration(inputs, *self.optimizers(), self.manual_backward)
        logs = self.step_graph(inputs)
        count_optimizer_steps(self.trainer, len(self.optimizers()))
        return logs

    def capture_step(self) -> StepGraph:
        """The iteration on the raw (capturable) optimizers, with plain `Tensor.backward`, as a StepGraph."""
        optimizers = [opt.optimizer for opt in self.optimizers()]
        return optimizer_step_graph(lambda inputs: self.iteration(inputs, *optimizers, Tensor.backward), optimizers)
