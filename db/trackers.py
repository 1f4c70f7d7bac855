"""Experiment trackers: a run's metrics, evals and provenance also sent to Weights & Biases,
MLflow or TensorBoard, beside the store, which stays the record.

A sweep asks for them with `tracking: [wandb, mlflow, tensorboard]` (RunSpec.tracking, not part
of the run id). One small class per tracker, chosen from `TRACKERS`; `TrackerSink` is the
MetricsSink over the ones a run names. A tracker is never allowed to fail or stall a run: the
first exception a tracker raises (at start, or at any later call) prints one warning line and
switches that tracker off for the rest of the run; training and the store go on.

Where the data goes (TrackingSpec.dir; a sweep's default is `<output_root>/<sweep>/tracking`):

    tensorboard/<run id>/events.out.tfevents.*   tensorboard --logdir <dir>/tensorboard
    wandb/offline-run-<time>-<run id>/           wandb sync <dir>/wandb/offline-run-*
    mlflow.db                                    mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db

W&B always runs offline (mode forced here, whatever WANDB_MODE says): a worker never waits on
the network, and `wandb sync` uploads the runs when wanted. MLflow writes to `mlflow.db`
(SQLite; MLflow refuses its old file store) unless TrackingSpec.mlflow_uri names another
tracking store, e.g. a server. Each tracker run is named by the run id and carries the run's
spec (W&B config, MLflow params, TensorBoard text) and the tags sweep, model, mu_rec, budget,
seed. Metrics keep the store's names at the optimizer step; evals are `eval/<split>_loss_T<T>`
at the last step. After a resume, a tracker may show the steps between the last checkpoint and
the interruption twice (TensorBoard purges them); the store keeps each step once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from parcae_scaling.model.contracts import EvalRow, RunStatus
from parcae_scaling.model.run_spec import RunSpec

TRACKING_EXTRA = "pip install 'parcae-scaling[tracking]'"
TRACKING_SUBDIR = "tracking"  # under a run's output directory when TrackingSpec.dir is unset
MLFLOW_DB = "mlflow.db"
MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call


class Tracker(Protocol):
    """One open tracker run (the run id is fixed when it opens)."""

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_evals(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_provenance(self, record: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self, status: RunStatus | None) -> None:
        """End the tracker run; `status` is the last one the run reported (None: none final)."""


def tracking_dir(run: RunSpec) -> Path:
    return Path(run.tracking.dir) if run.tracking.dir else Path(run.output_dir) / TRACKING_SUBDIR


def run_tags(run: RunSpec) -> dict[str, str]:
    """What a tracker run is filtered and grouped by."""
    budget = f"{run.budget_flops:g} FLOPs" if run.budget_flops is not None else f"{run.tokens} tokens"
    return {"run_id": run.run_id, "sweep": run.tracking.sweep, "model": run.model.name,
            "mu_rec": str(run.mu_rec), "budget": budget, "seed": str(run.seed)}


def eval_values(rows: Sequence[EvalRow]) -> dict[str, float]:
    return {f"eval/{r.split}_loss_T{r.recurrence}": float(r.loss) for r in rows}


def spec_record(run: RunSpec) -> dict[str, Any]:
    """The run's spec as trackers show it (its tracking settings are not part of the run)."""
    d = run.to_dict()
    d.pop("tracking", None)
    return d


def missing_packages(names: Sequence[str]) -> list[tuple[str, str]]:
    """(tracker, package) for each named tracker whose library is not importable here."""
    return [(n, TRACKERS[n].package) for n in names if importlib.util.find_spec(TRACKERS[n].package) is None]


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


class WandbTracker:
    """A W&B run in offline mode under `<dir>/wandb/` (named and identified by the run id)."""

    package = "wandb"

    def __init__(self, run: RunSpec, where: Path) -> None:
        import wandb

        where.mkdir(parents=True, exist_ok=True)
        tags = run_tags(run)
        self._run = wandb.init(
            mode="offline", dir=str(where), project=run.tracking.sweep or "parcae-scaling",
            group=run.tracking.sweep or None, name=run.run_id, id=run.run_id, reinit="create_new",
            config={**tags, "spec": spec_record(run)},
            tags=[f"{k}:{v}"[:64] for k, v in tags.items() if k != "run_id"],  # W&B's limit: 64 characters
            settings=wandb.Settings(mode="offline", console="off", x_disable_stats=True, disable_git=True,
                                    save_code=False, silent=True),
        )
        self._step = 0

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        self._step = max(self._step, step)
        self._run.log(dict(values), step=step)

    def log_evals(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=max(self._step, step))  # W&B steps only grow

    def log_provenance(self, record: Mapping[str, Any]) -> None:
        self._run.config.update({"provenance": dict(record)}, allow_val_change=True)

    def flush(self) -> None:
        pass  # the W&B service writes as it goes

    def close(self, status: RunStatus | None) -> None:
        import wandb

        self._run.finish(exit_code=0 if status is RunStatus.SUCCEEDED else 1)
        # finish() returns before W&B's service has written the run's file; its teardown waits
        # for it, so the offline run is complete when the run reports its end (one run per worker).
        wandb.teardown()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise processes that create the same MLflow database (its schema set-up is not safe
    to run twice at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


# RunStatus -> MLflow's RunStatus names; anything not final ends as KILLED (the store says why).
_MLFLOW_END = {RunStatus.SUCCEEDED: "FINISHED", RunStatus.FAILED: "FAILED", RunStatus.DIVERGED: "FAILED"}


class MlflowTracker:
    """An MLflow run in the experiment named after the sweep, found again by its run_id tag on a
    resume; the run spec as params, the tags as tags, provenance as `provenance.*` tags."""

    package = "mlflow"

    def __init__(self, run: RunSpec, where: Path) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        own_db = run.tracking.mlflow_uri is None
        uri = f"sqlite:///{(where / MLFLOW_DB).resolve()}" if own_db else str(run.tracking.mlflow_uri)
        experiment = run.tracking.sweep or "parcae-scaling"
        with _file_lock(where / (MLFLOW_DB + ".lock")):
            self._client = MlflowClient(tracking_uri=uri)
            found = self._client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self._client.create_experiment(
                experiment, artifact_location=(where / "mlflow-artifacts").resolve().as_uri() if own_db else None)
            previous = self._client.search_runs([exp_id], filter_string=f"tags.run_id = '{run.run_id}'",
                                                max_results=1)
            if previous:  # a resumed run continues its tracker run
                self._id = previous[0].info.run_id
                self._client.update_run(self._id, status="RUNNING")
                return
            self._id = self._client.create_run(exp_id, run_name=run.run_id, tags=run_tags(run)).info.run_id
        params = [Param(k, v[:6000]) for k, v in _flat(spec_record(run)).items()]
        for i in range(0, len(params), MLFLOW_BATCH):
            self._client.log_batch(self._id, params=params[i:i + MLFLOW_BATCH])

    def _log(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self._id, metrics=[Metric(k, float(v), now, int(step)) for k, v in values.items()])

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        self._log(step, values)

    def log_evals(self, step: int, values: Mapping[str, float]) -> None:
        self._log(step, values)

    def log_provenance(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self._id, tags=[RunTag(f"provenance.{k}", v[:5000])
                                               for k, v in _flat(record).items()])

    def flush(self) -> None:
        pass  # every call is its own transaction

    def close(self, status: RunStatus | None) -> None:
        self._client.set_terminated(self._id, status=_MLFLOW_END.get(status, "KILLED"))  # type: ignore[arg-type]


def _markdown_json(value: Any) -> str:
    """JSON as a Markdown code block (TensorBoard renders text as Markdown)."""
    return "\n".join("    " + line for line in json.dumps(value, indent=2, default=str).splitlines())


class TensorBoardTracker:
    """Event files under `<dir>/tensorboard/<run id>/` (torch's SummaryWriter). The writer opens
    at the first metrics with purge_step = that step, so a resumed run's replayed steps replace
    the ones logged before the interruption."""

    package = "tensorboard"

    def __init__(self, run: RunSpec, where: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._open = SummaryWriter
        self._logdir = where / "tensorboard" / run.run_id
        self._writer: Any = None
        self._texts = [("run", _markdown_json({**run_tags(run), "spec": spec_record(run)}))]

    def _w(self, purge_step: int | None = None) -> Any:
        if self._writer is None:
            self._writer = self._open(log_dir=str(self._logdir), purge_step=purge_step)
            for tag, text in self._texts:
                self._writer.add_text(tag, text)
        return self._writer

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        w = self._w(purge_step=step)
        for k, v in values.items():
            w.add_scalar(k, float(v), step)

    def log_evals(self, step: int, values: Mapping[str, float]) -> None:
        self.log_metrics(step, values)

    def log_provenance(self, record: Mapping[str, Any]) -> None:
        if self._writer is None:
            self._texts.append(("provenance", _markdown_json(dict(record))))
        else:
            self._writer.add_text("provenance", _markdown_json(dict(record)))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, status: RunStatus | None) -> None:
        self._w().close()  # a run that logged nothing still leaves its spec


TRACKERS: dict[str, Any] = {"wandb": WandbTracker, "mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}


class TrackerSink:
    """MetricsSink over a run's trackers; never raises an Exception (see the module docstring).

    `trackers` (name -> open Tracker) replaces opening the ones `run.tracking` names (tests)."""

    def __init__(self, run: RunSpec, *, trackers: Mapping[str, Tracker] | None = None) -> None:
        self.run = run
        self._live: dict[str, Tracker] = {}
        self._step = 0
        self._status: RunStatus | None = None
        if trackers is not None:
            self._live.update(trackers)
            return
        where = tracking_dir(run)
        for name in run.tracking.trackers:
            try:
                self._live[name] = TRACKERS[name](run, where)
            except ImportError as exc:
                self._warn(name, "start", f"its library is missing on this node ({_one_line(exc)}; {TRACKING_EXTRA})")
            except Exception as exc:
                self._warn(name, "start", _one_line(exc))

    @property
    def active(self) -> tuple[str, ...]:
        """The trackers still receiving this run."""
        return tuple(self._live)

    def _warn(self, name: str, what: str, why: str) -> None:
        print(f"parcae tracking: {name} is off for the rest of run {self.run.run_id}: {what} failed ({why}); "
              "training goes on and the store keeps every number", file=sys.stderr, flush=True)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self._live.items()):
            try:
                call(tracker)
            except Exception as exc:
                del self._live[name]
                self._warn(name, what, _one_line(exc))
                with contextlib.suppress(Exception):
                    tracker.close(None)

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self._step = max(self._step, int(step))
        self._each("log_metrics", lambda t: t.log_metrics(int(step), values))

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        values = eval_values(rows)
        self._each("log_evals", lambda t: t.log_evals(self._step, values))

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        self._each("log_provenance", lambda t: t.log_provenance(record))

    def update_status(self, run_id: str, status: RunStatus, *, step: int | None = None,
                      message: str | None = None) -> None:
        self._status = RunStatus(status)

    def flush(self) -> None:
        self._each("flush", lambda t: t.flush())

    def close(self) -> None:
        live, self._live = self._live, {}
        for name, tracker in live.items():
            try:
                tracker.close(self._status)
            except Exception as exc:
                self._warn(name, "close", _one_line(exc))

    def __enter__(self) -> TrackerSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
