"""The sweep loop: a 4-job sweep, `ganlab runs` listing it in order with its metrics, the HParams
data every job wrote into its TensorBoard events, and `ganlab sample run=<winner> truncation=0.7`.

One tiny sweep (gan_gaussian, 8 steps, 16-unit nets) serves the whole file; the listing tests work on copies
when they damage or relabel runs.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess

import pytest
import torch
import yaml
from conftest import TINY, manifest, run_dirs, run_ganlab
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from test_bad_input import assert_clear_error

from ganlab.callbacks.hparams import sweep_info

SWEEP = ["model.lr_g=1e-4,2e-4", "seed=0,1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(cwd, sweep dir, its 4 job dirs by job number)."""
    cwd = tmp_path_factory.mktemp("sweep")
    run_ganlab("train", "-m", "+experiment=gan_gaussian", *TINY, *SWEEP, cwd=cwd)
    jobs = sorted(run_dirs(cwd, "gan_gaussian"), key=lambda p: int(p.name))
    assert len(jobs) == 4
    return cwd, jobs[0].parent, jobs


def _listing(cwd, *args) -> list[dict[str, str]]:
    proc = run_ganlab("runs", *args, "format=csv", cwd=cwd)
    return list(csv.DictReader(io.StringIO(proc.stdout)))


def test_sweep_is_listed_in_metric_order_with_its_swept_overrides(sweep):
    cwd, sweep_dir, jobs = sweep
    w1 = {job.name: manifest(job)["metrics"]["val/w1"] for job in jobs}
    rows = _listing(cwd, str(sweep_dir), "sort=val/w1")
    assert [r["run"] for r in rows] == sorted(w1, key=w1.get)
    # csv keeps full precision: each cell is run.yaml's number
    assert {r["run"]: float(r["val/w1"]) for r in rows} == w1
    assert all(r["status"] == "completed" and r["steps"] == "8" and r["name"] == "gan_gaussian" for r in rows)
    # The overrides that differ are columns; those every job shares (+experiment, +debug, sizes) are not.
    assert {"model.lr_g", "seed"} <= set(rows[0]) and "experiment" not in rows[0] and "debug" not in rows[0]
    assert {(r["model.lr_g"], r["seed"]) for r in rows} == {("0.0001", "0"), ("0.0001", "1"), ("0.0002", "0"),
                                                            ("0.0002", "1")}
    assert [r["run"] for r in _listing(cwd, str(sweep_dir), "sort=-val/w1")] == sorted(w1, key=w1.get, reverse=True)


def test_default_listing_is_every_run_under_outputs_newest_first(sweep):
    cwd, _, jobs = sweep
    proc = run_ganlab("runs", cwd=cwd)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["run", "name", "started", "status", "steps"]
    started = [manifest(job)["started"] for job in jobs]
    listed = [line.split()[0] for line in lines[1:]]
    assert sorted(listed) == sorted(str(j.relative_to(cwd / "outputs")) for j in jobs)
    assert [manifest(cwd / "outputs" / p)["started"] for p in listed] == sorted(started, reverse=True)
    md = run_ganlab("runs", "name=gan_*", "format=md", cwd=cwd).stdout.splitlines()
    assert md[0].startswith("| run | name |") and len(md) == 2 + 4


def test_hparams_are_read_back_from_each_jobs_event_files(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, _, jobs = sweep
    for job in jobs:
        record = manifest(job)
        assert record["sweep"]["swept"] == ["model.lr_g", "seed"]
        events = EventAccumulator(str(job / "tensorboard"))
        events.Reload()
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = {k: v.number_value for k, v in start.session_start_info.hparams.items()}
        seed = int(job.name) % 2  # the sweep's order: lr_g outer, seed inner
        assert hparams == {"model.lr_g": pytest.approx([1e-4, 2e-4][int(job.name) // 2]), "seed": seed}
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        metric_tags = {m.name.tag for m in experiment.metric_infos}
        assert {"final/val/w1", "final/val/ks", "best/val/w1", "best/val/ks"} <= metric_tags
        for tag in metric_tags:
            (last,) = events.Scalars(tag)
            source = record["best_metrics"] if tag.startswith("best/") else record["metrics"]
            assert last.value == pytest.approx(source[tag.split("/", 1)[1]], rel=1e-6)
            assert last.step == record["global_step"]


def test_tensorboard_hparams_tab_shows_the_sweep_as_one_table(sweep):
    """TensorBoard's own HParams plugin, asked for its table over the sweep folder: 4 rows, one per job."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams.hparams_plugin import HParamsPlugin
    from tensorboard.plugins.scalar.scalars_plugin import ScalarsPlugin
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    _, sweep_dir, jobs = sweep
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep_dir))
    mux.Reload()
    context = base_plugin.TBContext(logdir=str(sweep_dir), multiplexer=mux, plugin_name_to_instance={},
                                    data_provider=data_provider.MultiplexerDataProvider(mux, str(sweep_dir)))
    context.plugin_name_to_instance["scalars"] = ScalarsPlugin(context)
    apps = HParamsPlugin(context).get_plugin_apps()
    request = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0, "sliceSize": 100,
               "colParams": [{"metric": {"tag": "final/val/w1"}, "order": "ORDER_ASC"}],
               "aggregationType": "AGGREGATION_AVG"}
    reply = Client(apps["/session_groups"], Response).post("/session_groups", data=json.dumps(request),
                                                         content_type="application/json")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    groups = json.loads(reply.get_data(as_text=True))["sessionGroups"]
    assert sorted(g["name"] for g in groups) == sorted(f"{j.name}/tensorboard" for j in jobs)
    w1 = {f"{j.name}/tensorboard": manifest(j)["metrics"]["val/w1"] for j in jobs}
    assert [g["name"] for g in groups] == sorted(w1, key=w1.get)
    assert all(set(g["hparams"]) == {"model.lr_g", "seed"} for g in groups)


def test_sample_the_winner_with_truncation(sweep):
    cwd, sweep_dir, _ = sweep
    winner = _listing(cwd, str(sweep_dir), "sort=val/w1")[0]["run"]
    proc = run_ganlab("sample", f"run={sweep_dir / winner}", "truncation=0.7", "n=64", cwd=cwd)
    assert "truncation.png" in proc.stdout
    (out,) = (sweep_dir / winner / "samples").iterdir()
    record = yaml.safe_load((out / "sample.yaml").read_text())
    assert record["truncation"] == 0.7 and record["truncation_strip"] == "truncation.png"
    assert (out / "truncation.png").stat().st_size > 0
    z = torch.load(out / "samples.pt", weights_only=True)["z"]
    assert z.shape[0] == 64 and z.abs().max() <= 0.7


def _copy(sweep, tmp_path):
    _, sweep_dir, _ = sweep
    target = tmp_path / "outputs" / "train" / "gan_gaussian" / sweep_dir.name
    shutil.copytree(sweep_dir, target, ignore=shutil.ignore_patterns("samples", "checkpoints", "tensorboard"))
    return target


def test_optuna_sweep_marks_its_best_trial(sweep, tmp_path):
    copy = _copy(sweep, tmp_path)
    for job in copy.iterdir():
        if (job / "run.yaml").is_file():
            record = manifest(job)
            record["sweep"] = {"sweeper": "optuna", "swept": ["model.lr_g", "seed"], "direction": "minimize",
                               "optimized_metric": "val/w1"}
            (job / "run.yaml").write_text(yaml.safe_dump(record))
    w1 = {j.name: manifest(j)["metrics"]["val/w1"] for j in copy.iterdir() if j.is_dir()}
    rows = _listing(tmp_path, str(copy))
    assert {r["run"] for r in rows if r["best"] == "true"} == {min(w1, key=w1.get)}
    table = run_ganlab("runs", str(copy), cwd=tmp_path).stdout
    assert f"* best trial of the Optuna sweep {copy.name} (minimize val/w1)" in table


def test_optuna_job_records_what_its_sweep_optimises():
    """What an Optuna job writes into run.yaml's `sweep` (read by `ganlab runs`), from the composed config of
    hparams_search=gan_ring8 as Hydra hands it to a job."""
    with initialize_config_module(config_module="ganlab.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=gan_ring8", "hparams_search=gan_ring8"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.sweep.dir = "/nonexistent/sweep"  # no multirun.yaml: Optuna's params alone name the swept keys
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_info(cfg) == {"sweeper": "optuna", "swept": ["model.lr_d", "model.lr_g"],
                                   "direction": "maximize", "optimized_metric": "val/modes_captured"}
    finally:
        HydraConfig.instance().cfg = None


def test_broken_and_half_written_run_dirs_are_listed_not_fatal(sweep, tmp_path):
    copy = _copy(sweep, tmp_path)
    (copy / "0" / "run.yaml").write_text("status: [completed\nmetrics: {val/w1: ")  # half-written
    (copy / "1" / "config.yaml").unlink()
    gone = subprocess.Popen(["true"])
    gone.wait()
    record = manifest(copy / "2")
    record.update(status="running", pid=gone.pid)
    (copy / "2" / "run.yaml").write_text(yaml.safe_dump(record))
    (copy / "4" / ".hydra").mkdir(parents=True)  # Hydra made the dir, train stopped before run.yaml
    (copy / "5").mkdir()
    (copy / "5" / "run.yaml").write_text("- a list\n")
    rows = {r["run"]: r for r in _listing(tmp_path, str(copy), "sort=val/w1")}
    assert rows["0"]["status"] == "broken" and "run.yaml unreadable" in rows["0"]["note"]
    assert rows["1"]["status"] == "broken" and rows["1"]["note"] == "no config.yaml"
    assert rows["2"]["status"] == "killed" and str(gone.pid) in rows["2"]["note"]
    assert rows["3"]["status"] == "completed" and rows["3"]["note"] == ""
    assert rows["4"]["status"] == "broken" and "no run.yaml" in rows["4"]["note"]
    assert rows["5"]["status"] == "broken" and "not a mapping" in rows["5"]["note"]
    order = [r["run"] for r in _listing(tmp_path, str(copy), "sort=val/w1")]
    assert set(order[-3:]) == {"0", "4", "5"}  # no val/w1: last


@pytest.mark.parametrize("args, fragments", [
    (["{empty}"], ["{empty}: no ganlab run dirs under it"]),
    (["{missing}"], ["{missing}: no such folder"]),
    (["{sweep}", "sort=val/fidd"], ["sort=val/fidd: not a column of these runs", "val/w1"]),
    (["{sweep}", "format=xml"], ["format=xml: expected one of table, csv, md"]),
    (["{sweep}", "metrics=[val/nope]"], ["no listed run has val/nope"]),
    (["{sweep}", "name=other_*"], ["name=other_*: no runs under"]),
    (["{sweep}", "{empty}"], ["2 paths given"]),
], ids=["not_a_run_folder", "missing_path", "unknown_sort_key", "unknown_format", "unknown_metric",
        "name_matches_nothing", "two_paths"])
def test_bad_input_is_one_line(sweep, tmp_path, args, fragments):
    _, sweep_dir, _ = sweep
    (tmp_path / "empty").mkdir()
    names = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "sweep": sweep_dir}
    proc = run_ganlab("runs", *(a.format(**names) for a in args), cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert_clear_error(proc, "ganlab runs: error: ", *(f.format(**names) for f in fragments))


def test_a_path_is_taken_literally(sweep, tmp_path):
    """`ganlab runs PATH` quotes PATH for Hydra: commas, quotes, spaces and `${` are part of the folder name."""
    _, sweep_dir, _ = sweep
    odd = tmp_path / "it's a,b ${x}"
    shutil.copytree(sweep_dir / "0", odd / "0", ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    rows = _listing(tmp_path, str(odd))
    assert [r["run"] for r in rows] == ["0"] and rows[0]["status"] == "completed"


def test_best_metrics_follow_each_metrics_direction_and_survive_a_resume():
    from types import SimpleNamespace

    from ganlab.callbacks.hparams import BestMetrics, direction

    assert [direction(k) for k in ("val/fid", "val/w1", "val/acc", "val/modes_captured", "val/mae_air",
                                   "val/psnr", "val/D(x)", "val/D_score(x)")] == \
        ["min", "min", "max", "max", "min", "max", None, None]
    best = BestMetrics()
    for sanity, metrics in [(True, {"val/w1": 0.01, "val/acc": 1.0}),  # the sanity check never counts
                            (False, {"val/w1": 3.0, "val/acc": 0.5, "val/D(x)": 0.7}),
                            (False, {"val/w1": 1.0, "val/acc": 0.4}),
                            (False, {"val/w1": 2.0, "val/acc": 0.9, "train/loss_d": 0.1})]:
        trainer = SimpleNamespace(sanity_checking=sanity, callback_metrics={k: torch.tensor(v) for k, v in
                                                                           metrics.items()})
        best.on_validation_end(trainer, None)
    assert best.best == {"val/w1": 1.0, "val/acc": pytest.approx(0.9)}
    resumed = BestMetrics()
    resumed.load_state_dict(best.state_dict())
    assert resumed.best == best.best
