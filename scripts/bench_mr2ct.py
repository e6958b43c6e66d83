"""Benchmark MR -> CT synthesis on the offline phantom: pix2pix and CycleGAN against two learning-free baselines.

Trains `+experiment=pix2pix_mr2ct` and `+experiment=cyclegan_mr2ct` through the `ganlab` console script for
a fixed number of optimizer steps, reads their final held-out metrics from run.yaml, and scores the water and
intensity-lookup baselines (`ganlab.metrics.mr2ct_baselines`) on the same held-out patients with the same
SynthRAD2023 metric functions. Prints a markdown table (held-out patients, mean over patients).

    OMP_NUM_THREADS=1 nice python scripts/bench_mr2ct.py --steps 4000 --cyclegan-steps 800 --workdir /tmp/bench_mr2ct
    python scripts/bench_mr2ct.py --workdir /tmp/m --run-dirs RUN1 RUN2 --figures benchmarks/figures  # score finished runs
    python scripts/bench_mr2ct.py --steps 0            # baselines only
    python scripts/bench_mr2ct.py --extra trainer=gpu  # any further Hydra overrides for both runs
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ganlab.data.intensity import unit_to_ct
from ganlab.metrics.mr2ct_baselines import IntensityLookup, water_baseline
from ganlab.metrics.synthrad import PatientSlices, mean_over_patients
from ganlab.models.translation import on_original_grid, score_volume, tissue_names

GANLAB = str(Path(sys.executable).parent / "ganlab")
COLUMNS = ["mae_hu", "psnr", "ssim", "mae_bone", "mae_air", "mae_soft_tissue", "mae_fat", "mae_brain", "mae_csf"]


def start_training(experiment: str, steps: int, workdir: Path, extra: list[str]) -> subprocess.Popen:
    args = [GANLAB, "train", f"+experiment={experiment}", f"trainer.max_steps={steps}",
            "trainer.enable_progress_bar=false", f"paths.data_dir={workdir / 'data'}", *extra]
    log = open(workdir / f"{experiment}.log", "w")
    return subprocess.Popen(args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish_training(experiment: str, proc: subprocess.Popen, workdir: Path) -> tuple[Path, dict[str, float]]:
    if proc.wait() != 0:
        sys.exit(f"{' '.join(proc.args)} failed; see {workdir / f'{experiment}.log'}")
    runs = (workdir / "outputs" / "train" / experiment).glob("*/run.yaml")
    run_dir = max(runs, key=lambda p: p.stat().st_mtime).parent
    return run_dir, run_metrics(run_dir)


def run_metrics(run_dir: Path) -> dict[str, float]:
    """The final held-out metrics of a finished run (run.yaml `val/*`)."""
    metrics = yaml.safe_load((run_dir / "run.yaml").read_text())["metrics"]
    return {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")}


def learning_curve(run_dir: Path) -> str:
    """Held-out MAE (mean over patients) at each validation, from the run's val_patients.csv."""
    steps: dict[int, list[float]] = {}
    for row in csv.DictReader((run_dir / "val_patients.csv").open()):
        steps.setdefault(int(row["step"]), []).append(float(row["mae_hu"]))
    return ", ".join(f"{step}: {sum(v) / len(v):.0f}" for step, v in sorted(steps.items()))


def panel(experiment: str, run_dir: Path, workdir: Path, figures: Path) -> Path:
    """`ganlab sample` on the first held-out patient: MR | sCT | CT | |error| of its middle slice."""
    (root,) = (workdir / "data").glob("mr_ct_phantom_*")
    patient = next(csv.DictReader((run_dir / "val_patients.csv").open()))["patient"]
    out = workdir / f"{experiment}_sample"
    subprocess.run([GANLAB, "sample", f"run={run_dir}", f"input={root / patient}", f"output={out}",
                    "panel_slices=1"], check=True, cwd=workdir, stdout=subprocess.DEVNULL)
    (png,) = max(out.iterdir(), key=lambda p: p.stat().st_mtime).glob("*_panels.png")
    figures.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(png, figures / f"{experiment}_{patient}.png"))


def baselines(workdir: Path, extra: list[str]) -> dict[str, dict[str, float]]:
    """Water and intensity lookup, fit on the paired training slices, scored on the held-out volumes."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        overrides = ["+experiment=pix2pix_mr2ct", f"paths.data_dir={workdir / 'data'}"]
        cfg = compose(config_name="train", overrides=[*overrides, *[o for o in extra if o.startswith("data.")]])
    data = instantiate(OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True)))
    data.setup("fit")
    lookup = IntensityLookup().fit(
        (b["a"][:, 0], unit_to_ct(b["b"][:, 0]), b["mask"][:, 0]) for b in data.train_dataloader())
    volumes = PatientSlices()
    for batch in data.val_dataloader():
        mask = batch["mask"][:, 0] > 0.5
        tissue = batch["tissue"][:, 0] if "tissue" in batch else torch.zeros_like(mask, dtype=torch.long)
        volumes.add(batch["patient"], batch["slice"], mr=batch["a"][:, 0], ct=unit_to_ct(batch["b"][:, 0]),
                    mask=mask, tissue=tissue)
    names = tissue_names(data) if "tissue" in batch else None
    scores: dict[str, list[dict[str, float]]] = {"water (0 HU in body)": [], "MR intensity lookup": []}
    for patient, v in volumes.volumes():
        for name, sct in (("water (0 HU in body)", water_baseline(v["mask"])),
                          ("MR intensity lookup", lookup.predict(v["mr"], v["mask"]))):
            # Scored like the GANs' validation: back on the patient's original grid, padding removed.
            volume = {"sct": sct.float(), "ct": v["ct"], "mask": v["mask"]}
            if names:
                volume["tissue"] = v["tissue"]
            scores[name].append(score_volume(on_original_grid(data, patient, volume), names))
    return {k: mean_over_patients(v) for k, v in scores.items()}


def table(rows: dict[str, dict[str, float]]) -> str:
    head = "| method | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, m in rows.items():
        cells = ["-" if c not in m else f"{m[c]:.3f}" if c == "ssim" else f"{m[c]:.1f}" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000,
                        help="optimizer steps per GAN (2 per batch); 0: baselines only")
    parser.add_argument("--cyclegan-steps", type=int, default=None,
                        help="CycleGAN's own budget (default: --steps; 0: skip)")
    parser.add_argument("--workdir", type=Path, default=Path("bench_mr2ct"))
    parser.add_argument("--extra", nargs="*", default=["logger=none"], help="Hydra overrides for both runs")
    parser.add_argument("--run-dirs", nargs="*", type=Path, default=[],
                        help="score these finished pix2pix/cyclegan run dirs instead of training new ones")
    parser.add_argument("--figures", type=Path, default=None,
                        help="copy each run's MR | sCT | CT | |error| panel of a held-out patient here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    rows = baselines(args.workdir, args.extra)  # (also generates the phantom once, before the runs share it)
    cyclegan_steps = args.steps if args.cyclegan_steps is None else args.cyclegan_steps
    budgets = {"pix2pix_mr2ct": args.steps, "cyclegan_mr2ct": cyclegan_steps}
    budgets = {k: v for k, v in budgets.items() if v and not args.run_dirs}
    # Both runs at once, one thread each: on a small CPU machine that is faster than one after the other.
    procs = {name: start_training(name, steps, args.workdir, args.extra) for name, steps in budgets.items()}
    done = [finish_training(experiment, proc, args.workdir) for experiment, proc in procs.items()]
    done += [(run_dir, run_metrics(run_dir)) for run_dir in args.run_dirs]
    for run_dir, metrics in done:
        info = yaml.safe_load((run_dir / "run.yaml").read_text())
        experiment = info["name"]
        rows[f"{experiment} ({info['global_step']} steps)"] = metrics
        print(f"{experiment}: {run_dir} ({info['started']} - {info['finished']})\n"
              f"  held-out MAE per validation (step: HU): {learning_curve(run_dir)}", file=sys.stderr)
        if args.figures:
            print(f"  panel: {panel(experiment, run_dir, args.workdir, args.figures)}", file=sys.stderr)
    print(f"Held-out phantom patients, mean over patients (MAE in HU, PSNR in dB):\n\n{table(rows)}")


if __name__ == "__main__":
    main()
