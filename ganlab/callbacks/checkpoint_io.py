"""Atomic checkpoint writes: a crash or a full disk mid-save never leaves a truncated `last.ckpt`.

Lightning's `TorchCheckpointIO` writes through fsspec, whose local "transaction" needs no fsync and whose
behaviour has changed between versions. This plugin owns the sequence: serialise to a temp file in the
target's directory, flush and fsync it, then `os.replace` it over the target (atomic on POSIX), so a reader
sees either the previous complete file or the new complete file. It is a Lightning CheckpointIO plugin
(trainer.plugins), so every save goes through it: ModelCheckpoint's periodic saves, the signal checkpoint
and `train`'s final save.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ganlab.errors import os_error


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are temp file + fsync + `os.replace` (local paths only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: fsspec's own transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        try:
            _save_atomic(checkpoint, target)
        except OSError as err:  # disk full, read-only: one line naming the checkpoint (not the temp file)
            refused = os_error(err, target, "cannot write the checkpoint")
            if refused is None:
                raise
            raise refused from err


def _save_atomic(checkpoint: dict[str, Any], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
