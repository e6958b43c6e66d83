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


def test_multirun_with_multiprocess_ddp_is_refused_with_the_fix(tmp_path):
    proc = run_ganlab("train", "-m", "+experiment=gan_gaussian", *TINY, "trainer.accelerator=cpu",
                      "trainer.strategy=ddp", "trainer.devices=2", "seed=0,1", cwd=tmp_path, check=False)
    assert_clear_error(proc, "inside a -m sweep", "trainer.strategy=ddp_spawn", "trainer.devices=1", max_lines=3)
    assert not list((tmp_path / "outputs").rglob("run.yaml"))
