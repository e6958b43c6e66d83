"""Speed options: torch.compile with per-network fallback, the Performance callback, no per-step syncs.

CUDA-only behaviour (whole-step CUDA graphs, no host sync in steady state) is tested at the bottom and runs
where a GPU is present (scripts/bench_gpu.sh runs this file there)."""

from __future__ import annotations

import os
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch.utils.data import DataLoader

from conftest import manifest, run_dirs, run_ganlab, tiny_overrides
from ganlab.callbacks.performance import Performance, resolve_precision, trainable_networks
from ganlab.callbacks.progress import TrainProgressBar
from ganlab.errors import GanlabError
from ganlab.models.gan import GAN
from ganlab.nets.mlp import MLPDiscriminator, MLPGenerator
from ganlab.perf.compile import CompiledNetworks
from ganlab.perf.cuda_graph import count_optimizer_steps


def _planted_backward_failure():
    """A compiler backend whose backward compiler fails on graphs that hold a tanh (the 'bad' net's)."""
    def forward_compiler(gm, example_inputs):
        return gm

    def backward_compiler(gm, example_inputs):
        if any("tanh" in str(node.target) for node in gm.graph.nodes):
            raise RuntimeError("planted backward compile failure")
        return gm
    return aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)


def test_a_network_whose_backward_fails_to_compile_stays_eager_and_the_probe_leaves_no_trace():
    torch._dynamo.reset()
    torch.manual_seed(0)
    ok = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    bad = nn.Sequential(nn.Linear(5, 3), nn.Tanh())
    x, v = torch.randn(4, 1, 6, 6), torch.randn(4, 5)
    compiler = CompiledNetworks({"ok": ok, "bad": bad}, backend=_planted_backward_failure())
    compiler.record()
    (ok(x).sum() + bad(v).sum()).backward()  # the recorded eager step
    grads = [p.grad.clone() for p in [*ok.parameters(), *bad.parameters()]]
    stats = ok[1].running_mean.clone(), ok[1].num_batches_tracked.clone()
    rng = torch.get_rng_state()

    with pytest.warns(UserWarning, match="torch.compile failed for bad .*planted backward compile failure"):
        compiler.finish()

    assert compiler.compiled == ["ok"] and set(compiler.failed) == {"bad"}
    assert "forward" not in vars(bad) and "forward" in vars(ok)  # bad: plain nn.Module call again
    assert all(torch.equal(p.grad, g) for p, g in zip([*ok.parameters(), *bad.parameters()], grads))
    assert torch.equal(ok[1].running_mean, stats[0]) and torch.equal(ok[1].num_batches_tracked, stats[1])
    assert torch.equal(torch.get_rng_state(), rng)
    # The compiled network computes what the eager one does (train mode), and eval mode takes the eager path.
    eager = type(ok).forward.__get__(ok)
    with torch.no_grad():
        ok[1].momentum = 0.0  # keep the statistics fixed across the two calls
        torch.testing.assert_close(ok(x), eager(x))
    assert set(ok.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                    "1.num_batches_tracked"}  # checkpoints keep their keys


def _planted_channels_last_failure(always: bool):
    """A backend that fails on graphs holding a channels-last 4-D tensor (pytorch#171622's trigger), or always."""
    def compiler(gm, example_inputs):
        if always or any(isinstance(t, torch.Tensor) and t.dim() == 4 and not t.is_contiguous()
                         for t in example_inputs):
            raise RuntimeError("planted channels-last failure")
        return gm
    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


@pytest.mark.parametrize("always", [False, True])
def test_a_channels_last_compile_failure_is_retried_with_contiguous_weights_and_optimizer_state(always):
    from ganlab.perf.compile import has_channels_last_weights
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(4, 3, 4), nn.ReLU(), nn.ConvTranspose2d(3, 1, 3)).to(
        memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    z = torch.randn(2, 4, 1, 1)  # a latent, as DCGAN's generator takes it
    compiler = CompiledNetworks({"g": net}, lambda: [opt], backend=_planted_channels_last_failure(always))
    compiler.record()
    net(z).square().mean().backward()  # the recorded eager step
    opt.step()
    with pytest.warns(UserWarning, match="planted channels-last failure"):
        compiler.finish()
    moments = [(p, v) for p, state in opt.state.items() for v in state.values() if v.dim() == 4]
    assert len(moments) == 4 and all(v.stride() == p.stride() for p, v in moments)  # Adam's moments follow
    if always:  # no layout helps: eager, back in channels-last
        assert compiler.failed and compiler.compiled == [] and "forward" not in vars(net)
        assert has_channels_last_weights(net) and not net[0].weight.is_contiguous()
        return
    assert compiler.compiled == ["g"] and "planted" in compiler.contiguous["g"] and not compiler.failed
    assert not has_channels_last_weights(net) and net[0].weight.is_contiguous()
    eager = type(net).forward.__get__(net)
    torch.testing.assert_close(net(z), eager(z))  # the compiled network, same values
    before = [p.detach().clone() for p in net.parameters()]
    opt.zero_grad()
    net(z).square().mean().backward()  # training goes on through the compiled net and the fused step
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_performance_retries_channels_last_failures_through_a_dcgan_run():
    from ganlab.nets.dcgan import DCGANDiscriminator, DCGANGenerator
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GAN(DCGANGenerator(8, [1, 16, 16], base_width=4), DCGANDiscriminator([1, 16, 16], base_width=4))
    perf = Performance(compile=True, compile_backend=_planted_channels_last_failure(False), channels_last=True,
                       fused_optimizer=True)
    images = torch.rand(32, 1, 16, 16) * 2 - 1
    trainer = pl.Trainer(accelerator="cpu", max_steps=12, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[perf])
    with pytest.warns(UserWarning, match="compiled with contiguous weights instead"):
        trainer.fit(model, DataLoader([{"image": x} for x in images], batch_size=4, drop_last=True))
    assert trainer.global_step == 12 and perf.report["compiled"] == ["generator", "discriminator"]
    assert "generator" in perf.report["compiled_contiguous"] and not perf.report.get("compile_failed")
    for opt in trainer.optimizers:  # Lightning's optimizers: their moments were re-laid with the weights
        assert all(v.stride() == p.stride() for p, st in opt.state.items() for v in st.values() if v.dim() == 4)


def test_the_probe_replays_a_call_under_the_autocast_it_was_recorded_in():
    torch._dynamo.reset()
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    compiler = CompiledNetworks({"net": net}, backend="aot_eager")
    compiler.record()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # as Lightning's bf16-mixed runs a step
        net(torch.randn(2, 4)).float().sum().backward()
    (call,) = compiler.calls["net"].values()
    assert call.autocast == ("cpu", torch.bfloat16, False) and call.grad_enabled
    compiler.finish()
    assert compiler.compiled == ["net"]
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        assert net(torch.randn(2, 4)).dtype == torch.bfloat16  # the compiled call keeps autocast's dtype


def test_performance_options_are_validated_and_auto_means_off_on_cpu():
    with pytest.raises(GanlabError, match="perf.compile='maybe'"):
        Performance(compile="maybe")
    with pytest.raises(GanlabError, match="perf.compile_mode='fastest'"):
        Performance(compile_mode="fastest")
    assert resolve_precision({"precision": "auto", "accelerator": "cpu"}) == "32-true"
    assert resolve_precision({"precision": "16-mixed", "accelerator": "gpu"}) == "16-mixed"


def test_loader_workers_auto_follow_the_device_and_bad_values_are_refused():
    from ganlab.data.loaders import resolve_workers
    workers, pinned = resolve_workers("auto", "auto")
    assert (workers > 0 and pinned) if torch.cuda.is_available() else (workers, pinned) == (0, False)
    assert resolve_workers(3, False) == (3, False)
    with pytest.raises(GanlabError, match="data.num_workers='many'"):
        resolve_workers("many", "auto")


def _gan(hidden: int = 16) -> GAN:
    g = MLPGenerator(latent_dim=4, hidden=[hidden], out_shape=[1, 4, 4])
    d = MLPDiscriminator(in_shape=[1, 4, 4], hidden=[hidden])
    return GAN(g, d, ema_decay=0.9)


def _loader(n: int = 64, batch: int = 8, pin_memory: bool = False) -> DataLoader:
    images = torch.rand(n, 1, 4, 4) * 2 - 1
    return DataLoader([{"image": x} for x in images], batch_size=batch, shuffle=True, drop_last=True,
                      pin_memory=pin_memory)


@pytest.mark.parametrize("loadable", [False, True])
def test_lightnings_nvml_check_is_dropped_only_where_nvml_cannot_load(monkeypatch, loadable):
    from ganlab.perf import cuda_check
    monkeypatch.setenv(cuda_check.VARIABLE, "1")  # what importing Lightning does; restored after the test
    monkeypatch.setattr(cuda_check, "nvml_loadable", lambda: loadable)
    available = torch.cuda.is_available()
    Performance()
    assert (os.environ.get(cuda_check.VARIABLE) == "1") == loadable
    assert torch.cuda.is_available() == available  # the answer does not change, only how it is found


def test_performance_callback_wires_fused_adam_channels_last_and_compile_on_cpu():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _gan()
    perf = Performance(compile=True, compile_backend="aot_eager", channels_last=True, fused_optimizer=True)
    trainer = pl.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[perf])
    trainer.fit(model, _loader())
    assert trainer.global_step == 8
    assert perf.report["compiled"] == ["generator", "discriminator"]
    assert set(trainable_networks(model)) == {"generator", "discriminator"}  # the EMA copy is not compiled
    assert all(opt.defaults["fused"] for opt in trainer.optimizers)
    assert trainer.perf_report["channels_last"] and trainer.perf_report["precision"] == "32-true"


def test_per_step_values_are_not_progress_bar_metrics_but_the_bar_shows_them():
    """Lightning converts prog_bar values to Python numbers at every step (a host sync on a GPU): ganlab logs
    plain tensors and its bar reads them only when it redraws."""
    torch.manual_seed(0)
    model = _gan()
    bar = TrainProgressBar(refresh_rate=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[bar], log_every_n_steps=2)
    trainer.fit(model, _loader())
    assert not any(k.startswith("train/") for k in trainer.progress_bar_metrics)
    shown = bar.get_metrics(trainer, model)
    assert {"loss_d", "loss_g", "D(x)"} <= set(shown) and float(shown["loss_d"]) > 0


def test_train_values_go_to_lightning_only_on_the_batches_its_loggers_write():
    """self.log costs ~1 ms of Python per value: ganlab hands them over every log_every_n_steps batches only,
    and keeps the newest on the module for the NaN guard."""
    torch.manual_seed(0)
    model = _gan()
    handed_over, seen = [], []
    model.log_dict = lambda logs, **kw: handed_over.append(sorted(logs))  # type: ignore[method-assign]

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx):
            seen.append(sorted(pl_module.last_train_logs))

    trainer = pl.Trainer(accelerator="cpu", max_steps=18, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Watch()],
                         log_every_n_steps=3)
    trainer.fit(model, _loader())
    assert len(seen) == 9 and len(handed_over) == 3  # batches 3, 6 and 9 of 9
    assert handed_over[0] == seen[0] and {"train/loss_d", "train/loss_g", "train/D(x)"} <= set(seen[0])


def test_optimizer_steps_taken_outside_lightnings_wrappers_are_counted():
    """A replayed CUDA graph steps the raw optimizer; count_optimizer_steps keeps Lightning's step count
    (max_steps, checkpoint names) right. It reaches into Lightning's loop state, so this pins that on the CPU."""
    class RawSteps(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = nn.Linear(2, 1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

        def training_step(self, batch, batch_idx):
            raw = self.optimizers().optimizer  # not Lightning's wrapper: as a graph replay would
            for _ in range(2):  # two optimizer steps per batch, like a GAN's D and G
                self.net(batch).square().mean().backward()
                raw.step()
                raw.zero_grad()
            count_optimizer_steps(self.trainer, 2)

    model = RawSteps()
    loader = DataLoader(torch.randn(64, 2), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=10, max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    assert trainer.global_step == 10 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 5


def test_train_with_compile_then_sample_from_its_checkpoint(tmp_path, data_dir):
    run_ganlab("train", "+experiment=dcgan_mnist", *tiny_overrides("dcgan_mnist"), f"paths.data_dir={data_dir}",
               "perf.compile=true", "perf.compile_backend=aot_eager", "perf.channels_last=true", cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path, "dcgan_mnist")
    info = manifest(run_dir)
    assert info["status"] == "completed" and info["perf"]["compiled"] == ["generator", "discriminator"]
    assert info["perf"]["channels_last"] is True and info["perf"]["cuda_graph"] is False  # no CUDA here
    proc = run_ganlab("sample", "run=latest", "n=4", cwd=tmp_path)  # state_dict keys unchanged by compile
    assert "samples" in proc.stdout


def test_bad_perf_override_is_one_clear_error(tmp_path):
    proc = run_ganlab("train", "+debug=fast", "perf.cuda_graph=sometimes", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "perf.cuda_graph='sometimes'" in proc.stderr and "Traceback" not in proc.stderr


# --- CUDA only -------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class _SyncCounter(pl.Callback):
    """Counts synchronising CUDA calls in batches [start, stop) with torch's sync debug mode."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.caught: list[str] = []
        self._record = None

    def on_train_batch_start(self, trainer, pl_module, batch, idx):
        if idx == self.start:
            self._record = warnings.catch_warnings(record=True)
            self.log = self._record.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx):
        if idx == self.stop - 1 and self._record is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._record.__exit__(None, None, None)
            self.caught = [str(w.message) for w in self.log if "synchroniz" in str(w.message) and "prototype" not in str(w.message)]


@cuda
@pytest.mark.parametrize("graph", [False, True])
def test_gan_steps_on_cuda_without_host_syncs_and_the_graph_replays(graph):
    torch.manual_seed(0)
    model = _gan(hidden=64)
    perf = Performance(compile=False, cuda_graph=graph)
    counter = _SyncCounter(start=6, stop=16)
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=40, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[perf, counter, TrainProgressBar(refresh_rate=25)],
                         log_every_n_steps=25)
    before = [p.detach().clone() for p in model.generator.parameters()]
    trainer.fit(model, _loader(n=256, batch=8, pin_memory=True))
    assert trainer.global_step == 40  # graph replays count their optimizer steps
    assert counter.caught == [], counter.caught[:3]
    assert all(not torch.equal(p.cpu(), b) for p, b in zip(model.generator.parameters(), before))
    assert perf.report.get("cuda_graph_captured", False) is graph


@cuda
@pytest.mark.parametrize("family", ["pix2pix", "cyclegan"])
def test_translation_steps_on_cuda_in_bf16_without_host_syncs(family):
    """The eager path of the image-to-image models (CycleGAN's default, pix2pix's without perf.cuda_graph) with
    ganlab's GPU defaults and callbacks: a host sync per step would serialise Python and the GPU."""
    from ganlab.callbacks.nonfinite import NonFiniteLossGuard
    from ganlab.models.cyclegan import CycleGAN
    from ganlab.models.pix2pix import Pix2Pix
    from ganlab.nets.patchgan import PatchGANDiscriminator
    from ganlab.nets.resnet_generator import ResnetGenerator
    from ganlab.nets.unet import UNetGenerator
    torch.manual_seed(0)
    if family == "pix2pix":
        model = Pix2Pix(UNetGenerator(1, 1, base_width=8, depth=4), PatchGANDiscriminator(1, 8, 2, cond_channels=1))
    else:
        g, d = (lambda: ResnetGenerator(1, 1, base_width=8, n_blocks=1)), (lambda: PatchGANDiscriminator(1, 8, 2))
        model = CycleGAN(g(), g(), d(), d(), pool_size=6)  # the pool fills up inside the counted batches
    counter = _SyncCounter(start=6, stop=16)
    pairs = [{"a": torch.rand(1, 16, 16) * 2 - 1, "b": torch.rand(1, 16, 16) * 2 - 1} for _ in range(96)]
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=40, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=25,
                         callbacks=[Performance(compile=False), counter, NonFiniteLossGuard(),
                                    TrainProgressBar(refresh_rate=25)])
    trainer.fit(model, DataLoader(pairs, batch_size=4, shuffle=True, drop_last=True, pin_memory=True))
    assert trainer.global_step == 40 and counter.caught == [], counter.caught[:3]


@cuda
def test_a_captured_step_reads_its_learning_rate_tensor_at_every_replay():
    from ganlab.perf.cuda_graph import optimizer_step_graph
    torch.manual_seed(0)
    net = nn.Linear(4, 1).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=0.1, fused=True, capturable=True)
    x = torch.randn(8, 4, device="cuda")

    def step(inputs):
        opt.zero_grad(set_to_none=True)
        loss = net(inputs["x"]).pow(2).mean()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    graph = optimizer_step_graph(step, [opt])
    for _ in range(5):  # 3 eager warm-up steps, the capture, replays
        graph({"x": x})
    assert graph.graph is not None and graph.failed is None
    before = [p.detach().clone() for p in net.parameters()]
    opt.param_groups[0]["lr"].fill_(0.0)  # what an LR scheduler does to a tensor learning rate
    graph({"x": x})
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    opt.param_groups[0]["lr"].fill_(0.1)
    graph({"x": x})
    assert not all(torch.equal(p, b) for p, b in zip(net.parameters(), before))


@cuda
def test_pix2pix_trains_as_one_cuda_graph_with_its_lr_decay():
    from ganlab.models.pix2pix import Pix2Pix
    from ganlab.nets.patchgan import PatchGANDiscriminator
    from ganlab.nets.unet import UNetGenerator
    torch.manual_seed(0)
    model = Pix2Pix(UNetGenerator(1, 1, base_width=8, depth=4), PatchGANDiscriminator(1, 8, 2, cond_channels=1),
                    decay_start=0.0)
    perf = Performance(compile=False, cuda_graph=True)
    pairs = [{"a": torch.rand(1, 16, 16) * 2 - 1, "b": torch.rand(1, 16, 16) * 2 - 1} for _ in range(64)]
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=24, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[perf],
                         log_every_n_steps=1)
    before = [p.detach().clone() for p in model.g_ab.parameters()]
    trainer.fit(model, DataLoader(pairs, batch_size=4, shuffle=True, drop_last=True, pin_memory=True))
    assert trainer.global_step == 24 and perf.report["cuda_graph_captured"] is True
    assert all(not torch.equal(p.cpu(), b) for p, b in zip(model.g_ab.parameters(), before))
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(2e-4 * (12 - 12) / 12, abs=1e-12)
    assert float(trainer.callback_metrics["train/lr"]) == pytest.approx(0.0, abs=1e-12)
