"""Shared helpers: run the installed `ganlab` console script in a temp dir, read run dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest worker per core already: in-process tests get one intra-op thread each, or they fight.
    torch.set_num_threads(1)

GANLAB = str(Path(sys.executable).parent / "ganlab")
TESTS_DIR = Path(__file__).parent
EXPERIMENTS = sorted(p.stem for p in (TESTS_DIR.parent / "ganlab" / "configs" / "experiment").glob("*.yaml"))

# Tiny networks and few steps: every experiment runs in seconds on 2 CPU cores.
TINY = [
    "+debug=fast",
    "model.generator.hidden=[16]",
    "model.discriminator.hidden=[16]",
]


def compose_experiment(experiment: str):
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        return compose(config_name="train", overrides=[f"+experiment={experiment}"])


def gpu_experiment_on_cpu(experiment: str) -> list[str]:
    """The *_gpu experiments on a CPU: trainer=cpu, a thin 4-patient phantom, batch 2, no workers (networks kept)."""
    cfg = compose_experiment(experiment)
    if cfg.trainer.get("accelerator") != "gpu":
        return []
    size = cfg.data.image_size
    return ["trainer=cpu", "data.num_workers=0", "data.pin_memory=false", "data.batch_size=2",
            f"data.phantom.shape=[{size},{size},6]", "data.phantom.n_patients=4"]


def tiny_overrides(experiment: str) -> list[str]:
    """`+debug=fast` plus the smallest widths each of the experiment's networks accepts."""
    cfg = compose_experiment(experiment)
    model = cfg.model
    overrides = ["+debug=fast", *gpu_experiment_on_cpu(experiment)]
    for key in ("generator", "discriminator", "net", "g_ab", "g_ba", "d_a", "d_b"):
        node = model.get(key)
        if node is None:
            continue
        if "hidden" in node:
            overrides.append(f"model.{key}.hidden=[16]")
        if "base_width" in node:
            overrides.append(f"model.{key}.base_width=8")
        if "widths" in node:  # keep the depth (it must match e.g. `strides`), shrink every width
            overrides.append(f"model.{key}.widths=[{','.join(['8'] * len(node.widths))}]")
    return overrides


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the session, so the embedded MNIST is converted once."""
    return tmp_path_factory.mktemp("data")


def run_ganlab(*args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    # One intra-op thread: the tests' networks are tiny, and two threads on a busy 2-core machine mostly wait
    # on each other (benchmarks/classifier_mnist.md measured 4-8x slower runs).
    full_env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([GANLAB, *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ganlab {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                             f"\n--- stderr\n{proc.stderr[-5000:]}")
    return proc


def run_dirs(cwd: Path, name: str) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs" / "train" / name).rglob("run.yaml"))


def manifest(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "run.yaml").read_text())
