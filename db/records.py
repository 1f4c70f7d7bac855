"""Typed records the store accepts: runs (built by the planner, sweeps/plan.py `PlannedRun.record`)
and ingest reports."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from parcae_scaling.model.contracts import RunStatus



def check_json(value: Any, field_name: str) -> dict[str, Any]:
    """Strict JSON (no NaN/inf, string keys) so PostgreSQL JSONB and SQLite agree."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{field_name} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{field_name} must be JSON-serialisable with finite numbers ({exc}); convert paths, "
            "enums and dataclasses to plain values first"
        ) from exc


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """The columns of one planned run plus its full resolved spec (a JSON-able dict)."""

    run_id: str
    sweep: str
    spec: Mapping[str, Any]
    arch: str
    model: str
    params: int
    params_non_embedding: int
    mu_rec: int
    mu_bwd: int
    budget_flops: float
    flop_convention: str
    flops_per_token: float
    tokens: int
    core_params: int | None = None
    status: RunStatus = RunStatus.PLANNED
    backend: str | None = None
    job_id: str | None = None
    attempt: int = 0
    output_dir: str | None = None  # where the run's RunDirSink files live, if it uses one

    def __post_init__(self) -> None:
        for name in ("run_id", "sweep", "arch", "model", "flop_convention"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"RunRecord.{name} must be a non-empty string, got {value!r}")
        if len(self.run_id) > 64:
            raise ValueError(f"RunRecord.run_id must be at most 64 characters, got {len(self.run_id)}")
        if self.mu_rec < 1:
            raise ValueError(f"RunRecord.mu_rec must be >= 1 (1 = no looping), got {self.mu_rec}")
        if not 1 <= self.mu_bwd <= self.mu_rec:
            raise ValueError(f"RunRecord.mu_bwd must be in [1, mu_rec={self.mu_rec}], got {self.mu_bwd}")
        for name in ("params", "params_non_embedding", "tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"RunRecord.{name} must be a positive integer, got {getattr(self, name)}")
        if self.core_params is not None and self.core_params < 0:
            raise ValueError(f"RunRecord.core_params must be >= 0 or None, got {self.core_params}")
        for name in ("budget_flops", "flops_per_token"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"RunRecord.{name} must be a positive finite number, got {value}")
        if self.attempt < 0:
            raise ValueError(f"RunRecord.attempt must be >= 0, got {self.attempt}")
        object.__setattr__(self, "status", RunStatus(self.status))
        object.__setattr__(self, "spec", check_json(self.spec, "RunRecord.spec"))


@dataclass(frozen=True, kw_only=True)
class IngestReport:
    """What `Store.ingest_run_dir` read (replays count again; the database ignores duplicates)."""

    run_id: str
    metric_rows: int
    eval_rows: int
    status_events: int
    final_status: RunStatus | None = field(default=None)
