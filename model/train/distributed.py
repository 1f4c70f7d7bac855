"""Process groups for data-parallel runs: from torchrun, SLURM (submitit) or Ray environments.

One run spans `RunSpec.world_size` processes. Whoever starts them (torchrun, `srun` under a
submitit job, Ray Train) leaves the layout in the environment; `distributed_context(run)` reads
it, joins the process group (NCCL on CUDA, gloo on CPU) unless the launcher already did (Ray
Train), checks the layout matches the spec, and leaves the group on exit.

Environment sources, first match wins:
  - an initialised default group (Ray Train's TorchTrainer sets it up before the user code);
  - torchrun / env://: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
  - SLURM with several tasks: exported through submitit's TorchDistributedEnvironment;
  - otherwise a single process (no group; every helper here is then the identity).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
import torch.distributed as dist

from parcae_scaling.model.train.optim import OptimizerBundle
from parcae_scaling.model.run_spec import RunSpec

EnvSource = Literal["single", "torchrun", "slurm", "initialized"]
_TIMEOUT_ENV = "PARCAE_DIST_TIMEOUT_S"  # collective timeout; a dead peer usually fails sooner


@dataclass(frozen=True, kw_only=True)
class DistEnv:
    """Where this process sits in the run's process layout."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    source: EnvSource = "single"

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"DistEnv.rank: {self.rank} is outside world size {self.world_size}; "
                             "check RANK / WORLD_SIZE set by the launcher")
        if not 0 <= self.local_rank < max(self.local_world_size, 1):
            raise ValueError(f"DistEnv.local_rank: {self.local_rank} is outside {self.local_world_size} "
                             "local processes; check LOCAL_RANK / LOCAL_WORLD_SIZE")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environ(environ: Mapping[str, str]) -> DistEnv:
    """The layout the launcher wrote into `environ` (torchrun names), or a single process."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return DistEnv()
    world = int(environ["WORLD_SIZE"])
    return DistEnv(
        rank=int(environ["RANK"]), world_size=world,
        local_rank=int(environ.get("LOCAL_RANK", environ["RANK"])),
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", world)),
        source="torchrun" if world > 1 else "single",
    )


def export_slurm_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Under SLURM with several tasks and no torchrun variables, export RANK/WORLD_SIZE/MASTER_*
    from SLURM's variables via submitit (master = first host of the job). True if exported."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_JOB_ID" not in environ:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    # The device is picked from LOCAL_RANK below; keep every GPU of the task visible.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def current_env() -> DistEnv:
    """This process's layout (exports SLURM's first if needed)."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return DistEnv(rank=dist.get_rank(), world_size=world, local_rank=local, local_world_size=local_world,
                       source="initialized")
    slurm = export_slurm_environment()
    env = env_from_environ(os.environ)
    return DistEnv(**{**env.__dict__, "source": "slurm"}) if slurm and env.world_size > 1 else env


def backend_for(run: RunSpec, device: torch.device) -> str:
    if run.dist_backend != "auto":
        if run.dist_backend == "nccl" and device.type != "cuda":
            raise ValueError("RunSpec.dist_backend: 'nccl' needs CUDA devices; use 'gloo' or 'auto' on CPU")
        return run.dist_backend
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True, kw_only=True)
class DistContext:
    """The joined process group as the training loop sees it."""

    env: DistEnv
    device: torch.device
    backend: str | None  # None: single process

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def rank(self) -> int:
        return self.env.rank


def check_layout(run: RunSpec, env: DistEnv) -> None:
    """The launcher started as many processes as the spec asks for."""
    if env.world_size != run.world_size:
        raise ValueError(
            f"RunSpec.nproc_per_node x nodes = {run.nproc_per_node} x {run.nodes} = {run.world_size} processes, "
            f"but the launcher started {env.world_size}; launch with that many processes (torchrun "
            "--nproc-per-node, or `parcae-sweep train-one --nproc`), or lay the spec out for this world "
            "size with RunSpec.with_world_size(...)"
        )


@contextlib.contextmanager
def distributed_context(run: RunSpec, device: torch.device) -> Iterator[DistContext]:
    """Join (or reuse) the process group for `run`; leave a group this call created on exit.

    `device` is the resolved device type; on CUDA each process takes cuda:LOCAL_RANK."""
    env = current_env()
    check_layout(run, env)
    if env.world_size == 1:
        yield DistContext(env=env, device=device, backend=None)
        return
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        timeout = datetime.timedelta(seconds=float(os.environ.get(_TIMEOUT_ENV, "1800")))
        dist.init_process_group(backend=backend_for(run, device), timeout=timeout)
    try:
        yield DistContext(env=env, device=device, backend=dist.get_backend())
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel over `model` when there are several ranks (it broadcasts rank 0's
    weights at construction), else `model` itself."""
    if ctx.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Every parameter gets a gradient every step (tied head, all loop blocks run at depth >= 1).
    # Gradients as views into the all-reduce buckets: one copy and one gradient-sized buffer fewer.
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: Sequence[float] | torch.Tensor, device: torch.device) -> list[float]:
    """Sum float64 values over ranks (identity for one process): one collective for many scalars."""
    t = torch.as_tensor(values, dtype=torch.float64).to(device)
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (picklable objects only; identity for one process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()


def shard_optimizer(bundle: OptimizerBundle) -> OptimizerBundle:
    """ZeRO stage 1: each torch optimizer rebuilt as a ZeroRedundancyOptimizer of the same class,
    groups and defaults, so every rank keeps only its shard of the optimizer state."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if not _active():
        return bundle
    sharded: dict[str, torch.optim.Optimizer] = {}
    for name, opt in bundle.optimizers.items():
        groups = [dict(g) for g in opt.param_groups]
        # Some defaults are derived, not constructor arguments (AdamW's decoupled_weight_decay).
        accepted = inspect.signature(type(opt).__init__).parameters
        kwargs = {k: v for k, v in opt.defaults.items() if k in accepted}
        sharded[name] = ZeroRedundancyOptimizer(groups, optimizer_class=type(opt), **kwargs)
    return OptimizerBundle(sharded)


def consolidate_optimizer(bundle: OptimizerBundle) -> None:
    """Gather sharded optimizer state onto rank 0 before it saves (a collective: call on all ranks)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    for opt in bundle.optimizers.values():
        if isinstance(opt, ZeroRedundancyOptimizer):
            opt.consolidate_state_dict(to=0)


def environ_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank as a launcher announced it (0 when there is none); lets an entry
    point open its real metrics sink on rank 0 only, before any process group exists."""
    environ = os.environ if environ is None else environ
    for key in ("RANK", "SLURM_PROCID"):
        if key in environ:
            return int(environ[key])
    return 0
