"""A Hydra callback that gives every job its own run dir, even when two start in the same second.

Hydra names the run dir after a timestamp and creates it with `exist_ok=True`, so two jobs started in
the same second (a job array, a loop of `ganlab train &`) would share it and overwrite each other's
config, manifest and checkpoints. Before Hydra makes the dir, this callback claims it with an atomic
`mkdir` (fails if it exists) and, if it was taken, moves on to `<dir>_1`, `<dir>_2`, ... It also does
this for a sweep's `multirun_<timestamp>` dir, and for a dir given explicitly (`hydra.run.dir=out/x` twice
gives out/x and out/x_1: earlier outputs are never overwritten). Ranks > 0 of a DDP job, which Lightning
starts with `hydra.run.dir=<rank 0's dir>`, use the dir as given.

It runs before anything is written, so it also refuses a `name=` that is not one plain folder name, and
turns a dir that cannot be made (read-only outputs/, a full disk, a file in the way) into the verb's one-line
error. Hydra turns an exception raised in a callback into a warning and goes on, so these end the process
here (SystemExit passes through Hydra).
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
