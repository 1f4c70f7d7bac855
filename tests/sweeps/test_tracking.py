"""`tracking:` in a sweep spec: parsed, carried by every RunSpec (not part of its id), checked
for installed libraries at plan/resume time, and composed into the worker's sink."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.db import RunStatus, Store
from parcae_scaling.db.trackers import TRACKERS
from parcae_scaling.model.run_spec import RunSpec, TrackingSpec
from parcae_scaling.sweeps import plan, spec_from_dict
from parcae_scaling.sweeps.launch import record_plan
from parcae_scaling.sweeps.worker import execute_run
from tracker_readers import tensorboard_scalars


def _spec(root: Path, **changes: object) -> dict[str, object]:
    return {"name": "trk", "models": ["parcae-tiny-48"], "model_overrides": {"seq_len": 32}, "tokens": [6 * 8 * 32],
            "mu_rec": [1, 2], "recipe": {"batch_size": 8, "eval_tokens": 256, "eval_recurrences": [1],
                                         "metrics_every_steps": 2},
            "output_root": str(root / "runs"), **changes}


def test_tracking_does_not_change_a_run_id(tmp_path) -> None:
    plain = plan(spec_from_dict(_spec(tmp_path)))
    tracked = plan(spec_from_dict(_spec(tmp_path, tracking={"trackers": ["wandb", "mlflow", "tensorboard"],
                                                            "dir": str(tmp_path / "elsewhere")})))
    assert [r.run_id for r in tracked.runs] == [r.run_id for r in plain.runs]
    for r in tracked.runs:
        assert r.run.run_id == r.run_id and r.run.tracking.trackers == ("wandb", "mlflow", "tensorboard")
        assert RunSpec.from_dict(r.record("trk").spec) == r.run  # what the worker reads back from the store
    assert all("tracking" not in r.record("trk").spec for r in plain.runs)  # untracked stored specs unchanged


def test_the_planner_names_the_sweep_and_puts_tracker_files_under_it(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = plan(spec_from_dict(_spec(tmp_path, tracking=["tensorboard"]))).runs[0].run.tracking
    assert default == TrackingSpec(trackers=("tensorboard",), sweep="trk", dir=str(tmp_path / "runs" / "trk" /
                                                                                    "tracking"))
    given = plan(spec_from_dict(_spec(tmp_path, tracking={"trackers": "mlflow", "dir": "tb",
                                                          "mlflow_uri": "http://mlflow:5000"}))).runs[0].run.tracking
    assert (given.trackers, given.dir, given.mlflow_uri) == (("mlflow",), str(tmp_path / "tb"), "http://mlflow:5000")
    assert plan(spec_from_dict(_spec(tmp_path))).runs[0].run.tracking == TrackingSpec()


def test_a_tracker_library_missing_here_is_one_line_at_plan_time(write_spec, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(TRACKERS["wandb"], "package", "wandb_not_installed_here")  # as if absent
    path = write_spec(_spec(tmp_path, tracking=["tensorboard", "wandb"]))
    result = CliRunner().invoke(sweep_app, ["plan", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: {path}: tracking: the wandb tracker needs the wandb_not_installed_here package, which is not "
        "installed; pip install 'parcae-scaling[tracking]' (or drop wandb from tracking)"]


def test_the_worker_sends_the_runs_metrics_to_the_trackers_too(tmp_path, capfd) -> None:
    """In process: the worker's sink (sweeps/writer.run_sink) tees into TensorBoard, and an MLflow
    store that cannot be made is one warning line, not a failed run."""
    (tmp_path / "a file").write_text("")
    spec = spec_from_dict(_spec(tmp_path, mu_rec=[2], tracking={
        "trackers": ["tensorboard", "mlflow"], "mlflow_uri": f"sqlite:///{tmp_path / 'a file' / 'mlflow.db'}"}))
    p = plan(spec)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with Store.open(url) as store:
        record_plan(store, p)
    run = p.runs[0].run
    assert execute_run(run, url) is RunStatus.SUCCEEDED
    with Store.open(url) as store:
        h = store.metric_history(sweep="trk", names=["loss"])
    stored = {int(s): float(v) for s, v in zip(h["step"], h["value"])}
    assert sorted(stored) == [2, 4, 6]
    logdir = tmp_path / "runs" / "trk" / "tracking" / "tensorboard" / run.run_id
    assert tensorboard_scalars(logdir)["loss"] == pytest.approx(stored, rel=1e-6)
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("parcae tracking:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"parcae tracking: mlflow is off for the rest of run "
                                                         f"{run.run_id}: start failed")


def test_a_tracked_spec_round_trips_and_sweeps_recorded_before_tracking_are_not_drift(tmp_path, store_url) -> None:
    from parcae_scaling.sweeps.claims import sweep_spec

    tracked = spec_from_dict(_spec(tmp_path, tracking={"trackers": ["mlflow"], "mlflow_uri": "http://mlflow:5000"}))
    assert spec_from_dict(tracked.to_dict()) == tracked  # how the store records it and reads it back
    p = plan(spec_from_dict(_spec(tmp_path)))
    old = p.spec.to_dict()
    del old["tracking"]  # as recorded by the code before the field existed
    with Store.open(store_url) as store:
        store.record_sweep(p.sweep, old)
        assert record_plan(store, p) == len(p.runs)
        assert sweep_spec(store, p.sweep) == p.spec.to_dict()
