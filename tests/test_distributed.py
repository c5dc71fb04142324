"""Multi-process correctness on CPU (gloo), with real processes: global
BatchNorm, gathered NT-Xent, a whole SimCLR step, dead ranks, launch checks.

Each test spawns two ranks; the single-process reference runs here, on the
same data, and the ranks' results come back through files.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import compose_config, without_plots
from torch import nn

from ssl_runner.distributed import collectives, launch
from ssl_runner.errors import UserError
from ssl_runner.models.global_batchnorm import GlobalBatchNorm, convert_batchnorm, count_synchronised

pytestmark = pytest.mark.distributed

WORLD = 2


def _init(rank: int, tmp: Path, timeout_s: float = 60) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'store'}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _spawn(fn, tmp: Path, *args) -> None:
    mp.spawn(fn, args=(tmp, *args), nprocs=WORLD, join=True)


# ---- global BatchNorm ---------------------------------------------------------------

def _bn_inputs():
    g = torch.Generator().manual_seed(0)
    x2d = torch.randn(8, 3, 5, 5, generator=g) * 2 + 1  # 4 images per rank
    w2d = torch.randn(8, 3, 5, 5, generator=g)  # a fixed linear read-out: loss = sum(y * w)
    x1d = torch.randn(6, 4, generator=g) * 3 - 2
    w1d = torch.randn(6, 4, generator=g)
    return x2d, w2d, x1d, w1d


def _bn_worker(rank: int, tmp: Path) -> None:
    _init(rank, tmp)
    x2d, w2d, x1d, w1d = _bn_inputs()
    out = {}
    for name, x, w, bn in (("2d", x2d, w2d, nn.BatchNorm2d(3)), ("1d", x1d, w1d, nn.BatchNorm1d(4))):
        torch.manual_seed(1)
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
        gbn = convert_batchnorm(bn, "cpu")
        n = x.shape[0] // WORLD
        mine = x[rank * n:(rank + 1) * n].clone().to(memory_format=torch.channels_last) if x.dim() == 4 else \
            x[rank * n:(rank + 1) * n].clone()
        mine.requires_grad_(True)
        for step in range(2):  # two steps: the running statistics accumulate
            mine.grad = None
            gbn.zero_grad()
            y = gbn(mine * (step + 1))
            (y * w[rank * n:(rank + 1) * n]).sum().backward()
        out[name] = {"y": y.detach(), "x_grad": mine.grad, "weight_grad": gbn.weight.grad, "bias_grad": gbn.bias.grad,
                     "running_mean": gbn.running_mean, "running_var": gbn.running_var,
                     "tracked": gbn.num_batches_tracked, "type": type(gbn).__name__}
    torch.save(out, tmp / f"bn{rank}.pt")
    dist.destroy_process_group()


def test_global_batchnorm_equals_batchnorm_on_the_concatenated_batch(tmp_path):
    _spawn(_bn_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"bn{r}.pt") for r in range(WORLD)]
    x2d, w2d, x1d, w1d = _bn_inputs()
    for name, x, w, bn in (("2d", x2d, w2d, nn.BatchNorm2d(3)), ("1d", x1d, w1d, nn.BatchNorm1d(4))):
        torch.manual_seed(1)
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
        whole = x.clone().requires_grad_(True)
        for step in range(2):
            whole.grad = None
            bn.zero_grad()
            y = bn(whole * (step + 1))
            (y * w).sum().backward()
        assert all(r[name]["type"] == "GlobalBatchNorm" for r in ranks)
        torch.testing.assert_close(torch.cat([r[name]["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.cat([r[name]["x_grad"] for r in ranks]), whole.grad, atol=1e-5, rtol=1e-5)
        # Each rank holds the gradient of its own loss; DDP sums (then averages) them.
        torch.testing.assert_close(sum(r[name]["weight_grad"] for r in ranks), bn.weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sum(r[name]["bias_grad"] for r in ranks), bn.bias.grad, atol=1e-5, rtol=1e-5)
        for r in ranks:  # running statistics: the global batch's, unbiased variance, on every rank
            torch.testing.assert_close(r[name]["running_mean"], bn.running_mean, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r[name]["running_var"], bn.running_var, atol=1e-5, rtol=1e-5)
            assert int(r[name]["tracked"]) == 2
        # Per-rank statistics (what plain BatchNorm does under DDP) differ: the test can fail.
        local = nn.functional.batch_norm(x[: x.shape[0] // 2], None, None, training=True)
        assert not torch.allclose(local, nn.functional.batch_norm(x, None, None, training=True)[: x.shape[0] // 2],
                                  atol=1e-3)


def test_convert_batchnorm_covers_backbone_and_heads_and_keeps_state_dict_keys():
    cfg = compose_config(["experiment=smoke"])
    from ssl_runner.methods import build_method

    method = build_method(cfg, 10)
    keys = set(method.state_dict())
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in method.modules())
    convert_batchnorm(method, "cpu")
    assert count_synchronised(method) == n_bn > 0
    assert any(isinstance(m, GlobalBatchNorm) for m in method.projector.modules())  # the head's BN1d too
    assert set(method.state_dict()) == keys  # encoders load strictly into plain BatchNorm


# ---- one SimCLR step: 2 ranks x B images == 1 rank x 2B images --------------------------

B = 8


def _simclr(cfg_overrides):
    from ssl_runner.methods import build_method

    cfg = compose_config(["experiment=smoke", "trainer.sync_batchnorm=true", *cfg_overrides])
    method = build_method(cfg, 10)
    convert_batchnorm(method, "cpu")
    return method


def _step(method, views, gather=True):
    import ssl_runner.methods.simclr as simclr_module

    if not gather:  # the same step with per-rank negatives, to show the test can fail
        original = simclr_module.nt_xent_loss
        simclr_module.nt_xent_loss = lambda z1, z2, t: original(z1, z2, t, gather=False)
    try:
        method.zero_grad()
        out = method.ssl_step(list(views), torch.arange(views.shape[1]))
        out.loss.backward()
    finally:
        if not gather:
            simclr_module.nt_xent_loss = original
    return out.loss.detach(), {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}


def _simclr_worker(rank: int, tmp: Path) -> None:
    _init(rank, tmp)
    data = torch.load(tmp / "inputs.pt")
    method = _simclr(data["overrides"]).double()
    method.load_state_dict(data["state"])
    views = data["views"][:, rank * B:(rank + 1) * B]
    out = {}
    for gather in (True, False):
        loss, grads = _step(method, views, gather)
        for g in grads.values():  # what DDP does with the gradients: the mean over ranks
            dist.all_reduce(g)
            g /= WORLD
        out[gather] = {"loss": loss, "grads": grads}
    torch.save(out, tmp / f"step{rank}.pt")
    dist.destroy_process_group()


def test_simclr_step_on_two_ranks_equals_one_rank_with_the_whole_batch(tmp_path, cifar_root):
    from ssl_runner.data.datasets import load_split

    overrides = [f"data.root={cifar_root}", "data.subset=20"]
    torch.manual_seed(0)
    # In float64: through a small batch's BatchNorm layers the first layer's
    # float32 gradient moves by about 1 % with the order of its sums alone (one
    # thread against two here), which would hide a real difference; in float64
    # that order moves it by 1e-14.
    method = _simclr(overrides).double()
    images = load_split(method.cfg.data, "train", 0)
    real = images.images[: 2 * B]  # real CIFAR-10 images, uint8
    torch.manual_seed(0)
    views = torch.stack([method.view_maker(real), method.view_maker(real)]).double()  # 2 views x 2B images
    torch.save({"overrides": overrides, "state": method.state_dict(), "views": views}, tmp_path / "inputs.pt")
    ref_loss, ref_grads = _step(method, views)
    _spawn(_simclr_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"step{r}.pt") for r in range(WORLD)]
    # The logged loss is the mean of the ranks' losses.
    mean_loss = sum(r[True]["loss"] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, ref_loss, atol=1e-12, rtol=0)
    assert ref_grads.keys() == ranks[0][True]["grads"].keys()
    for name, ref in ref_grads.items():
        for r in ranks:
            torch.testing.assert_close(r[True]["grads"][name], ref, atol=1e-9, rtol=1e-9,
                                       msg=lambda detail, name=name: f"{name}: {detail}")
    # Without the gathered negatives the loss is a different one.
    assert abs(float(sum(r[False]["loss"] for r in ranks) / WORLD - ref_loss)) > 1e-2


# ---- collectives used by evaluation ------------------------------------------------------

def _gather_worker(rank: int, tmp: Path) -> None:
    _init(rank, tmp)
    total = 7  # not a multiple of the world size
    rows = torch.tensor(list(collectives.shard_indices(total)), dtype=torch.float32)[:, None] * 10
    strided = collectives.gather_strided(rows, total)
    # A DistributedSampler pads 7 samples to 8 by repeating the first one.
    padded = list(range(total)) + [0]
    mine = torch.tensor(padded[rank::WORLD])
    by_index = collectives.gather_by_index(mine.float()[:, None] * 10, mine)
    torch.save({"strided": strided, "by_index": by_index}, tmp / f"gather{rank}.pt")
    dist.destroy_process_group()


def test_sharded_results_are_reassembled_in_order_without_duplicates(tmp_path):
    _spawn(_gather_worker, tmp_path)
    expected = torch.arange(7, dtype=torch.float32)[:, None] * 10
    for r in range(WORLD):
        out = torch.load(tmp_path / f"gather{r}.pt")
        torch.testing.assert_close(out["strided"], expected)
        torch.testing.assert_close(out["by_index"], expected)


# ---- a rank that dies --------------------------------------------------------------------

def _failing_worker(rank: int, tmp: Path, how: str) -> None:
    _init(rank, tmp, timeout_s=5)
    if rank == 1:
        if how == "dies":
            os._exit(17)
        time.sleep(60)  # stalls: alive, but never joins the collective (terminated below)
        os._exit(0)
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(3))
        dist.all_reduce(torch.ones(3))
        outcome = "returned"
    except Exception as err:
        outcome = f"{'recognised' if launch.is_collective_failure(err) else 'unrecognised'} {err}"[:300]
    (tmp / "outcome.txt").write_text(f"{time.monotonic() - start:.1f}\n{outcome}")
    os._exit(0)


@pytest.mark.parametrize("how", ["dies", "stalls"])
def test_a_dead_or_stalled_rank_makes_the_others_fail_within_the_timeout(tmp_path, how):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_failing_worker, args=(r, tmp_path, how)) for r in range(WORLD)]
    for p in procs:
        p.start()
    procs[0].join(timeout=90)
    assert not procs[0].is_alive(), "rank 0 is still waiting"
    seconds, outcome = (tmp_path / "outcome.txt").read_text().split("\n", 1)
    # The collective timeout is 5 s: rank 0 gives up long before the stalled rank wakes.
    assert float(seconds) < 20 and outcome.startswith("recognised"), outcome
    procs[1].terminate()
    procs[1].join(timeout=60)


# ---- checks before launch -----------------------------------------------------------------

def test_several_devices_need_the_ddp_strategy_and_the_launcher_must_agree(monkeypatch):
    with pytest.raises(UserError, match="trainer.strategy is 'auto'"):
        launch.check_plan(compose_config(["trainer=cpu", "trainer.devices=2"]))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="launcher started 4 processes but the config asks for 2"):
        launch.check_plan(compose_config(["trainer=ddp_cpu"]))


# ---- the command line with several processes ----------------------------------------------

def _cli(args, cwd: Path, data: Path, launcher=None, timeout=600, **popen):
    import subprocess
    import sys

    env = {**os.environ, "SSL_RUNNER_DATA": str(data), "CI": "true", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = (launcher or [sys.executable, "-m"]) + ["ssl_runner", *without_plots(args)]
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_smoke(tmp_path_factory, cifar_root):
    """The issue's command: the smoke preset on two CPU processes."""
    work = tmp_path_factory.mktemp("ddp")
    run_dir = work / "d1"
    proc = _cli(["method=simclr", "data=cifar10", "experiment=smoke", "trainer=ddp_cpu", f"hydra.run.dir={run_dir}"],
                work, cifar_root.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, run_dir, proc


def test_ddp_cpu_smoke_run_leaves_one_run_folder_with_one_summary(ddp_smoke):
    import json

    work, run_dir, _ = ddp_smoke
    assert sorted(p.name for p in work.iterdir()) == ["d1"]  # no outputs/, no second timestamped folder
    assert [p.relative_to(run_dir) for p in run_dir.rglob("summary.json")] == [Path("summary.json")]
    assert not list(run_dir.rglob(".pl_hydra*")) and [p.name for p in run_dir.glob(".hydra")] == [".hydra"]
    # pretrain, linear and the random-init linear baseline, once each
    # last.ckpt, and the checkpoint it replaced (every stage here trains more than one epoch).
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.ckpt")) == [
        f"{stage}/checkpoints/{name}.ckpt" for stage in ("linear", "linear_random_init", "pretrain")
        for name in ("last", "previous")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["batch_size"] == 128 and summary["global_batch_size"] == 256
    pretrain = summary["stages"]["pretrain"]
    assert pretrain["status"] == "done" and pretrain["synchronised_batchnorm_layers"] > 0
    # 2 x 128 images per step: 2,000 // 256 = 7 steps an epoch, 2 epochs, logged once (by rank 0).
    lines = (run_dir / "pretrain" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    epochs = [row.split(",")[header.index("train/loss_epoch")] for row in lines[1:]]
    assert len([e for e in epochs if e]) == 2
    for stage in ("knn", "linear"):
        assert 15.0 < summary["stages"][stage]["top1"] <= 100.0
    log = (run_dir / "ssl_runner.log").read_text()
    assert log.count("pretrain: starting") == 1  # only rank 0 writes the log


def test_evaluation_on_two_processes_matches_one_process(ddp_smoke, cifar_root):
    """kNN and the linear probe gather features from both ranks: the same
    encoder scores the same on one process as on two."""
    import json

    work, run_dir, _ = ddp_smoke
    encoder = run_dir / "pretrain" / "encoder.pt"
    common = ["method=simclr", "data=cifar10", "experiment=smoke", "pipeline=eval", f"checkpoint={encoder}",
              "eval.random_baseline=false"]
    one = _cli([*common, f"hydra.run.dir={work / 'eval1'}"], work, cifar_root.parent)
    assert one.returncode == 0, one.stderr[-3000:]
    s1 = json.loads((work / "eval1" / "summary.json").read_text())["stages"]
    s2 = json.loads((run_dir / "summary.json").read_text())["stages"]
    assert s1["knn"]["top1"] == s2["knn"]["top1"]
    assert s1["knn"]["train_images"] == s2["knn"]["train_images"] == 2000  # no padded duplicates
    assert abs(s1["linear"]["top1"] - s2["linear"]["top1"]) <= 0.2  # same data, order and seed; float noise only


def test_a_killed_rank_ends_the_run_with_a_message_and_the_rerun_resumes(tmp_path, cifar_root):
    import json
    import signal
    import subprocess

    run_dir = tmp_path / "killed"
    args = ["method=simclr", "data=cifar10", "experiment=smoke", "trainer=ddp_cpu", "trainer.max_epochs=3",
            "data.subset=1024", "pipeline.stages=[pretrain,knn]", "eval.random_baseline=false",
            "trainer.collective_timeout_s=30", f"hydra.run.dir={run_dir}"]
    proc = _cli(args, tmp_path, cifar_root.parent, popen=True)
    ckpt = run_dir / "pretrain" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "pretraining never reached its first checkpoint"
    worker = subprocess.run(["pgrep", "-f", f"hydra.run.dir={run_dir} hydra.output_subdir=null"],
                            capture_output=True, text=True).stdout.split()
    assert len(worker) == 1
    os.kill(int(worker[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert "a collective operation failed" in err and "rerunning the same command resumes" in err
    assert json.loads((run_dir / "summary.json").read_text())["stages"]["pretrain"]["status"] == "failed"
    # Nothing lost: the same command picks up from the last checkpoint.
    again = _cli(args, tmp_path, cifar_root.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    pretrain = json.loads((run_dir / "summary.json").read_text())["stages"]["pretrain"]
    assert pretrain["status"] == "done" and pretrain["epochs"] == 3
    assert pretrain["resumed_from"] == "pretrain/checkpoints/last.ckpt"


def test_moco_queue_under_ddp_wraps_around_is_gathered_and_comes_back_on_resume(tmp_path, cifar_root):
    """MoCo v2 on two gloo processes: each step enqueues the keys of both views
    from both ranks (2 x 2 x 128 = 512), so after 14 steps the pointer is at
    14 x 512 mod 4,096 = 3,072 (local keys only would leave it at 3,584).
    A run resumed from the first epoch's checkpoint keeps that epoch's keys
    where the second epoch has not yet overwritten them."""
    import shutil

    common = ["method=mocov2", "data=cifar10", "experiment=smoke", "trainer=ddp_cpu", "pipeline=pretrain",
              "eval.random_baseline=false", "monitor.knn_every_n_epochs=0"]
    first = _cli([*common, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'one'}"], tmp_path, cifar_root.parent)
    assert first.returncode == 0, first.stderr[-3000:]
    epoch1 = tmp_path / "one" / "pretrain" / "checkpoints" / "last.ckpt"
    resumed = tmp_path / "two" / "pretrain" / "checkpoints"
    resumed.mkdir(parents=True)
    shutil.copy(epoch1, resumed / "last.ckpt")
    second = _cli([*common, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path, cifar_root.parent)
    assert second.returncode == 0, second.stderr[-3000:]

    def state(path):
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    before, after = state(epoch1), state(resumed / "last.ckpt")
    # 7 steps of 512 keys: 3,584; then 7 more wrap around to 3,072.
    assert int(before["queue.ptr"]) == 3584 and int(after["queue.ptr"]) == 3072
    kept = slice(3072, 3584)  # written in epoch 1, not yet reached by epoch 2
    assert torch.equal(after["queue.keys"][kept], before["queue.keys"][kept])
    assert not torch.allclose(after["queue.keys"][:3072], before["queue.keys"][:3072])
    # The key encoder went on from epoch 1 by EMA only: it moved, and stayed a copy of the query encoder's shape.
    assert not torch.equal(after["key_encoder.net.0.conv1.weight"], before["key_encoder.net.0.conv1.weight"])


# BYOL's EMA target is the momentum pair MoCo's test above runs on two
# processes; SimSiam keeps no state. Both left this test in issue 18 to keep
# the suite under 20 minutes.
@pytest.mark.parametrize("method", ["npid"])
def test_every_stateful_method_runs_the_chained_stages_on_two_processes(tmp_path, cifar_root, method):
    """The smoke preset on two gloo processes for the stateful methods
    without a test of their own (MoCo has the test above; LooC's queues are
    MoCo's KeyQueue, and its own file runs it end to end): a summary of the
    whole chain, from two processes, with evaluation scores above chance."""
    import json

    run_dir = tmp_path / method
    proc = _cli([f"method={method}", "data=cifar10", "experiment=smoke", "trainer=ddp_cpu", "trainer.max_epochs=1",
                 "eval.random_baseline=false", "monitor.knn_every_n_epochs=0", f"hydra.run.dir={run_dir}"],
                tmp_path, cifar_root.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["method"], summary["processes"], summary["global_batch_size"]) == (method, 2, 256)
    assert summary["stages"]["pretrain"]["status"] == "done"
    assert summary["stages"]["pretrain"]["synchronised_batchnorm_layers"] > 0
    for stage in ("knn", "linear"):
        assert 15.0 < summary["stages"][stage]["top1"] <= 100.0
    # The exported encoder holds the backbone and heads, not the momentum state.
    encoder = torch.load(run_dir / "pretrain" / "encoder.pt", weights_only=True)
    assert not any(k.startswith(("target.", "key_encoder.", "queue.", "memory.")) for k in encoder["heads"])


PRETEXT_HEADS = {"rotnet": "rotation_classifier.", "jigsaw": "classifier.", "relative_loc": "classifier.",
                 "exemplar": "classifier.", "colorization": "colour_decoder.", "context_encoder": "decoder.",
                 "counting": "count_head.", "pirl": "jigsaw_head."}
SCALE_UNSTABLE_AFTER_EIGHT_STEPS = {"counting"}


# The pretext methods with machinery of their own across processes: PIRL's
# memory bank (and the jigsaw views it shares with Jigsaw). The context
# encoder's second (adversarial) optimizer left in issue 19, Counting's
# two-branch loss and Exemplar's seed dataset in issue 18 (Exemplar's seeds on
# every rank keep their own test in test_exemplar.py); RotNet, Jigsaw,
# relative location and colorization are a head and a loss on the same loop.
# Their own files run them end to end on one process (the suite must stay
# under 20 minutes on 2 cores).
DISTRIBUTED_PRETEXT = ["pirl"]


@pytest.mark.parametrize("method", DISTRIBUTED_PRETEXT)
def test_pretext_methods_resume_on_two_processes_and_feed_the_probes(tmp_path, cifar_root, method):
    """Each pretext task on two gloo processes: one epoch, then a second run
    resumed from that epoch's checkpoint that goes on to epoch 2 and through
    kNN, the linear probe and the rotation probe. The resumed run counts its
    steps on from epoch 1 and keeps training the pretext head."""
    import json
    import shutil

    common = [f"method={method}", "data=cifar10", "experiment=smoke", "trainer=ddp_cpu", "data.subset=1024",
              "data.test_subset=500", "eval.random_baseline=false", "monitor.knn_every_n_epochs=0"]
    if method == "exemplar":
        common += ["method.num_exemplars=256", "method.samples_per_exemplar=4"]
    first = _cli([*common, "pipeline=pretrain", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'one'}"],
                 tmp_path, cifar_root.parent)
    assert first.returncode == 0, first.stderr[-3000:]
    epoch1 = tmp_path / "one" / "pretrain" / "checkpoints" / "last.ckpt"
    resumed = tmp_path / "two" / "pretrain" / "checkpoints"
    resumed.mkdir(parents=True)
    shutil.copy(epoch1, resumed / "last.ckpt")
    second = _cli([*common, "trainer.max_epochs=2", "pipeline.stages=[pretrain,knn,linear,probe_rotation]",
                   "eval.probe.train_images=500", "eval.probe.epochs=10", f"hydra.run.dir={tmp_path / 'two'}"],
                  tmp_path, cifar_root.parent)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    pretrain = summary["stages"]["pretrain"]
    assert (summary["processes"], pretrain["epochs"]) == (2, 2)
    assert pretrain["resumed_from"] == "pretrain/checkpoints/last.ckpt"
    assert 15.0 < summary["stages"]["knn"]["top1"] <= 100.0
    if method in SCALE_UNSTABLE_AFTER_EIGHT_STEPS:
        # Its features after 8 steps are orders of magnitude larger than the
        # others' and the linear classifiers diverge (train loss ~1e6); kNN
        # (cosine) is unaffected, and the full cifar10_cpu run is fine.
        assert all(summary["stages"][s]["status"] == "done" for s in ("linear", "probe_rotation"))
    else:
        assert 15.0 < summary["stages"]["linear"]["top1"] <= 100.0
        assert 25.0 < summary["stages"]["probe_rotation"]["top1"] <= 100.0  # four rotations: chance is 25 %

    before = torch.load(epoch1, map_location="cpu", weights_only=True)
    after = torch.load(resumed / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == 2 * before["global_step"] > 0  # 1,024 images (exemplar: 1,024 showings) / 256
    head = [k for k in before["state_dict"] if k.startswith(PRETEXT_HEADS[method])]
    assert head and any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in head)


def test_two_nodes_on_localhost_through_torchrun(tmp_path, cifar_root):
    """The README's multi-node launch, both "nodes" on 127.0.0.1: one torchrun
    per node, one process each."""
    import json
    import sys

    run_dir = tmp_path / "two_nodes"
    port = launch._free_port()
    args = ["method=simclr", "data=cifar10", "experiment=smoke", "trainer=ddp_cpu", "trainer.devices=1",
            "trainer.num_nodes=2", "data.subset=1024", "trainer.max_epochs=1", "eval.random_baseline=false",
            f"hydra.run.dir={run_dir}"]
    nodes = [
        _cli(args, tmp_path, cifar_root.parent, popen=True, launcher=[
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
            "--master_addr=127.0.0.1", f"--master_port={port}", "-m"])
        for node in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in nodes]
    for p, (out, err) in zip(nodes, outputs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["processes"], summary["nodes"], summary["global_batch_size"]) == (2, 2, 256)
    assert all(summary["stages"][s]["status"] == "done" for s in ("pretrain", "knn", "linear"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two_nodes"]


# ---- SLURM through the submitit launcher (no cluster here) ----------------------------------

def test_slurm_preset_submits_one_task_per_gpu_on_every_node(tmp_path, monkeypatch):
    """What `-m cluster=slurm` would hand to sbatch: the launcher's parameters
    and the sbatch script submitit renders from them, captured before sbatch."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ssl_runner.__main__ import config_dir

    overrides = ["cluster=slurm", "experiment=simclr_cifar10", "trainer.num_nodes=4", "trainer.devices=8",
                 "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=2880", f"hydra.sweep.dir={tmp_path}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm and cfg.trainer.accelerator == "gpu"
    launcher = instantiate(cfg.hydra.launcher)
    assert {k: launcher.params[k] for k in ("nodes", "tasks_per_node", "gpus_per_node", "timeout_min",
                                            "partition")} == {"nodes": 4, "tasks_per_node": 8, "gpus_per_node": 8,
                                                              "timeout_min": 2880, "partition": "gpu"}
    captured = {}

    class Submitted(Exception):
        pass

    def capture(self, delayed_submissions):
        captured["sbatch"] = self._make_submission_file_text("python -m submitit.core._submit", "uid")
        raise Submitted

    monkeypatch.setattr(submitit.SlurmExecutor, "_internal_process_submissions", capture)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun is here"
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    script = captured["sbatch"]
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=2880", "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=8"):
        assert line in script, script
    # The preset's world is what the ranks will check against SLURM_NTASKS.
    typed = compose_config(overrides[:5])
    assert launch.planned_world_size(typed) == 32


def test_learning_rate_rule_uses_the_global_batch():
    """LARS at lr 1.0 per 256 images: 128 per device on 2 devices x 2
    accumulation steps is a global batch of 512, so lr 2.0."""
    from types import SimpleNamespace

    from ssl_runner.methods import build_method

    cfg = compose_config(["experiment=smoke", "trainer=ddp_cpu", "trainer.accumulate_grad_batches=2",
                          "optimizer.lr=1.0", "optimizer.lr_scaling=linear", "optimizer.reference_batch=256"])
    method = build_method(cfg, 10)
    method._trainer = SimpleNamespace(world_size=2, estimated_stepping_batches=100, max_epochs=2)
    optimizer = method.configure_optimizers()["optimizer"]
    assert method.global_batch_size() == 512
    ssl_groups = [g for g in optimizer.param_groups if g.get("name") != "online_probe"]
    assert ssl_groups and all(g["initial_lr"] == pytest.approx(2.0) for g in ssl_groups)


def _queue_worker(rank: int, tmp: Path) -> None:
    from ssl_runner.models.momentum import KeyQueue, MemoryBank

    _init(rank, tmp)
    torch.manual_seed(0)
    queue, bank = KeyQueue(size=8, dim=2), MemoryBank(size=6, dim=2)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) * (rank + 1) + torch.tensor([[rank, 0.0]] * 3)
    queue.enqueue(keys)
    bank.update(torch.tensor([rank, 4 + rank]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]) * (rank + 1), 0.0)
    torch.save({"keys": queue.keys, "ptr": queue.ptr, "bank": bank.bank}, tmp / f"queue{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_enqueue_the_concatenation_of_their_keys(tmp_path):
    import torch.nn.functional as F

    _spawn(_queue_worker, tmp_path)
    expected = F.normalize(torch.cat([
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) * (r + 1) + torch.tensor([[r, 0.0]] * 3) for r in range(2)
    ]), dim=1)
    for r in range(WORLD):
        out = torch.load(tmp_path / f"queue{r}.pt")
        torch.testing.assert_close(out["keys"][:6], expected)  # rank 0's keys, then rank 1's, on both ranks
        assert int(out["ptr"]) == 6
        # The memory bank takes both ranks' rows too (momentum 0: the new features).
        torch.testing.assert_close(out["bank"][[0, 1, 4, 5]], torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]]))
