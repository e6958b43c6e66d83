"""Resume continues a run exactly where it stopped: step, weights and both optimizers' states."""

import pytest
import torch

from conftest import TINY, manifest, run_dirs, run_ganlab


def _assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("spec", ["checkpoint_file", "latest"])
def test_resume_restores_step_weights_and_optimizers(tmp_path, spec):
    run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", cwd=tmp_path)
    (first,) = run_dirs(tmp_path, "gan_gaussian")
    ckpt_file = first / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt_file, weights_only=True)
    assert saved["global_step"] == 8

    probe = tmp_path / "probe.pt"
    run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", "trainer.max_steps=16",
               f"ckpt_path={ckpt_file if spec == 'checkpoint_file' else 'latest'}",
               "+callbacks.probe._target_=probes.StartStateProbe", cwd=tmp_path, env={"GANLAB_PROBE": str(probe)})
    start = torch.load(probe, weights_only=True)
    assert start["global_step"] == 8
    _assert_same(start["state_dict"], saved["state_dict"], "state_dict")
    # Adam's step counts and moments for G and D, and their param groups (lr, betas), as saved.
    _assert_same(start["optimizer_states"], saved["optimizer_states"], "optimizer_states")
    assert all(len(opt["state"]) > 0 for opt in start["optimizer_states"])

    second = next(r for r in run_dirs(tmp_path, "gan_gaussian") if r != first)
    info = manifest(second)
    assert info["status"] == "completed" and info["global_step"] == 16
    assert info["resumed_from"] == str(ckpt_file)
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16


def test_resume_into_a_different_model_is_refused_clearly(tmp_path):
    run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", cwd=tmp_path)
    (first,) = run_dirs(tmp_path, "gan_gaussian")
    proc = run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", "model.generator.hidden=[32]",
                      f"ckpt_path={first}", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "last.ckpt: checkpoint does not fit the configured model" in proc.stderr
    assert "shape differs: generator.net" in proc.stderr and "Traceback" not in proc.stderr
