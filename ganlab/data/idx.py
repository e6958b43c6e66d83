"""Reader for the IDX files MNIST ships as (`*-ubyte`, optionally `.gz`).

Hand-written because torchvision's reader only opens uncompressed files and fails on a damaged one with a
bare numpy/struct error; ours names the file and what its header should have said.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ganlab.errors import GanlabError

_UBYTE = 0x08


def read_idx(path: Path, expected_ndim: int) -> torch.Tensor:
    """uint8 tensor from an IDX file; `expected_ndim` is 3 for images, 1 for labels."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise GanlabError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise GanlabError(f"{path}: not an IDX file (expected magic bytes 00 00 08 {expected_ndim:02x})")
    dtype, ndim = data[2], data[3]
    if dtype != _UBYTE or ndim != expected_ndim:
        raise GanlabError(f"{path}: IDX header says dtype 0x{dtype:02x} with {ndim} dims; "
                          f"expected unsigned bytes (0x08) with {expected_ndim} dims")
    header_len = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(data) != header_len + count:
        raise GanlabError(f"{path}: truncated or padded: header promises shape {shape} "
                          f"({header_len + count} bytes), file has {len(data)} bytes")
    array = np.frombuffer(data, dtype=np.uint8, count=count, offset=header_len).reshape(shape)
    return torch.from_numpy(array.copy())


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 data as a gzip IDX file (used to lay out the embedded MNIST like the real one)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
