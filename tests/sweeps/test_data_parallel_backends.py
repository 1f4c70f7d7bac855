"""A 2-process run through a real single-node SLURM cluster (2 tasks, process group from SLURM's
environment) and through a local Ray cluster (2 Ray Train workers) trains the 1-process run's
trajectory, with rank 0 alone writing the store; a requeued 2-task SLURM job resumes from its
checkpoint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from parcae_scaling.db import Store
from parcae_scaling.sweeps import get_backend, launch, load_spec, plan

RTOL = 1e-5  # 2 ranks vs 1: only the order of float sums in the gradient all-reduce differs


def _losses(store: Store) -> dict[int, float]:
    h = store.metric_history(sweep="dp", names=["loss"])
    return dict(zip(h["step"].tolist(), h["value"].tolist()))


def _assert_matches_one_process(store: Store, path: Path, reference, tmp_path: Path) -> None:  # noqa: ANN001
    want, want_val = reference(path, tmp_path / "reference")
    got = _losses(store)
    assert sorted(got) == sorted(want)
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=RTOL), f"step {step}"
    final = store.final_losses("dp")
    assert final["status"].tolist() == ["succeeded"]
    assert float(final["eval_loss"].iloc[0]) == pytest.approx(want_val, rel=RTOL)


def _assert_rank0_wrote_once(audit: dict, run) -> None:  # noqa: ANN001
    assert audit["statuses"] == ["pending", "running", "succeeded"]
    assert audit["metric_writes"] == {1}
    assert audit["eval_writes"] == {t: 1 for t in run.recurrences_to_evaluate()}


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.timeout(900)
def test_two_task_slurm_run_matches_one_process(slurm_cluster, write_spec, dp_spec, store_url, tmp_path, write_audit,
                                                one_process_reference) -> None:  # noqa: ANN001
    path = write_spec(dp_spec(2.5e9))
    p = plan(load_spec(path))
    with Store.open(store_url) as store:
        write_audit.install(store)
        rep = launch(p, store, get_backend("submitit"), store_url=store_url, heartbeat_s=1)
        assert rep.unfinished == () and rep.final == {"succeeded": 1}
        job = store.runs("dp")["job_id"].iloc[0]
        assert re.fullmatch(r"slurm:\d+", job)
        _assert_rank0_wrote_once(write_audit.read(store), p.runs[0].run)
        _assert_matches_one_process(store, path, one_process_reference, tmp_path)
    logs = tmp_path / "runs" / "dp" / "_logs" / "submitit"
    script = (logs / f"{job.removeprefix('slurm:')}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script
    assert sorted(f.name for f in logs.glob("*_result.pkl")) == [f"{job.removeprefix('slurm:')}_{t}_result.pkl"
                                                               for t in (0, 1)]  # one task per rank, both ended


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.timeout(1200)
def test_requeued_two_task_slurm_job_resumes_from_its_checkpoint(slurm_cluster, write_spec, dp_spec, store_url,
                                                                 tmp_path, wait_for, one_process_reference) -> None:  # noqa: ANN001
    path = write_spec(dp_spec(1.2e10))
    out = subprocess.run([sys.executable, "-c", "from parcae_scaling.cli import sweep_app; sweep_app()", "launch",
                          str(path), "--store", store_url, "--backend", "submitit", "--detach", "--heartbeat", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    with Store.open(store_url) as store:
        wait_for(lambda: max(_losses(store) or {0: 0}) >= 12, what="12 steps on SLURM (a checkpoint at 10)")
        job = store.runs("dp")["job_id"].iloc[0].removeprefix("slurm:")
        req = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        assert req.returncode == 0, req.stderr
        wait_for(lambda: store.runs("dp")["status"].iloc[0] == "succeeded", timeout_s=900, what="the requeued job")
        _assert_matches_one_process(store, path, one_process_reference, tmp_path)
    logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "runs").rglob("*_0_log.err"))
    resumed = [int(s) for s in re.findall(r"resumes from its checkpoint at step (\d+)", logs)]
    assert resumed and resumed[0] >= 10  # the restarted job picked up the checkpoint, not step 0


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.timeout(900)
def test_two_worker_ray_sweep_run_matches_one_process(write_spec, dp_spec, store_url, tmp_path, write_audit,
                                                      one_process_reference) -> None:  # noqa: ANN001
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    path = write_spec(dp_spec(2.5e9))
    p = plan(load_spec(path))
    try:
        with Store.open(store_url) as store:
            write_audit.install(store)
            rep = launch(p, store, get_backend("ray"), store_url=store_url, heartbeat_s=1)
            assert rep.unfinished == () and rep.final == {"succeeded": 1}
            assert store.runs("dp")["job_id"].iloc[0].startswith("ray:")
            _assert_rank0_wrote_once(write_audit.read(store), p.runs[0].run)
            _assert_matches_one_process(store, path, one_process_reference, tmp_path)
    finally:
        ray.shutdown()
