"""cGAN-MNIST conditional accuracy, judged by a classifier trained on other digits than the GAN saw.

The embedded MNIST training split is cut in two: the judge classifier trains on the second half
(data.train_range=[0.5,1.0]), the conditional GAN on the first half. Conditional accuracy, FID/KID and
precision/recall are computed by the ImageQualityMetrics callback on the 500 held-out digits at the
GAN's final weights, and read back from the runs' run.yaml.

Usage (from the repo root, in the venv; ~5-10 min on 2 CPU cores):
    python scripts/bench_cgan_mnist.py [--out benchmarks/cgan_mnist.md] [--gan-overrides model=cdcgan ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

GANLAB = shutil.which("ganlab") or str(Path(sys.executable).parent / "ganlab")


def train(*overrides: str) -> tuple[dict, float, str]:
    command = [GANLAB, "train", *overrides, "trainer.enable_progress_bar=false"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-3000:]}")
    run_dir = Path(proc.stdout.strip().splitlines()[-1].rsplit("run dir: ", 1)[1])
    return yaml.safe_load((run_dir / "run.yaml").read_text()), seconds, " ".join(["ganlab", *command[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--gan-overrides", nargs="*", default=[], help="extra overrides for the cGAN run")
    parser.add_argument("--judge-name", default="judge_mnist_b")
    args = parser.parse_args()

    judge, judge_s, judge_cmd = train("+experiment=classifier_mnist", "data.train_range=[0.5,1.0]",
                                      f"name={args.judge_name}")
    gan, gan_s, gan_cmd = train("+experiment=cgan_mnist", "data.train_range=[0.0,0.5]", "callbacks=image_metrics",
                                f"callbacks.image_metrics.feature_run=latest:{args.judge_name}",
                                *args.gan_overrides)
    m = gan["metrics"]
    lines = [
        f"# cGAN-MNIST conditional accuracy ({dt.date.today().isoformat()})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. "
        f"Command: `python scripts/bench_cgan_mnist.py {' '.join(sys.argv[1:])}`",
        "",
        f"1. judge: `{judge_cmd}` ({judge_s:.0f} s): held-out accuracy {judge['metrics']['val/acc']:.4f}",
        f"2. cGAN: `{gan_cmd}` ({gan_s:.0f} s, {gan['global_step']} optimizer steps)",
        "",
        "| metric (500 held-out digits vs 500 samples with their labels) | value |",
        "|---|---|",
        *(f"| {k} | {m[k]:.4f} |" for k in ("val/cond_acc", "val/fid", "val/kid", "val/precision", "val/recall")
          if k in m),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
