"""The submitit backend: SLURM job arrays through submitit, requeued on timeout and preemption.

Each run is a `SlurmRun` (a submitit `Checkpointable`): on the timeout/preemption signal submitit
pickles it and requeues the job, and on restart the worker resumes from the run's last periodic
checkpoint. `scontrol requeue` (SIGTERM, then a restart) takes the same path. Native states come
from `squeue` (never `sacct`, which needs accounting storage); a job squeue no longer lists has
ended, and the store says how.

A data-parallel run (world size N) is one job of `nodes` x `nproc_per_node` tasks, one per rank
(tasks_per_node, nodes, cpus_per_task, and one GPU per task when gpus_per_run is 1). Every task
calls the same `SlurmRun`; the process group comes from SLURM's environment (model/train/distributed.py,
through submitit's TorchDistributedEnvironment). Task 0 is the worker (store, heartbeat,
classification, requeue: submitit requeues from task 0 only) and rank 0; the others only train.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Sequence

import submitit
from submitit.core.utils import UncompletedJobError
from submitit.helpers import Checkpointable

from parcae_scaling.db import RunStatus
from parcae_scaling.model.contracts import FailureKind
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.backend import BackendError, DispatchOptions, JobHandle
from parcae_scaling.sweeps.spec import ResourceSpec

# squeue %T state -> RunStatus (mapped once, here); unlisted jobs have ended.
_SLURM_STATES = {
    "PENDING": RunStatus.PENDING, "CONFIGURING": RunStatus.PENDING, "REQUEUED": RunStatus.PENDING,
    "REQUEUE_HOLD": RunStatus.PENDING, "REQUEUE_FED": RunStatus.PENDING, "RESV_DEL_HOLD": RunStatus.PENDING,
    "SUSPENDED": RunStatus.PENDING, "RUNNING": RunStatus.RUNNING, "COMPLETING": RunStatus.RUNNING,
    "STAGE_OUT": RunStatus.RUNNING, "SIGNALING": RunStatus.RUNNING, "RESIZING": RunStatus.RUNNING,
    "PREEMPTED": RunStatus.PREEMPTED, "COMPLETED": RunStatus.SUCCEEDED, "CANCELLED": RunStatus.CANCELLED,
    "FAILED": RunStatus.FAILED, "TIMEOUT": RunStatus.FAILED, "NODE_FAIL": RunStatus.FAILED,
    "OUT_OF_MEMORY": RunStatus.FAILED, "BOOT_FAIL": RunStatus.FAILED, "DEADLINE": RunStatus.FAILED,
}


def slurm_timed_out(walltime_s: float, timeout_min: float) -> bool:
    """submitit's rule (JobEnvironment.has_timed_out): a signal after the guaranteed walltime,
    min(80% of the limit, the limit minus 10 min), is the time limit; earlier, a preemption."""
    limit_s = timeout_min * 60
    return walltime_s >= min(0.8 * limit_s, limit_s - 600)


class SlurmRun(Checkpointable):
    """The pickled callable of one SLURM job: run the RunSpec into the store."""

    def __init__(self, spec: dict, store_url: str, torch_threads: int, heartbeat_s: float,
                 timeout_min: float = 60, attempt: int | None = None) -> None:
        self.spec, self.store_url, self.attempt = spec, store_url, attempt
        self.torch_threads, self.heartbeat_s, self.timeout_min = torch_threads, heartbeat_s, timeout_min
        self._started, self._timed_out = time.time(), False

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on SLURM's signal, just before it requeues the job: note whether it
        is the time limit or a preemption, so the store records the right failure kind."""
        self._timed_out = slurm_timed_out(time.time() - self._started, self.timeout_min)
        return super().checkpoint(*args, **kwargs)

    def interruption_kind(self, exc: BaseException) -> str | None:
        """timeout / preempted for submitit's exits (None: let the worker classify)."""
        if isinstance(exc, UncompletedJobError) and self._timed_out:
            return FailureKind.TIMEOUT.value  # timed out more often than submitit requeues (max_num_timeout)
        if isinstance(exc, SystemExit):  # submitit requeued the job and exits this process
            return (FailureKind.TIMEOUT if self._timed_out else FailureKind.PREEMPTED).value
        return None

    def __call__(self) -> str:
        from parcae_scaling.model.train.loop import train_run
        from parcae_scaling.sweeps.ranks import train_rank
        from parcae_scaling.sweeps.worker import execute_run
        from parcae_scaling.sweeps.writer import install_sigterm

        self._started, self._timed_out = time.time(), False  # a requeued job starts its clock again
        job = submitit.JobEnvironment()
        run = RunSpec.from_dict(self.spec)
        if job.global_rank != 0:  # a data-parallel rank: trains, never writes the store
            import torch

            torch.set_num_threads(self.torch_threads)
            install_sigterm()
            return train_rank(run, self.store_url, rank=job.global_rank, heartbeat_s=self.heartbeat_s,
                              attempt=self.attempt).status.value
        # This task is the worker, and rank 0 of a data-parallel run (in this process: train_run).
        status = execute_run(run, self.store_url, job_id=f"slurm:{job.job_id}", torch_threads=self.torch_threads,
                             heartbeat_s=self.heartbeat_s, train=train_run, interruption=self.interruption_kind,
                             attempt=self.attempt)
        return status.value


def slurm_parameters(r: ResourceSpec, run: RunSpec) -> dict[str, object]:
    """submitit parameters of one run's job: per-process resources times its SLURM tasks."""

    params: dict[str, object] = dict(timeout_min=r.time_limit_min, cpus_per_task=r.cpus_per_run,
                                     mem_gb=r.mem_gb * run.nproc_per_node, nodes=1, tasks_per_node=1)
    if run.world_size > 1:
        params.update(slurm_task_layout(run, gpus=r.gpus_per_run > 0))
    elif r.gpus_per_run:
        params["gpus_per_node"] = r.gpus_per_run
    return params


class SubmititBackend:
    name = "submitit"
    can_detach = True

    def __init__(self, partition: str | None = None) -> None:
        self.partition = partition

    def submit(self, runs: Sequence[RunSpec], options: DispatchOptions) -> list[JobHandle]:
        if not runs:
            return []
        r = options.resources
        executor = submitit.AutoExecutor(folder=str(Path(options.log_dir) / "submitit"), cluster="slurm")
        groups: dict[tuple[int, int], list[RunSpec]] = {}  # one job array per process layout
        for run in runs:
            groups.setdefault((run.nproc_per_node, run.nodes), []).append(run)
        jobs = {}
        try:
            for group in groups.values():
                executor.update_parameters(**slurm_parameters(r, group[0]), slurm_array_parallelism=r.max_concurrent,
                                           name="parcae-sweep",
                                           **({"slurm_partition": self.partition or r.partition}
                                              if self.partition or r.partition else {}))
                with executor.batch():
                    submitted = [executor.submit(SlurmRun(run.to_dict(), options.store_url, r.torch_threads,
                                                          options.heartbeat_s, r.time_limit_min,
                                                          options.attempts.get(run.run_id))) for run in group]
                jobs.update({run.run_id: job for run, job in zip(group, submitted)})
        except Exception as exc:  # sbatch missing, bad partition, too many nodes ...
            raise BackendError(f"submitit could not submit to SLURM: {exc}; check `sinfo`, the partition and "
                               "resources.nodes / nproc_per_node") from exc
        return [JobHandle(run_id=run.run_id, backend=self.name, job_id=f"slurm:{jobs[run.run_id].job_id}")
                for run in runs]

    def poll(self, job_ids: Sequence[str]) -> dict[str, RunStatus | None]:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BackendError(f"squeue failed: {proc.stderr.strip()}; is SLURM reachable (SLURM_CONF)?")
        listed = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.strip())
        return {j: _SLURM_STATES.get(listed[j.removeprefix("slurm:")], RunStatus.RUNNING)
                if j.removeprefix("slurm:") in listed else None for j in job_ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        ids = [j.removeprefix("slurm:") for j in job_ids if j.startswith("slurm:")]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, text=True)


def slurm_task_layout(run: RunSpec, *, gpus: bool) -> dict[str, int]:
    """submitit parameters for one multi-process run: one SLURM task per rank (each task calls
    the job's function, which trains with `train_run` after model/train/distributed.py exports the
    layout from SLURM's environment through submitit's TorchDistributedEnvironment)."""
    layout = {"nodes": run.nodes, "tasks_per_node": run.nproc_per_node}
    if gpus:
        layout["gpus_per_node"] = run.nproc_per_node
    return layout
