"""Each experiment tracker's own records, read back through its own library (db/trackers.py):
W&B's offline transaction log (.wandb: LevelDB-log framing of wandb's `Record` protobufs),
MLflow's client on the tracking store, TensorBoard's EventAccumulator on the event files.

On pytest's path (pyproject `pythonpath = ["tests"]`): `from tracker_readers import ...`."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WANDB_BLOCK = 32 * 1024  # LevelDB log blocks; each record chunk has a 7-byte header
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class WandbRun:
    """One offline W&B run as its .wandb file records it."""

    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> step -> value
    exit_code: int | None = None


def _wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_runs(tracking_dir: Path) -> dict[str, WandbRun]:
    """Every offline run under `<tracking_dir>/wandb/`, by its W&B run id."""
    runs: dict[str, WandbRun] = {}
    for path in sorted((tracking_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run = WandbRun()
        for r in _wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run.run_id, run.name, run.project = r.run.run_id, r.run.display_name, r.run.project
                run.group, run.tags = r.run.run_group, list(r.run.tags)
                run.config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "config":
                run.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                step = r.history.step.num
                for item in r.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        run.history.setdefault(key, {})[step] = float(json.loads(item.value_json))
            elif kind == "exit":
                run.exit_code = r.exit.exit_code
        runs[run.run_id] = run
    return runs


def mlflow_run(uri: str, experiment: str, run_id: str) -> Any:
    """The MLflow run tagged with our run id (an mlflow.entities.Run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {uri}"
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.run_id = '{run_id}'")
    assert len(found) == 1, f"{len(found)} MLflow runs tagged {run_id}"
    return found[0]


def mlflow_history(uri: str, experiment: str, run_id: str, name: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    mlflow_id = mlflow_run(uri, experiment, run_id).info.run_id
    return {m.step: m.value for m in MlflowClient(tracking_uri=uri).get_metric_history(mlflow_id, name)}


def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value of the scalars in one run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def tensorboard_texts(logdir: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag.split("/")[0]: acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            for tag in acc.Tags()["tensors"]}
