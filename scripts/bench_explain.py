"""Time ganlab.explain: batched occlusion vs Captum's Occlusion vs one occluded copy per forward, and each
method once, on a CNNClassifier (default widths) with 96x96 RGB input (a PCam-sized patch).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_explain.py [--devices cpu cuda] [--batch 2]

Prints a markdown table (paste into benchmarks/explain.md). Captum is a test/benchmark dependency only.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch
from captum.attr import Occlusion as CaptumOcclusion

from ganlab.explain import METHODS, Occlusion
from ganlab.nets.classifier import CNNClassifier


def timed(fn, device: torch.device, repeats: int) -> tuple[str, torch.Tensor]:
    """"wall s / process CPU s" of the fastest of ``repeats`` runs (one warm-up run on CUDA), last result.

    On a shared CPU machine the process CPU time is the steadier number (wall time includes waiting for
    a core); on CUDA the wall time is the one that matters.
    """
    if device.type == "cuda":
        fn()
    best, out = (float("inf"), float("inf")), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
    return f"{best[0]:.3f} / {best[1]:.3f}", out


def bench(device: torch.device, args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    model = CNNClassifier(3, 2).to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    target = torch.arange(args.batch, device=device) % 2
    win, st = args.window, args.stride
    ours = Occlusion(model, window=win, stride=st)
    ours_time, ours_map = timed(lambda: ours.attribute(x, target), device, args.repeats)
    chunk = ours.chunk
    windows = len(ours.positions((args.size, args.size))[0]) ** 2
    captum = CaptumOcclusion(model)

    def run_captum(per_eval: int):
        return lambda: captum.attribute(x, sliding_window_shapes=(3, win, win), strides=(3, st, st), baselines=0.0,
                                        target=target, perturbations_per_eval=per_eval)

    rows = [f"| {device.type} | ours, batched ({chunk} copies/forward) | {ours_time} | "
            f"(max abs map {ours_map.abs().max():.1e}) |"]
    single = Occlusion(model, window=win, stride=st, max_batch=1)
    t, m = timed(lambda: single.attribute(x, target), device, args.repeats)
    rows.append(f"| {device.type} | ours, 1 copy/forward | {t} | {(m - ours_map).abs().max():.1e} |")
    for per_eval in (1, max(1, chunk // args.batch)):
        t, m = timed(run_captum(per_eval), device, args.repeats)
        rows.append(f"| {device.type} | captum Occlusion, perturbations_per_eval={per_eval} "
                    f"({per_eval * args.batch} images/forward) | {t} | {(m[:, :1] - ours_map).abs().max():.1e} |")
    rows.append(f"| {device.type} | ({windows} windows x {args.batch} images, window {win}, stride {st}) | | |")
    for name, method in METHODS.items():
        explainer = method(model, window=win, stride=st) if name == "occlusion" else method(model)
        t, _ = timed(lambda: explainer.attribute(x, target), device, args.repeats)
        rows.append(f"| {device.type} | {name} | {t} | - |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"{date.today()} | {platform.node()} | {platform.processor() or platform.machine()} | torch "
          f"{torch.__version__} | {torch.get_num_threads()} intra-op threads"
          + (f" | {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print("\n| device | what | wall s / CPU s | max abs diff vs ours batched |\n|---|---|---|---|")
    for device in args.devices:
        print("\n".join(bench(torch.device(device), args)), flush=True)


if __name__ == "__main__":
    main()
