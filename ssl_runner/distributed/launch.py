"""Launching the ranks of a multi-process run, joining the process group, and
recognising and explaining a collective that failed.

How the ranks come to exist:

* `python -m ssl_runner trainer=ddp_cpu` (or `trainer=ddp` on GPUs), one node:
  the first process validates the config and starts `devices - 1` copies of
  itself with the same overrides, `hydra.run.dir` pinned to its own run folder
  and no `.hydra` subfolder, so all ranks share one folder.
* `torchrun` or SLURM (one task per device): the launcher starts every rank;
  rank 0's run folder is broadcast to the others, which discard the one Hydra
  made for them.

All ranks then join one process group with the configured collective timeout
(`trainer.collective_timeout_s`), so a rank that dies makes the others fail
with an error instead of waiting forever. Lightning's DDP strategy finds the
group initialised and uses it.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from ssl_runner.distributed import collectives
from ssl_runner.distributed.batch import batch_sizes
from ssl_runner.errors import UserError

log = logging.getLogger(__name__)

# Set by whatever started this process as one rank of several.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


# ---- failures -----------------------------------------------------------------------------

# Raised by collectives when a peer has gone or the timeout passed: torch's
# typed errors, and gloo's plain RuntimeErrors, recognised by their text.
_GLOO_FAILURES = ("gloo", "Connection reset by peer", "Connection closed by peer", "Timed out", "timed out",
                  "ProcessGroup", "NCCL")


def is_collective_failure(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    several = collectives.is_initialized() and collectives.world_size() > 1
    return several and isinstance(err, RuntimeError) and any(marker in str(err) for marker in _GLOO_FAILURES)


def collective_failure_message(err: BaseException) -> str:
    return textwrap.fill(
        f"error: rank {collectives.rank()} of {collectives.world_size()}: a collective operation failed "
        f"({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}). Another rank has "
        "probably died or stalled; its own messages say why. The collectives wait at most "
        "trainer.collective_timeout_s seconds. Finished stages are kept in the run folder, and rerunning the "
        "same command resumes the interrupted one.",
        width=88, break_long_words=False)


# ---- launch plan ---------------------------------------------------------------------------

def devices_per_node(cfg: DictConfig) -> int:
    devices = cfg.trainer.devices
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, int):
        return max(1, devices)
    if str(devices) == "auto":
        gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        return torch.cuda.device_count() if gpu else 1
    try:
        return max(1, int(devices))
    except ValueError:
        raise UserError(f"trainer.devices is '{devices}'; give a number of devices, a list of device ids, "
                        "or auto.") from None


def planned_world_size(cfg: DictConfig) -> int:
    """Processes the config asks for: devices per node x nodes."""
    return devices_per_node(cfg) * cfg.trainer.num_nodes


def check_plan(cfg: DictConfig) -> int:
    """Refuse, before any process starts, what cannot run on the planned world.
    Returns the world size. The config is left as it is: the per-device batch
    is resolved by `batch.batch_sizes` wherever it is needed."""
    world = planned_world_size(cfg)
    t = cfg.trainer
    if world > 1 and t.strategy != "ddp":
        raise UserError(
            f"the run asks for {world} processes (trainer.devices={t.devices}, trainer.num_nodes={t.num_nodes}) "
            f"but trainer.strategy is '{t.strategy}'. Use trainer=ddp (GPUs) or trainer=ddp_cpu (CPU processes), "
            "or set trainer.strategy=ddp."
        )
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and any(v in os.environ for v in RANK_VARIABLES) and int(launched) != world:
        raise UserError(
            f"the launcher started {launched} processes but the config asks for {world} "
            f"(trainer.devices={t.devices} per node x trainer.num_nodes={t.num_nodes}). Make them agree, e.g. "
            "torchrun --nnodes=N --nproc_per_node=G with trainer.num_nodes=N trainer.devices=G."
        )
    slurm_tasks = os.environ.get("SLURM_NTASKS")
    if slurm_tasks and int(slurm_tasks) > 1 and int(slurm_tasks) != world:
        raise UserError(
            f"SLURM started {slurm_tasks} tasks but the config asks for {world} processes "
            f"(trainer.devices={t.devices} per node x trainer.num_nodes={t.num_nodes}). With cluster=slurm the "
            "job's tasks come from these two keys; pass them, not SLURM options, to change the world."
        )
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={t.accelerator} but this machine has no usable CUDA GPU. On CPUs use trainer=cpu, "
            "or trainer=ddp_cpu for several processes."
        )
    batch_sizes(cfg, world)  # refuses a data.global_batch_size that does not divide
    # The stages that train on images (not cached features) split their global batch across the ranks.
    semi = any(stage.startswith("semi_") for stage in cfg.pipeline.stages)
    for key, planned in (("linear", cfg.eval.linear.augment and "linear" in cfg.pipeline.stages),
                         ("finetune", "finetune" in cfg.pipeline.stages), ("semi", semi)):
        s = cfg.eval[key]
        if planned and s.batch_size % world:
            raise UserError(
                f"eval.{key}.batch_size={s.batch_size} is the stage's global batch and does not divide across "
                f"{world} processes. Choose a multiple of {world}."
            )
    return world


# ---- starting and ending the ranks ------------------------------------------------------

@dataclass
class DistributedSession:
    """The ranks of one run: this process's place and the workers it started."""

    world_size: int
    rank: int
    run_dir: Path
    workers: List[subprocess.Popen] = field(default_factory=list)
    # Rank variables this process set for its workers, unset at the end (a
    # multirun's next job must not look like a launched rank).
    set_variables: List[str] = field(default_factory=list)

    def finish(self, failed: bool, stopped: bool = False) -> Optional[str]:
        """Wait for the workers this process started (killing them if this rank
        failed; after a stop signal, which every rank acts on together, giving
        them time to end by themselves first) and leave the process group.
        Returns a message when a worker failed."""
        problem = None
        for local_rank, proc in enumerate(self.workers, start=1):
            if failed and not stopped:
                proc.terminate()
            try:
                code = proc.wait(timeout=60 if failed else None)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0 and not failed:
                problem = (f"rank {local_rank} (process {proc.pid}) exited with status {code}; its messages are "
                           "above. The run folder records the stages that finished.")
        if collectives.is_initialized():
            dist.destroy_process_group()
        for name in self.set_variables:
            os.environ.pop(name, None)
        return problem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_threads(processes: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // processes)


def _worker_command(run_dir: Path) -> List[str]:
    """This run's command line for another rank: the same overrides, this run's
    folder, no `.hydra` copy and no log file of its own."""
    from hydra.core.hydra_config import HydraConfig

    task = list(HydraConfig.get().overrides.task)
    return [sys.executable, "-m", "ssl_runner", *task, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null",
            "hydra/job_logging=ssl_runner_worker", "hydra/hydra_logging=none"]


def start(cfg: DictConfig, run_dir: Path) -> Optional[DistributedSession]:
    """Join (or first create) the ranks of a `strategy=ddp` run; None otherwise.

    Returns this process's session; `session.run_dir` is the folder every rank
    uses (rank 0's)."""
    if cfg.trainer.strategy != "ddp":
        return None
    world = planned_world_size(cfg)
    per_node = devices_per_node(cfg)
    workers: List[subprocess.Popen] = []
    set_variables: List[str] = []
    if not _launched_externally(world):
        if cfg.trainer.num_nodes > 1:
            raise UserError(
                f"trainer.num_nodes={cfg.trainer.num_nodes}: a multi-node run is started on every node by torchrun "
                "or SLURM, not by python -m ssl_runner alone. See the README's multi-node section."
            )
        variables = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
                         NODE_RANK="0", LOCAL_RANK="0", RANK="0")
        set_variables = [k for k in variables if k not in os.environ]
        os.environ.update(variables)
        threads = _cpu_threads(per_node)
        for local_rank in range(1, per_node):
            env = dict(os.environ, LOCAL_RANK=str(local_rank), RANK=str(local_rank), OMP_NUM_THREADS=str(threads))
            workers.append(subprocess.Popen(_worker_command(run_dir), env=env))
        torch.set_num_threads(threads)
    else:
        _adopt_cluster_environment()
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(_cpu_threads(per_node))
    _init_process_group(cfg, world)
    session = DistributedSession(world_size=world, rank=dist.get_rank(), run_dir=run_dir, workers=workers,
                                 set_variables=set_variables)
    # Under torchrun or SLURM each rank's Hydra made its own folder: use rank 0's.
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0)
    session.run_dir = Path(shared[0])
    if session.rank != 0:
        _quiet_worker_logging()
    return session


def _launched_externally(world: int) -> bool:
    """Whether torchrun, SLURM (one task per device) or our own launcher
    started this process as one of the ranks."""
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return True
    from lightning.fabric.plugins.environments import SLURMEnvironment

    # An interactive allocation (salloc, srun --pty bash) holds a single task:
    # there the ranks are still started here.
    return SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) == world > 1


def _adopt_cluster_environment() -> None:
    """Under SLURM (one task per device, as the submitit launcher starts them)
    take rank and rendezvous address from SLURM's variables, as Lightning does;
    torchrun sets them itself."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return
    env = SLURMEnvironment()
    os.environ.setdefault("MASTER_ADDR", env.main_address)
    os.environ.setdefault("MASTER_PORT", str(env.main_port))
    os.environ.setdefault("RANK", str(env.global_rank()))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank()))


def _init_process_group(cfg: DictConfig, world: int) -> None:
    if collectives.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    gpu = collectives.local_device(cfg.trainer.accelerator).type == "cuda"
    kwargs: dict = {}
    if gpu:
        device = collectives.local_device(cfg.trainer.accelerator)
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    rank_ = int(os.environ.get("RANK", 0))
    if "MASTER_PORT" not in os.environ:
        raise UserError("this process was started as one rank of several but MASTER_PORT is not set; launch "
                        "with torchrun (which sets it) or export MASTER_ADDR and MASTER_PORT.")
    dist.init_process_group("nccl" if gpu else "gloo", rank=rank_, world_size=world,
                            timeout=datetime.timedelta(seconds=cfg.trainer.collective_timeout_s), **kwargs)


def _quiet_worker_logging() -> None:
    """Only rank 0 writes the run's log file and reports progress; the others
    print warnings and errors only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
