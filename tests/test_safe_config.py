"""A planted run dir runs nothing: every `_target_` is checked for what it *is*, not how it is spelled.

Each planted config below would create a marker file if anything in it were called. It is refused by
`sample`, `explain` and `train ckpt_path=` with one line naming config.yaml and the key, and the marker
never appears.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import EXPERIMENTS, TINY, compose_experiment, run_dirs, run_ganlab
from ganlab.errors import GanlabError
from ganlab.runs import load_run_config
from ganlab.safe_config import check_run_config, check_target, locate
from test_bad_input import assert_clear_error


class _Touch:
    """Unpickling this calls os.system('touch <marker>')."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _attacks(marker: Path) -> dict[str, dict]:
    """name -> a config node that would create `marker` if Hydra instantiated it."""
    payload = pickle.dumps(_Touch(marker))
    shell = [f"touch {marker}"]
    return {
        "torch.load via ganlab.runs": {"_target_": "ganlab.runs.torch.load", "weights_only": False,
                                       "f": {"_target_": "ganlab.runs.torch.serialization.io.BytesIO",
                                             "_args_": [payload]}},
        "torch.load via a relative file": {"_target_": "ganlab.runs.torch.load", "weights_only": False,
                                           "f": "payload.pkl"},
        "os.system via ganlab.runs": {"_target_": "ganlab.runs.os.system", "_args_": shell},
        "os.system via torch": {"_target_": "torch.serialization.os.system", "_args_": shell},
        "os.system via Lightning": {"_target_": "pytorch_lightning.trainer.trainer.os.system", "_args_": shell},
        "pickle.loads via torch": {"_target_": "torch.serialization.pickle.loads", "_args_": [payload]},
        "a pathlib method via ganlab": {"_target_": "ganlab.runs.Path.touch", "_args_": [str(marker)]},
        "a ganlab function that writes": {"_target_": "ganlab.runs.write_yaml_atomic",
                                          "_args_": [str(marker), {"a": 1}]},
        "importlib via ganlab": {"_target_": "ganlab.safe_config.importlib.import_module", "_args_": ["os"]},
        "builtins through a dunder": {"_target_": "torch.nn.modules.module.__builtins__.exec",
                                      "_args_": [f"open({str(marker)!r}, 'w')"]},
        "a module outside the trusted roots": {"_target_": "subprocess.run", "_args_": [["touch", str(marker)]]},
        "an interpolated target": {"_target_": "${oc.decode:'ganlab.runs.os.system'}", "_args_": shell},
        "an interpolated value": {"_target_": "torch.nn.Identity", "x": "${oc.env:HOME}"},
    }


# Where in the run's config the attack is planted: (path to a dict, how it is attached there).
PLACES = {
    "data": ("data", "replace"),
    "model": ("model", "replace"),
    "model.generator": ("model.generator", "replace"),
    "a kwarg of model.generator": ("model.generator", "kwarg"),
    "an _args_ entry of data": ("data", "args"),
    "callbacks": ("callbacks", "new"),
    "logger": ("logger", "new"),
    "hydra": ("hydra", "new"),
}


def _plant(cfg: dict, place: str, attack: dict) -> dict:
    path, how = PLACES[place]
    parent = cfg
    for part in path.split("."):
        parent = parent.setdefault(part, {}) if how == "new" else parent[part]
    if how == "replace":
        parent.clear()
        parent.update(attack)
    elif how == "kwarg":
        parent["extra"] = attack
    elif how == "args":
        parent["_args_"] = [attack]
    else:
        parent["planted"] = attack
    return cfg


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    run_ganlab("train", "+experiment=gan_gaussian", *TINY, "logger=none", cwd=cwd)
    (run_dir,) = run_dirs(cwd, "gan_gaussian")
    return run_dir


def _planted_run(trained_run: Path, tmp_path: Path, place: str, attack_name: str) -> tuple[Path, Path]:
    run = tmp_path / "outputs" / "train" / "gan_gaussian" / trained_run.name
    shutil.copytree(trained_run, run)
    marker = tmp_path / "pwned"
    (tmp_path / "payload.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.dump(_plant(cfg, place, _attacks(marker)[attack_name])))
    return run, marker


def _verb_args(verb: str, run: Path) -> list[str]:
    return {"sample": ["sample", f"run={run}"],
            "explain": ["explain", f"run={run}"],
            "train": ["train", "+experiment=gan_gaussian", *TINY, "logger=none", f"ckpt_path={run}"]}[verb]


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("attack_name", list(_attacks(Path("m"))))
def test_every_planted_target_is_refused_wherever_it_is_nested(trained_run, tmp_path, attack_name, place):
    run, marker = _planted_run(trained_run, tmp_path, place, attack_name)
    with pytest.raises(GanlabError, match="config.yaml: ") as refused:
        load_run_config(run)
    key = PLACES[place][0]
    assert key in str(refused.value)
    assert ("interpolation" if "interpolated" in attack_name else "not allowed") in str(refused.value)
    assert not marker.exists()


# Through the CLI, one line and nothing run or written, for each verb that loads a run (a few attacks each;
# the whole table is refused by the same load_run_config above).
CLI_CASES = [("sample", "torch.load via ganlab.runs"), ("sample", "os.system via Lightning"),
             ("sample", "a ganlab function that writes"), ("sample", "an interpolated target"),
             ("explain", "torch.load via a relative file"), ("explain", "pickle.loads via torch"),
             ("train", "os.system via torch"), ("train", "torch.load via ganlab.runs")]


@pytest.mark.parametrize(("verb", "attack_name"), CLI_CASES)
def test_each_verb_refuses_a_planted_run_in_one_line(trained_run, tmp_path, verb, attack_name):
    run, marker = _planted_run(trained_run, tmp_path, "data", attack_name)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    proc = run_ganlab(*_verb_args(verb, run), cwd=tmp_path, check=False)
    assert_clear_error(proc, str(run / "config.yaml"), "data._target_")
    assert not marker.exists()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written into the run
    assert list((tmp_path / "outputs").rglob("run.yaml")) == [run / "run.yaml"]  # train started no run


def test_the_run_is_still_sampled_when_nothing_was_planted(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = run_ganlab("sample", f"run={run}", "n=8", cwd=tmp_path)
    assert "wrote" in proc.stdout


def test_a_data_section_that_fails_to_build_stops_sample(trained_run, tmp_path):
    """Not swallowed: a run whose data cannot be rebuilt ends non-zero, naming the file."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["no_such_option"] = 1
    (run / "config.yaml").write_text(yaml.dump(cfg))
    proc = run_ganlab("sample", f"run={run}", cwd=tmp_path, check=False)
    assert_clear_error(proc, str(run / "config.yaml"), "data")


def test_resolution_reaches_the_real_object_and_imports_nothing_untrusted():
    import torch

    assert locate("ganlab.runs.torch.load") is torch.load
    with pytest.raises(GanlabError, match="resolves to torch.serialization.load"):
        check_target("ganlab.runs.torch.load", "config.yaml", "data._target_")
    sys.modules.pop("antigravity", None)
    with pytest.raises(GanlabError, match="does not name"):
        check_target("antigravity.fly", "config.yaml", "model._target_")
    assert "antigravity" not in sys.modules
    with pytest.raises(GanlabError, match="does not name"):
        check_target("torch._C._get_tracing_state", "config.yaml", "model._target_")
    check_target("torch.optim.Adam", "config.yaml", "model.optimizer._target_")  # allowed: no error


def test_bytes_values_are_refused():
    cfg = OmegaConf.create({"model": {"_target_": "torch.nn.Identity", "blob": b"\x80\x04"}})
    with pytest.raises(GanlabError, match="model.blob holds a bytes value"):
        check_run_config(cfg, "config.yaml")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_target_is_allowed(experiment):
    """The allowlist covers every `_target_` that ganlab's own configs use (so no real run is refused)."""
    cfg = compose_experiment(experiment)

    def walk(node, key=""):
        if OmegaConf.is_dict(node):
            for k in node.keys():
                child = node._get_node(k)
                if k == "_target_":
                    check_target(child._value(), experiment, f"{key}._target_")
                else:
                    walk(child, f"{key}.{k}")
        elif OmegaConf.is_list(node):
            for i in range(len(node)):
                walk(node._get_node(i), f"{key}[{i}]")

    walk(cfg)


@pytest.mark.parametrize("recorded", ["../outside.ckpt", "/tmp/outside.ckpt"])
def test_a_manifest_cannot_point_the_checkpoint_outside_the_run(trained_run, tmp_path, recorded):
    from ganlab.runs import resolve_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    outside = (run / recorded).resolve()
    outside.write_bytes(b"not a checkpoint")
    manifest = yaml.safe_load((run / "run.yaml").read_text())
    manifest["last_checkpoint"] = recorded
    (run / "run.yaml").write_text(yaml.dump(manifest))
    assert resolve_run(run, tmp_path).checkpoint == run / "checkpoints" / "last.ckpt"


def test_only_a_target_the_current_command_names_at_the_same_key_is_vouched_for():
    """train resume: the user's own callback, typed again, passes; the same target elsewhere, or another
    target at that key, is still checked."""
    from ganlab.safe_config import targets_of

    saved = OmegaConf.create({"callbacks": {"mine": {"_target_": "my_lab.MyCallback"}}})
    command = OmegaConf.create({"callbacks": {"mine": {"_target_": "my_lab.MyCallback"}},
                                "model": {"_target_": "torch.nn.Identity"}})
    assert targets_of(command) == {"callbacks.mine._target_": "my_lab.MyCallback", "model._target_": "torch.nn.Identity"}
    check_run_config(saved, "config.yaml", vouched=targets_of(command))  # no error
    with pytest.raises(GanlabError, match="callbacks.mine._target_='my_lab.MyCallback' is not allowed"):
        check_run_config(saved, "config.yaml")
    moved = OmegaConf.create({"data": {"_target_": "my_lab.MyCallback"}})
    with pytest.raises(GanlabError, match="data._target_"):
        check_run_config(moved, "config.yaml", vouched=targets_of(command))
    swapped = OmegaConf.create({"callbacks": {"mine": {"_target_": "ganlab.runs.os.system"}}})
    with pytest.raises(GanlabError, match="resolves to"):
        check_run_config(swapped, "config.yaml", vouched=targets_of(command))
