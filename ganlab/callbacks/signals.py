"""SIGTERM/SIGINT stop training cleanly: a checkpoint is written at the next batch end, then the run ends.

Lightning handles signals itself only on SLURM with auto-requeue; on a plain machine SIGTERM (a scheduler's
"time is up", `kill`, `docker stop`) or Ctrl-C would otherwise lose everything since the last periodic
checkpoint. The handler only records the signal (doing I/O inside a handler is unsafe); `on_train_batch_end`
then saves `path` and sets `trainer.should_stop`, so the checkpoint holds a whole iteration (D and G
stepped). A second signal of the same kind restores the previous handler and re-delivers it: a hard stop.
Under DDP the ranks agree on stopping every `sync_every_n_batches` batches (one tiny all-reduce); a single
process checks a Python flag every batch, with no device sync.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ganlab.errors import GanlabError

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalCheckpoint(pl.Callback):
    """On SIGTERM/SIGINT: save `path` at the next batch end and stop. `stopped_by` names the signal after."""

    def __init__(self, path: str, sync_every_n_batches: int = 10) -> None:
        if sync_every_n_batches < 1:
            raise GanlabError(f"SignalCheckpoint: sync_every_n_batches must be >= 1, got {sync_every_n_batches}")
        self.path = Path(path)
        self.sync_every_n_batches = sync_every_n_batches
        self.received: int | None = None
        self.stopped_by: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signum:  # second time: the user means it
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its own SIGTERM handler (it raises SIGTERMException at batch end
        # without saving); ours replaces it for the run and is undone in teardown.
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            if (batch_idx + 1) % self.sync_every_n_batches:
                return
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or trainer.should_stop:
            return
        self.stopped_by = signal.Signals(self.received).name if self.received else "a signal on another rank"
        trainer.save_checkpoint(self.path)
        trainer.should_stop = True
        rank_zero_info(f"ganlab train: {self.stopped_by} received; saved {self.path} at step "
                       f"{trainer.global_step}, stopping")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()
