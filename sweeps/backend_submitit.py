"""The submitit backend: SLURM job arrays through submitit, requeued on timeout and preemption.

Each run is a `SlurmRun` (a submitit `Checkpointable`): on the timeout/preemption signal submitit
pickles it and requeues the job, and on restart the worker resumes from the run's last periodic
checkpoint. `scontrol requeue` (SIGTERM, then a restart) takes the same path. Native states come
from `squeue` (never `sacct`, which needs accounting storage); a job squeue no longer lists has
ended, and the store says how.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

import submitit
from submitit.helpers import Checkpointable

from parcae_scaling.db import RunStatus
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.backend import BackendError, DispatchOptions, JobHandle

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


class SlurmRun(Checkpointable):
    """The pickled callable of one SLURM job: run the RunSpec into the store."""

    def __init__(self, spec: dict, store_url: str, torch_threads: int, heartbeat_s: float) -> None:
        self.spec, self.store_url = spec, store_url
        self.torch_threads, self.heartbeat_s = torch_threads, heartbeat_s

    def __call__(self) -> str:
        from parcae_scaling.sweeps.worker import execute_run

        job = submitit.JobEnvironment()
        status = execute_run(RunSpec.from_dict(self.spec), self.store_url, job_id=f"slurm:{job.job_id}",
                             torch_threads=self.torch_threads, heartbeat_s=self.heartbeat_s)
        return status.value


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
        params: dict[str, object] = dict(
            timeout_min=r.time_limit_min, cpus_per_task=r.cpus_per_run, mem_gb=r.mem_gb,
            slurm_array_parallelism=r.max_concurrent, name="parcae-sweep",
        )
        if r.gpus_per_run:
            params["gpus_per_node"] = r.gpus_per_run
        if self.partition or r.partition:
            params["slurm_partition"] = self.partition or r.partition
        executor.update_parameters(**params)
        try:
            with executor.batch():
                jobs = [executor.submit(SlurmRun(run.to_dict(), options.store_url, r.torch_threads, options.heartbeat_s))
                        for run in runs]
        except Exception as exc:  # sbatch missing, bad partition, ...
            raise BackendError(f"submitit could not submit to SLURM: {exc}; check `sinfo` and the partition") from exc
        return [JobHandle(run_id=run.run_id, backend=self.name, job_id=f"slurm:{job.job_id}") for run, job in zip(runs, jobs)]

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
