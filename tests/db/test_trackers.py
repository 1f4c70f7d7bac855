"""db/trackers.py against the real libraries: what a run logs through `TrackerSink` is what W&B
(offline), MLflow (SQLite tracking store) and TensorBoard (event files) read back, and a tracker
that fails never fails the run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, get_args

import pytest

from parcae_scaling.db.files import RunDirSink, read_run_dir
from parcae_scaling.db.trackers import MLFLOW_DB, TRACKERS, TrackerSink, eval_values, run_tags
from parcae_scaling.model.config import get_config
from parcae_scaling.model.contracts import EvalRow, RunStatus
from parcae_scaling.model.run_spec import RunSpec, TrackerName, TrackingSpec
from tracker_readers import mlflow_history, mlflow_run, tensorboard_scalars, tensorboard_texts, wandb_runs

LOSSES = {5: 5.25, 10: 4.5, 15: 3.875}
EVALS = [EvalRow(recurrence=1, split="val", loss=4.25, tokens=512), EvalRow(recurrence=2, split="val", loss=3.5,
                                                                           tokens=512)]
PROVENANCE = {"package_version": "0.1.0", "host": "node-7", "torch": "2.13.0", "threads": 2}


def _run(out: Path, trackers: tuple[str, ...], where: Path, **tracking: Any) -> RunSpec:
    return RunSpec(model=get_config("parcae-tiny-48", seq_len=32, mu_rec=2, mu_bwd=1), output_dir=str(out),
                   budget_flops=1e10, batch_size=8, eval_tokens=512, metrics_every_steps=5,
                   tracking=TrackingSpec(trackers=trackers, sweep="trk", dir=str(where), **tracking))  # type: ignore[arg-type]


def _log_a_run(run: RunSpec, sink: TrackerSink) -> None:
    """What the training loop sends, in its order."""
    with sink:
        sink.log_provenance(run.run_id, PROVENANCE)
        sink.update_status(run.run_id, RunStatus.RUNNING, step=0)
        for step, loss in LOSSES.items():
            sink.log_metrics(run.run_id, step, {"loss": loss, "lr": 1e-3 * step})
        sink.log_evals(run.run_id, EVALS)
        sink.update_status(run.run_id, RunStatus.SUCCEEDED, step=15)


@pytest.fixture(scope="module")
def tracking_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tracking directory for the module: MLflow's database is made once (its schema set-up
    takes seconds)."""
    return tmp_path_factory.mktemp("tracking")


def test_the_registry_implements_every_tracker_a_spec_can_name() -> None:
    assert set(TRACKERS) == set(get_args(TrackerName))


def test_wandb_reads_back_the_run_offline_whatever_the_environment_says(tmp_path, tracking_dir, monkeypatch) -> None:
    # An online mode and an unreachable server in the environment: the toolkit forces offline,
    # so the run still lands in an offline run directory (online, init would have failed).
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = _run(tmp_path / "run", ("wandb",), tracking_dir)
    sink = TrackerSink(run)
    assert sink.active == ("wandb",)
    _log_a_run(run, sink)
    got = wandb_runs(tracking_dir)[run.run_id]
    assert got.history["loss"] == LOSSES
    assert {k: v[15] for k, v in got.history.items() if k.startswith("eval/")} == eval_values(EVALS)
    assert (got.name, got.project, got.group) == (run.run_id, "trk", "trk")
    assert {"sweep:trk", "mu_rec:2", "budget:1e+10 FLOPs", f"model:{run.model.name}"} <= set(got.tags)
    assert got.config["spec"]["model"]["d_model"] == run.model.d_model and got.config["mu_rec"] == "2"
    assert got.config["provenance"]["host"] == "node-7"
    assert got.exit_code == 0


def test_mlflow_reads_back_the_run_from_its_sqlite_store(tmp_path, tracking_dir) -> None:
    run = _run(tmp_path / "run", ("mlflow",), tracking_dir)
    _log_a_run(run, TrackerSink(run))
    uri = f"sqlite:///{tracking_dir / MLFLOW_DB}"
    assert mlflow_history(uri, "trk", run.run_id, "loss") == LOSSES
    for name, value in eval_values(EVALS).items():
        assert mlflow_history(uri, "trk", run.run_id, name) == {15: value}
    got = mlflow_run(uri, "trk", run.run_id)
    assert got.info.run_name == run.run_id and got.info.status == "FINISHED"
    assert {k: got.data.tags[k] for k in run_tags(run)} == run_tags(run)
    assert got.data.params["model.d_model"] == str(run.model.d_model)
    assert got.data.params["budget_flops"] == "10000000000.0"
    assert got.data.tags["provenance.host"] == "node-7"


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, tracking_dir) -> None:
    run = _run(tmp_path / "run", ("mlflow",), tracking_dir)
    uri = f"sqlite:///{tracking_dir / MLFLOW_DB}"
    with TrackerSink(run) as first:  # stopped before it ended: KILLED
        first.log_metrics(run.run_id, 5, {"loss": 5.25})
    assert mlflow_run(uri, "trk", run.run_id).info.status == "KILLED"
    _log_a_run(run, TrackerSink(run))  # the resume: one MLflow run, not two
    assert mlflow_run(uri, "trk", run.run_id).info.status == "FINISHED"
    assert set(mlflow_history(uri, "trk", run.run_id, "loss")) == set(LOSSES)


def test_tensorboard_reads_back_the_run_from_its_event_files(tmp_path, tracking_dir) -> None:
    run = _run(tmp_path / "run", ("tensorboard",), tracking_dir)
    _log_a_run(run, TrackerSink(run))
    logdir = tracking_dir / "tensorboard" / run.run_id
    scalars = tensorboard_scalars(logdir)
    assert scalars["loss"] == pytest.approx(LOSSES, rel=1e-6)  # event files hold float32
    assert {k: v[15] for k, v in scalars.items() if k.startswith("eval/")} == pytest.approx(eval_values(EVALS))
    texts = tensorboard_texts(logdir)
    assert run.run_id in texts["run"] and '"host": "node-7"' in texts["provenance"]


def test_tensorboard_replaces_the_steps_a_resume_replays(tmp_path) -> None:
    run = _run(tmp_path / "run", ("tensorboard",), tmp_path / "tracking")
    with TrackerSink(run) as first:  # killed after step 15; the last checkpoint was at step 10
        for step in (5, 10, 15):
            first.log_metrics(run.run_id, step, {"loss": 9.0})
    with TrackerSink(run) as resumed:
        for step in (15, 20):
            resumed.log_metrics(run.run_id, step, {"loss": 1.0})
    assert tensorboard_scalars(tmp_path / "tracking" / "tensorboard" / run.run_id)["loss"] == {
        5: 9.0, 10: 9.0, 15: 1.0, 20: 1.0}


class _Flaky:
    """A tracker whose backend breaks at its third metrics call."""

    def __init__(self) -> None:
        self.calls, self.closed = 0, False

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.calls += 1
        if self.calls > 2:
            raise ConnectionError("tracking server\nwent away")

    def log_evals(self, step: int, values: Mapping[str, float]) -> None:
        raise AssertionError("never called once switched off")

    def log_provenance(self, record: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: RunStatus | None) -> None:
        self.closed = True


def test_a_tracker_that_raises_mid_run_is_switched_off_and_the_run_trains_on(tmp_path, capfd) -> None:
    from parcae_scaling.model.train.loop import train_run

    run = _run(tmp_path / "run", ("tensorboard",), tmp_path / "tracking").replace(
        tokens=6 * 8 * 32, budget_flops=None, metrics_every_steps=1, eval_recurrences=(2,), eval_tokens=256)
    flaky = _Flaky()
    tensorboard = TRACKERS["tensorboard"](run, tmp_path / "tracking")

    class Both:  # the run directory and the trackers, as the worker's tee composes them
        def __init__(self, files: RunDirSink, trackers: TrackerSink) -> None:
            self.sinks = (files, trackers)

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: [getattr(s, name)(*a, **k) for s in self.sinks][-1]

    with RunDirSink(run.output_dir) as files, TrackerSink(run, trackers={"flaky": flaky,
                                                                         "tensorboard": tensorboard}) as trackers:
        result = train_run(run, Both(files, trackers))
        assert trackers.active == ("tensorboard",)
    assert result.status is RunStatus.SUCCEEDED and flaky.closed
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("parcae tracking:")]
    assert warnings == [f"parcae tracking: flaky is off for the rest of run {run.run_id}: log_metrics failed "
                        "(ConnectionError: tracking server went away); training goes on and the store keeps "
                        "every number"]
    stored = {step: v for _, step, name, v in read_run_dir(Path(run.output_dir)).metrics if name == "loss"}
    assert sorted(stored) == [1, 2, 3, 4, 5, 6]
    assert tensorboard_scalars(tmp_path / "tracking" / "tensorboard" / run.run_id)["loss"] == pytest.approx(
        stored, rel=1e-6)


def test_a_tracker_that_cannot_start_is_one_warning_and_the_others_run(tmp_path, capfd, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as on a node without the library: import fails
    (tmp_path / "a file").write_text("not a directory")
    run = _run(tmp_path / "run", ("wandb", "mlflow", "tensorboard"), tmp_path / "tracking",
               mlflow_uri=f"sqlite:///{tmp_path / 'a file' / 'mlflow.db'}")  # a store that cannot be made
    sink = TrackerSink(run)
    assert sink.active == ("tensorboard",)
    _log_a_run(run, sink)
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("parcae tracking:")]
    assert len(err) == 2
    assert err[0].startswith(f"parcae tracking: wandb is off for the rest of run {run.run_id}: start failed "
                             "(its library is missing on this node")
    assert "pip install 'parcae-scaling[tracking]'" in err[0]
    assert err[1].startswith(f"parcae tracking: mlflow is off for the rest of run {run.run_id}: start failed (")
    assert tensorboard_scalars(tmp_path / "tracking" / "tensorboard" / run.run_id)["loss"] == LOSSES
