"""Export a recorded run of a sweep as safetensors + config.json (`parcae-sweep export-model`).

The store says which run it is (its sweep, status and spec); the run's output directory holds
the final checkpoint the weights come from (model/train/export.py does the writing).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from parcae_scaling.db import Store, UnknownRunError
from parcae_scaling.db.schema import Run
from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.model.train.checkpoint import checkpoint_paths
from parcae_scaling.model.train.export import ExportConfig, export_model


def _not_finished_fix(status: RunStatus, sweep: str) -> str:
    if status is RunStatus.DIVERGED:
        return f"its training diverged, so it has no usable weights; pick a succeeded run (parcae-sweep status {sweep})"
    if status in (RunStatus.FAILED, RunStatus.CANCELLED):
        return f"finish it first: parcae-sweep resume {sweep} --include-failed"
    if status is RunStatus.PREEMPTED:
        return f"finish it first: parcae-sweep resume {sweep}"
    return f"wait until it succeeds (parcae-sweep status {sweep}), then export it"


def export_run(store: Store, run_id: str, out_dir: str | Path, *, force: bool = False) -> ExportConfig:
    """Export the final weights of recorded run `run_id` to `out_dir` (see `export_model`).

    Refused, each with one line naming the fix: an id the store has not recorded, a run that has
    not succeeded, a run whose final checkpoint is gone, a non-empty `out_dir` without `force`."""
    with store.engine.connect() as conn:
        row = conn.execute(select(Run.sweep, Run.status, Run.spec).where(Run.id == run_id)).first()
    if row is None:
        where = store.engine.url.render_as_string(hide_password=True)
        raise UnknownRunError(f"run {run_id!r} is not recorded in {where}; run ids are listed by "
                              "parcae-sweep status SWEEP")
    sweep, status = row.sweep, RunStatus(row.status)
    if status is not RunStatus.SUCCEEDED:
        raise ValueError(f"run {run_id} of sweep {sweep} is {status.value}, not succeeded; "
                         f"{_not_finished_fix(status, sweep)}")
    spec = RunSpec.from_dict(row.spec)
    checkpoint = checkpoint_paths(spec.output_dir)[0]
    if not checkpoint.is_file():
        raise FileNotFoundError(f"run {run_id} succeeded but its final checkpoint {checkpoint} is missing; restore "
                                f"the run directory {spec.output_dir} (the export reads it there) or train the run "
                                "again")
    return export_model(spec, checkpoint, out_dir, run_id=run_id, sweep=sweep, force=force)
