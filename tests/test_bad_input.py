"""Bad input ends with one clear message naming the file or key, a non-zero exit, and nothing lost."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY, run_dirs, run_ganlab


def assert_clear_error(proc, *fragments: str, max_lines: int = 1) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= max_lines, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", cwd=cwd)
    (run_dir,) = run_dirs(cwd, "gan_gaussian")
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    target = tmp_path / "outputs" / "train" / "gan_gaussian" / trained_run.name
    shutil.copytree(trained_run, target)
    return target


def test_empty_data_root(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_ganlab("train", *TINY, f"data.root={empty}", cwd=tmp_path, check=False)
    assert_clear_error(proc, f"data.root={empty}", "train-images-idx3-ubyte", "MNIST/raw")
    assert not list((tmp_path / "outputs").rglob("run.yaml"))  # no half-made run dir left to confuse `latest`


def test_missing_data_root(tmp_path):
    proc = run_ganlab("train", *TINY, f"data.root={tmp_path / 'nope'}", cwd=tmp_path, check=False)
    assert_clear_error(proc, "nope: no such directory")


def test_typo_in_override(tmp_path):
    proc = run_ganlab("train", "model.lrr=1e-3", cwd=tmp_path, check=False)
    assert_clear_error(proc, "model.lrr", max_lines=8)


def test_typo_in_config_group_lists_the_choices(tmp_path):
    proc = run_ganlab("train", "data=mnsit", cwd=tmp_path, check=False)
    assert_clear_error(proc, "Could not find 'data/mnsit'", "gaussian", "mnist", max_lines=20)


def test_unknown_verb(tmp_path):
    proc = run_ganlab("trian", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "unknown verb 'trian'" in proc.stderr


def test_latest_with_no_runs(tmp_path):
    proc = run_ganlab("sample", "run=latest", cwd=tmp_path, check=False)
    assert_clear_error(proc, "run=latest", "no runs with a checkpoint under")


def test_run_dir_without_checkpoints(run_copy, tmp_path):
    shutil.rmtree(run_copy / "checkpoints")
    proc = run_ganlab("sample", f"run={run_copy}", cwd=tmp_path, check=False)
    assert_clear_error(proc, str(run_copy), "no checkpoint", "last.ckpt")


def test_not_a_run_dir(tmp_path):
    proc = run_ganlab("sample", f"run={tmp_path}", cwd=tmp_path, check=False)
    assert_clear_error(proc, "not a ganlab run dir", "config.yaml")


def test_truncated_checkpoint_keeps_earlier_samples(run_copy, tmp_path):
    run_ganlab("sample", f"run={run_copy}", "n=8", cwd=tmp_path)
    (earlier,) = (run_copy / "samples").iterdir()
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    proc = run_ganlab("sample", f"run={run_copy}", "n=8", cwd=tmp_path, check=False)
    assert_clear_error(proc, f"{ckpt}: not a readable checkpoint")
    assert [p.name for p in (run_copy / "samples").iterdir()] == [earlier.name]
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_checkpoint_with_code_is_never_executed(run_copy, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpt = run_copy / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, ckpt)
    proc = run_ganlab("sample", f"run={ckpt}", cwd=tmp_path, check=False)
    assert_clear_error(proc, f"{ckpt}: not a readable checkpoint")
    assert not marker.exists()


@pytest.mark.parametrize("key", ["model", "model.generator.out_activation"])
def test_config_target_outside_allowlist_is_refused(run_copy, tmp_path, key):
    marker = tmp_path / "pwned"
    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    node = cfg
    for part in key.split("."):
        node = node[part]
    node["_target_"] = "pathlib.Path.touch"
    node["_args_"] = [str(marker)]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_ganlab("sample", f"run={run_copy}", cwd=tmp_path, check=False)
    assert_clear_error(proc, "config.yaml", f"{key}._target_='pathlib.Path.touch' is not allowed")
    assert not marker.exists()


# Checks in the constructors Hydra instantiates (a model's, a data module's): one ganlab line naming the option,
# not Hydra's "Error in call to target ..." report around it.
@pytest.mark.parametrize("override, fragment", [
    ("model.label_smoothing=1.5", "0 <= model.label_smoothing < 1"),
    ("data.std=-1", "gaussian data: need std > 0"),
])
def test_constructor_check_is_one_line(tmp_path, override, fragment):
    proc = run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", override, cwd=tmp_path, check=False)
    assert_clear_error(proc, "ganlab train: error:", fragment, override.split("=")[1])
    assert "Error in call to target" not in proc.stderr and "full_key" not in proc.stderr
    assert not list((tmp_path / "outputs").rglob("run.yaml"))


def test_multirun_with_multiprocess_ddp_is_refused_with_the_fix(tmp_path):
    proc = run_ganlab("train", "-m", "+experiment=gan_gaussian", *TINY, "trainer.accelerator=cpu",
                      "trainer.strategy=ddp", "trainer.devices=2", "seed=0,1", cwd=tmp_path, check=False)
    assert_clear_error(proc, "inside a -m sweep", "trainer.strategy=ddp_spawn", "trainer.devices=1", max_lines=3)
    assert not list((tmp_path / "outputs").rglob("run.yaml"))


# --- The rest of the bad-input list (docs/bad-input.md), through the CLI: one line naming the file/key,
# exit != 0, earlier outputs kept.
# (The readers' own tests cover every HDF5/NIfTI variant in-process: tests/test_pcam.py, tests/test_mr_ct_data.py.)
def _pcam_wrong_key(tmp_path):
    import h5py
    import numpy as np

    from ganlab.data.pcam_fixture import file_names, write_pcam_fixture

    root = write_pcam_fixture(tmp_path / "pcam", 4)
    x_file = root / file_names("train")[0]
    with h5py.File(x_file, "w") as f:
        f.create_dataset("images", data=np.zeros((4, 96, 96, 3), np.uint8))
    return ["train", "+experiment=classifier_pcam", "+debug=fast", f"data.root={root}"], [
        f"{x_file}: no dataset 'x'", "expected the official PCam file"]


def _nifti_truncated(tmp_path):
    from ganlab.data.phantom import write_phantom_dataset

    root = tmp_path / "brain"
    ct = write_phantom_dataset(root, n_patients=3, shape=(16, 16, 6), seed=1)[0] / "ct.nii.gz"
    ct.write_bytes(ct.read_bytes()[:200])
    return ["train", "+experiment=pix2pix_mr2ct", "+debug=fast", f"data.root={root}", "data.val_patients=1",
            f"paths.data_dir={tmp_path / 'cache'}"], [str(ct), "NIfTI"]


def _checkpoint_of_another_model(tmp_path):
    (run,) = (tmp_path / "outputs" / "train" / "gan_gaussian").iterdir()
    ckpt = run / "checkpoints" / "other.ckpt"
    torch.save({"state_dict": {"net.stages.0.weight": torch.zeros(8, 1, 3, 3)}, "global_step": 8}, ckpt)
    return ["sample", f"run={ckpt}"], [f"{ckpt}: weights do not fit the model in {run / 'config.yaml'}"]


BAD_INPUTS = {"hdf5_wrong_key": _pcam_wrong_key, "nifti_truncated": _nifti_truncated,
              "checkpoint_of_another_model": _checkpoint_of_another_model}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_keeps_earlier_outputs(case, run_copy, tmp_path):
    argv, fragments = BAD_INPUTS[case](tmp_path)
    before = _snapshot(tmp_path / "outputs")
    proc = run_ganlab(*argv, cwd=tmp_path, check=False)
    assert_clear_error(proc, *fragments)
    after = _snapshot(tmp_path / "outputs")
    assert {k: after.get(k) for k in before} == before  # every earlier file still there, byte for byte
