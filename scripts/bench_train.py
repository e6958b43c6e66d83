"""Training speed: ganlab's step through the real Lightning Trainer vs a plain PyTorch loop, same nets and losses.

    python scripts/bench_train.py                                   # CPU: MLP GAN and DCGAN, eager fp32
    python scripts/bench_train.py --device cuda                     # GPU: every family, ganlab's GPU defaults
    python scripts/bench_train.py --device cuda --families cyclegan --variants eager-fp32-b1 default
    python scripts/bench_train.py --json out.jsonl --out train_speed.md  # recorded: benchmarks/train_speed_h100.md

Both sides build their networks from the same composed ganlab config (the experiment named per family), get
the same synthetic batches already on the device (so the data pipeline is not timed here; see
scripts/bench_data.py), and use the same speed settings: mixed precision by autocast, channels-last weights,
fused Adam, torch.compile of each network and, for the GAN family, the whole step as one CUDA graph
(ganlab.perf.cuda_graph.StepGraph). The plain loop is the step written out by hand (toggling requires_grad as
Lightning's toggled_optimizer does); ganlab runs `Trainer.fit` with the Performance callback, the NaN guard and
the signal handler that `ganlab train` installs (progress bar, logger and checkpoints off). Steps are timed
after warm-up (compilation, graph capture) with the device synchronised at both ends. FLOPs per step are counted
once with torch.utils.flop_counter's formulas on an eager fp32 step; TFLOP/s = FLOPs per step x steps/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ganlab.callbacks.nonfinite import NonFiniteLossGuard
from ganlab.callbacks.performance import Performance, trainable_networks
from ganlab.callbacks.signals import SignalCheckpoint
from ganlab.perf.compile import CompiledNetworks
from ganlab.perf.cuda_check import skip_unloadable_nvml_check
from ganlab.perf.cuda_graph import StepGraph
from plain_steps import Plain  # scripts/plain_steps.py

skip_unloadable_nvml_check()  # as Performance() does, here for both sides (ganlab/perf/cuda_check.py)


@dataclass
class Family:
    overrides: list[str]
    batch: int
    kind: str  # gan | pix2pix | cyclegan | classifier | progan
    warmup: int = 3  # untimed steps (compilation, graph capture)
    steps: int = 20  # timed steps
    data_batch: int | None = None  # batches served, when the model trains on fewer (ProGAN cuts to its stage's)


# Almost no compute: what is left is each side's fixed cost per batch (Lightning's loop, hooks, logging).
TINY_GAN = Family(["model=gan", "data=mnist", "model.generator.hidden=[8]", "model.discriminator.hidden=[8]"], 8,
                  "gan", 20, 400)
GPU_FAMILIES = {
    "mlp_gan": Family(["model=gan", "data=mnist"], 64, "gan", 30, 500),
    "dcgan": Family(["model=dcgan", "data=pcam", "data.image_size=64"], 128, "gan", 10, 100),
    "pix2pix": Family(["+experiment=pix2pix_mr2ct_gpu"], 16, "pix2pix", 8, 40),
    "cyclegan": Family(["+experiment=cyclegan_mr2ct_gpu"], 32, "cyclegan", 6, 20),
    "classifier": Family(["+experiment=classifier_pcam"], 256, "classifier", 10, 100),
    # ProGAN at its final, stable stage (64x64 RGB, 16 of the 32 served images per step, as configured).
    "progan": Family(["+experiment=progan_pcam"], 16, "progan", 10, 60, data_batch=32),
    "tiny_gan": TINY_GAN,
}
CPU_FAMILIES = {
    "mlp_gan": Family(["model=gan", "data=mnist"], 64, "gan", 5, 100),
    "tiny_gan": TINY_GAN,
    "dcgan": Family(["+experiment=dcgan_mnist"], 64, "gan", 5, 60),
    "pix2pix": Family(["+experiment=pix2pix_mr2ct"], 4, "pix2pix"),
    "cyclegan": Family(["+experiment=cyclegan_mr2ct"], 4, "cyclegan"),
    "classifier": Family(["+experiment=classifier_pcam"], 64, "classifier", 3, 20),
    "progan": Family(["+experiment=progan_mnist"], 32, "progan", 3, 20),
}


@dataclass
class Variant:
    """Speed settings of one row; `default` = what ganlab's config picks for the device."""

    name: str
    precision: str | None = None  # None: trainer.precision as configured (auto)
    batch: int | None = None  # None: the family's batch
    perf: dict[str, Any] = field(default_factory=dict)  # perf.* overrides (None: as configured)


VARIANTS = {
    "default": Variant("default"),
    "eager-fp32": Variant("eager-fp32", "32-true", perf={"compile": False, "cuda_graph": False,
                                                         "channels_last": False, "fused_optimizer": False}),
    "eager-fp32-b1": Variant("eager-fp32-b1", "32-true", 1, {"compile": False, "cuda_graph": False,
                                                           "channels_last": False, "fused_optimizer": False}),
    "eager-bf16": Variant("eager-bf16", "bf16-mixed", perf={"compile": False, "cuda_graph": False}),
    "no-graph": Variant("no-graph", perf={"cuda_graph": False}),
    "no-compile": Variant("no-compile", perf={"compile": False}),
    "graph": Variant("graph", perf={"cuda_graph": True}),
    "compile": Variant("compile", perf={"compile": True}),  # e.g. on a CPU, where auto leaves it off
}


def compose_config(family: Family) -> Any:
    with initialize_config_module(config_module="ganlab.configs", version_base=None):
        return compose("train", overrides=[*family.overrides, "logger=none"])


def synthetic_batch(kind: str, cfg: Any, batch: int, device: torch.device, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = int(cfg.data.image_size)
    if kind in ("gan", "classifier", "progan"):
        c = int(cfg.data.channels)
        out = {"image": torch.rand(batch, c, size, size, generator=g) * 2 - 1}
        if kind == "classifier" or int(cfg.model.generator.get("num_classes", 0) or 0):
            out["label"] = torch.randint(int(cfg.data.num_classes), (batch,), generator=g)
    else:
        ca, cb = int(cfg.data.channels_a), int(cfg.data.channels_b)
        out = {"a": torch.rand(batch, ca, size, size, generator=g) * 2 - 1,
               "b": torch.rand(batch, cb, size, size, generator=g) * 2 - 1,
               "mask": torch.ones(batch, 1, size, size)}
    return {k: v.to(device) for k, v in out.items()}


class Repeat(IterableDataset):
    """The same few device batches, forever: the loader costs nothing, on either side."""

    def __init__(self, batches: list[dict[str, Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield from self.batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the plain loop -------------------------------------------------------------------------------------

def fresh_compiler() -> None:
    """Forget compiled code between runs. Dynamo keeps its entries per code object, so every model instance of
    this process (each row, each side) adds its variants of e.g. the discriminator's `forward` to the same list;
    past `recompile_limit` (8) new ones silently run eagerly (seen for DCGAN on the H100, run 1). Inductor's own
    on-disk cache still makes the second compile of the same graph quick."""
    torch._dynamo.reset()


def time_plain(cfg: Any, family: Family, variant: Variant, device: torch.device, batches: list[dict[str, Tensor]],
               warmup: int, steps: int) -> dict[str, Any]:
    """The plain loop with the same settings the Performance callback resolves for this device."""
    fresh_compiler()
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device)
    perf = instantiate(cfg.perf, **{k: v for k, v in variant.perf.items() if v is not None})
    cuda = device.type == "cuda"
    on = {name: (cuda if value == "auto" else value) for name, value in perf.requested.items()}
    # As ganlab decides: the GAN family's step graph by default, pix2pix's only when asked for (perf.cuda_graph=true).
    graphable = (family.kind == "gan" and int(cfg.model.get("n_critic", 1)) == 1) or (
        family.kind == "pix2pix" and variant.perf.get("cuda_graph") is True)
    on["cuda_graph"] = on["cuda_graph"] and cuda and graphable
    torch.backends.cudnn.benchmark = on["cudnn_benchmark"]
    torch.set_float32_matmul_precision(perf.matmul_precision)
    if on["channels_last"]:
        model.to(memory_format=torch.channels_last)
    model.train()
    plain = Plain(model, family.kind, cfg, {"fused": on["fused_optimizer"], "capturable": on["cuda_graph"]}, device)
    # The same compile-with-fallback as ganlab (first step eager and recorded, then compiled and probed).
    compiler = (CompiledNetworks(trainable_networks(model), **perf.compile_options)
                if on["compile"] and getattr(model, "supports_compile", True) else None)
    if compiler is not None:
        compiler.record()
    precision = variant.precision or _auto_precision(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed",
                              cache_enabled=False)
    step = plain.step
    if on["cuda_graph"]:
        step = StepGraph(plain.step)
    with autocast:
        for i in range(warmup):
            step(batches[i % len(batches)])
            if i == 0 and compiler is not None:
                compiler.finish()
                on["compiled"] = compiler.compiled
                if compiler.failed:
                    on["compile_failed"] = compiler.failed
        sync(device)
        start = time.perf_counter()
        for i in range(steps):
            out = step(batches[i % len(batches)])
        sync(device)
        elapsed = time.perf_counter() - start
        if PROFILE_STEPS:
            print_profile(step, batches, device)
    return {"seconds": elapsed, "steps": steps, "settings": on, "precision": precision,
            "finite": bool(all(torch.isfinite(v).all() for v in out.values()))}


PROFILE_STEPS = 0  # --profile N: kernel table of N plain steps after timing


def print_profile(step: Callable[[dict[str, Tensor]], Any], batches: list[dict[str, Tensor]],
                  device: torch.device) -> None:
    """Where the time of a step goes: the top kernels by device time (CPU time on a CPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(PROFILE_STEPS):
            step(batches[i % len(batches)])
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=70))


def _auto_precision(device: torch.device) -> str:
    return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true"


# --- ganlab through Lightning -----------------------------------------------------------------------------


class StepTimer(pl.Callback):
    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.timed = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        if idx >= self.warmup:
            self.timed += 1

    def elapsed(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.start


class DeviceBatches(pl.LightningDataModule):
    def __init__(self, batches: list[dict[str, Tensor]]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Repeat(self.batches), batch_size=None)


def time_ganlab(cfg: Any, family: Family, variant: Variant, device: torch.device, batches: list[dict[str, Tensor]],
                warmup: int, steps: int) -> dict[str, Any]:
    fresh_compiler()
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    if family.kind == "progan":  # time the final, stable stage (the plain loop trains there too)
        model.images_seen.fill_(model.schedule.growth_images)
    perf = instantiate(cfg.perf, **{k: v for k, v in variant.perf.items() if v is not None})
    timer = StepTimer(warmup, device)
    precision = variant.precision or _auto_precision(device)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision=precision,
        max_steps=(1 if family.kind == "classifier" else 2) * (warmup + steps),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[perf, timer, NonFiniteLossGuard(), SignalCheckpoint(path="/dev/null")],
    )
    trainer.fit(model, datamodule=DeviceBatches(batches))
    elapsed = timer.elapsed()
    finite = all(torch.isfinite(torch.as_tensor(v)).all() for k, v in trainer.callback_metrics.items()
                 if k.startswith("train/loss"))
    return {"seconds": elapsed, "steps": timer.timed, "settings": perf.report, "precision": precision,
            "finite": bool(finite)}


# --- FLOPs, rows, report ----------------------------------------------------------------------------------


class FlopCount(TorchDispatchMode):
    """torch.utils.flop_counter's per-op formulas, summed over every op of a step. FlopCounterMode itself tracks
    modules with autograd hooks that fail inside autograd.grad (ProGAN's gradient penalty), so no tracking here."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def flops_per_step(cfg: Any, family: Family, device: torch.device, batch: dict[str, Tensor]) -> int:
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    plain = Plain(model, family.kind, cfg, {}, device)
    with FlopCount() as counter:
        plain.step(batch)
    return counter.total


def run_row(name: str, family: Family, variant: Variant, device: torch.device, warmup: int, steps: int,
            sides: tuple[str, ...]) -> dict[str, Any]:
    cfg = compose_config(family)
    batch = variant.batch or family.batch
    served = family.data_batch or batch
    batches = [synthetic_batch(family.kind, cfg, served, device, seed) for seed in range(4)]
    row: dict[str, Any] = {"family": name, "variant": variant.name, "batch": batch,
                           "image_size": int(cfg.data.image_size), "device": device_name(device)}
    row["gflop_per_step"] = flops_per_step(cfg, family, device, batches[0]) / 1e9
    for side in sides:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        timed = (time_plain if side == "plain" else time_ganlab)(cfg, family, variant, device, batches, warmup, steps)
        steps_s = timed["steps"] / timed["seconds"]
        row[side] = {"steps_s": steps_s, "img_s": steps_s * batch,
                     "tflops": row["gflop_per_step"] * steps_s / 1e3, "finite": timed["finite"],
                     "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                     "precision": timed["precision"], "settings": timed["settings"]}
    if "plain" in row and "ganlab" in row:
        row["ratio"] = row["ganlab"]["steps_s"] / row["plain"]["steps_s"]
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    device = next((r["device"] for r in rows if "device" in r), "?")
    lines = [f"# Training speed: ganlab (Lightning) vs plain PyTorch loop, same nets and losses", "",
             f"{dt.date.today().isoformat()}, {device}, torch {torch.__version__}, Lightning {pl.__version__}.",
             f"Command: `{command}`", "",
             "| family | variant | batch | size | GFLOP/step | plain steps/s | ganlab steps/s | ganlab img/s | "
             "ganlab TFLOP/s | ganlab/plain | peak GiB | settings (ganlab) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['variant']} | | | | | | | | | | error: {r['error']} |")
            continue
        g, p = r.get("ganlab", {}), r.get("plain", {})
        settings = g.get("settings") or p.get("settings") or {}
        on = [k for k, v in settings.items() if v is True]
        extras = [f"{k}={v}" for k, v in settings.items() if k in ("compiled", "compile_failed", "cuda_graph_failed")]
        mem = g.get("peak_mem_gb") or p.get("peak_mem_gb")
        lines.append(
            f"| {r['family']} | {r['variant']} | {r['batch']} | {r['image_size']} | {r['gflop_per_step']:.2f} | "
            f"{p.get('steps_s', float('nan')):.1f} | {g.get('steps_s', float('nan')):.1f} | "
            f"{g.get('img_s', float('nan')):.0f} | {g.get('tflops', float('nan')):.2f} | "
            f"{r.get('ratio', float('nan')):.3f} | {'' if mem is None else f'{mem:.1f}'} | "
            f"{(g or p).get('precision', '')}; {', '.join(on)}{'; ' if extras else ''}{'; '.join(extras)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--families", nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    parser.add_argument("--sides", nargs="+", default=["plain", "ganlab"], choices=["plain", "ganlab"])
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: per family)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: per family)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate plain/ganlab this many times, keep the best")
    parser.add_argument("--out", default=None, help="write a markdown report here")
    parser.add_argument("--json", default=None, help="append one JSON line per row here")
    parser.add_argument("--profile", type=int, default=0, help="print a kernel table of this many plain steps")
    parser.add_argument("--render", default=None, help="only turn the rows of this JSON-lines file into --out")
    args = parser.parse_args(argv)
    command = "python scripts/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.render:
        with open(args.render) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        report = markdown(rows, f"scripts/bench_gpu.sh (rows of {args.render})")
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report)
        return rows
    global PROFILE_STEPS
    PROFILE_STEPS = args.profile
    device = torch.device(args.device)
    families = GPU_FAMILIES if device.type == "cuda" else CPU_FAMILIES
    names = args.families or (list(families) if device.type == "cuda" else ["mlp_gan", "dcgan", "tiny_gan"])
    rows = []
    for name in names:
        for variant in args.variants:
            try:
                best: dict[str, Any] | None = None
                family = families[name]
                warmup = family.warmup if args.warmup is None else args.warmup
                steps = family.steps if args.steps is None else args.steps
                for _ in range(args.repeats):
                    row = run_row(name, family, VARIANTS[variant], device, warmup, steps, tuple(args.sides))
                    best = row if best is None else _best(best, row, args.sides)
                row = best
            except Exception as err:  # one failing row must not lose the others
                row = {"family": name, "variant": variant, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
    report = markdown(rows, command)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return rows


def _best(a: dict[str, Any], b: dict[str, Any], sides: list[str]) -> dict[str, Any]:
    out = dict(a)
    for side in sides:
        if b[side]["steps_s"] > a[side]["steps_s"]:
            out[side] = b[side]
    if "plain" in out and "ganlab" in out:
        out["ratio"] = out["ganlab"]["steps_s"] / out["plain"]["steps_s"]
    return out


if __name__ == "__main__":
    main()
    # The report is written. On a GPU, interpreter teardown after CUDA graphs and compile workers stalled for
    # over a minute once (H100 run 1): leave without it.
    sys.stdout.flush()
    os._exit(0)
