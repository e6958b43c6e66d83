"""A Hydra callback that gives every job its own run dir, even when two start in the same second.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from ganlab.errors import GanlabError
from ganlab.runs import check_run_name, new_output_dir


def _is_rank_zero() -> bool:
    """Ranks > 0 of a DDP job (Lightning's launcher sets LOCAL_RANK, srun SLURM_PROCID) join rank 0's dir."""
    return all(int(os.environ.get(var, "0") or 0) == 0 for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _claim(cfg: DictConfig, key: str) -> None:
    if not _is_rank_zero():
        return
    node, leaf = key.split(".")
    try:
        if "name" in cfg:
            check_run_name(cfg.name)
        wanted = Path(str(cfg.hydra[node][leaf]))
        claimed = new_output_dir(wanted.parent, wanted.name)
    except GanlabError as err:
        sys.exit(f"ganlab {cfg.get('task_name', 'train')}: error: {err}")
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra[node][leaf] = str(claimed)


class UniqueRunDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _claim(config, "run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _claim(config, "sweep.dir")
