"""A SIGKILLed run goes stale and `resume` finishes it from its checkpoint on the same loss
trajectory; the same sweep through a real single-node SLURM cluster and a local Ray cluster
gives the local backend's losses; a requeued SLURM job resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from parcae_scaling.db import Store
from parcae_scaling.model.train.loop import train_run
from parcae_scaling.sweeps import get_backend, launch, load_spec, mark_stale, plan, resume
from parcae_scaling.sweeps.backend_local import parse_job_id
from parcae_testing import ListSink, tiny_sweep_spec

LONG = {"budgets_flops": [3e10], "mu_rec": [2], "baselines": []}  # ~150 steps, checkpoint every 10


def _reference_losses(spec_path: Path, tmp: Path) -> dict[int, float]:
    """The uninterrupted trajectory: the same RunSpec trained in-process, elsewhere."""
    run = plan(load_spec(spec_path)).runs[0].run
    sink = ListSink()
    train_run(run.replace(output_dir=str(tmp / "reference")), sink)
    return sink.losses()


def _losses(url: str, sweep: str) -> dict[int, float]:
    with Store.open(url) as store:
        h = store.metric_history(sweep=sweep, names=["loss"])
    return dict(zip(h["step"].tolist(), h["value"].tolist()))


def _launch_detached(spec_path: Path, url: str, backend: str = "local") -> None:
    out = subprocess.run([sys.executable, "-c", "from parcae_scaling.cli import sweep_app; sweep_app()", "launch",
                          str(spec_path), "--store", url, "--backend", backend, "--detach", "--heartbeat", "0.5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def _step(url: str, sweep: str) -> int:
    with Store.open(url) as store:
        h = store.metric_history(sweep=sweep, names=["loss"])
    return int(h["step"].max()) if len(h) else 0


def test_sigkilled_run_is_detected_stale_and_resumes_on_the_same_trajectory(
        write_spec, tiny_spec, store_url, tmp_path, wait_for) -> None:  # noqa: ANN001
    path = write_spec(tiny_spec(**LONG))
    _launch_detached(path, store_url)
    wait_for(lambda: _step(store_url, "tiny") >= 30, what="30 steps")
    with Store.open(store_url) as store:
        job_id = store.runs("tiny")["job_id"].iloc[0]
        _, pid = parse_job_id(job_id)  # type: ignore[misc]
        os.kill(pid, signal.SIGKILL)
        time.sleep(3)
        assert store.runs("tiny")["status"].iloc[0] == "running"  # nobody told the store
        lost = mark_stale(store, "tiny", stale_after_s=2, heartbeat_s=0.5)
        runs = store.runs("tiny")
        assert lost == list(runs["run_id"]) and runs["failure_kind"].iloc[0] == "node_lost"
        rep = resume(store, "tiny", get_backend("local"), store_url=store_url, heartbeat_s=0.5, stale_after_s=60)
        assert rep.dispatched == tuple(runs["run_id"]) and rep.unfinished == ()
        runs = store.runs("tiny")
        assert runs["status"].iloc[0] == "succeeded" and runs["attempt"].iloc[0] == 2
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "tiny" / "_logs").glob("*.log"))
    assert "resumes from its checkpoint at step" in logs and "at step 0" not in logs
    got, want = _losses(store_url, "tiny"), _reference_losses(path, tmp_path)
    assert sorted(got) == sorted(want) and got == want  # bit-identical on CPU


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, tiny_spec) -> tuple[dict[str, Any], dict]:  # noqa: ANN001
    spec = tiny_spec(mu_rec=[1, 2], baselines=[])
    tmp = tmp_path_factory.mktemp("local")
    spec["output_root"] = str(tmp / "runs")
    import yaml

    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp / 'local.sqlite'}"
    with Store.open(url) as store:
        launch(plan(load_spec(tmp / "spec.yaml")), store, get_backend("local"), store_url=url, heartbeat_s=1)
    return spec, url


@pytest.fixture(scope="module")
def tiny_spec():  # noqa: ANN201  (module scope: the sweeps conftest fixture is function-scoped)
    return tiny_sweep_spec


@pytest.mark.slow
@pytest.mark.service
def test_slurm_backend_matches_local_losses(slurm_cluster, local_reference, write_spec, store_url,
                                            final_losses) -> None:  # noqa: ANN001
    spec, local_url = local_reference
    path = write_spec({k: v for k, v in spec.items() if k != "output_root"})
    with Store.open(store_url) as store:
        rep = launch(plan(load_spec(path)), store, get_backend("submitit"), store_url=store_url, heartbeat_s=1)
        assert len(rep.dispatched) == 2 and rep.unfinished == ()
        assert all(str(j).startswith("slurm:") for j in store.runs("tiny")["job_id"])
    assert final_losses(store_url, "tiny") == final_losses(local_url, "tiny")


@pytest.mark.slow
@pytest.mark.service
def test_requeued_slurm_job_resumes_from_its_checkpoint(slurm_cluster, write_spec, tiny_spec, store_url, tmp_path,
                                                        wait_for) -> None:  # noqa: ANN001
    path = write_spec(tiny_spec(**LONG))
    _launch_detached(path, store_url, backend="submitit")
    wait_for(lambda: _step(store_url, "tiny") >= 30, what="30 steps on SLURM")
    with Store.open(store_url) as store:
        job = store.runs("tiny")["job_id"].iloc[0].removeprefix("slurm:")
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: store.runs("tiny")["status"].iloc[0] == "succeeded", timeout_s=600, what="the requeued job")
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*_log.err"))
    assert "resumes from its checkpoint at step" in logs
    assert _losses(store_url, "tiny") == _reference_losses(path, tmp_path)


@pytest.mark.slow
@pytest.mark.service
def test_ray_backend_matches_local_losses(local_reference, write_spec, store_url, final_losses) -> None:  # noqa: ANN001
    ray = pytest.importorskip("ray")
    spec, local_url = local_reference
    path = write_spec({k: v for k, v in spec.items() if k != "output_root"})
    try:
        with Store.open(store_url) as store:
            rep = launch(plan(load_spec(path)), store, get_backend("ray"), store_url=store_url, heartbeat_s=1)
            assert len(rep.dispatched) == 2 and rep.unfinished == ()
            assert all(str(j).startswith("ray:") for j in store.runs("tiny")["job_id"])
    finally:
        ray.shutdown()
    assert final_losses(store_url, "tiny") == final_losses(local_url, "tiny")
