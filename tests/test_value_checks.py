"""Values users type: a bad one ends as one line naming the key (or file), the value and what
is expected, exit 1, before anything runs: no run manifest, no samples, earlier outputs untouched."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from conftest import EXPERIMENTS, run_ganlab
from ganlab.config_checks import check_values
from ganlab.data.idx import write_idx
from ganlab.data.mnist import MNISTDataModule
from ganlab.data.pcam import PCamDataset, split_files
from ganlab.data.pcam_fixture import SPLIT_FILES, file_names, write_split
from ganlab.errors import GanlabError
from test_bad_input import assert_clear_error

GAUSSIAN = ["train", "+experiment=gan_gaussian", "+debug=fast", "logger=none"]


def write_mnist(root: Path, train_labels: list[int] | None = None, n_val: int = 3) -> Path:
    """Tiny MNIST in torchvision layout: zero images, labels 0, 1, 2, ... unless given."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = {"train": np.array(train_labels if train_labels is not None else np.arange(6) % 10),
              "t10k": np.arange(n_val) % 10}
    for prefix, y in labels.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", np.zeros((len(y), 28, 28), np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


def write_pcam(root: Path, n: int = 2) -> Path:
    """All six PCam files with blank patches (the reader's checks do not look at the pixels)."""
    root.mkdir(parents=True)
    for split in SPLIT_FILES:
        write_split(root, split, np.zeros((n, 96, 96, 3), np.uint8), np.arange(n) % 2)
    return root


def store_x_externally(root: Path, raw: Path, split: str = "train") -> Path:
    """Rewrite a split's `x` with HDF5 external storage in `raw` (as some converters write it); return the .h5."""
    x_file = root / file_names(split)[0]
    with h5py.File(x_file, "r") as f:
        x = f["x"][:]
    raw.write_bytes(x.tobytes())
    with h5py.File(x_file, "w") as f:
        f.create_dataset("x", shape=x.shape, dtype=np.uint8, external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    return x_file


def _mnist_labels_out_of_range(tmp_path):
    root = write_mnist(tmp_path / "mnist", train_labels=[0, 3, 12, 9])
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    return ["train", "+debug=fast", f"data.root={root}"], [str(labels), "labels must lie in 0..9, found 0..12"]


def _mnist_empty_split(tmp_path):
    root = write_mnist(tmp_path / "mnist", n_val=0)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    return ["train", "+debug=fast", f"data.root={root}"], [str(labels), "0 labels, so the val split is empty"]


def _pcam_x_in_missing_external_file(tmp_path):
    root = write_pcam(tmp_path / "pcam")
    raw = tmp_path / "train_x.raw"
    x_file = store_x_externally(root, raw)
    raw.unlink()
    return ["train", "+experiment=classifier_pcam", "+debug=fast", "logger=none", f"data.root={root}"], [
        f"{x_file}: 'x' is stored in the external file {raw}, which does not exist"]


# The values users get wrong, through the real CLI: case -> (argv, fragments of the one line); a callable builds files first.
CASES = {
    "max_steps_abc": (GAUSSIAN + ["trainer.max_steps=abc"], ["trainer.max_steps=abc: expected an integer >= -1"]),
    "batch_size_0": (GAUSSIAN + ["data.batch_size=0"], ["data.batch_size=0: expected an integer >= 1"]),
    "batch_size_negative": (GAUSSIAN + ["data.batch_size=-1"], ["data.batch_size=-1: expected an integer >= 1"]),
    "batch_size_big": (GAUSSIAN + ["data.batch_size=big"], ["data.batch_size=big: expected an integer >= 1"]),
    "lr_g_negative": (GAUSSIAN + ["model.lr_g=-1"], ["model.lr_g=-1: expected a positive finite number"]),
    "lr_g_fast": (GAUSSIAN + ["model.lr_g=fast"], ["model.lr_g=fast: expected a positive finite number"]),
    "seed_abc": (GAUSSIAN + ["seed=abc"], ["seed=abc: expected an integer in 0..4294967295"]),
    "target_unset_env": (GAUSSIAN + ["model._target_=${oc.env:GANLAB_TEST_UNSET}"],
                         ["model._target_=${oc.env:GANLAB_TEST_UNSET}",
                          "Environment variable 'GANLAB_TEST_UNSET' not found"]),
    "sample_n_lots": (["sample", "n=lots"], ["n=lots: expected an integer >= 1"]),
    "sample_device_banana": (["sample", "device=banana"], ["device=banana: expected cpu, cuda, cuda:N or auto"]),
    "explain_device_banana": (["explain", "device=banana"], ["device=banana: expected cpu, cuda, cuda:N or auto"]),
    "mnist_labels_out_of_range": _mnist_labels_out_of_range,
    "mnist_empty_split": _mnist_empty_split,
    "pcam_x_in_missing_external_file": _pcam_x_in_missing_external_file,
}

EARLIER = "outputs/train/gan_gaussian/2020-01-01_00-00-00"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_is_one_line_before_anything_runs(case, tmp_path):
    argv, fragments = CASES[case](tmp_path) if callable(CASES[case]) else CASES[case]
    earlier = tmp_path / EARLIER
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "run.yaml").write_text("status: completed\n")
    (earlier / "checkpoints" / "last.ckpt").write_bytes(b"earlier weights")
    before = _files(tmp_path)
    proc = run_ganlab(*argv, cwd=tmp_path, check=False)
    assert_clear_error(proc, f"ganlab {argv[0]}: error:", *fragments)
    assert proc.returncode == 1 and not proc.stdout.strip()  # nothing ran, so nothing was printed
    after = _files(tmp_path)
    assert {k: after.get(k) for k in before} == before  # every earlier file still there, byte for byte
    # The only new files are Hydra's own for a train run dir (.hydra/, train.log): no manifest, config.yaml,
    # checkpoint or samples; sample and explain add nothing at all.
    new = [Path(k) for k in after.keys() - before.keys()]
    assert all(p.name == "train.log" or ".hydra" in p.parts for p in new), new
    assert argv[0] == "train" or not new


# More of the same in-process (no subprocess each): the message check_values raises for every value it checks.
IN_PROCESS = {
    "train": [("trainer.max_steps=-2", "trainer.max_steps=-2: expected an integer >= -1 (-1: no limit)"),
              ("trainer.max_steps=null", "trainer.max_steps=null: expected an integer >= -1"),
              ("trainer.max_epochs=abc", "trainer.max_epochs=abc: expected an integer >= -1 (-1: no limit) or null"),
              ("data.batch_size=2.5", "data.batch_size=2.5: expected an integer >= 1"),
              ("data.batch_size=true", "data.batch_size=True: expected an integer >= 1"),
              ("model.lr_d=inf", "model.lr_d=inf: expected a positive finite number"),
              ("model.lr_d=0", "model.lr_d=0: expected a positive finite number"),
              ("seed=-1", "seed=-1: expected an integer in 0..4294967295"),
              ("seed=4294967296", "seed=4294967296: expected an integer in 0..4294967295"),
              ("optimized_metric=${oc.env:GANLAB_TEST_UNSET}", "optimized_metric=${oc.env:GANLAB_TEST_UNSET}: "
               "Environment variable 'GANLAB_TEST_UNSET' not found; expected a value or an interpolation that"
               " resolves"),
              ("model.generator.hidden=[16,${nope}]", "model.generator.hidden[1]=${nope}: Interpolation key 'nope' "
               "not found"),
              ("callbacks=image_metrics", "callbacks.image_metrics.feature_run=???: missing; expected a value")],
    "sample": [("seed=abc", "seed=abc: expected an integer in 0..4294967295"),
               ("steps=1", "steps=1: expected an integer >= 2"), ("rows=0", "rows=0: expected an integer >= 1"),
               ("nrow=0", "nrow=0: expected an integer >= 1 or null"),
               ("batch_size=0", "batch_size=0: expected an integer >= 1"),
               ("device=cuda:x", "device=cuda:x: expected cpu, cuda, cuda:N or auto")],
    "explain": [("n=0", "n=0: expected an integer >= 1"), ("seed=1.5", "seed=1.5: expected an integer"),
                ("device=gpu", "device=gpu: expected cpu, cuda, cuda:N or auto")],
}


def _compose(verb: str, *overrides: str):
    experiment = verb == "train" and not any(o.startswith("+experiment=") for o in overrides)
    extra = ["+experiment=gan_gaussian"] if experiment else []
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        return compose(config_name=verb, overrides=[*extra, *overrides])


@pytest.mark.parametrize("verb, override, message", [(v, o, m) for v, rows in IN_PROCESS.items() for o, m in rows])
def test_check_values_names_key_value_and_expectation(verb, override, message):
    with pytest.raises(GanlabError) as err:
        check_values(_compose(verb, override), verb)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("verb, overrides", [
    *[("train", [f"+experiment={name}"]) for name in EXPERIMENTS],
    ("train", ["trainer.max_epochs=null", "trainer.max_steps=-1", "model.lr_g=1", "seed=4294967295"]),
    ("sample", ["nrow=null", "device=cuda:1"]), ("explain", ["device=cpu"])])
def test_good_values_pass(verb, overrides):
    check_values(_compose(verb, *overrides), verb)  # paths.output_dir (${hydra:...}) is left alone outside Hydra


# The data checks in-process: every variant of the readers' refusals, and that good files still pass.
def test_mnist_labels_are_checked_when_the_module_is_built(tmp_path):
    root = write_mnist(tmp_path / "bad", train_labels=[1, 10])
    with pytest.raises(GanlabError, match=r"train-labels-idx1-ubyte.gz: labels must lie in 0..9, found 1..10"):
        MNISTDataModule(root=str(root))
    good = MNISTDataModule(root=str(write_mnist(tmp_path / "good")), batch_size=2)
    good.setup()
    assert len(good.datasets["train"]) == 6 and len(good.datasets["val"]) == 3


def test_empty_mnist_split_and_empty_train_range_are_refused(tmp_path):
    with pytest.raises(GanlabError, match=r"train-labels-idx1-ubyte.gz: 0 labels, so the train split is empty"):
        MNISTDataModule(root=str(write_mnist(tmp_path / "empty", train_labels=[])))
    dm = MNISTDataModule(root=str(write_mnist(tmp_path / "six")), train_range=(0.0, 0.05))
    with pytest.raises(GanlabError, match=r"data.train_range=\[0.0, 0.05\]: selects 0 of the 6 training images"):
        dm.setup()


def test_empty_pcam_split_is_refused(tmp_path):
    root = write_pcam(tmp_path / "pcam")
    write_split(root, "val", np.zeros((0, 96, 96, 3), np.uint8), np.zeros(0, np.uint8))
    with pytest.raises(GanlabError, match=r"_valid_y.h5: 0 labels, so the split is empty"):
        PCamDataset(*split_files(root, "val"))


def test_pcam_external_storage_is_read_when_present_and_named_when_missing_or_short(tmp_path, monkeypatch):
    root = write_pcam(tmp_path / "pcam", n=4)
    expected = PCamDataset(*split_files(root, "train")).read_uint8(range(4))
    raw = tmp_path / "x.raw"
    x_file = store_x_externally(root, raw)
    dataset = PCamDataset(*split_files(root, "train"))
    assert not dataset.uses_memmap and torch.equal(dataset.read_uint8(range(4)), expected)
    del dataset  # closes its HDF5 handle, so the file can be rewritten below
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(GanlabError, match=r"external files holding 'x' have 1000 of its 110592 bytes"):
        PCamDataset(*split_files(root, "train"))
    raw.unlink()
    with pytest.raises(GanlabError, match=rf"{x_file}: 'x' is stored in the external file {raw}, which does not"):
        PCamDataset(*split_files(root, "train"))
    # A relative name resolves as HDF5 resolves it: from the working directory, or $HDF5_EXTFILE_PREFIX.
    with h5py.File(x_file, "w") as f:
        f.create_dataset("x", shape=(4, 96, 96, 3), dtype=np.uint8, external=[("x.raw", 0, h5py.h5f.UNLIMITED)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GanlabError, match=rf"external file {tmp_path / 'x.raw'}, which does not exist"):
        PCamDataset(*split_files(root, "train"))
    monkeypatch.setenv("HDF5_EXTFILE_PREFIX", "${ORIGIN}")
    with pytest.raises(GanlabError, match=rf"external file {root / 'x.raw'}, which does not exist"):
        PCamDataset(*split_files(root, "train"))
