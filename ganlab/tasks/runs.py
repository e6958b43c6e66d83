"""`ganlab runs [PATH]`: one line per run dir, to compare a sweep at a glance and pick its winner.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig

from ganlab.config_checks import check_values
from ganlab.errors import GanlabError, first_line

CONFIG_FILE, MANIFEST_FILE = "config.yaml", "run.yaml"  # as in ganlab/runs.py
HYDRA_DIR = ".hydra"  # what Hydra writes into a job's dir first: a run that stopped before run.yaml has it
FIXED = ("run", "name", "started", "status", "steps")
FORMATS = ("table", "csv", "md")
MAX_DEPTH = 6  # outputs/train/<name>/multirun_<ts>/<job>/ is 4 below outputs/
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Run:
    path: Path
    name: str | None = None
    started: str | None = None
    status: str = "broken"
    steps: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    best: bool = False


def _is_run_candidate(path: Path) -> bool:
    return any((path / marker).exists() for marker in (MANIFEST_FILE, CONFIG_FILE, HYDRA_DIR))


def find_run_dirs(root: Path) -> list[Path]:
    """Dirs at or below `root` holding a run.yaml, a config.yaml or Hydra's .hydra/; nothing inside one is
    searched (its samples/, checkpoints/), nor hidden dirs or symlinked ones."""
    if _is_run_candidate(root):
        return [root]
    found, stack = [], [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = [e for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        except OSError:  # unreadable: nothing of it can be listed
            continue
        for entry in entries:
            path = Path(entry.path)
            if _is_run_candidate(path):
                found.append(path)
            elif depth + 1 < MAX_DEPTH:
                stack.append((path, depth + 1))
    return found


def _name_from_path(path: Path) -> str | None:
    """outputs/train/<name>/... -> <name>, for a dir whose run.yaml cannot say."""
    parts = path.parts
    return parts[parts.index("train") + 1] if "train" in parts[:-1] else None


def _process_gone(manifest: dict[str, Any]) -> bool:
    pid, host = manifest.get("pid"), manifest.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: it exists
        return False
    return False


def _overrides(items: Any) -> dict[str, str]:
    """['+experiment=x', 'model.lr_g=0.0002'] -> {'experiment': 'x', 'model.lr_g': '0.0002'}."""
    out = {}
    for item in items if isinstance(items, list) else []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _numbers(section: Any, prefix: str = "") -> dict[str, float]:
    if not isinstance(section, dict):
        return {}
    return {f"{prefix}{k}": float(v) for k, v in section.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_run(path: Path) -> Run:
    """What run.yaml says about a run dir, or why it cannot say it; never raises for a damaged dir."""
    run = Run(path, name=_name_from_path(path))
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        run.note = f"no {MANIFEST_FILE} (stopped before training began)"
        return run
    try:
        manifest = yaml.load(manifest_path.read_text(errors="replace"), Loader=_Loader)
    except Exception as err:  # yaml raises many types for a damaged file; OSError for an unreadable one
        run.note = f"{MANIFEST_FILE} unreadable: {first_line(err)[:120]}"
        return run
    if not isinstance(manifest, dict):
        run.note = f"{MANIFEST_FILE} is not a mapping (half-written?)"
        return run
    name, started, steps, status = (manifest.get(k) for k in ("name", "started", "global_step", "status"))
    run.name = str(name) if name is not None else run.name
    run.started = str(started).replace("T", " ") if started is not None else None
    run.steps = steps if isinstance(steps, int) and not isinstance(steps, bool) else None
    run.status = str(status) if status is not None else "unknown"
    run.overrides = _overrides(manifest.get("overrides"))
    run.metrics = _numbers(manifest.get("metrics")) | _numbers(manifest.get("best_metrics"), "best/")
    run.sweep = manifest.get("sweep") if isinstance(manifest.get("sweep"), dict) else {}
    if run.status == "running" and _process_gone(manifest):
        run.status, run.note = "killed", f"its process {manifest['pid']} is gone"
    if not (path / CONFIG_FILE).is_file():
        run.status, run.note = "broken", f"no {CONFIG_FILE}"
    return run


def _mark_optuna_best(runs: list[Run]) -> list[str]:
    """Mark each Optuna sweep's best completed trial; a footer line per sweep saying by what."""
    footers = []
    sweeps: dict[Path, list[Run]] = {}
    for run in runs:
        if run.sweep.get("sweeper") == "optuna":
            sweeps.setdefault(run.path.parent, []).append(run)
    for folder, trials in sorted(sweeps.items()):
        metric, goal = trials[0].sweep.get("optimized_metric"), trials[0].sweep.get("direction")
        if not isinstance(metric, str) or goal not in ("maximize", "minimize"):
            continue  # multi-objective, or no objective recorded: no single best
        done = [t for t in trials if t.status == "completed" and math.isfinite(t.metrics.get(metric, math.nan))]
        if not done:
            continue
        best = (max if goal == "maximize" else min)(t.metrics[metric] for t in done)
        for trial in done:
            trial.best = trial.metrics[metric] == best
        footers.append(f"* best trial of the Optuna sweep {folder.name} ({goal} {metric})")
    return footers


def _sort_value(run: Run, key: str) -> Any:
    if key == "run":
        return str(run.path)
    if key in ("name", "started", "status", "steps"):
        return getattr(run, key)
    if key in run.metrics:
        return run.metrics[key]
    value = run.overrides.get(key)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return value


def _sort(runs: list[Run], spec: str | None, known: list[str]) -> list[Run]:
    if spec is None:  # newest first; runs with no start time (broken) last
        dated = sorted((r for r in runs if r.started), key=lambda r: (r.started, str(r.path)), reverse=True)
        return dated + sorted((r for r in runs if not r.started), key=lambda r: str(r.path))
    descending = spec.startswith("-")
    key = spec[1:] if descending else spec
    if key not in known:
        shown = ", ".join(known[:25]) + (", ..." if len(known) > 25 else "")
        raise GanlabError(f"sort={spec}: not a column of these runs; expected one of: {shown} "
                          "(a leading '-' sorts descending)")
    values = {id(r): _sort_value(r, key) for r in runs}
    present = sorted((r for r in runs if values[id(r)] is not None), key=lambda r: str(r.path))
    missing = sorted((r for r in runs if values[id(r)] is None), key=lambda r: str(r.path))
    # (is text, value): numbers and text never compared with each other; ties keep the path order.
    ordered = sorted(present, key=lambda r: (isinstance(values[id(r)], str), values[id(r)]), reverse=descending)
    return ordered + missing


def _differing(runs: list[Run]) -> list[str]:
    """Override keys whose value is not the same in every listed run that records overrides."""
    recorded = [r.overrides for r in runs if r.overrides]
    keys = sorted({k for o in recorded for k in o})
    return [k for k in keys if len({o.get(k) for o in recorded}) > 1]


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "" if fmt == "csv" else "-"
    if isinstance(value, float):
        return repr(value) if fmt == "csv" else f"{value:.4g}"
    return str(value)


def _render(runs: list[Run], root: Path, override_keys: list[str], metric_keys: list[str], fmt: str,
            footers: list[str]) -> str:
    marked = any(r.best for r in runs)
    noted = any(r.note for r in runs)
    header = [*FIXED, *override_keys, *metric_keys] + (["best"] if marked else []) + (["note"] if noted else [])
    rows = []
    for r in runs:
        relative = os.path.relpath(r.path, root)
        row = [relative, r.name, r.started, r.status, r.steps, *(r.overrides.get(k) for k in override_keys),
               *(r.metrics.get(k) for k in metric_keys)]
        if marked:
            row.append(("true" if r.best else "false") if fmt == "csv" else ("*" if r.best else ""))
        if noted:
            row.append(r.note)
        rows.append([_cell(v, fmt) for v in row])
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *rows])
        return out.getvalue().rstrip("\n")
    if fmt == "md":
        esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
        lines = [f"| {' | '.join(esc[0])} |", f"|{'|'.join(' --- ' for _ in header)}|",
                 *(f"| {' | '.join(row)} |" for row in esc[1:])]
        return "\n".join(lines + ([""] + footers if footers else []))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines + footers)


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (ListConfig, list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def runs(cfg: DictConfig) -> list[Run]:
    """Print the listing; return the listed runs in their printed order."""
    check_values(cfg, "runs")
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise GanlabError(f"format={fmt}: expected one of {', '.join(FORMATS)}")
    given = cfg.get("path")
    root = Path(str(given if given is not None else cfg.paths.log_dir)).expanduser()
    shown_root = f"path={given}" if given is not None else f"{root} (paths.log_dir)"
    if not root.exists():
        raise GanlabError(f"{shown_root}: no such folder; expected outputs/, outputs/train/<name>/, a sweep's "
                          "multirun_<timestamp>/ or a run dir (`ganlab train` makes them)")
    if not root.is_dir():
        raise GanlabError(f"{shown_root}: is a file; expected a folder of ganlab runs or a run dir")
    found = [read_run(p) for p in find_run_dirs(root)]
    if not found:
        raise GanlabError(f"{shown_root}: no ganlab run dirs under it (expected <run>/{MANIFEST_FILE} from "
                          "`ganlab train`, e.g. outputs/train/<name>/<timestamp>/)")
    if cfg.get("name") is not None:
        found = [r for r in found if r.name is not None and fnmatchcase(r.name, str(cfg.name))]
        if not found:
            raise GanlabError(f"name={cfg.name}: no runs under {root} with a matching name")
    footers = _mark_optuna_best(found)
    override_keys = _differing(found)
    all_metrics = sorted({k for r in found for k in r.metrics})
    metric_keys = _as_list(cfg.get("metrics"))
    if metric_keys is None:
        metric_keys = [k for k in all_metrics if k.startswith("val/")]  # a copy: the sort key may be added
    unknown = [k for k in metric_keys if k not in all_metrics]
    if unknown:
        shown = ", ".join(all_metrics[:25]) + (", ..." if len(all_metrics) > 25 else "")
        raise GanlabError(f"metrics={cfg.metrics}: no listed run has {', '.join(unknown)}; expected some of: "
                          f"{shown or 'none (no run recorded metrics)'}")
    # The error for an unknown sort key shows the first 25: validation metrics before the rest.
    val_metrics = [k for k in all_metrics if k.startswith("val/")]
    known = [*FIXED, *val_metrics, *sorted({k for r in found for k in r.overrides}),
             *(k for k in all_metrics if k not in val_metrics)]
    sort = None if cfg.get("sort") is None else str(cfg.sort)
    ordered = _sort(found, sort, known)
    sort_key = sort.lstrip("-") if sort else None
    if sort_key in all_metrics and sort_key not in metric_keys:
        metric_keys.append(sort_key)
    if sort_key in known and sort_key not in FIXED and sort_key not in metric_keys and sort_key not in override_keys:
        override_keys.append(sort_key)
    print(_render(ordered, root, override_keys, metric_keys, fmt, footers))
    sys.stdout.flush()
    return ordered
