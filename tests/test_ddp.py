"""`trainer=ddp_sim` (2 CPU processes, gloo) through the installed console script: the GAN trains under DDP
with manual optimization (Lightning #20328/#20866), both ranks step on different shards with different noise,
their weights stay identical, and rank 0 alone writes one run dir with one valid checkpoint."""

import torch

from conftest import TINY, manifest, run_dirs, run_ganlab


def test_gan_trains_under_ddp_sim(tmp_path, data_dir):
    probes = tmp_path / "probes"
    probes.mkdir()
    run_ganlab("train", *TINY, "logger=none", "trainer=ddp_sim", f"paths.data_dir={data_dir}",
               "+callbacks.ddp_probe._target_=robustness_probes.DDPProbe", cwd=tmp_path,
               env={"GANLAB_PROBE_DIR": str(probes)})
    r0, r1 = (torch.load(probes / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)

    # Both ranks stepped: 4 iterations of one D and one G step each (max_steps=8 optimizer steps).
    assert r0["batches"] == r1["batches"] == 4 and r0["global_step"] == r1["global_step"] == 8
    assert r0["step_after_first_update"] == 2
    # After an update and at the end, the weights are identical on both ranks, and moved. (BatchNorm running
    # statistics are per rank: DDP re-broadcasts rank 0's at every forward, and rank 0 writes the checkpoint.)
    for key in (k for k in r0["final"] if "running_" not in k and "num_batches_tracked" not in k):
        assert torch.equal(r0["after_first_update"][key], r1["after_first_update"][key]), key
        assert torch.equal(r0["final"][key], r1["final"][key]), key
    assert not torch.equal(r0["after_first_update"]["generator.net.0.weight"], r0["final"]["generator.net.0.weight"])
    # Each rank its own noise stream, and its own shard of MNIST (DistributedSampler): no sample on both.
    assert not torch.equal(r0["rng_state"], r1["rng_state"])
    assert len(r0["samples"]) == len(r1["samples"]) == 2 * 64
    assert not set(r0["samples"]) & set(r1["samples"])

    # Rank 0 alone writes the run: one dir, a completed manifest, one loadable checkpoint at step 8.
    (run_dir,) = run_dirs(tmp_path, "gan_mnist")
    assert len(list((tmp_path / "outputs" / "train" / "gan_mnist").iterdir())) == 1
    info = manifest(run_dir)
    assert info["status"] == "completed" and info["global_step"] == 8
    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 8
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, r0["final"][key]), key
    assert not list(run_dir.rglob(".*.tmp"))  # no temp file of the atomic writes left behind
