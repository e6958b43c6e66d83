"""Run directories: find them (`latest`, `latest:<name>`, a dir, a .ckpt), describe them, load them safely.

A run dir holds `config.yaml` (the resolved config), `run.yaml` (manifest: status, checkpoints, metrics)
and `checkpoints/`. Everything `sample` needs is in there. Loading never executes code chosen by the file:
YAML is read with OmegaConf's safe loader, every `_target_` is resolved and checked against an allowlist of
what it *is* before Hydra instantiates anything (ganlab/safe_config.py), and checkpoints are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ganlab.errors import GanlabError, first_line, os_error, warn
from ganlab.files import atomic_path
from ganlab.safe_config import check_run_config

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "run.yaml"
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class RunRef:
    """A run dir and the checkpoint in it that a verb should use."""

    run_dir: Path
    checkpoint: Path


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def new_output_dir(parent: Path, name: str | None = None) -> Path:
    """Create a fresh dir under `parent`; never reuse one, so earlier outputs are never overwritten."""
    base = name or timestamp()
    for suffix in range(1000):
        candidate = parent / (base if suffix == 0 else f"{base}_{suffix}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
        except OSError as err:  # read-only, full, not ours, or a file where a folder should be
            user_error = os_error(err, candidate, "cannot create the output dir")
            if user_error is None:
                raise
            raise user_error from err
    raise GanlabError(f"{parent}: could not create a new output dir named {base}*")


def check_run_name(name: Any) -> None:
    """`name=` is one folder under `<log_dir>/train/`, where `latest:<name>` and `resume=auto` look: a name
    with a path separator or `..` would put the run elsewhere (`../../x` outside outputs/, `a/b` one level
    too deep, so resume=auto would never find it and start from step 0 every time)."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.path.isabs(text):
        raise GanlabError(f"name={name}: expected a plain folder name (no '/', '..' or absolute path); a run goes "
                          "to <log_dir>/train/<name>/<timestamp>/, where latest:<name> and resume=auto find it")


def write_yaml_atomic(path: Path, data: dict[str, Any] | DictConfig) -> None:
    """Write through a temp file + rename, so a crash or a full disk never leaves a half-written file behind."""
    text = OmegaConf.to_yaml(data if isinstance(data, DictConfig) else OmegaConf.create(data))
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def resolve_device(name: str) -> torch.device:
    """`device=` of sample/explain: cpu, cuda[:i], or auto (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GanlabError(f"device={name}: CUDA is not available on this machine; use device=cpu")
    return torch.device(name)


def update_manifest(run_dir: Path, **fields: Any) -> dict[str, Any]:
    path = run_dir / MANIFEST_FILE
    manifest = read_manifest(run_dir) if path.exists() else {}
    manifest.update(fields)
    write_yaml_atomic(path, manifest)
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST_FILE
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except FileNotFoundError:
        raise GanlabError(f"{path}: not found; expected the run manifest written by `ganlab train`") from None
    except Exception as err:  # yaml/omegaconf raise many types for a damaged file
        raise GanlabError(f"{path}: not a valid run manifest ({err})") from None
    if not isinstance(data, dict):
        raise GanlabError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / MANIFEST_FILE).is_file()


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / CHECKPOINT_DIR).glob("*.ckpt"))


def _unusable(run_dir: Path) -> str | None:
    """Why `latest`/`resume=auto` cannot use a dir holding a run.yaml, or None when it can."""
    if not (run_dir / CONFIG_FILE).is_file():
        return f"no {CONFIG_FILE}"
    if not _has_checkpoint(run_dir):
        return f"no checkpoint in {CHECKPOINT_DIR}/"
    return None


def _newest_run(train_dir: Path, name: str | None) -> tuple[Path | None, list[str]]:
    """Among the run dirs below `<log_dir>/train/<name>/` (single runs and multirun jobs alike) that hold
    config.yaml and a checkpoint, the one (of `name`, if given) whose run.yaml was written last; and a note
    for each newer dir with a run.yaml that was passed over, saying why."""
    found = {p.parent for pattern in ("*/*/", "*/*/*/") for p in train_dir.glob(pattern + MANIFEST_FILE)}
    found = {r for r in found if not any(part.startswith(".") for part in r.relative_to(train_dir).parts)}
    if name is not None:
        found = {r for r in found if r.relative_to(train_dir).parts[0] == name}
    passed_over = []
    for run in sorted(found, key=lambda r: ((r / MANIFEST_FILE).stat().st_mtime, str(r)), reverse=True):
        why = _unusable(run)
        if why is None:
            return run, passed_over
        passed_over.append(f"{run} ({why})")
    return None, passed_over


def _passed_over(notes: list[str]) -> str:
    shown = ", ".join(notes[:3]) + (f" and {len(notes) - 3} more" if len(notes) > 3 else "")
    return f"passed over newer {shown}"


def _latest_run(log_dir: Path, name: str | None) -> Path:
    """The most recently updated run that has a checkpoint (a run that failed before saving is skipped, with
    a warning naming it)."""
    train_dir = log_dir / "train"
    spec = f"run=latest{':' + name if name else ''}"
    run, passed_over = _newest_run(train_dir, name)
    if run is None:
        where = train_dir / name if name else train_dir
        raise GanlabError(f"{spec}: no runs with a checkpoint under {where} (expected <name>/<timestamp>/run.yaml "
                          "and checkpoints/*.ckpt from `ganlab train`)"
                          + (f"; {_passed_over(passed_over)}" if passed_over else ""))
    if passed_over:
        warn(f"{spec}: {_passed_over(passed_over)}; using {run}")
    return run


def resumable_checkpoint(log_dir: str | os.PathLike, name: str) -> Path | None:
    """`resume=auto`: the checkpoint of the newest run named `name`, or None when there is none to continue.

    "Newest" is the run under `<log_dir>/train/<name>/` (single runs and multirun jobs) whose run.yaml was
    written last, among runs that hold a checkpoint; its checkpoint is the one `_checkpoint_of` picks
    (the manifest's last_checkpoint, else checkpoints/last.ckpt). A run killed before its first checkpoint
    is skipped, so the chain falls back to the run before it.
    """
    run, passed_over = _newest_run(Path(log_dir).resolve() / "train", name)
    if run is None:
        return None
    checkpoint = _checkpoint_of(run)
    if passed_over:
        warn(f"resume=auto: {_passed_over(passed_over)}; continuing {checkpoint}")
    return checkpoint


def _checkpoint_of(run_dir: Path) -> Path:
    """The run's last checkpoint: the manifest's record, else checkpoints/last.ckpt, else the newest .ckpt."""
    manifest = read_manifest(run_dir)
    recorded = manifest.get("last_checkpoint")
    # Only a checkpoint inside the run dir: a manifest is a file anyone can edit, like config.yaml.
    if isinstance(recorded, str) and recorded and (run_dir / recorded).resolve().is_relative_to(run_dir.resolve()) \
            and (run_dir / recorded).is_file():
        return run_dir / recorded
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if (ckpt_dir / "last.ckpt").is_file():
        return ckpt_dir / "last.ckpt"
    found = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise GanlabError(f"{run_dir}: no checkpoint in {ckpt_dir} (expected last.ckpt); "
                          f"the run's status is {manifest.get('status', 'unknown')!r}")
    return found[-1]


def resolve_run(spec: str | os.PathLike, log_dir: str | os.PathLike) -> RunRef:
    """`latest`, `latest:<name>`, a run dir, or a `.ckpt` inside a run dir -> RunRef."""
    spec = str(spec)
    if spec == "latest" or spec.startswith("latest:"):
        run_dir = _latest_run(Path(log_dir).resolve(), spec.partition(":")[2] or None)
        return RunRef(run_dir, _checkpoint_of(run_dir))
    path = Path(spec).expanduser().resolve()
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
        if not _is_run_dir(run_dir):
            raise GanlabError(f"{path}: expected a checkpoint inside a ganlab run dir "
                              f"(<run>/{CHECKPOINT_DIR}/*.ckpt next to <run>/{CONFIG_FILE})")
        return RunRef(run_dir, path)
    if path.is_dir():
        if not _is_run_dir(path):
            raise GanlabError(f"{path}: not a ganlab run dir (expected {CONFIG_FILE} and {MANIFEST_FILE})")
        return RunRef(path, _checkpoint_of(path))
    raise GanlabError(f"run={spec}: no such run dir or checkpoint file "
                      "(give a run dir, a .ckpt, latest or latest:<name>)")


def load_run_config(run_dir: Path, vouched: Mapping[str, str] | None = None) -> DictConfig:
    """The run's config.yaml, checked whole before anything in it is built (see `check_run_config`)."""
    path = run_dir / CONFIG_FILE
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise GanlabError(f"{path}: not found; expected the resolved config written by `ganlab train`") from None
    except Exception as err:
        raise GanlabError(f"{path}: not a valid config ({err})") from None
    if not isinstance(cfg, DictConfig) or "model" not in cfg:
        raise GanlabError(f"{path}: expected a ganlab run config with a `model` section")
    check_run_config(cfg, str(path), vouched=vouched)
    return cfg


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a Lightning checkpoint with weights_only=True; a damaged file becomes one clear message."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GanlabError(f"{path}: checkpoint not found") from None
    except Exception as err:
        raise GanlabError(f"{path}: not a readable checkpoint ({first_line(err)}); expected a .ckpt written by "
                          "ganlab/Lightning (it may be truncated or from an untrusted source)") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise GanlabError(f"{path}: expected a Lightning checkpoint with a 'state_dict' entry")
    return ckpt


def load_model(ref: RunRef, device: str | torch.device = "cpu") -> tuple[Any, DictConfig]:
    """Rebuild the run's LightningModule from config.yaml and load the checkpoint's weights (eval mode)."""
    from hydra.utils import instantiate  # deferred: hydra import is slow and only needed here

    cfg = load_run_config(ref.run_dir)
    ckpt = load_checkpoint(ref.checkpoint)
    try:
        model = instantiate(cfg.model)
    except Exception as err:
        raise GanlabError(f"{ref.run_dir / CONFIG_FILE}: cannot rebuild the model ({err})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise GanlabError(f"{ref.checkpoint}: weights do not fit the model in {ref.run_dir / CONFIG_FILE} "
                          f"({' '.join(first[:2])[:300]})") from None
    return model.to(device).eval(), cfg
