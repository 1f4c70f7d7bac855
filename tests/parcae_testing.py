"""What tests share: the one fake sink, tiny data, and tiny run and sweep specs.

On pytest's path (pyproject `pythonpath = ["tests"]`): `from parcae_testing import ListSink`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from parcae_scaling.model.contracts import EvalRow, RunStatus
from parcae_scaling.model.config import get_config
from parcae_scaling.model.run_spec import DataSpec, OptimizerSpec, RunSpec


@dataclass
class ListSink:
    """In-memory MetricsSink for tests."""

    metrics: list[tuple[str, int, dict[str, float]]] = field(default_factory=list)
    evals: list[tuple[str, EvalRow]] = field(default_factory=list)
    statuses: list[tuple[RunStatus, int | None, str | None]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self.metrics.append((run_id, step, dict(values)))

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        self.evals.extend((run_id, r) for r in rows)

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        self.provenance.append(dict(record))

    def update_status(self, run_id: str, status: RunStatus, *, step: int | None = None,
                      message: str | None = None) -> None:
        self.statuses.append((status, step, message))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def losses(self) -> dict[int, float]:
        return {step: v["loss"] for _, step, v in self.metrics}


def write_bin_shards(root: Path, *, n_train: int = 20_000, n_val: int = 4_000) -> DataSpec:
    """Byte-valued token shards with learnable structure (a repeating text)."""
    text = ("def add(a, b):\n    return a + b\n\n# the quick brown fox jumps over the lazy dog\n" * 2000).encode()
    tokens = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
    root.mkdir(parents=True, exist_ok=True)
    half = n_train // 2
    tokens[:half].tofile(root / "train_000.bin")  # nanoGPT layout: headerless uint16
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, n_train - half)  # llm.c / nanochat layout: 1 KiB header
    with open(root / "train_001.bin", "wb") as f:
        f.write(header.tobytes() + tokens[half:n_train].tobytes())
    tokens[n_train : n_train + n_val].tofile(root / "val_000.bin")
    return DataSpec(source="bin", train_paths=(str(root / "train_*.bin"),), val_paths=(str(root / "val_000.bin"),))


def tiny_run(out: Path, data: DataSpec, **changes: Any) -> RunSpec:
    """The smallest Parcae run: d 32, 1/1/1 layers, context 32, batch 4."""
    model = changes.pop("model", None) or get_config(
        "parcae-tiny-64", d_model=32, d_ff=64, n_heads=2, seq_len=32, mu_rec=2, vocab_size=256,
    )
    base: dict[str, Any] = dict(
        model=model, output_dir=str(out), tokens=4 * 32 * 6, batch_size=4, data=data,
        optimizer=OptimizerSpec(lr=3e-3), metrics_every_steps=1, eval_tokens=512, seed=1,
    )
    base.update(changes)
    return RunSpec(**base)


def tiny_sweep_spec(name: str = "tiny", **changes: Any) -> dict[str, Any]:
    """A sweep of three tiny runs (~50 optimizer steps each) on the embedded corpus."""
    spec: dict[str, Any] = {
        "name": name, "models": ["parcae-tiny-48"], "baselines": ["transformer-tiny-48"],
        "model_overrides": {"seq_len": 32}, "budgets_flops": [1.0e10], "mu_rec": [1, 2],
        "recipe": {"batch_size": 8, "eval_tokens": 1024, "metrics_every_steps": 5, "checkpoint_every_steps": 10},
        "resources": {"max_concurrent": 2, "time_limit_min": 10, "mem_gb": 1},
    }
    spec.update(changes)
    return spec


def dp_sweep_spec(budget: float, **resources: Any) -> dict[str, Any]:
    """One parcae-tiny-48 run on 2 processes (2 micro-batches of 4 per step, one per rank)."""
    return {"name": "dp", "models": ["parcae-tiny-48"], "model_overrides": {"seq_len": 32}, "budgets_flops": [budget],
            "mu_rec": [2], "recipe": {"batch_size": 4, "grad_accum_steps": 2, "eval_tokens": 1024,
                                      "metrics_every_steps": 1, "checkpoint_every_steps": 5},
            "resources": {"nproc_per_node": 2, "max_concurrent": 2, "mem_gb": 1, "time_limit_min": 10, **resources}}


def wait_for(pred: Callable[[], bool], timeout_s: float = 300.0, what: str = "condition", *,
             poll_s: float = 0.5) -> None:
    """Poll `pred` until it holds; fail the test naming `what` after `timeout_s`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
