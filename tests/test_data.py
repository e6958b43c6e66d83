"""MNIST in the torchvision layout (real reader), the embedded default, and the gaussian toy."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ganlab.data.gaussian import GaussianDataModule
from ganlab.data.idx import read_idx, write_idx
from ganlab.data.mnist import MNISTDataModule, materialize_embedded
from ganlab.errors import GanlabError


def _write_mnist(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> np.ndarray:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    for prefix, images in (("train", train), ("t10k", rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8))):
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", np.arange(len(images)) % 10)):
            path = raw / f"{prefix}-{kind}.gz"
            write_idx(path, array)
            if not gz:  # the uncompressed files torchvision's download leaves behind
                import gzip
                path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
                path.unlink()
    return train


@pytest.mark.parametrize("gz", [True, False])
def test_reads_torchvision_layout(tmp_path, gz):
    train = _write_mnist(tmp_path, gz=gz)
    dm = MNISTDataModule(root=str(tmp_path), batch_size=4)
    dm.setup()
    assert len(dm.datasets["train"]) == 12 and len(dm.datasets["val"]) == 5
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 28, 28) and batch["image"].dtype == torch.float32
    item = dm.datasets["train"][3]
    # uint8 -> [-1, 1] exactly: 0 -> -1, 255 -> 1.
    assert torch.allclose(item["image"][0], torch.from_numpy(train[3]).float() / 127.5 - 1)
    assert item["label"].item() == 3


def test_resize_for_power_of_two_networks(tmp_path):
    _write_mnist(tmp_path)
    dm = MNISTDataModule(root=str(tmp_path), image_size=32)
    dm.setup()
    x = dm.datasets["train"][0]["image"]
    assert x.shape == (1, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_empty_root_names_path_and_expected_files(tmp_path):
    with pytest.raises(GanlabError) as err:  # at construction, before any run dir is written
        MNISTDataModule(root=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "train-images-idx3-ubyte" in message and "MNIST/raw" in message


def test_missing_root(tmp_path):
    with pytest.raises(GanlabError, match="no such directory"):
        MNISTDataModule(root=str(tmp_path / "nope")).setup()


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path.with_suffix(".gz"), np.zeros((3, 28, 28), dtype=np.uint8))
    import gzip
    path.write_bytes(gzip.decompress(path.with_suffix(".gz").read_bytes())[:-100])
    with pytest.raises(GanlabError, match=r"train-images-idx3-ubyte: truncated"):
        read_idx(path, 3)
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(GanlabError, match="not an IDX file"):
        read_idx(path, 3)


def test_label_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(GanlabError, match="12 images but .* 7 labels"):
        MNISTDataModule(root=str(tmp_path)).setup()


def test_embedded_default_is_real_mnist_in_the_same_layout(tmp_path):
    root = materialize_embedded(tmp_path)
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    ]
    dm = MNISTDataModule(root=None, cache_dir=str(tmp_path))
    dm.setup()
    assert len(dm.datasets["train"]) == 4500 and len(dm.datasets["val"]) == 500
    for split, per_class in (("train", 450), ("val", 50)):
        assert torch.bincount(dm.datasets[split].labels, minlength=10).tolist() == [per_class] * 10
    assert not torch.equal(dm.datasets["train"].labels[:20].sort().values, dm.datasets["train"].labels[:20])
    images = dm.datasets["train"].images.float()
    # Real digits: mostly black background with a bright stroke, unlike noise.
    assert 0.1 < (images > 128).float().mean() < 0.3
    assert (images[:, :, :3, :] == 0).float().mean() > 0.95  # top rows are blank


def test_mnist_batches_are_read_whole_and_equal_per_sample_reads(tmp_path):
    dm = MNISTDataModule(root=None, cache_dir=str(tmp_path), batch_size=16)
    dm.setup()
    val = dm.datasets["val"]
    batch = next(iter(dm.val_dataloader()))  # through __getitems__, handed over as read
    assert batch["image"].shape == (16, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["image"], torch.stack([val[i]["image"] for i in range(16)]))  # bit for bit
    assert torch.equal(batch["label"], val.labels[:16]) and -1 <= batch["image"].min() <= batch["image"].max() <= 1
    direct = val.__getitems__([3, 1, 3])  # any order, duplicates allowed (as a sampler may ask)
    assert torch.equal(direct.batch["image"], torch.stack([val[i]["image"] for i in (3, 1, 3)]))
    assert direct.batch["label"].tolist() == [int(val[i]["label"]) for i in (3, 1, 3)]
    assert len(next(iter(dm.train_dataloader()))["image"]) == 16


def test_in_memory_and_drawn_batches_are_pinned_when_a_gpu_trains(tmp_path, monkeypatch):
    # A copy from pageable memory waits for the GPU: without pinning, every GPU step would sync once.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    with initialize_config_module(config_module="ganlab.configs", version_base=None):
        cfg = compose("train", overrides=["data=mnist", f"paths.data_dir={tmp_path}"])
    mnist = instantiate(cfg.data)
    mnist.setup()
    loader = mnist.train_dataloader()
    assert loader.pin_memory and loader.num_workers == 0
    toy = GaussianDataModule(mean=4.0, std=1.25, batch_size=8, batches_per_epoch=2, val_samples=16, seed=0)
    assert toy.train_dataloader().pin_memory and toy.val_dataloader().pin_memory


def test_gaussian_batches_are_seeded_and_validation_is_held_out():
    dm = GaussianDataModule(mean=4.0, std=1.25, batch_size=512, batches_per_epoch=3, val_samples=20_000, seed=7)
    first = [b["image"] for b in dm.train_dataloader()]
    second = [b["image"] for b in dm.train_dataloader()]
    assert len(first) == 3 and first[0].shape == (512, 1)
    assert not torch.equal(first[0], second[0])  # a new draw each epoch
    again = GaussianDataModule(mean=4.0, std=1.25, batch_size=512, batches_per_epoch=3, seed=7)
    assert torch.equal(next(iter(again.train_dataloader()))["image"], first[0])
    val = dm.val_set
    assert val.mean().item() == pytest.approx(4.0, abs=0.05) and val.std().item() == pytest.approx(1.25, abs=0.05)
    assert not torch.equal(val[:512], first[0])  # an independent draw, not a training batch
    resumed = GaussianDataModule(batch_size=512, batches_per_epoch=3, seed=7)
    resumed.load_state_dict(dm.state_dict())
    assert resumed.train_batches.epoch == 2


def test_train_range_gives_disjoint_slices(tmp_path):
    _write_mnist(tmp_path, n_train=10)
    first = MNISTDataModule(root=str(tmp_path), train_range=(0.0, 0.5))
    second = MNISTDataModule(root=str(tmp_path), train_range=(0.5, 1.0))
    first.setup()
    second.setup()
    a, b = first.datasets["train"].images, second.datasets["train"].images
    assert len(a) == len(b) == 5
    assert not any(torch.equal(x, y) for x in a for y in b)
    assert len(first.datasets["val"]) == len(second.datasets["val"]) == 5  # held-out split untouched
    with pytest.raises(GanlabError, match="train_range"):
        MNISTDataModule(root=str(tmp_path), train_range=(0.5, 0.5))


def test_on_the_fly_batches_differ_per_ddp_rank_and_rank0_keeps_its_stream():
    """Under DDP each rank draws its own batches; rank 0 (and a single-process run) is unchanged."""
    from ganlab.data.gaussian_mixture import GaussianMixtureDataModule, ring_centers

    def first_batch(rank: int) -> torch.Tensor:
        dm = GaussianMixtureDataModule(centers=ring_centers(), std=0.02, batch_size=8, batches_per_epoch=1, seed=3)
        dm.train_batches.rank = rank
        return next(iter(dm.train_batches))["image"]

    single = GaussianMixtureDataModule(centers=ring_centers(), std=0.02, batch_size=8, batches_per_epoch=1, seed=3)
    assert torch.equal(first_batch(0), next(iter(single.train_batches))["image"])
    assert not torch.allclose(first_batch(0), first_batch(1)) and not torch.allclose(first_batch(1), first_batch(2))
    assert torch.equal(first_batch(1), first_batch(1))
