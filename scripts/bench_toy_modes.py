"""Mode collapse on the 2-D toys, counted as in PacGAN's Table 2: modes, high-quality samples, reverse KL.

Each (experiment, label, overrides) row of COMBOS below trains `ganlab train +experiment=<experiment>` as one
Hydra sweep over the seeds, at the experiment's step budget (or --steps for all rows), and reads
`val/modes_captured`, `val/high_quality` and `val/reverse_kl` (2,500 samples at the final weights, see
ganlab/metrics/modes.py) from each run's run.yaml. The table gives mean ± standard error over seeds.

Children run with OMP_NUM_THREADS=1 (--threads), --jobs rows at a time: on a 2-core machine these small
MLPs train several times faster on one thread each than on two competing ones.

Usage (from the repo root, in the venv):
    python scripts/bench_toy_modes.py --seeds 0 1 2 3 4 --jobs 2 --out toy_modes_run.md
    python scripts/bench_toy_modes.py --only gan_ring8 gan_grid25 --variants default plain
    python scripts/bench_toy_modes.py --only pacgan_ring8 --steps 10000     # another budget
    python scripts/bench_toy_modes.py --quick                               # smoke run: 1 seed, 200 steps

Recorded runs, each with its command: benchmarks/toy_modes.md, benchmarks/toy_modes_defaults_run.md and
benchmarks/toy_modes_plain_run.md.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

# (experiment, label, overrides): each row trains `+experiment=<experiment>` plus its overrides. The gan_*
# rows start from the experiments' defaults (R1 + EMA + LR decay, see their YAML) and change one thing; the
# "plain" rows switch those tricks off (the lecture's collapse); pacgan_* rows are PacGAN's own protocol.
PLAIN = ["model.r1_gamma=0", "model.ema_decay=0", "model.decay_start=1.0"]
COMBOS: list[tuple[str, str, list[str]]] = [
    *((f"gan_{setup}", label, overrides) for setup in ("ring8", "grid25") for label, overrides in (
        ("default (R1 + EMA + LR decay)", []),
        ("plain GAN (no R1, EMA or decay)", PLAIN),
        ("no R1", ["model.r1_gamma=0"]),
        ("no EMA", ["model.ema_decay=0"]),
        ("no LR decay", ["model.decay_start=1.0"]),
        ("hinge + spectral norm, lr 2e-4, betas (0, 0.9)", [
            *PLAIN, "model.loss=hinge", "model.discriminator.spectral_norm=true", "model.lr_g=2e-4",
            "model.lr_d=2e-4", "model.optimizer.betas=[0.0,0.9]"]),
        ("WGAN-GP lambda 0.1, 5 critic steps, lr 1e-4, betas (0.5, 0.9)", [
            *PLAIN, "model.loss=wgan_gp", "model.gp_lambda=0.1", "model.n_critic=5", "model.lr_g=1e-4",
            "model.lr_d=1e-4", "model.optimizer.betas=[0.5,0.9]"]),
        ("LSGAN, lr 1e-4, betas (0.5, 0.999)", [
            *PLAIN, "model.loss=lsgan", "model.lr_g=1e-4", "model.lr_d=1e-4", "model.optimizer.betas=[0.5,0.999]"]),
        *((f"PacGAN{m} (plain GAN + packing)", [*PLAIN, f"model.discriminator.pack={m}"]) for m in (2, 3, 4)),
    )),
    *((f"pacgan_{setup}", f"PacGAN protocol, pack {m}", [f"model.discriminator.pack={m}"])
      for setup in ("ring8", "grid25") for m in (1, 2, 3, 4)),
]

GANLAB = shutil.which("ganlab") or str(Path(sys.executable).parent / "ganlab")
QUICK_STEPS = 200


def sweep(experiment: str, overrides: list[str], seeds: list[int], steps: int | None, log_dir: Path,
          threads: int) -> list[dict]:
    """Train one combo for every seed (a Hydra -m sweep) and return the runs' manifests, in seed order."""
    command = [GANLAB, "train", "-m", f"+experiment={experiment}", *overrides,
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


def mean_se(values: list[float], fmt: str) -> str:
    """mean ± standard error of the mean over seeds."""
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(se, fmt)}"


HEADER = ("| experiment | variant | overrides | modes captured | high quality % | reverse KL | modes per seed | "
          "steps | s / run |\n|---|---|---|---|---|---|---|---|---|")


def table_row(experiment: str, label: str, overrides: list[str], runs: list[dict]) -> str:
    modes = [r["metrics"]["val/modes_captured"] for r in runs]
    hq = [100 * r["metrics"]["val/high_quality"] for r in runs]
    rkl = [r["metrics"]["val/reverse_kl"] for r in runs]
    per_seed = ", ".join(f"{m:.0f}" for m in modes)
    return (f"| {experiment} | {label} | {' '.join(f'`{o}`' for o in overrides) or '-'} | "
            f"{mean_se(modes, '.1f')} of {num_modes(runs[0]['dir'])} | {mean_se(hq, '.1f')} | {mean_se(rkl, '.3f')} | "
            f"{per_seed} | {runs[0]['global_step']} | {statistics.mean(map(seconds, runs)):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="trainer.max_steps for every row (default: each experiment's)")
    parser.add_argument("--only", nargs="+", help="run only the rows of these experiments (gan_ring8, pacgan_grid25, ...)")
    parser.add_argument("--variants", nargs="+", help="run only rows whose variant label starts with one of these")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the training runs")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at the same time")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: outputs/bench_toy_modes/<time>)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown, with command and date) here")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: first seed only, {QUICK_STEPS} steps")
    args = parser.parse_args()
    seeds, steps = (args.seeds[:1], QUICK_STEPS) if args.quick else (args.seeds, args.steps)
    started = dt.datetime.now()
    workdir = args.workdir or Path("outputs") / "bench_toy_modes" / started.strftime("%Y-%m-%d_%H-%M-%S")
    combos = [c for c in COMBOS if (not args.only or c[0] in args.only)
              and (not args.variants or any(c[1].startswith(v) for v in args.variants))]
    if not combos:
        sys.exit(f"--only {args.only} --variants {args.variants}: no such rows in COMBOS "
                 f"({', '.join(sorted({c[0] for c in COMBOS}))})")

    def row(i: int) -> str:
        experiment, label, overrides = combos[i]
        runs = sweep(experiment, overrides, seeds, steps, (workdir / f"{i}_{experiment}").resolve(), args.threads)
        line = table_row(experiment, label, overrides, runs)
        print(line, flush=True)
        return line

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(row, range(len(combos))))
    lines = [
        f"Date {started:%Y-%m-%d}; {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"OMP_NUM_THREADS={args.threads}, {args.jobs} rows at a time; seeds {', '.join(map(str, seeds))}; runs in `{workdir}`.",
        f"Command: `python scripts/bench_toy_modes.py {' '.join(sys.argv[1:])}`",
        "",
        HEADER,
        *rows,
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
