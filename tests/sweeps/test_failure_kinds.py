"""How an interrupted SLURM job is recorded: the time limit (timeout) apart from a preemption.

submitit calls `SlurmRun.checkpoint` on SLURM's signal and then exits the process (SystemExit) to
requeue it, or raises UncompletedJobError once it stops requeueing; the worker stores the kind.
"""

from __future__ import annotations

import time

import pytest
from submitit.core.utils import UncompletedJobError

from parcae_scaling.db import RunStatus, Store
from parcae_scaling.sweeps import load_spec, plan
from parcae_scaling.sweeps.backend_submitit import SlurmRun, slurm_timed_out
from parcae_scaling.sweeps.claims import RETRYABLE_KINDS
from parcae_scaling.sweeps.launch import record_plan
from parcae_scaling.sweeps.worker import execute_run


def test_timed_out_rule_matches_submitit() -> None:
    # 60 min limit: guaranteed walltime min(48, 50) min; 10 min limit: min(8, 0) = 0 min.
    assert not slurm_timed_out(47 * 60, 60) and slurm_timed_out(48 * 60, 60)
    assert slurm_timed_out(1, 10)


def _slurm_run(timeout_min: float, ran_s: float) -> SlurmRun:
    job = SlurmRun({}, "sqlite://", 1, 10.0, timeout_min)
    job._started = time.time() - ran_s
    return job


def test_slurm_signal_late_in_the_job_is_a_timeout_early_is_a_preemption() -> None:
    late, early = _slurm_run(60, 55 * 60), _slurm_run(60, 5 * 60)
    for job in (late, early):
        job.checkpoint()  # what submitit calls before it requeues
    assert late.interruption_kind(SystemExit(-1)) == "timeout"
    assert early.interruption_kind(SystemExit(-1)) == "preempted"
    assert late.interruption_kind(UncompletedJobError("timed-out too many times")) == "timeout"
    assert early.interruption_kind(UncompletedJobError("checkpoint failed")) is None  # the worker classifies it
    assert late.interruption_kind(ValueError("bad")) is None


@pytest.mark.parametrize(("exc", "status", "kind"), [
    (SystemExit(-1), RunStatus.PREEMPTED, "timeout"),  # requeued by submitit: the job restarts itself
    (UncompletedJobError("timed-out too many times"), RunStatus.FAILED, "timeout"),  # given up: resume retries
])
def test_worker_records_the_timeout_kind(exc: BaseException, status: RunStatus, kind: str, write_spec, tiny_spec,  # noqa: ANN001
                                         store_url: str) -> None:
    p = plan(load_spec(write_spec(tiny_spec(mu_rec=[2], baselines=[]))))
    run = p.runs[0].run
    job = _slurm_run(10, 9 * 60)
    job.checkpoint()

    def interrupted_training(run, sink):  # noqa: ANN001, ANN202
        raise exc

    with Store.open(store_url) as store:
        record_plan(store, p)
        with pytest.raises(type(exc)):
            execute_run(run, store_url, job_id="slurm:1", train=interrupted_training,
                        interruption=job.interruption_kind)
        row = store.runs(p.sweep).set_index("run_id").loc[run.run_id]
    assert (row["status"], row["failure_kind"]) == (status.value, kind)
    assert kind in RETRYABLE_KINDS
