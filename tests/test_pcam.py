"""PCam: the fixture is in the official format, our fast reader agrees with h5py and torchvision, errors are clear."""

import gzip
import hashlib
import importlib.util
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.datasets import PCAM
from torchvision.transforms import ToTensor

from ganlab.data.pcam import PCamDataModule, PCamDataset, split_files
from ganlab.data.pcam_fixture import SPLIT_FILES, file_names, make_split, write_pcam_fixture
from ganlab.errors import GanlabError

N = 24
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    """The same samples (seed 3) written contiguously (flat layout) and chunked (torchvision's pcam/ layout)."""
    base = tmp_path_factory.mktemp("pcam")
    write_pcam_fixture(base / "contiguous", N, seed=3, storage="contiguous")
    write_pcam_fixture(base / "chunked" / "pcam", N, seed=3, storage="chunked")
    return {"contiguous": base / "contiguous", "chunked": base / "chunked"}


def _raw(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_name, y_name = file_names(split)
    with h5py.File(directory / x_name, "r") as fx, h5py.File(directory / y_name, "r") as fy:
        return fx["x"][:], fy["y"][:]


def test_fixture_files_have_the_official_format(fixtures):
    for split, official in (("train", "train"), ("val", "valid"), ("test", "test")):
        x_name, y_name = file_names(split)
        assert (x_name, y_name) == (f"camelyonpatch_level_2_split_{official}_x.h5",
                                    f"camelyonpatch_level_2_split_{official}_y.h5")
        x, y = _raw(fixtures["contiguous"], split)
        assert x.shape == (N, 96, 96, 3) and x.dtype == np.uint8
        assert y.shape == (N, 1, 1, 1) and y.dtype == np.uint8 and y.sum() == N // 2  # balanced
        x_chunked, y_chunked = _raw(fixtures["chunked"] / "pcam", split)
        assert np.array_equal(x, x_chunked) and np.array_equal(y, y_chunked)
    with h5py.File(fixtures["chunked"] / "pcam" / file_names("train")[0], "r") as f:
        assert f["x"].chunks == (1, 96, 96, 3) and f["x"].compression == "gzip"
    assert not np.array_equal(_raw(fixtures["contiguous"], "train")[0], _raw(fixtures["contiguous"], "val")[0])


def test_both_storages_read_identically_and_contiguous_is_memory_mapped(fixtures):
    contiguous = PCamDataset(*split_files(fixtures["contiguous"], "train"))
    chunked = PCamDataset(*split_files(fixtures["chunked"], "train"))  # finds the pcam/ layout
    x, y = _raw(fixtures["contiguous"], "train")
    for ds in (contiguous, chunked):
        assert torch.equal(ds.read_uint8(range(N)), torch.from_numpy(x))
        assert torch.equal(ds.labels, torch.from_numpy(y.reshape(-1).astype(np.int64)))
    assert contiguous.uses_memmap and isinstance(contiguous.images(), np.memmap)
    assert not chunked.uses_memmap and isinstance(chunked.images(), h5py.Dataset)
    # A pickled copy (what a spawned worker gets) carries no open handle and reopens on first use.
    copy = pickle.loads(pickle.dumps(contiguous))
    assert copy._images is None and torch.equal(copy[5]["image"], contiguous[5]["image"])


@pytest.mark.parametrize("storage", ["contiguous", "chunked"])
def test_torchvision_pcam_reads_our_files_and_agrees(fixtures, tmp_path, storage):
    root = fixtures["chunked"]
    if storage == "contiguous":  # torchvision only knows <root>/pcam/
        root = tmp_path
        shutil.copytree(fixtures["contiguous"], tmp_path / "pcam")
    datamodule = PCamDataModule(root=str(root))
    for split in SPLIT_FILES:
        reference = PCAM(str(root), split=split, transform=ToTensor())
        ours = datamodule.datasets[split]
        assert len(reference) == len(ours) == N
        for i in (0, 7, N - 1):
            image, label = reference[i]
            item = ours[i]
            assert item["label"].dtype == torch.int64 and int(item["label"]) == label
            assert item["image"].shape == (3, 96, 96)
            torch.testing.assert_close(item["image"], image * 2 - 1, atol=1e-6, rtol=0)


def test_batched_reads_equal_item_reads_in_any_order(fixtures):
    for directory in fixtures.values():
        ds = PCamDataset(*split_files(directory, "val"))
        x = torch.from_numpy(_raw(fixtures["contiguous"], "val")[0])
        for indices in ([5, 2, 2, 17, 0, -1], list(reversed(range(N))), torch.randperm(N).tolist()):
            batch = ds.__getitems__(indices)
            assert torch.equal(ds.read_uint8(indices), x[indices])
            for item, i in zip(batch, indices):
                single = ds[i]
                assert torch.equal(item["image"], single["image"]) and torch.equal(item["label"], single["label"])
                assert torch.equal(item["image"], x[i].permute(2, 0, 1).float() / 127.5 - 1)


def test_dataloader_batches_in_a_forked_worker(fixtures):
    ds = PCamDataset(*split_files(fixtures["chunked"], "train"))
    ds[0]  # the parent opens the file first; the worker must open its own
    expected = torch.stack([ds[i]["image"] for i in range(8)])
    batches = list(DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context="fork"))
    assert len(batches) == N // 8 and torch.equal(batches[0]["image"], expected)
    assert batches[0]["label"].dtype == torch.int64 and batches[0]["label"].shape == (8,)


def test_downsampling_for_gans(fixtures):
    datamodule = PCamDataModule(root=str(fixtures["contiguous"]), image_size=32, batch_size=4)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    full = torch.from_numpy(_raw(fixtures["contiguous"], "val")[0][:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    expected = F.interpolate(full, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].min() >= -1 and batch["image"].max() <= 1
    torch.testing.assert_close(batch["image"], expected.clamp(-1, 1))


@pytest.mark.parametrize("image_size", [96, 32])
def test_uint8_batches_decoded_after_the_transfer_equal_the_float_path(fixtures, image_size):
    float_path = PCamDataModule(root=str(fixtures["chunked"]), image_size=image_size, batch_size=5,
                                decode_on_device=False)
    uint8_path = PCamDataModule(root=str(fixtures["chunked"]), image_size=image_size, batch_size=5,
                                decode_on_device=True, num_workers=2)
    for dm in (float_path, uint8_path):
        dm.setup("fit")
    expected = next(iter(float_path.val_dataloader()))
    carried = next(iter(uint8_path.val_dataloader()))  # through 2 worker processes
    assert carried["image"].dtype == torch.uint8 and carried["image"].shape == (5, 96, 96, 3)  # as stored
    decoded = uint8_path.on_after_batch_transfer(carried, 0)
    assert decoded["image"].shape == (5, 3, image_size, image_size)
    assert torch.equal(decoded["image"], expected["image"]) and torch.equal(decoded["label"], expected["label"])
    assert uint8_path.datasets["val"][0]["image"].dtype == torch.float32  # explain & co. still get floats
    with pytest.raises(GanlabError, match="data.decode_on_device='gpu'"):
        PCamDataModule(root=str(fixtures["chunked"]), decode_on_device="gpu")


def test_auto_workers_only_for_files_that_need_inflating(fixtures, monkeypatch):
    # With a GPU, `auto` means workers; memory-mapped (contiguous) files are read faster in the main process.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loaders = {}
    for storage in ("contiguous", "chunked"):
        dm = PCamDataModule(root=str(fixtures[storage]), num_workers="auto", pin_memory="auto")
        dm.setup("fit")
        loaders[storage] = dm.train_dataloader()
    assert loaders["contiguous"].num_workers == 0 and loaders["contiguous"].pin_memory
    assert loaders["chunked"].num_workers >= 1 and loaders["chunked"].persistent_workers
    dm = PCamDataModule(root=str(fixtures["contiguous"]), num_workers=2)  # an explicit count is kept
    dm.setup("fit")
    assert dm.train_dataloader().num_workers == 2


def test_default_root_generates_once_atomically(tmp_path):
    datamodule = PCamDataModule(cache_dir=str(tmp_path), fixture_size=8, fixture_seed=1, batch_size=4)
    datamodule.setup("fit")
    root = tmp_path / "pcam_fixture_n8_seed1_contiguous"
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp dir left behind
    stamp = (root / file_names("train")[0]).stat().st_mtime_ns
    again = PCamDataModule(cache_dir=str(tmp_path), fixture_size=8, fixture_seed=1)
    again.setup("fit")
    assert (root / file_names("train")[0]).stat().st_mtime_ns == stamp
    assert sorted(datamodule.datasets) == ["test", "train", "val"]
    val = torch.stack([datamodule.datasets["val"][i]["image"] for i in range(8)])  # the valid file, not train
    assert torch.equal(val, torch.from_numpy(_raw(root, "val")[0]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert len(list(datamodule.train_dataloader())) == 2 and len(list(datamodule.test_dataloader())) == 2


def _broken(tmp_path: Path, fixtures, split: str = "train", x=None, y=None, x_key="x", y_key="y") -> Path:
    """A copy of the contiguous fixture with one split's x and/or y file rewritten."""
    root = tmp_path / "broken"
    shutil.copytree(fixtures["contiguous"], root)
    x_name, y_name = file_names(split)
    for name, key, data in ((x_name, x_key, x), (y_name, y_key, y)):
        if data is not None:
            with h5py.File(root / name, "w") as f:
                f.create_dataset(key, data=data)
    return root


def _error(root: Path) -> str:
    with pytest.raises(GanlabError) as info:
        PCamDataModule(root=str(root))
    return str(info.value)


def test_missing_root_or_file_names_expected_files_and_layouts(tmp_path, fixtures):
    message = _error(tmp_path / "nowhere")
    assert "no such directory" in message and "camelyonpatch_level_2_split_valid_y.h5" in message
    assert "/pcam/" in message
    root = _broken(tmp_path, fixtures)
    (root / file_names("test")[1]).unlink()
    message = _error(root)
    assert "missing camelyonpatch_level_2_split_test_y.h5" in message and "/pcam/" in message


def test_wrong_key_dtype_shape_and_length_are_refused(tmp_path, fixtures):
    x, y = _raw(fixtures["contiguous"], "train")
    cases = [
        ({"x": x, "x_key": "images"}, "no dataset 'x'"),
        ({"y": y, "y_key": "labels"}, "no dataset 'y'"),
        ({"x": x.astype(np.float32)}, "dtype float32"),
        ({"x": x[:, :64, :64]}, "(N, 96, 96, 3) uint8"),
        ({"y": y.reshape(-1)}, "(N, 1, 1, 1) integer"),
        ({"x": x[:-2]}, f"has {N - 2} images but"),
        ({"y": y + 1}, "labels must lie in 0..1"),
    ]
    for i, (kwargs, expected) in enumerate(cases):
        case_dir = tmp_path / str(i)
        case_dir.mkdir()
        message = _error(_broken(case_dir, fixtures, **kwargs))
        assert expected in message and "camelyonpatch_level_2_split_train_" in message, (expected, message)


def test_truncated_or_corrupt_files_are_named(tmp_path, fixtures):
    root = _broken(tmp_path, fixtures)
    x_file = root / file_names("val")[0]
    x_file.write_bytes(x_file.read_bytes()[: x_file.stat().st_size // 2])
    message = _error(root)
    assert str(x_file) in message and "truncated" in message
    x_file.write_bytes(b"not an hdf5 file" * 100)
    assert str(x_file) in _error(root)


def test_label_rule_lives_in_the_centre():
    """Positives have dark, enlarged nuclei in the centre 32x32; the border carries no label signal."""
    images, labels = make_split(200, seed=11)
    dark = images.astype(np.float32).mean(-1) < 90
    centre = dark[:, 32:64, 32:64].mean((1, 2))
    border_mask = np.ones((96, 96), dtype=bool)
    border_mask[24:72, 24:72] = False
    border = dark[:, border_mask].mean(1)
    assert labels.sum() == 100
    assert centre[labels == 1].min() > centre[labels == 0].max()  # one threshold on the centre separates them
    best_border_acc = max(((border > t) == labels).mean() for t in np.unique(border))
    assert best_border_acc < 0.65 and (border[labels == 0] > 0.005).sum() > 20  # negatives have nuclei outside


def test_prepare_script_decompresses_and_verifies_md5(tmp_path, fixtures):
    spec = importlib.util.spec_from_file_location("prepare_pcam", ROOT / "scripts" / "prepare_pcam.py")
    prepare_pcam = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_pcam)
    assert prepare_pcam.OFFICIAL_MD5["camelyonpatch_level_2_split_valid_x.h5.gz"] == PCAM._FILES["val"]["images"][2]
    name = file_names("val")[1]
    original = (fixtures["contiguous"] / name).read_bytes()
    (tmp_path / f"{name}.gz").write_bytes(gzip.compress(original))
    with pytest.raises(ValueError, match="MD5"):
        prepare_pcam.prepare(tmp_path, {f"{name}.gz": "0" * 32})
    assert not (tmp_path / name).exists() and not list(tmp_path.glob("*.partial"))
    md5 = hashlib.md5((tmp_path / f"{name}.gz").read_bytes()).hexdigest()
    assert prepare_pcam.prepare(tmp_path, {f"{name}.gz": md5}) == [tmp_path / name]
    assert (tmp_path / name).read_bytes() == original


def test_pcam_declares_the_centre_box_that_decides_its_label() -> None:
    from ganlab.data.loaders import LabelRegion
    from ganlab.data.mnist import MNISTDataModule
    from ganlab.data.pcam import PCamDataModule

    assert isinstance(PCamDataModule, LabelRegion) and not isinstance(MNISTDataModule, LabelRegion)
    assert PCamDataModule.label_region(96) == (32, 32, 32, 32)
    assert PCamDataModule.label_region(64) == (21, 21, 21, 21)  # 32 * 64 / 96 = 21.3 -> 21, centred
