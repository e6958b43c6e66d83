"""Data-pipeline and explanation benchmarks: MNIST loader, PCam reader vs torchvision, MR/CT slice cache, occlusion
vs Captum. Writes a markdown report (date, device, torch version, the exact command).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_data.py --quick           # CPU, while developing
    python scripts/bench_data.py --device cuda                                 # the GPU suite (< 3 min on an H100)

Each section runs in its own try/except: a failure is written into the report and the next section runs.
captum and nibabel are imported inside their sections, so the rest runs where they are missing.
`main(argv)` returns the report, so another benchmark script can call it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing (the GPU box)


# --- timing helpers ----------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: object, device: torch.device, non_blocking: bool) -> object:
    """Move every tensor of a (nested) batch, as Lightning's transfer would."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [to_device(v, device, non_blocking) for v in batch]
    return batch


def batch_size_of(batch: object) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(first)


def loader_rate(loader: DataLoader, device: torch.device, batches: int | None = None, skip: int = 1,
                finish: Callable[[dict], object] = lambda batch: batch) -> float:
    """Items/s over `batches` batches (None: the rest of the epoch) after `skip` untimed start-up batches;
    `finish` runs on each batch once it is on the device (e.g. a data module's on_after_batch_transfer)."""
    non_blocking = device.type == "cuda" and loader.pin_memory
    iterator = iter(loader)
    for _ in range(skip):
        finish(to_device(next(iterator), device, non_blocking))
    sync(device)
    start, seen = time.perf_counter(), 0
    for i, batch in enumerate(iterator):
        if batches is not None and i >= batches:
            break
        finish(to_device(batch, device, non_blocking))
        seen += batch_size_of(batch)
    sync(device)
    return seen / (time.perf_counter() - start)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Fastest wall time of `repeats` runs after one warm-up run (which also gives the result)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


# --- 1. MNIST ----------------------------------------------------------------------------------------------
def bench_mnist(args: argparse.Namespace, device: torch.device, scratch: Path) -> list[str]:
    from ganlab.data.mnist import MNISTDataModule

    rows = ["| batch | num_workers | pin_memory | images/s |", "|---|---|---|---|"]
    for batch in (64, 256):
        for workers in (0, 2):
            dm = MNISTDataModule(root=None, cache_dir=str(scratch / "mnist"), batch_size=batch,
                                 num_workers=workers, pin_memory=device.type == "cuda")
            dm.prepare_data()
            dm.setup("fit")
            loader = dm.train_dataloader()
            for _ in range(0 if args.quick else 1):  # a whole warm-up epoch (persistent workers stay up)
                for b in loader:
                    to_device(b, device, loader.pin_memory)
            rate = loader_rate(loader, device)
            rows.append(f"| {batch} | {workers} | {loader.pin_memory} | {rate:,.0f} |")
            print(rows[-1], flush=True)
            n = len(dm.datasets["train"])
    return [f"MNISTDataModule(root=null): the {n:,} embedded training digits, shuffled, one epoch after one "
            "untimed batch (and, full run, one untimed warm-up epoch); batches moved to the device.", "", *rows]


# --- 2. PCam -----------------------------------------------------------------------------------------------
def profile_batches(dataset: torch.utils.data.Dataset, batch: int, batches: int) -> list[str]:
    """cProfile of `batches` shuffled batches through ganlab's collate, in this process: top 6 by own time."""
    from ganlab.data.loaders import collate

    loader = DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(1))
    profiler = cProfile.Profile()
    iterator = iter(loader)
    next(iterator)
    profiler.enable()
    for _ in range(batches):
        next(iterator)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt
    entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:6]
    out = [f"| function | calls | own ms per batch | share |", "|---|---|---|---|"]
    for (file, line, name), (_cc, calls, own, _cum, _callers) in entries:
        where = f"{Path(file).name}:{line}({name})" if file != "~" else name
        out.append(f"| `{where}` | {calls} | {own / batches * 1e3:.1f} | {own / total:.0%} |")
    return out


def describe_storage(x_path: Path) -> str:
    import h5py

    with h5py.File(x_path, "r") as f:
        x = f["x"]
        return f"{x.shape[0]:,} images, chunks={x.chunks}, compression={x.compression}"


def bench_pcam(args: argparse.Namespace, device: torch.device, scratch: Path) -> list[str]:
    from torchvision.datasets import PCAM
    from torchvision.transforms import ToTensor

    from ganlab.data.loaders import collate
    from ganlab.data.pcam import SIZE, PCamDataset, data_dir_of, decode_on_device, split_files
    from ganlab.data.pcam_fixture import file_names, make_split, write_split

    batch = 256
    roots: dict[str, Path] = {}
    if args.pcam_root:
        roots["given files"] = Path(args.pcam_root)
    else:
        n = 4096 if args.quick else 16384
        images, labels = make_split(n, seed=0)
        for storage in ("contiguous", "chunked"):
            (scratch / storage / "pcam").mkdir(parents=True)
            write_split(scratch / storage / "pcam", "train", images, labels, storage)
            roots[storage] = scratch / storage
    timed = {"ours": 8 if args.quick else 24, "torchvision": 3 if args.quick else 6}
    rows = ["| files | num_workers | ganlab PCamDataset (img/s) | torchvision PCAM (img/s) | ratio | ganlab, "
            "pin_memory=False (img/s) | ganlab, uint8 batches decoded on the device (img/s) | ratio |",
            "|---|---|---|---|---|---|---|---|"]
    handover = ["| files | num_workers | uint8 batches handed over (img/s) |", "|---|---|---|"]
    notes, profiles = [], []

    def rate(ds: torch.utils.data.Dataset, key: str, workers: int, pin: bool = device.type == "cuda",
             finish: Callable[[dict], object] = lambda b: b) -> float:
        # Untimed: start-up and the batches the workers prefetch meanwhile (2 each), so the timed ones are made
        # while timing; at least 4 timed batches per worker.
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                            collate_fn=collate if isinstance(ds, PCamDataset) else None,  # each loader as it ships
                            generator=torch.Generator().manual_seed(0))
        skip = 1 + 2 * workers
        return loader_rate(loader, device, min(max(timed[key], 4 * workers), len(ds) // batch - skip), skip, finish)

    for name, root in roots.items():
        x_path, y_path = (split_files(root, "train") if args.pcam_root else
                          tuple(root / "pcam" / f for f in file_names("train")))
        notes.append(f"- {name}: {describe_storage(x_path)}")
        ours = PCamDataset(x_path, y_path)
        reference = PCAM(str(root), split="train", transform=ToTensor()) if data_dir_of(root) != root else None
        for workers in (0, 4):
            fast = rate(ours, "ours", workers)
            slow = rate(reference, "torchvision", workers) if reference is not None else float("nan")
            unpinned = f"{rate(ours, 'ours', workers, pin=False):,.0f}" if device.type == "cuda" else "-"
            # data.decode_on_device (auto: on with a GPU): workers carry uint8, the device makes the floats.
            carried = rate(ours.with_uint8_batches(), "ours", workers,
                           finish=lambda b: b.update(image=decode_on_device(b["image"], SIZE)))
            rows.append(f"| {name} | {workers} | {fast:,.0f} | {slow:,.0f} | {fast / slow:.1f}x | {unpinned} | "
                        f"{carried:,.0f} | {carried / slow:.1f}x |")
            print(rows[-1], flush=True)
        for workers in (0, 1, 2):  # what num_workers=auto weighs: reading in the main process vs a worker's hand-over
            handover.append(f"| {name} | {workers} | {rate(ours.with_uint8_batches(), 'ours', workers):,.0f} |")
            print(handover[-1], flush=True)
        profiles += [f"ganlab, {name}, num_workers=0, {batch} per batch:", "",
                     *profile_batches(ours, batch, 3 if args.quick else 6), ""]
    return ["Shuffled DataLoader (batch 256, per-sample random order; ganlab reads each batch's indices in sorted "
            "order and restores the sampler's order), float output (ganlab [-1, 1], torchvision ToTensor [0, 1]), "
            "batches moved to the device; untimed: the first batch (start-up) and, with workers, the 2 batches "
            "each worker prefetches meanwhile. Files written fresh, so in the "
            "page cache: this is read + decode overhead, not disk speed.", "", *notes, "", *rows, "",
            "The uint8 batches alone (as data.decode_on_device carries them, moved to the device, not decoded): "
            "what a worker's hand-over through shared memory costs against reading in the main process, the "
            "choice num_workers=auto makes per file layout.", "", *handover, "",
            "Where ganlab's time goes (cProfile, own time, main process):", "", *profiles]


# --- 3. MR/CT ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def counting_nibabel_loads() -> Iterator[list]:
    """Count nibabel.load calls (the one NIfTI decode entry point ganlab uses), as tests/test_mr_ct_data.py."""
    import nibabel

    calls: list = []
    real = nibabel.load
    nibabel.load = lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    try:
        yield calls
    finally:
        nibabel.load = real


def epoch(loader: DataLoader, device: torch.device) -> int:
    seen = 0
    for b in loader:
        to_device(b, device, loader.pin_memory)
        seen += batch_size_of(b)
    sync(device)
    return seen


def bench_mr_ct(args: argparse.Namespace, device: torch.device, scratch: Path) -> list[str]:
    from ganlab.data.mr_ct import MRCTDataModule

    rows = ["| image_size | phantom (patients x shape) | phantom written (s, once) | epoch 1: decode + cache + "
            "slices (slices/s) | epoch 2 from .npy cache (slices/s) | nibabel.load in epoch 2 | new run from "
            "cache (slices/s) | nibabel.load in new run |", "|---|---|---|---|---|---|---|---|"]
    for size in (64, 256):
        patients = (4 if size == 64 else 3) if args.quick else (12 if size == 64 else 6)
        phantom = {"n_patients": patients, "shape": [size, size, 24], "seed": 0}
        cache = scratch / f"mr_ct_{size}"

        def make() -> MRCTDataModule:
            return MRCTDataModule(root=None, cache_dir=str(cache), image_size=size, batch_size=16, val_patients=1,
                                  pin_memory=device.type == "cuda", phantom=phantom)
        start = time.perf_counter()
        make()  # writes the phantom NIfTI files (and a first cache, removed below)
        written = time.perf_counter() - start
        shutil.rmtree(cache / "mr_ct_cache")
        with counting_nibabel_loads() as calls:
            start = time.perf_counter()
            dm = make()
            n = epoch(dm.train_dataloader(), device)
            first, decoded = n / (time.perf_counter() - start), len(calls)
            calls.clear()
            start = time.perf_counter()
            n = epoch(dm.train_dataloader(), device)
            second, loads_2 = n / (time.perf_counter() - start), len(calls)
            calls.clear()
            start = time.perf_counter()
            n = epoch(make().train_dataloader(), device)
            fresh, loads_new = n / (time.perf_counter() - start), len(calls)
        rows.append(f"| {size} | {patients} x {size}x{size}x24 | {written:.1f} | {first:,.0f} ({decoded} NIfTI "
                    f"decoded) | {second:,.0f} | {loads_2} | {fresh:,.0f} | {loads_new} |")
        print(rows[-1], flush=True)
        if loads_2 or loads_new:
            rows.append(f"\n**FAIL**: NIfTI decoded again after the first epoch ({loads_2} + {loads_new} loads)")
    return ["MRCTDataModule(root=null) on the generated phantom (paired, batch 16, num_workers 0, one validation "
            "patient), slices of the training patients (min_mask_fraction 0.05). Epoch 1 includes constructing the "
            "data module, which decodes every NIfTI once and writes the normalised .npy cache; epoch 2 reuses the "
            "module; 'new run' builds a fresh module over the same cache.", "", *rows]


# --- 4. Explain --------------------------------------------------------------------------------------------
def bench_explain(args: argparse.Namespace, device: torch.device, scratch: Path) -> list[str]:
    from captum.attr import Occlusion as CaptumOcclusion

    from ganlab.explain import Occlusion
    from ganlab.nets.classifier import CNNClassifier

    cases = [("MNIST 28x28x1", 1, 10, 28, 32, 4, 2), ("PCam 96x96x3", 3, 2, 96, 8, 8, 4)]
    if args.quick and device.type == "cpu":
        cases = [("MNIST 28x28x1", 1, 10, 28, 8, 4, 2), ("PCam 96x96x3", 3, 2, 96, 2, 8, 4)]
    repeats = 1 if device.type == "cpu" else 3
    rows = ["| input | batch | window / stride | method | forwards x images | s (best) | max abs diff vs ours |",
            "|---|---|---|---|---|---|---|"]
    for name, channels, classes, size, batch, win, st in cases:
        torch.manual_seed(0)
        model = CNNClassifier(channels, classes).to(device).eval()
        x = torch.rand(batch, channels, size, size, device=device) * 2 - 1
        target = torch.arange(batch, device=device) % classes
        ours = Occlusion(model, window=win, stride=st)
        t_ours, m_ours = best_time(lambda: ours.attribute(x, target), device, repeats)
        windows = len(ours.positions((size, size))[0]) * len(ours.positions((size, size))[1])
        forwards = -(-batch * windows // ours.chunk)
        rows.append(f"| {name} | {batch} | {win} / {st} | ganlab Occlusion (budget: {ours.chunk} copies) | "
                    f"{forwards} x {ours.chunk} | {t_ours:.3f} | (map max {m_ours.abs().max():.1e}) |")
        captum = CaptumOcclusion(model)
        for per_eval in (1, 64):
            def run() -> torch.Tensor:
                return captum.attribute(x, sliding_window_shapes=(channels, win, win), strides=(channels, st, st),
                                        baselines=0.0, target=target, perturbations_per_eval=per_eval)
            t, m = best_time(run, device, repeats)
            spread = (m - m[:, :1]).abs().max().item()  # Captum repeats the map over channels
            rows.append(f"| {name} | {batch} | {win} / {st} | captum perturbations_per_eval={per_eval} | "
                        f"{-(-windows // per_eval)} x {per_eval * batch} | {t:.3f} | "
                        f"{(m[:, :1] - m_ours).abs().max():.1e} (channel spread {spread:.0e}) |")
            print(rows[-1], flush=True)
    return [f"CNNClassifier (default widths, random weights, eval), baseline 0, float32, best of {repeats} after a "
            "warm-up; ganlab occludes all channels at once with a chunk size from its memory budget (64 MiB CPU, "
            "1 GiB CUDA); Captum with a (C, w, w) window, the same map on each channel.", "", *rows]


# --- report ------------------------------------------------------------------------------------------------
def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


SECTIONS = {"MNIST loader": bench_mnist, "PCam reader vs torchvision": bench_pcam,
            "MR/CT slices and the NIfTI cache": bench_mr_ct, "Occlusion vs Captum": bench_explain}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for development (< 60 s on a GPU box)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "data_pipeline.md"))
    parser.add_argument("--pcam-root", default=None, help="real PCam files (official names) instead of generated")
    parser.add_argument("--sections", nargs="+", default=list(range(1, len(SECTIONS) + 1)), type=int)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    cpus = f"{os.cpu_count()} CPUs" + (f" ({cpu_name()})" if device.type == "cuda" else "")
    command = " ".join(["python", "scripts/bench_data.py", *(sys.argv[1:] if argv is None else argv)])
    lines = ["# Data pipelines and explanation: ganlab vs torchvision / Captum", "",
             f"{datetime.now():%Y-%m-%d %H:%M}, device {device.type} ({name}), {cpus}, torch "
             f"{torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average "
             f"{os.getloadavg()[0]:.1f} at start.", "", f"    {command}", ""]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        for number, (title, section) in enumerate(SECTIONS.items(), 1):
            if number not in args.sections:
                continue
            print(f"== {number}. {title}", flush=True)
            lines += [f"## {number}. {title}", ""]
            t0 = time.perf_counter()
            scratch = Path(tmp) / str(number)
            scratch.mkdir()
            try:
                lines += section(args, device, scratch)
            except Exception as err:  # record and go on: one broken section must not lose the others
                traceback.print_exc()
                lines.append(f"**ERROR**: {type(err).__name__}: {err}")
            lines += ["", f"({time.perf_counter() - t0:.0f} s)", ""]
    lines.append(f"Total {time.perf_counter() - started:.0f} s.")
    report = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
