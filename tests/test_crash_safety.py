"""Crash safety: atomic checkpoint writes, a NaN/Inf guard, SIGTERM/SIGINT checkpoints, kill -9, resume=auto,
and run dirs that two jobs started at once never share."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import GANLAB, TESTS_DIR, TINY, manifest, run_ganlab
from ganlab.callbacks.checkpoint_io import AtomicCheckpointIO
from ganlab.callbacks.nonfinite import NonFiniteLossGuard
from ganlab.callbacks.signals import SignalCheckpoint
from ganlab.errors import GanlabError
from ganlab.runs import resumable_checkpoint
from ganlab.tasks.train import _resume_checkpoint


# --- in-process: a tiny GAN on the 1-D gaussian -------------------------------------------------------------
def _gan_parts():
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=gan_gaussian", *TINY[1:]])
    pl.seed_everything(0, verbose=False)
    return instantiate(cfg.data), instantiate(cfg.model), cfg


def _fit(tmp_path, callbacks, max_steps=16):
    data, model, cfg = _gan_parts()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="step{step}", save_top_k=0, save_last=True,
                                        every_n_train_steps=4)
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[*callbacks, ckpt], logger=False, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         plugins=[AtomicCheckpointIO()])
    return trainer, model, data


class PoisonBatch(pl.Callback):
    """NaN in the real images of one batch: D's loss and gradients become NaN in that iteration."""

    def __init__(self, batch_idx):
        self.batch_idx, self.d_before = batch_idx, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            batch["image"].fill_(float("nan"))
            self.d_before = {k: v.clone() for k, v in pl_module.discriminator.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self.d_after = {k: v.clone() for k, v in pl_module.discriminator.state_dict().items()}


def test_trainer_config_writes_checkpoints_through_the_atomic_plugin(tmp_path):
    _, _, cfg = _gan_parts()
    trainer = instantiate(cfg.trainer, default_root_dir=str(tmp_path), logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_half_way(obj, f):  # writes part of the file, then the process "crashes"
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temp file is gone too


def test_nan_loss_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    # Batch 3 (global steps 6 -> 8) goes NaN; the periodic save at step 8 would hold NaN weights.
    trainer, model, data = _fit(tmp_path, [NonFiniteLossGuard("stop", check_every_n_steps=25), PoisonBatch(3)])
    with pytest.raises(GanlabError, match=r"train/loss_d became nan at step 8; stopped, and the last checkpoint"):
        trainer.fit(model, datamodule=data)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_nan_policy_skip_drops_the_bad_step_and_trains_on(tmp_path):
    guard, poison = NonFiniteLossGuard("skip"), PoisonBatch(2)
    trainer, model, data = _fit(tmp_path, [guard, poison])
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 16 and guard.skipped == 1
    for key, value in poison.d_before.items():  # D's step in the poisoned iteration was skipped exactly
        assert torch.equal(value, poison.d_after[key]), key
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 16


def test_unknown_nan_policy_is_refused():
    with pytest.raises(GanlabError, match="nan_policy='ignore': expected one of stop, skip"):
        NonFiniteLossGuard("ignore")


class RaiseSignal(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 2:
            signal.raise_signal(signal.SIGINT)


def test_sigint_saves_at_batch_end_stops_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    stopper = SignalCheckpoint(str(tmp_path / "signal.ckpt"))
    trainer, model, data = _fit(tmp_path, [stopper, RaiseSignal()], max_steps=40)
    trainer.fit(model, datamodule=data)  # no KeyboardInterrupt: the signal became a clean stop
    assert stopper.stopped_by == "SIGINT" and trainer.global_step == 6  # the iteration it arrived in finished
    assert torch.load(tmp_path / "signal.ckpt", weights_only=True)["global_step"] == 6
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    # Python's own Ctrl-C handler as the one to fall back to (a test runner's worker may have set another).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stopper = SignalCheckpoint("unused.ckpt")
    stopper.on_train_start(None, None)
    try:
        stopper._handle(signal.SIGINT, None)  # first: recorded, training goes on to the batch end
        assert stopper.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # second: the previous handler, re-delivered
            stopper._handle(signal.SIGINT, None)
    finally:
        stopper._restore()
        signal.signal(signal.SIGINT, before)


# --- subprocesses: two concurrent jobs, SIGTERM, kill -9, resume=auto -----------------------------------------
def _start(cwd: Path, step_file: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "OMP_NUM_THREADS": "1", "GANLAB_STEP_FILE": str(step_file)}
    return subprocess.Popen(
        [GANLAB, "train", "+experiment=gan_gaussian", *TINY, "logger=none", "trainer.max_steps=100000",
         "callbacks.checkpoint.every_n_train_steps=4", "+callbacks.step_probe._target_=robustness_probes.StepProbe",
         *extra], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _step(step_file: Path) -> int:
    return int(step_file.read_text()) if step_file.exists() else -1


def _wait_for_step(step_file: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _step(step_file) < step:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not get going"
        time.sleep(0.05)


def test_sigterm_and_kill9_mid_run_then_resume_auto(tmp_path):
    # Two jobs asking for the same run dir at the same moment (as two starts in the same second do).
    same_dir = "hydra.run.dir=outputs/train/gan_gaussian/same"
    steps = {"term": tmp_path / "term.step", "kill": tmp_path / "kill.step"}
    procs = {name: _start(tmp_path, steps[name], same_dir) for name in ("term", "kill")}
    try:
        for name in procs:
            _wait_for_step(steps[name], 10, procs[name])
        procs["kill"].kill()  # SIGKILL: nothing runs after it
        procs["kill"].wait()
        killed_at = _step(steps["kill"])
        term_sent_at = _step(steps["term"])
        procs["term"].send_signal(signal.SIGTERM)
        out, err = procs["term"].communicate(timeout=120)
    finally:
        for proc in procs.values():
            proc.kill()
    assert procs["term"].returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "continue with the same command plus resume=auto" in err

    dirs = sorted((tmp_path / "outputs" / "train" / "gan_gaussian").iterdir())
    assert [d.name for d in dirs] == ["same", "same_1"]  # one each, claimed atomically
    by_job = {("term" if manifest(d).get("stopped_by") else "kill"): d for d in dirs}
    assert set(by_job) == {"term", "kill"}

    # SIGTERM: a checkpoint of the iteration it arrived in, status interrupted.
    term = manifest(by_job["term"])
    assert term["status"] == "interrupted" and term["stopped_by"] == "SIGTERM"
    term_ckpt = by_job["term"] / "checkpoints" / "last.ckpt"
    term_step = torch.load(term_ckpt, weights_only=True)["global_step"]
    assert term_step >= term_sent_at and term_step == term["global_step"]

    # kill -9: the periodic last.ckpt is whole and at most one checkpoint interval (4 steps) behind.
    killed = manifest(by_job["kill"])
    assert killed["status"] == "running"  # nothing ran after the kill
    kill_step = torch.load(by_job["kill"] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert kill_step % 4 == 0 and killed_at - 4 <= kill_step <= killed_at

    # resume=auto continues the newest run of the same name (the SIGTERMed one: its run.yaml is newest). The
    # run's own test callback is typed again (the same command plus resume=auto), which is what lets the
    # config.yaml check pass it: a target outside ganlab is trusted only when this command names it too.
    probe = tmp_path / "start.pt"
    run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", f"trainer.max_steps={term_step + 4}",
               "resume=auto", "+callbacks.step_probe._target_=robustness_probes.StepProbe",
               "+callbacks.probe._target_=probes.StartStateProbe", cwd=tmp_path,
               env={"GANLAB_PROBE": str(probe), "GANLAB_STEP_FILE": str(tmp_path / "resume.step"),
                    "GANLAB_STEP_SLEEP": "0"})
    start = torch.load(probe, weights_only=True)
    saved = torch.load(term_ckpt, weights_only=True)
    assert start["global_step"] == term_step
    for key, value in saved["state_dict"].items():
        assert torch.equal(start["state_dict"][key], value), key
    (resumed,) = [d for d in (tmp_path / "outputs" / "train" / "gan_gaussian").iterdir() if d not in dirs]
    info = manifest(resumed)
    assert info["resumed_from"] == str(term_ckpt) and info["status"] == "completed"
    assert info["global_step"] == term_step + 4


def test_resume_auto_picks_the_newest_run_of_the_name_that_has_a_checkpoint(tmp_path):
    def make(rel, mtime, ckpt=True):
        run = tmp_path / "train" / rel
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("model: {}\n")
        (run / "run.yaml").write_text("status: running\n")
        if ckpt:
            (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(run / "run.yaml", (mtime, mtime))
        return run

    assert resumable_checkpoint(tmp_path, "gan_ring8") is None  # nothing yet: resume=auto starts fresh
    make("gan_ring8/2026-01-01_00-00-00", 100)
    newest = make("gan_ring8/multirun_2026-01-02_00-00-00/1", 200)
    make("gan_ring8/2026-01-03_00-00-00", 300, ckpt=False)  # killed before its first checkpoint: skipped
    make("gan_grid25/2026-01-04_00-00-00", 400)  # another name
    assert resumable_checkpoint(tmp_path, "gan_ring8") == newest.resolve() / "checkpoints" / "last.ckpt"
    assert resumable_checkpoint(tmp_path, "dcgan_mnist") is None


@pytest.mark.parametrize("overrides, message", [
    ({"resume": "auto", "ckpt_path": "latest"}, "resume=auto and ckpt_path=latest both given; keep one of them"),
    ({"resume": "yes"}, "resume='yes': expected auto or null (to continue a given run use ckpt_path="),
])
def test_resume_settings_are_checked_before_anything_runs(tmp_path, overrides, message):
    cfg = OmegaConf.create({"name": "gan_ring8", "paths": {"log_dir": str(tmp_path)}, "resume": None,
                            "ckpt_path": None, **overrides})
    with pytest.raises(GanlabError) as err:
        _resume_checkpoint(cfg)
    assert message in str(err.value)
