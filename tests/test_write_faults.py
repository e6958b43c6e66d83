"""Failing writes and partial outputs: a read-only outputs/, a full disk or a denied
permission is one line naming the path and the cause; `sample` never leaves a partial result; skipped
inputs and runs are named; `name=` stays one folder under outputs/train/; the NaN stop tells the truth
about checkpoints.

The tests may run as root, where chmod stops no write. Read-only and full file systems are therefore
simulated in the `ganlab` subprocesses by a sitecustomize.py (`FAULTS` below) that refuses, with a given
errno, every mkdir and every open for writing under (or matching) one path; a real chmod is used as well
where the tests do not run as root.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pytorch_lightning as pl
import yaml

from conftest import TESTS_DIR, TINY, run_dirs, run_ganlab
from ganlab.errors import GanlabError
from ganlab.runs import check_run_name, resolve_run, resumable_checkpoint
from test_bad_input import assert_clear_error, run_copy, trained_run  # noqa: F401 (fixtures)

ROOT = os.geteuid() == 0

FAULTS = '''
import builtins, fnmatch, io, os
_where = os.path.abspath(os.environ["GANLAB_FAULT_PATH"])
_errno = int(os.environ["GANLAB_FAULT_ERRNO"])
_ops = os.environ.get("GANLAB_FAULT_OPS", "mkdir,write").split(",")

def _hit(path):
    try:
        p = os.path.abspath(os.fsdecode(os.fspath(path)))
    except TypeError:
        return False
    return p == _where or p.startswith(_where + os.sep) or fnmatch.fnmatch(p, _where)

def _fail(path):
    raise OSError(_errno, os.strerror(_errno), os.fsdecode(os.fspath(path)))

_mkdir, _os_open, _io_open = os.mkdir, os.open, io.open

def mkdir(path, *args, **kwargs):
    if "mkdir" in _ops and _hit(path):
        _fail(path)
    return _mkdir(path, *args, **kwargs)

def os_open(path, flags, *args, **kwargs):
    if "write" in _ops and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _hit(path):
        _fail(path)
    return _os_open(path, flags, *args, **kwargs)

def io_open(file, mode="r", *args, **kwargs):
    if "write" in _ops and isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") \\
            and _hit(file):
        _fail(file)
    return _io_open(file, mode, *args, **kwargs)

os.mkdir, os.open, builtins.open, io.open = mkdir, os_open, io_open, io_open
'''

CAUSES = {errno.EROFS: "read-only file system", errno.ENOSPC: "disk full", errno.EACCES: "permission denied"}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """env(path, errno, ops) -> the environment of a `ganlab` whose file system refuses writes at `path`."""
    folder = tmp_path_factory.mktemp("faults")
    (folder / "sitecustomize.py").write_text(FAULTS)

    def env(path: Path | str, code: int, ops: str = "mkdir,write") -> dict[str, str]:
        return {"PYTHONPATH": f"{folder}{os.pathsep}{TESTS_DIR}", "GANLAB_FAULT_PATH": str(path),
                "GANLAB_FAULT_ERRNO": str(code), "GANLAB_FAULT_OPS": ops}

    return env


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class read_only:
    """chmod a-w on `folders` for the block (undone after, so pytest can clean up)."""

    def __init__(self, *folders: Path) -> None:
        self.folders = folders

    def __enter__(self):
        for folder in self.folders:
            folder.chmod(stat.S_IRUSR | stat.S_IXUSR)

    def __exit__(self, *exc):
        for folder in self.folders:
            folder.chmod(stat.S_IRWXU)


# --- train: read-only outputs/, full disk --------------------------------------------------------------------
@pytest.mark.parametrize("how", ["simulated", "chmod"])
def test_train_into_a_read_only_outputs_dir_is_one_line(how, run_copy, tmp_path, faults):
    if how == "chmod" and ROOT:
        pytest.skip("root writes through chmod; the simulated case covers it")
    before = snapshot(tmp_path / "outputs")
    names = tmp_path / "outputs" / "train" / "gan_gaussian"
    argv = ["train", "+experiment=gan_gaussian", *TINY, "logger=none"]
    if how == "chmod":
        with read_only(names):
            proc = run_ganlab(*argv, cwd=tmp_path, check=False)
        cause = "permission denied"
    else:
        proc = run_ganlab(*argv, cwd=tmp_path, check=False, env=faults(tmp_path / "outputs", errno.EROFS))
        cause = "read-only file system"
    assert_clear_error(proc, "ganlab train: error: outputs/train/gan_gaussian/", "cannot create the output dir", cause)
    assert snapshot(tmp_path / "outputs") == before  # no new file, the earlier run byte for byte
    assert sorted(p.name for p in names.iterdir()) == [run_copy.name]


def test_train_on_a_full_disk_is_one_line(run_copy, tmp_path, faults):
    """Mkdir still works, every file write fails: Hydra's own train.log is the first to be refused."""
    before = snapshot(tmp_path / "outputs")
    proc = run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", cwd=tmp_path, check=False,
                      env=faults(tmp_path / "outputs", errno.ENOSPC, ops="write"))
    assert_clear_error(proc, "ganlab train: error: ", "train.log", "disk full (no space left on device)")
    assert snapshot(tmp_path / "outputs") == before


def test_checkpoint_on_a_full_disk_is_one_line_and_the_run_is_marked_failed(tmp_path, faults):
    run = tmp_path / "outputs" / "train" / "gan_gaussian" / "fixed"
    proc = run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", f"hydra.run.dir={run}",
                      cwd=tmp_path, check=False, env={**faults(run / "checkpoints", errno.ENOSPC, ops="write"),
                                                      "PYTHONWARNINGS": "ignore"})
    assert_clear_error(proc, f"{run / 'checkpoints' / 'last.ckpt'}: cannot write the checkpoint: disk full")
    assert not list((run / "checkpoints").iterdir())  # no checkpoint, no temp file
    assert yaml.safe_load((run / "run.yaml").read_text())["status"] == "failed"


# --- sample: read-only, full disk, permission denied; never a partial result --------------------------------
@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_sample_that_cannot_write_is_one_line_and_leaves_nothing(code, run_copy, tmp_path, faults):
    run_ganlab("sample", f"run={run_copy}", "n=8", cwd=tmp_path)  # earlier samples, to be kept as they are
    before = snapshot(run_copy)
    samples = run_copy / "samples"
    if code == errno.EACCES and not ROOT:
        with read_only(samples):
            proc = run_ganlab("sample", f"run={run_copy}", "n=8", cwd=tmp_path, check=False)
        fragment = "cannot create the output dir"
    else:  # read-only: the new dir is refused; full disk: the dir is made, its first file is refused
        ops = "write" if code == errno.ENOSPC else "mkdir,write"
        proc = run_ganlab("sample", f"run={run_copy}", "n=8", cwd=tmp_path, check=False, env=faults(samples, code, ops))
        fragment = "samples.pt: cannot write" if code == errno.ENOSPC else "cannot create the output dir"
    assert_clear_error(proc, f"ganlab sample: error: {samples}/", fragment, CAUSES[code])
    assert snapshot(run_copy) == before
    assert len(list(samples.iterdir())) == 1


def test_sample_failing_mid_way_removes_its_partial_output(run_copy, tmp_path, faults):
    """samples.pt is written, then the picture hits a full disk: the new sample dir goes, whole."""
    out = tmp_path / "elsewhere"
    proc = run_ganlab("sample", f"run={run_copy}", "n=8", f"output={out}", cwd=tmp_path, check=False,
                      env=faults(out / "*" / ".histogram.png.*.tmp", errno.ENOSPC, ops="write"))
    assert_clear_error(proc, f"{out}/", "histogram.png: cannot write: disk full")
    assert files(out) == [] and list(out.iterdir()) == []


def test_sample_output_that_is_a_file_is_refused(run_copy, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    before = snapshot(tmp_path)
    proc = run_ganlab("sample", f"run={run_copy}", f"output={target}", cwd=tmp_path, check=False)
    assert_clear_error(proc, f"output={target}: is a file; expected a folder")
    assert snapshot(tmp_path) == before
    proc = run_ganlab("sample", f"run={run_copy}", f"output={target / 'sub'}", cwd=tmp_path, check=False)
    assert_clear_error(proc, f"{target / 'sub'}/", "cannot create the output dir: not a folder (a file is in the way)")
    assert snapshot(tmp_path) == before


# --- sample of image-to-image runs: a folder is checked whole, a failure removes the new dir ----------------
def _bad_volume(kind: str, path: Path) -> str:
    from test_sample_volumes import head, save

    mr = head(seed=1)[0]
    if kind == "truncated":  # a whole header, half the voxels: only reading the data finds it
        data = save(path, mr).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "could not read the voxel data"
    if kind == "nan":
        mr[2, 3, 4] = np.nan
        save(path, mr)
        return "1 voxels are NaN or infinite"
    save(path, np.zeros((9, 9, 9, 2)))
    return "expected a 3-D volume"


@pytest.mark.parametrize("kind", ["truncated", "nan", "4-D"])
def test_volume_folder_with_one_bad_volume_translates_and_writes_nothing(kind, tmp_path, monkeypatch):
    from test_sample_volumes import StandIn, head, make_run, sample, save

    run, run_cfg = make_run(tmp_path)
    save(tmp_path / "in" / "a.nii.gz", head(seed=0)[0])  # sorts first: it would be translated and written first
    message = _bad_volume(kind, tmp_path / "in" / "b.nii")
    model = StandIn()
    with pytest.raises(GanlabError, match=message) as info:
        sample(run, model, run_cfg, monkeypatch, f"input={tmp_path / 'in'}")
    assert str(tmp_path / "in" / "b.nii") in str(info.value) and "\n" not in str(info.value)
    assert model.seen == []  # nothing translated
    assert not (run / "samples").exists() or list((run / "samples").iterdir()) == []


def test_volume_write_failing_on_the_second_volume_removes_the_new_dir(tmp_path, monkeypatch):
    import ganlab.data.nifti as nifti
    from test_sample_volumes import StandIn, head, make_run, sample, save

    run, run_cfg = make_run(tmp_path)
    for i, name in enumerate(["a.nii.gz", "b.nii.gz"]):
        save(tmp_path / "in" / name, head(seed=i)[0])
    real_save, calls = nib.save, []

    def full_on_second(image, filename):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"half a vol")  # what a full disk leaves of the temp file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(image, filename)

    monkeypatch.setattr(nifti.nib, "save", full_on_second)
    with pytest.raises(GanlabError) as info:
        sample(run, StandIn(), run_cfg, monkeypatch, f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}")
    assert str(info.value).startswith(f"{tmp_path / 'out'}/")
    assert str(info.value).endswith("b_sct.nii.gz: cannot write: disk full (no space left on device)")
    assert list((tmp_path / "out").iterdir()) == []  # a_sct.nii.gz went with its dir; no temp file either


def test_permission_denied_nifti_says_so(tmp_path, monkeypatch):
    import ganlab.data.nifti as nifti
    from test_sample_volumes import StandIn, head, make_run, sample, save

    run, run_cfg = make_run(tmp_path)
    src = save(tmp_path / "locked.nii.gz", head()[0])
    if ROOT:  # root reads through chmod 000: refuse the read as the OS would
        real_load = nib.load

        def denied(filename, *args, **kwargs):
            if Path(filename) == src:
                raise PermissionError(errno.EACCES, "Permission denied", str(filename))
            return real_load(filename, *args, **kwargs)

        monkeypatch.setattr(nifti.nib, "load", denied)
    else:
        src.chmod(0)
    try:
        with pytest.raises(GanlabError) as info:
            nifti.read_volume(src)
        assert str(info.value) == f"{src}: cannot read: permission denied"
        with pytest.raises(GanlabError, match="cannot read: permission denied"):
            sample(run, StandIn(), run_cfg, monkeypatch, f"input={src}")
    finally:
        src.chmod(0o644)
    assert not (run / "samples").exists() or list((run / "samples").iterdir()) == []


# --- what was skipped is named -----------------------------------------------------------------------------
def test_patient_folder_without_mr_is_named_in_a_warning(tmp_path, capsys):
    from ganlab.tasks.volume_inputs import find_inputs

    for rel in ["p1/mr.nii.gz", "p1/ct.nii.gz", "p2/ct.nii.gz", "p2/mask.nii.gz", "p3/MR.nii.gz"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / ".cache").mkdir()  # hidden folders are not patients
    assert [item.name for item in find_inputs(str(tmp_path), "a2b")] == ["p1"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ganlab: warning: input={tmp_path}: skipped 2 folder(s) without mr.nii.gz or mr.nii: "
                   f"{tmp_path / 'p2'}, {tmp_path / 'p3'}"]


def _make_run(root: Path, rel: str, mtime: float, ckpt: bool = True, config: bool = True) -> Path:
    run = root / "train" / rel
    (run / "checkpoints").mkdir(parents=True)
    if config:
        (run / "config.yaml").write_text("model: {}\n")
    (run / "run.yaml").write_text("status: running\n")
    if ckpt:
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    os.utime(run / "run.yaml", (mtime, mtime))
    return run


def test_latest_and_resume_auto_name_the_newer_runs_they_pass_over(tmp_path, capsys):
    good = _make_run(tmp_path, "gan_ring8/2026-01-01_00-00-00", 100)
    no_ckpt = _make_run(tmp_path, "gan_ring8/2026-01-02_00-00-00", 200, ckpt=False)
    no_config = _make_run(tmp_path, "gan_ring8/multirun_2026-01-03_00-00-00/0", 300, config=False)
    _make_run(tmp_path, "gan_grid25/2026-01-04_00-00-00", 400, ckpt=False)  # another name: not mentioned

    assert resolve_run("latest:gan_ring8", tmp_path).run_dir == good.resolve()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ganlab: warning: run=latest:gan_ring8: passed over newer ")
    assert f"{no_config.resolve()} (no config.yaml)" in line and f"{no_ckpt.resolve()} (no checkpoint in" in line
    assert line.endswith(f"; using {good.resolve()}")

    assert resumable_checkpoint(tmp_path, "gan_ring8") == good.resolve() / "checkpoints" / "last.ckpt"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ganlab: warning: resume=auto: passed over newer ") and str(no_ckpt.resolve()) in line

    resolve_run("latest", tmp_path)  # the newest usable of any name: gan_ring8's again, past gan_grid25's
    assert "gan_grid25" in capsys.readouterr().err

    shutil.rmtree(good)
    with pytest.raises(GanlabError, match="no runs with a checkpoint under .*; passed over newer .*no config.yaml"):
        resolve_run("latest:gan_ring8", tmp_path)


def test_latest_says_nothing_when_nothing_was_passed_over(tmp_path, capsys):
    good = _make_run(tmp_path, "gan_ring8/2026-01-02_00-00-00", 200)
    _make_run(tmp_path, "gan_ring8/2026-01-01_00-00-00", 100, ckpt=False)  # older: not worth a word
    assert resolve_run("latest:gan_ring8", tmp_path).run_dir == good.resolve()
    assert capsys.readouterr().err == ""


# --- name= is one folder under outputs/train/ ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "a/b", "/tmp/ganlab_abs_name", "..", ".", "", "a\\b"])
def test_run_names_with_a_path_in_them_are_refused(name):
    with pytest.raises(GanlabError, match="expected a plain folder name"):
        check_run_name(name)
    check_run_name("gan_ring8")
    check_run_name("gan.ring8-v2")


@pytest.mark.parametrize("name, extra", [("../../x", []), ("a/b", ["resume=auto"])])
def test_train_with_a_path_as_name_is_refused_before_anything_is_written(name, extra, tmp_path):
    # name=../../x would have made ./x/<timestamp>/ (outputs/train/../../x), where `latest` never looks.
    proc = run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", f"name={name}", *extra,
                      cwd=tmp_path, check=False)
    assert_clear_error(proc, f"ganlab train: error: name={name}: expected a plain folder name")
    assert list(tmp_path.iterdir()) == []  # no outputs/, no x/


# --- the NaN stop tells whether a checkpoint exists ----------------------------------------------------------
def test_nan_before_the_first_checkpoint_says_none_was_written(tmp_path):
    from test_crash_safety import PoisonBatch, _fit
    from ganlab.callbacks.nonfinite import NonFiniteLossGuard

    # Batch 1 (global steps 2 -> 4) goes NaN: the first periodic save, at step 4, is refused.
    trainer, model, data = _fit(tmp_path, [NonFiniteLossGuard("stop", check_every_n_steps=25), PoisonBatch(1)])
    with pytest.raises(GanlabError, match=r"train/loss_d became nan at step 4; stopped; no checkpoint was "
                                          r"written yet \(lower the learning rates"):
        trainer.fit(model, datamodule=data)
    assert not list(tmp_path.glob("*.ckpt"))


class PoisonEveryBatch(pl.Callback):
    """NaN real images from the first batch on (a resumed run's batch_idx need not start at 0)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batch["image"].fill_(float("nan"))


def test_nan_in_a_resumed_run_before_its_first_checkpoint_names_the_one_it_resumed_from(tmp_path):
    from test_crash_safety import _fit
    from ganlab.callbacks.nonfinite import NonFiniteLossGuard

    trainer, model, data = _fit(tmp_path / "first", [], max_steps=4)
    trainer.fit(model, datamodule=data)
    resumed_from = tmp_path / "first" / "last.ckpt"
    trainer, model, data = _fit(tmp_path / "second", [NonFiniteLossGuard("stop"), PoisonEveryBatch()], max_steps=16)
    with pytest.raises(GanlabError, match=r"stopped; no checkpoint was written yet in this run \(the one it resumed "
                                          rf"from, {resumed_from}, is untouched\)"):
        trainer.fit(model, datamodule=data, ckpt_path=resumed_from, weights_only=True)
    assert not (tmp_path / "second").exists() or not list((tmp_path / "second").glob("*.ckpt"))


def test_nan_stop_through_the_cli_is_one_line_and_writes_no_checkpoint(tmp_path):
    # PYTHONWARNINGS: Lightning's own deprecation notices (library versions) are not this test's subject.
    proc = run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", "data.mean=nan", cwd=tmp_path,
                      check=False, env={"PYTHONWARNINGS": "ignore"})
    assert_clear_error(proc, "ganlab train: error: train/loss_d became nan at step", "no checkpoint was written yet")
    (run,) = run_dirs(tmp_path, "gan_gaussian")
    assert not list(run.rglob("*.ckpt")) and yaml.safe_load((run / "run.yaml").read_text())["status"] == "failed"
