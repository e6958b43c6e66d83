"""The direct-chunk PCam reader returns exactly h5py's pixels; scripts/bench_data.py records a failing section and
goes on, and counts NIfTI decodes."""

import importlib.util
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ganlab.data.h5_chunks import ChunkReader, whole_row_chunks
from ganlab.data.nifti import read_volume
from ganlab.data.pcam import PCamDataset

ROOT = Path(__file__).parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_data", ROOT / "scripts" / "bench_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(tmp: Path, images: np.ndarray, **storage) -> PCamDataset:
    name = "_".join(f"{k}{v}" for k, v in storage.items()).replace(" ", "").replace(",", "-")
    x_path, y_path = tmp / f"x_{name}.h5", tmp / f"y_{name}.h5"
    with h5py.File(x_path, "w") as f:
        f.create_dataset("x", data=images, **storage)
    with h5py.File(y_path, "w") as f:
        f.create_dataset("y", data=(np.arange(len(images)) % 2).astype(np.uint8).reshape(-1, 1, 1, 1))
    return PCamDataset(x_path, y_path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (70, 96, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize("rows_per_chunk", [1, 6])
@pytest.mark.parametrize("threads", [1, 2])
def test_direct_chunk_reads_equal_h5py(tmp_path, images, rows_per_chunk, threads):
    ds = _write(tmp_path, images, chunks=(rows_per_chunk, 96, 96, 3), compression="gzip")
    assert whole_row_chunks(ds.images()) == rows_per_chunk and isinstance(ds._chunks, ChunkReader)
    order = [69, 3, 3, 0, 40, 41, 42, 7, 66, -1, *range(8, 40)]  # unsorted, duplicates, negative, chunk edges
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = ds.read_uint8(order).numpy()
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(got, images[order])


def test_other_filters_fall_back_to_h5py_slices(tmp_path, images):
    shuffled = _write(tmp_path, images, chunks=(1, 96, 96, 3), compression="gzip", shuffle=True)
    partial = _write(tmp_path, images, chunks=(4, 48, 96, 3), compression="gzip")  # chunks are not whole images
    for ds in (shuffled, partial):
        assert whole_row_chunks(ds.images()) is None and ds._chunks is None
        np.testing.assert_array_equal(ds.read_uint8([5, 1, 64]).numpy(), images[[5, 1, 64]])


def test_workers_read_the_same_batches(tmp_path, images):
    ds = _write(tmp_path, images, chunks=(1, 96, 96, 3), compression="gzip")
    ds.images()  # an open reader in the parent must not leak into the workers
    batches = list(DataLoader(ds, batch_size=35, num_workers=2))
    got = torch.cat([b["image"] for b in batches])
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    bench = _bench()

    def broken(args, device, scratch):
        raise RuntimeError("boom")

    monkeypatch.setattr(bench, "SECTIONS", {"Broken": broken, "Fine": lambda args, device, scratch: ["| 42 |"]})
    out = tmp_path / "report.md"
    report = bench.main(["--device", "cpu", "--quick", "--out", str(out)])
    assert out.read_text() == report
    assert "python scripts/bench_data.py --device cpu --quick --out" in report
    assert f"torch {torch.__version__}" in report
    assert "## 1. Broken" in report and "**ERROR**: RuntimeError: boom" in report
    assert report.index("## 2. Fine") < report.index("| 42 |")


def test_nifti_decodes_are_counted_and_the_count_is_undone(tmp_path):
    bench = _bench()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    real = nib.load
    with bench.counting_nibabel_loads() as calls:
        read_volume(tmp_path / "v.nii.gz")
        read_volume(tmp_path / "v.nii.gz")
    assert len(calls) == 2 and nib.load is real
