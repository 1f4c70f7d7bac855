"""Launch on the local backend: fills the store, concurrent and repeated launches never
duplicate a run, the config-drift guard, and cancel."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app

from parcae_scaling.db import RunStatus, Store
from parcae_scaling.sweeps import ConfigDriftError, cancel, get_backend, launch, load_spec, plan, record_plan
from parcae_scaling.sweeps.backend_local import _pid_alive, longest_first, parse_job_id


def _launch_cli(spec_path, store_url, *extra: str) -> subprocess.Popen[str]:  # noqa: ANN001
    cmd = [
        sys.executable, "-c", "from parcae_scaling.cli import sweep_app; sweep_app()",
        "launch", str(spec_path), "--store", store_url, "--heartbeat", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_concurrent_and_repeated_launches_run_each_run_once(write_spec, tiny_spec, store_url) -> None:  # noqa: ANN001
    path = write_spec(tiny_spec())
    procs = [_launch_cli(path, store_url), _launch_cli(path, store_url)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dispatched = sum(int(o.split(" dispatched")[0].rsplit(",", 1)[1].split()[0]) for o in outs)
    assert dispatched == 3, outs  # each run claimed by exactly one of the two launches
    with Store.open(store_url) as store:
        runs = store.runs("tiny")
        assert (runs["status"] == "succeeded").all() and (runs["attempt"] == 1).all()
        curves = store.test_time_curves("tiny")
        looped = curves[curves["mu_rec"] == 2]
        assert sorted(looped["recurrence"].unique()) == [1, 2, 3, 4]  # evals at T = 1 ... 2 mu_rec
        assert store.final_losses("tiny")["eval_loss"].notna().all()
        again = launch(plan(load_spec(path)), store, get_backend("local"), store_url=store_url)
        assert again.dispatched == () and again.newly_recorded == 0
        assert (store.runs("tiny")["attempt"] == 1).all()
    shown = CliRunner().invoke(sweep_app, ["status", "tiny", "--store", store_url])
    assert shown.exit_code == 0 and "succeeded  3" in shown.output, shown.output
    for run_id in runs["run_id"]:
        assert run_id in shown.output


def test_config_drift_is_refused_unless_allowed(write_spec, tiny_spec, store_url) -> None:  # noqa: ANN001
    with Store.open(store_url) as store:
        assert record_plan(store, plan(load_spec(write_spec(tiny_spec())))) == 3
        changed = plan(load_spec(write_spec(tiny_spec(mu_rec=[1, 2, 4]), "changed.yaml")))
        with pytest.raises(ConfigDriftError, match="mu_rec"):
            record_plan(store, changed)
        assert len(store.runs("tiny")) == 3  # nothing written
        assert record_plan(store, changed, allow_drift=True) == 1
        other = plan(load_spec(write_spec(tiny_spec(name="copy"), "copy.yaml")))
        with pytest.raises(ValueError, match="already recorded in sweep 'tiny'"):
            record_plan(store, other)


def test_cancel_stops_a_detached_run(write_spec, tiny_spec, store_url, wait_for) -> None:  # noqa: ANN001
    spec = tiny_spec(budgets_flops=[2e11], mu_rec=[2], baselines=[])
    path = write_spec(spec)
    p = _launch_cli(path, store_url, "--detach")
    assert p.wait(timeout=300) == 0, p.stdout.read() if p.stdout else ""
    with Store.open(store_url) as store:
        def running() -> bool:
            r = store.runs("tiny")
            return bool((r["status"] == "running").all() and str(r["job_id"].iloc[0]).startswith("pid:"))

        wait_for(running, what="the detached run to start")
        job_id = store.runs("tiny")["job_id"].iloc[0]
        assert cancel(store, "tiny") == list(store.runs("tiny")["run_id"])
        host, pid = parse_job_id(job_id)  # type: ignore[misc]
        wait_for(lambda: not _pid_alive(pid), timeout_s=120, what="the worker to exit")
        runs = store.runs("tiny")
        assert runs["status"].tolist() == [RunStatus.CANCELLED.value]
        assert runs["failure_kind"].tolist() == ["cancelled"]
        assert cancel(store, "tiny") == []  # nothing live any more


def test_a_backend_that_cannot_detach_refuses_before_claiming(write_spec, tiny_spec, store_url) -> None:  # noqa: ANN001
    with Store.open(store_url) as store:
        with pytest.raises(ValueError, match="cannot detach"):
            launch(plan(load_spec(write_spec(tiny_spec()))), store, get_backend("ray"),
                   store_url=store_url, detach=True)
        assert (store.runs("tiny")["status"] == RunStatus.PLANNED.value).all()  # still launchable
    with pytest.raises(ValueError, match="unknown backend 'slurm'"):
        get_backend("slurm")


def test_pool_queue_runs_the_longest_first(tiny_spec, write_spec) -> None:  # noqa: ANN001
    raw = tiny_spec(budgets_flops=[1e10, 4e10, 2e10])
    raw["recipe"] = {**raw["recipe"], "grad_accum_steps": 8}
    runs = [r.run for r in plan(load_spec(write_spec(raw))).runs]
    queued = longest_first(runs)
    assert sorted(r.run_id for r in queued) == sorted(r.run_id for r in runs)
    assert [r.budget_flops for r in queued] == sorted((r.budget_flops for r in runs), reverse=True)
    spread = [r.with_world_size(8) if r.budget_flops == 4e10 else r for r in runs]  # 8 processes: 1/8 the wall time
    assert {r.budget_flops for r in longest_first(spread)[-3:]} == {4e10}
