"""Speed settings for a training run, resolved per device (`perf=` in the config; configs/perf/default.yaml).

`auto` turns an option on where it pays and is known to work: on CUDA, cuDNN autotuning, channels-last
weights, fused Adam, torch.compile of the networks (with the per-network fallback of ganlab.perf.compile)
and, for models that offer it (`capture_step`), the whole training iteration as one CUDA graph
(ganlab.perf.cuda_graph). On CPU `auto` leaves everything off: compiling costs more than it saves in the
short CPU runs ganlab is used for, and fused/graph code paths are CUDA's. Mixed precision is the Trainer's
`precision` (trainer=gpu sets bf16-mixed). What was chosen (and any fallback) is printed once and stored in
`trainer.perf_report` for run.yaml.
"""

from __future__ import annotations

import functools
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ganlab.errors import GanlabError
from ganlab.perf.compile import CompiledNetworks, set_memory_format
from ganlab.perf.cuda_check import skip_unloadable_nvml_check

AUTO = "auto"
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def _flag(name: str, value: bool | str, default: bool) -> bool:
    if value == AUTO:
        return default
    if not isinstance(value, bool):
        raise GanlabError(f"perf.{name}={value!r}: expected true, false or auto")
    return value


def trainable_networks(pl_module: nn.Module) -> dict[str, nn.Module]:
    """The module's own networks that train (its direct children with trainable parameters; EMA copies and
    metrics are not among them)."""
    return {name: child for name, child in pl_module.named_children()
            if "ema" not in name and any(p.requires_grad for p in child.parameters())}


def resolve_precision(trainer_cfg: Any) -> str:
    """trainer.precision=auto: bf16 mixed precision on a CUDA GPU that has bf16 (Ampere and newer), else 32-bit."""
    precision = str(trainer_cfg.get("precision", "32-true"))
    if precision != AUTO:
        return precision
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


class Performance(pl.Callback):
    def __init__(self, compile: bool | str = AUTO, compile_mode: str | None = None, compile_backend: str = "inductor",
                 cuda_graph: bool | str = AUTO, channels_last: bool | str = AUTO, fused_optimizer: bool | str = AUTO,
                 cudnn_benchmark: bool | str = AUTO, matmul_precision: str = "high") -> None:
        skip_unloadable_nvml_check()
        if compile_mode not in COMPILE_MODES:
            raise GanlabError(f"perf.compile_mode={compile_mode!r}: expected one of "
                              f"{', '.join(str(m) for m in COMPILE_MODES)}")
        if matmul_precision not in ("highest", "high", "medium"):
            raise GanlabError(f"perf.matmul_precision={matmul_precision!r}: expected highest, high or medium")
        for name, value in (("compile", compile), ("cuda_graph", cuda_graph), ("channels_last", channels_last),
                            ("fused_optimizer", fused_optimizer), ("cudnn_benchmark", cudnn_benchmark)):
            _flag(name, value, False)  # validate now, resolve per device in setup
        self.requested = dict(compile=compile, cuda_graph=cuda_graph, channels_last=channels_last,
                              fused_optimizer=fused_optimizer, cudnn_benchmark=cudnn_benchmark)
        self.compile_options = {"backend": compile_backend, **({"mode": compile_mode} if compile_mode else {})}
        self.matmul_precision = matmul_precision
        self.report: dict[str, Any] = {}
        self._compiler: CompiledNetworks | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        cuda = trainer.strategy.root_device.type == "cuda"
        on = {name: _flag(name, value, cuda) for name, value in self.requested.items()}
        torch.backends.cudnn.benchmark = on["cudnn_benchmark"]
        torch.set_float32_matmul_precision(self.matmul_precision)
        if on["channels_last"]:
            set_memory_format(pl_module, torch.channels_last)
        if self.requested["cuda_graph"] == AUTO and not getattr(pl_module, "cuda_graph_auto", True):
            on["cuda_graph"] = False  # a capture this model offers but that is not yet measured on a GPU
        graph_reason = self._graph_unsupported(trainer, pl_module, cuda) if on["cuda_graph"] else None
        if graph_reason:
            if self.requested["cuda_graph"] is True:
                print(f"ganlab: perf.cuda_graph is off: {graph_reason}")
            on["cuda_graph"] = False
        if on["fused_optimizer"] or on["cuda_graph"]:
            self._fuse_optimizer(pl_module, fused=on["fused_optimizer"], capturable=on["cuda_graph"])
        if on["compile"] and not getattr(pl_module, "supports_compile", True):
            if self.requested["compile"] is True:
                print(f"ganlab: perf.compile is off: {type(pl_module).__name__} does not support torch.compile")
            on["compile"] = False
        if on["compile"]:
            self._compiler = CompiledNetworks(trainable_networks(pl_module), lambda: trainer.optimizers,
                                              **self.compile_options)
            self._compiler.record()
        self.report = {**on, "matmul_precision": self.matmul_precision, "precision": str(trainer.precision)}
        trainer.perf_report = self.report

    @staticmethod
    def _graph_unsupported(trainer: pl.Trainer, pl_module: pl.LightningModule, cuda: bool) -> str | None:
        if not cuda:
            return "CUDA graphs need a CUDA device"
        if not hasattr(pl_module, "capture_step"):
            return f"{type(pl_module).__name__} has no capturable training step"
        reason = pl_module.cuda_graph_unsupported() if hasattr(pl_module, "cuda_graph_unsupported") else None
        if reason:
            return reason
        if trainer.world_size > 1:
            return "not combined with multi-GPU (DDP) training"
        if trainer.gradient_clip_val:
            return "gradient clipping runs outside the captured step"
        if any(getattr(cb, "policy", None) == "skip" for cb in trainer.callbacks):
            return "nan_policy=skip inspects gradients between steps"
        return None

    @staticmethod
    def _fuse_optimizer(pl_module: pl.LightningModule, fused: bool, capturable: bool) -> None:
        """Adam/AdamW factories get fused=True (one kernel per step) and, for graph capture, capturable=True."""
        factory = getattr(pl_module, "optimizer_factory", None)
        target = getattr(factory, "func", factory)
        if factory is None or target not in FUSABLE:
            return
        given = getattr(factory, "keywords", {})
        extra = {k: v for k, v in (("fused", fused), ("capturable", capturable)) if v and k not in given}
        if extra:
            pl_module.optimizer_factory = functools.partial(factory, **extra)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.report.get("cuda_graph"):
            pl_module.step_graph = pl_module.capture_step()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._compiler is None:
            return
        compiler, self._compiler = self._compiler, None
        if trainer.is_global_zero:  # a minute or two for image-to-image nets: say why the bar stands still
            print(f"ganlab: compiling {', '.join(n for n, calls in compiler.calls.items() if calls)} "
                  "(torch.compile, once; perf.compile=false skips it)", flush=True)
        compiler.finish()
        self.report["compiled"] = compiler.compiled
        if compiler.failed:
            self.report["compile_failed"] = compiler.failed
        if compiler.contiguous:
            self.report["compiled_contiguous"] = compiler.contiguous  # name -> the channels-last error
        if trainer.is_global_zero:
            print(f"ganlab: compiled {', '.join(compiler.compiled) or 'nothing'}"
                  + (f"; eager after a compile error: {', '.join(compiler.failed)}" if compiler.failed else ""))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        graph = getattr(pl_module, "step_graph", None)
        if graph is not None:
            self.report["cuda_graph_captured"] = graph.graph is not None
            if graph.failed:
                self.report["cuda_graph_failed"] = graph.failed
            pl_module.step_graph = None
