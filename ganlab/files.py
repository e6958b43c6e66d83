"""Writing outputs so that a failure leaves nothing half-done.

Each file is written under a hidden temporary name next to its target and renamed over it at the end
(`os.replace`, atomic on POSIX), so a reader sees the whole file or none; a command that writes several
files into a new output dir removes that dir whole when it fails (`removed_on_failure`). A file-system
refusal (read-only, disk full, permission denied) becomes a GanlabError naming the file that was meant.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ganlab.errors import os_error


def temp_name(path: Path) -> Path:
    """`.<name>.<random>.tmp` next to `path`: hidden and unique (a writer that picks the format by the
    extension must be told it: `savefig(tmp, format=...)`)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write; on success it is renamed to `path`, on any failure removed."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        user_error = os_error(err, path, "cannot write")
        if user_error is None:
            raise
        raise user_error from err
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


@contextmanager
def removed_on_failure(out_dir: Path) -> Iterator[Path]:
    """The body fills the new dir `out_dir`; if it raises (or is interrupted), the dir goes, whole."""
    try:
        yield out_dir
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts -> a CSV with the union of their keys as columns, in first-seen order; floats with 6
    significant digits, missing cells empty."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    write_bytes_atomic(path, text.getvalue().encode())
