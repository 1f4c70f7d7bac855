"""Run-directory sink: append-only JSON-lines files a worker writes where no database is reachable.

Layout of a run directory:

    metrics.jsonl   {"run": id, "step": 12, "values": {"loss": 3.1, "lr": 0.008}}
    evals.jsonl     {"run": id, "recurrence": 4, "split": "val", "loss": 2.9, "tokens": 65536}
    status.jsonl    {"run": id, "status": "running", "step": null, "message": null, "at": iso-time}

Every record is one line. A SIGKILL can tear the last line; readers ignore an incomplete final
line and a sink that reopens the directory truncates it first, so a resumed run never leaves
garbage in the middle of a file. Rows are keyed (run/step/name, run/recurrence/split, status time)
so the driver's `Store.ingest_run_dir` replays them idempotently.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

from parcae_scaling.model.contracts import EvalRow, RunStatus

METRICS_FILE = "metrics.jsonl"
EVALS_FILE = "evals.jsonl"
STATUS_FILE = "status.jsonl"
PROVENANCE_FILE = "provenance.jsonl"  # one record per (re)start of the run
RUN_DIR_FILES = (METRICS_FILE, EVALS_FILE, STATUS_FILE, PROVENANCE_FILE)


@dataclass(frozen=True, kw_only=True)
class StatusEvent:
    """One lifecycle change read back from status.jsonl."""

    run_id: str
    status: RunStatus
    step: int | None
    message: str | None
    at: datetime


@dataclass(frozen=True, kw_only=True)
class RunDirContents:
    """Everything complete in a run directory (torn final lines already dropped)."""

    metrics: list[tuple[str, int, str, float]]  # (run_id, step, name, value)
    evals: list[tuple[str, EvalRow]]
    statuses: list[StatusEvent]
    provenance: list[tuple[str, dict[str, Any]]]  # (run_id, record) per (re)start, oldest first


def _repair_tail(path: Path) -> None:
    """Cut an incomplete last line (left by a killed writer) so appends start on a fresh line."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Scan backwards in blocks for the last newline.
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            idx = block.rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return
            pos = start
        f.truncate(0)


class RunDirSink:
    """`MetricsSink` that appends JSON lines under `run_dir`; `flush()` fsyncs them."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[str]] = {}
        for name in RUN_DIR_FILES:
            path = self.run_dir / name
            _repair_tail(path)
            self._files[name] = open(path, "a", encoding="utf-8")
        self._closed = False

    def _write(self, name: str, record: Mapping[str, object]) -> None:
        if self._closed:
            raise ValueError(f"RunDirSink for {self.run_dir} is closed; create a new sink to write again")
        # One write() call per complete line keeps a torn write confined to the final line.
        self._files[name].write(json.dumps(record, separators=(",", ":")) + "\n")

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        clean = {str(k): float(v) for k, v in values.items()}
        self._write(METRICS_FILE, {"run": run_id, "step": int(step), "values": clean})

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        for row in rows:
            self._write(
                EVALS_FILE,
                {
                    "run": run_id,
                    "recurrence": int(row.recurrence),
                    "split": row.split,
                    "loss": float(row.loss),
                    "tokens": int(row.tokens),
                },
            )

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        self._write(PROVENANCE_FILE, {"run": run_id, "provenance": dict(record)})
        self.flush()

    def update_status(
        self, run_id: str, status: RunStatus, *, step: int | None = None, message: str | None = None
    ) -> None:
        status = RunStatus(status)
        at = datetime.now(timezone.utc).isoformat()
        self._write(
            STATUS_FILE,
            {"run": run_id, "status": status.value, "step": step, "message": message, "at": at},
        )
        # Lifecycle changes are rare and precious: make them durable at once.
        self.flush()

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        for f in self._files.values():
            f.close()
        self._closed = True

    def __enter__(self) -> RunDirSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _complete_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for complete lines; an unterminated final line is skipped."""
    if not path.exists():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    # The element after the last "\n" is either b"" or a torn write in progress/killed.
    for lineno, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            yield lineno, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}:{lineno} is not valid JSON ({exc.msg}); a complete line can only be corrupt "
                "if something other than RunDirSink wrote the file — fix or remove that line"
            ) from exc


def _float(value: object) -> float:
    # json.loads parses NaN/Infinity (diverged runs log them); keep them as floats.
    return float(value) if value is not None else math.nan  # type: ignore[arg-type]


def read_run_dir(run_dir: str | os.PathLike[str]) -> RunDirContents:
    """Parse a run directory written by `RunDirSink` (safe while a writer is still appending)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"run directory {root} does not exist; pass the directory given to RunDirSink")
    metrics: list[tuple[str, int, str, float]] = []
    for lineno, rec in _complete_lines(root / METRICS_FILE):
        try:
            for name, value in rec["values"].items():
                metrics.append((str(rec["run"]), int(rec["step"]), str(name), _float(value)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{root / METRICS_FILE}:{lineno} lacks run/step/values: {rec!r}") from exc
    evals: list[tuple[str, EvalRow]] = []
    for lineno, rec in _complete_lines(root / EVALS_FILE):
        try:
            row = EvalRow(
                recurrence=int(rec["recurrence"]),
                split=str(rec["split"]),
                loss=_float(rec["loss"]),
                tokens=int(rec["tokens"]),
            )
            evals.append((str(rec["run"]), row))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{root / EVALS_FILE}:{lineno} lacks run/recurrence/split/loss/tokens") from exc
    statuses: list[StatusEvent] = []
    for lineno, rec in _complete_lines(root / STATUS_FILE):
        try:
            statuses.append(
                StatusEvent(
                    run_id=str(rec["run"]),
                    status=RunStatus(rec["status"]),
                    step=None if rec.get("step") is None else int(rec["step"]),
                    message=rec.get("message"),
                    at=datetime.fromisoformat(rec["at"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{root / STATUS_FILE}:{lineno} is not a valid status record: {exc}") from exc
    provenance: list[tuple[str, dict[str, Any]]] = []
    for lineno, rec in _complete_lines(root / PROVENANCE_FILE):
        if rec.get("run") is None or not isinstance(rec.get("provenance"), dict):
            raise ValueError(f"{root / PROVENANCE_FILE}:{lineno} lacks run/provenance: {rec!r}")
        provenance.append((str(rec["run"]), rec["provenance"]))
    return RunDirContents(metrics=metrics, evals=evals, statuses=statuses, provenance=provenance)
