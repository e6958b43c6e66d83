"""Mode collapse on the 2-D toys, counted as in PacGAN's Table 2: modes captured and high-quality samples.

Each (setup, label, overrides) row of COMBOS below trains `ganlab train +experiment=gan_<setup>` as one
Hydra sweep over the seeds, at the experiment's step budget (or --steps for all rows), and reads
`val/modes_captured` and `val/high_quality` (2,500 samples at the final weights, see
ganlab/metrics/modes.py) from each run's run.yaml. The table gives mean ± std over seeds.

Children run with OMP_NUM_THREADS=1 (--threads): on a shared 2-core machine these small MLPs train
several times faster on one thread than on two competing ones.

Usage (from the repo root, in the venv; ~1.5-2 min per run on 2 CPU cores):
    python scripts/bench_toy_modes.py                                   # COMBOS x seeds 0 1 2
    python scripts/bench_toy_modes.py --seeds 0 1 2 3 4 --out benchmarks/toy_modes.md
    python scripts/bench_toy_modes.py --only ring8 --steps 10000        # one setup, another budget
    python scripts/bench_toy_modes.py --quick                           # smoke run: 1 seed, 200 steps
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

# (setup, label, overrides): setup picks `+experiment=gan_<setup>`; overrides are Hydra overrides.
# Each row costs ~1.5 min per seed on an idle core. PacGAN2 packs 2 samples per D input; WGAN-GP takes
# 5 critic steps per G step within the same optimizer-step budget (so G gets a third of the updates).
COMBOS: list[tuple[str, str, list[str]]] = [
    (setup, label, overrides)
    for setup in ("ring8", "grid25")
    for label, overrides in (
        ("GAN (non-saturating)", []),
        ("hinge + spectral norm", ["model.loss=hinge", "model.discriminator.spectral_norm=true"]),
        ("LSGAN", ["model.loss=lsgan"]),
        ("PacGAN2", ["model.discriminator.pack=2"]),
        ("WGAN-GP, 5 critic steps", ["model.loss=wgan_gp", "model.n_critic=5"]),
    )
]

GANLAB = shutil.which("ganlab") or str(Path(sys.executable).parent / "ganlab")
QUICK_STEPS = 200


def sweep(setup: str, overrides: list[str], seeds: list[int], steps: int | None, log_dir: Path,
          threads: int) -> list[dict]:
    """Train one combo for every seed (a Hydra -m sweep) and return the runs' manifests, in seed order."""
    command = [GANLAB, "train", "-m", f"+experiment=gan_{setup}", *overrides,
               f"seed={','.join(map(str, seeds))}", f"paths.log_dir={log_dir}", "trainer.enable_progress_bar=false",
               *([f"trainer.max_steps={steps}"] if steps else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print("$", " ".join(["ganlab", *command[1:]]), flush=True)
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-3000:]}")
    runs = [yaml.safe_load(p.read_text()) | {"dir": p.parent} for p in sorted(log_dir.rglob("run.yaml"))]
    seeds_found = [yaml.safe_load((r["dir"] / "config.yaml").read_text())["seed"] for r in runs]
    if sorted(seeds_found) != sorted(seeds) or any(r["status"] != "completed" for r in runs):
        sys.exit(f"{log_dir}: expected completed runs for seeds {seeds}, found {seeds_found}")
    return [run for _, run in sorted(zip(seeds_found, runs), key=lambda pair: pair[0])]


def num_modes(run_dir: Path) -> int:
    """K, from the run's own data config (its `centers` node), so new layouts need no table here."""
    from hydra.utils import instantiate

    from ganlab.runs import load_run_config  # checks every _target_ against ganlab's allowlist

    return len(instantiate(load_run_config(run_dir).data.centers))


def seconds(run: dict) -> float:
    return (dt.datetime.fromisoformat(str(run["finished"])) - dt.datetime.fromisoformat(str(run["started"]))
            ).total_seconds()


def mean_std(values: list[float], fmt: str) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(spread, fmt)}"


def table_row(setup: str, label: str, overrides: list[str], runs: list[dict]) -> str:
    modes = [r["metrics"]["val/modes_captured"] for r in runs]
    hq = [100 * r["metrics"]["val/high_quality"] for r in runs]
    per_seed = ", ".join(f"{m:.0f}" for m in modes)
    return (f"| {setup} | {label} | {' '.join(f'`{o}`' for o in overrides) or '-'} | "
            f"{mean_std(modes, '.1f')} of {num_modes(runs[0]['dir'])} | {mean_std(hq, '.1f')} | {per_seed} | "
            f"{runs[0]['global_step']} | {statistics.mean(map(seconds, runs)):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="trainer.max_steps for every row (default: each experiment's)")
    parser.add_argument("--only", help="run only the rows of this setup (ring8, grid25)")
    parser.add_argument("--variants", nargs="+", help="run only rows whose variant label starts with one of these")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the training runs")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: outputs/bench_toy_modes/<time>)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown, with command and date) here")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: first seed only, {QUICK_STEPS} steps")
    args = parser.parse_args()
    seeds, steps = (args.seeds[:1], QUICK_STEPS) if args.quick else (args.seeds, args.steps)
    started = dt.datetime.now()
    workdir = args.workdir or Path("outputs") / "bench_toy_modes" / started.strftime("%Y-%m-%d_%H-%M-%S")
    combos = [c for c in COMBOS if args.only in (None, c[0])
              and (not args.variants or any(c[1].startswith(v) for v in args.variants))]
    if not combos:
        sys.exit(f"--only {args.only}: no such setup in COMBOS ({', '.join(sorted({c[0] for c in COMBOS}))})")

    rows = []
    for i, (setup, label, overrides) in enumerate(combos):
        runs = sweep(setup, overrides, seeds, steps, (workdir / f"{i}_{setup}").resolve(), args.threads)
        rows.append(table_row(setup, label, overrides, runs))
        print(rows[-1], flush=True)
    lines = [
        f"Date {started:%Y-%m-%d}; {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"OMP_NUM_THREADS={args.threads}; seeds {', '.join(map(str, seeds))}; runs in `{workdir}`.",
        f"Command: `python scripts/bench_toy_modes.py {' '.join(sys.argv[1:])}`",
        "",
        "| setup | variant | overrides | modes captured | high quality % | modes per seed | steps | s / run |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
