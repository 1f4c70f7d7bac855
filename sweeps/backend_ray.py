"""The Ray backend: one Ray task per run, with per-run CPUs/GPUs and retries of crashed workers.

`ray.init()` starts a private local cluster sized to `max_concurrent * cpus_per_run` CPUs (the
concurrency cap), or `--address` joins an existing one. A worker process that dies (OOM killer,
lost node) is retried `retries` times by Ray and resumes from the run's checkpoint. Ray tasks
share their driver's fate, so this backend does not detach: launch waits.

A data-parallel run (world size N) is a task without resources of its own (the worker: store,
heartbeat, classification) that trains through Ray Train (`ray_train_run` below): one
placement group of N workers with `cpus_per_run` CPUs (and one GPU when gpus_per_run is 1) each,
rank 0 writing the store (sweeps/ranks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from parcae_scaling.db import RunStatus
from parcae_scaling.model.contracts import FailureKind
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.backend import BackendError, DispatchOptions, JobHandle
from parcae_scaling.sweeps.ranks import RankFailure, ray_rank, run_summary

if TYPE_CHECKING:
    from parcae_scaling.model.contracts import MetricsSink, RunResult
    from parcae_scaling.sweeps.ranks import TrainFn

_RAY_LOST = ("ActorDiedError", "RayActorError", "WorkerCrashedError", "NodeDiedError", "ActorUnavailableError")


def _ray_task(spec: dict, store_url: str, torch_threads: int, heartbeat_s: float, gpus_per_run: int = 0,
              cpus_per_run: int = 1, attempt: int | None = None) -> str:
    import ray

    from parcae_scaling.sweeps.worker import execute_run

    task = ray.get_runtime_context().get_task_id()
    run = RunSpec.from_dict(spec)
    train = None if run.world_size == 1 else ray_trainer(
        store_url, threads=torch_threads, heartbeat_s=heartbeat_s, use_gpu=gpus_per_run > 0,
        cpus_per_worker=cpus_per_run,
        attempt=attempt)
    try:
        status = execute_run(run, store_url, job_id=f"ray:{task}", torch_threads=torch_threads,
                             heartbeat_s=heartbeat_s, train=train, attempt=attempt)
    except Exception:  # recorded in the store by the worker; not a crash worth a Ray retry
        return RunStatus.FAILED.value
    return status.value


class RayBackend:
    name = "ray"
    can_detach = False

    def __init__(self, address: str | None = None) -> None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:  # an optional extra: local and SLURM runs need no Ray
            raise BackendError("the ray backend needs Ray, which is not installed; "
                               "pip install 'parcae-scaling[ray]' (or use --backend local / submitit)")
        self.address = address
        self._refs: dict[str, Any] = {}

    def submit(self, runs: Sequence[RunSpec], options: DispatchOptions) -> list[JobHandle]:
        if options.detach:
            raise BackendError("ray: --detach is not supported (Ray tasks die with their driver); "
                               "launch without --detach, or use the local or submitit backend")
        if not runs:
            return []
        import ray

        r = options.resources
        widest = max(run.world_size for run in runs)
        if not self.address and widest > r.max_concurrent:
            raise BackendError(f"ray: a run needs {widest} workers but the private cluster is sized for "
                               f"resources.max_concurrent = {r.max_concurrent} processes; raise max_concurrent "
                               f"to >= {widest}, or join a larger cluster with --address")
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": self.address} if self.address else {
                "num_cpus": r.max_concurrent * r.cpus_per_run, "num_gpus": r.max_concurrent * r.gpus_per_run,
                "include_dashboard": False}
            ray.init(**kw, log_to_driver=False, ignore_reinit_error=True)
        single = ray.remote(_ray_task).options(num_cpus=r.cpus_per_run, num_gpus=r.gpus_per_run,
                                               max_retries=r.retries, retry_exceptions=False)
        # data-parallel: the task only supervises; Ray Train's workers hold the resources
        multi = ray.remote(_ray_task).options(num_cpus=0, num_gpus=0, max_retries=r.retries, retry_exceptions=False)
        handles = []
        for run in runs:
            task = single if run.world_size == 1 else multi
            ref = task.remote(run.to_dict(), options.store_url, r.torch_threads, options.heartbeat_s,
                              r.gpus_per_run, r.cpus_per_run, options.attempts.get(run.run_id))
            job_id = f"ray:{ref.task_id().hex()}"
            self._refs[job_id] = ref
            handles.append(JobHandle(run_id=run.run_id, backend=self.name, job_id=job_id))
        return handles

    def poll(self, job_ids: Sequence[str]) -> dict[str, RunStatus | None]:
        import ray

        out: dict[str, RunStatus | None] = {}
        for job_id in job_ids:
            ref = self._refs.get(job_id)
            if ref is None:
                out[job_id] = None  # not ours (another driver): only the store knows
                continue
            done, _ = ray.wait([ref], timeout=0)
            out[job_id] = None if done else RunStatus.RUNNING
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        import ray

        for job_id in job_ids:
            if job_id in self._refs:
                ray.cancel(self._refs[job_id], force=True)


# ---- data-parallel runs through Ray Train ----------------------------------------------------

def ray_train_run(run: RunSpec, *, use_gpu: bool = False, cpus_per_worker: float = 1.0,
                  storage_path: str | None = None, worker: Callable[[dict[str, Any]], None] | None = None,
                  config: Mapping[str, Any] | None = None) -> None:
    """Train `run` on run.world_size Ray workers (one placement group) through Ray Train's
    TorchTrainer, which forms the process group before `train_run` reuses it. Each worker calls
    `worker({"spec": <run JSON>, **config})`; the default (sweeps/ranks.py `ray_rank`) has rank 0
    write the run directory, or the store when config holds a store_url. Raises if the run failed."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        worker or ray_rank, train_loop_config={**(config or {}), "spec": run.to_json()},
        scaling_config=ScalingConfig(num_workers=run.world_size, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"parcae-{run.run_id}",
                             storage_path=storage_path or str(Path(run.output_dir).resolve())),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"run {run.run_id} failed under Ray Train: {result.error}")


def ray_trainer(store_url: str, *, threads: int, heartbeat_s: float, use_gpu: bool,
                cpus_per_worker: float, attempt: int | None = None) -> "TrainFn":
    """execute_run's trainer for a multi-process run on Ray Train (one placement group of
    run.world_size workers); a lost Ray worker is node_lost, any other failure classified."""
    def train(run: RunSpec, sink: "MetricsSink") -> "RunResult":
        try:
            ray_train_run(run, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, worker=ray_rank,
                          config={"store_url": store_url, "heartbeat_s": heartbeat_s, "threads": threads,
                                  "attempt": attempt})
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            kind = (FailureKind.NODE_LOST if any(name in text for name in _RAY_LOST)
                    else FailureKind.OOM if "out of memory" in text.lower() else FailureKind.ERROR)
            raise RankFailure(kind, f"run {run.run_id} under Ray Train: {text}") from exc
        return run_summary(run)

    return train
