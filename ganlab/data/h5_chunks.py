"""Read rows of a chunked, gzip-compressed HDF5 dataset chunk by chunk, bypassing h5py's selection machinery.

Why: PCam's chunked files cost one inflate per image, and h5py adds a selection and a dataspace per read on
top (benchmarks/data_pipeline.md). Here each needed chunk's compressed bytes are fetched with
`read_direct_chunk` (one HDF5 call each, in the calling thread: h5py serialises its calls anyway) and
inflated with `zlib`, which releases the GIL, so a small thread pool inflates groups of chunks at once; the
pixels are exactly what `dset[i]` returns. Used only when a chunk holds whole
rows (chunk shape (k, *row_shape)) and the only filter is deflate; otherwise the caller slices as before.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import torch

MIN_CHUNKS_PER_THREAD = 16  # below this a thread hand-off costs more than it saves


def inflate_threads() -> int:
    """torch's intra-op threads in the main process; in a DataLoader worker (where torch uses 1) the cores
    divided among the workers, so that num_workers x threads never exceeds the machine."""
    info = torch.utils.data.get_worker_info()
    return torch.get_num_threads() if info is None else max(1, (os.cpu_count() or 1) // info.num_workers)


def whole_row_chunks(dset: h5py.Dataset) -> int | None:
    """Rows per chunk if `dset` can be read with `read_chunks` (whole-row chunks, deflate or no filter)."""
    if dset.chunks is None or tuple(dset.chunks[1:]) != tuple(dset.shape[1:]):
        return None
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    return int(dset.chunks[0]) if filters in ([], [h5py.h5z.FILTER_DEFLATE]) else None


class ChunkReader:
    """Reads rows of one whole-row-chunked dataset, inflating with `inflate_threads()` threads."""

    def __init__(self, dset: h5py.Dataset) -> None:
        rows = whole_row_chunks(dset)
        if rows is None:
            raise ValueError(f"{dset.name}: chunks {dset.chunks} are not whole rows with deflate only")
        self.dset, self.rows = dset, rows
        self.row_shape, self.dtype = tuple(dset.shape[1:]), dset.dtype
        self.deflate = dset.id.get_create_plist().get_nfilters() == 1
        self._pool: ThreadPoolExecutor | None = None
        self._pool_key: tuple[int, int] | None = None  # (pid, threads) the pool was made for

    def _inflate(self, stored: list[tuple[int, bytes]]) -> list[np.ndarray]:
        # filter mask bit 0 set: deflate was skipped for that chunk, its bytes are raw
        return [np.frombuffer(zlib.decompress(raw) if self.deflate and not mask & 1 else raw,
                              dtype=self.dtype).reshape(-1, *self.row_shape) for mask, raw in stored]

    def _chunks(self, starts: list[int]) -> list[np.ndarray]:
        zeros = (0,) * len(self.row_shape)
        stored = [self.dset.id.read_direct_chunk((start, *zeros)) for start in starts]
        threads = min(inflate_threads(), len(starts) // MIN_CHUNKS_PER_THREAD)
        if threads <= 1:
            return self._inflate(stored)
        if self._pool_key != (os.getpid(), threads):  # new process (forked worker) or another thread count
            self._pool, self._pool_key = ThreadPoolExecutor(threads), (os.getpid(), threads)
        groups = [stored[i::threads] for i in range(threads)]  # strided: equal sizes, order restored below
        inflated = list(self._pool.map(self._inflate, groups))
        return [inflated[i % threads][i // threads] for i in range(len(stored))]

    def read(self, sorted_unique: np.ndarray) -> np.ndarray:
        """Rows at `sorted_unique` (increasing, no duplicates), in that order."""
        out = np.empty((len(sorted_unique), *self.row_shape), dtype=self.dtype)
        chunk_ids = sorted_unique // self.rows
        bounds = np.flatnonzero(np.diff(chunk_ids, prepend=-1) != 0)
        starts = [int(chunk_ids[b]) * self.rows for b in bounds]
        for b, stop, first, chunk in zip(bounds, [*bounds[1:], len(sorted_unique)], starts, self._chunks(starts)):
            out[b:stop] = chunk[sorted_unique[b:stop] - first]
        return out

    def __getstate__(self) -> dict:
        raise TypeError("ChunkReader holds an open HDF5 dataset; open one per process instead")
