"""End to end: `parcae-sweep launch` of a tiny sweep with `tracking: [mlflow, tensorboard, wandb]`
as a subprocess; each tracker's own reader sees the training losses and evals the store holds.
W&B is told to go online by the environment, at a server that does not exist: the toolkit forces
offline mode, so the runs still land in W&B's offline files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parcae_scaling.db import Store
from tracker_readers import mlflow_history, tensorboard_scalars, wandb_runs

CLI = [sys.executable, "-c", "from parcae_scaling.cli import sweep_app; sweep_app()"]


@pytest.mark.slow
def test_every_tracker_sees_the_losses_the_store_holds(tmp_path: Path, write_spec) -> None:
    spec = write_spec({
        "name": "tracked", "models": ["parcae-tiny-48"], "model_overrides": {"seq_len": 32}, "tokens": [25600],
        "mu_rec": [1, 2], "recipe": {"batch_size": 8, "eval_tokens": 1024, "metrics_every_steps": 5},
        "resources": {"max_concurrent": 2, "time_limit_min": 10, "mem_gb": 1},
        "tracking": ["mlflow", "tensorboard", "wandb"],
    })
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(WANDB_MODE="online", WANDB_BASE_URL="http://127.0.0.1:9")
    out = subprocess.run([*CLI, "launch", str(spec), "--store", url, "--progress", "none"], capture_output=True,
                         text=True, timeout=900, env=env, cwd=tmp_path)
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "tracked" / "_logs").glob("*.log"))
    assert out.returncode == 0, out.stdout + out.stderr + logs
    assert "parcae tracking:" not in logs + out.stderr  # no tracker was switched off

    with Store.open(url, upgrade=False) as store:
        h = store.metric_history(sweep="tracked", names=["loss"])
        curves = store.test_time_curves("tracked")
    losses: dict[str, dict[int, float]] = {}
    for run_id, step, value in zip(h["run_id"], h["step"], h["value"]):
        losses.setdefault(run_id, {})[int(step)] = float(value)
    evals = {run_id: {f"eval/val_loss_T{int(t)}": float(v) for t, v in zip(g["recurrence"], g["loss"])}
             for run_id, g in curves.groupby("run_id")}
    assert len(losses) == 2 and all(len(v) == 20 for v in losses.values())  # 100 steps, metrics every 5
    assert set(evals) == set(losses)

    tracking = tmp_path / "runs" / "tracked" / "tracking"
    wandb, mlflow_uri = wandb_runs(tracking), f"sqlite:///{tracking / 'mlflow.db'}"
    for run_id, by_step in losses.items():
        last = max(by_step)
        assert wandb[run_id].history["loss"] == by_step
        assert {k: v[last] for k, v in wandb[run_id].history.items() if k.startswith("eval/")} == evals[run_id]
        assert mlflow_history(mlflow_uri, "tracked", run_id, "loss") == by_step
        assert {k: mlflow_history(mlflow_uri, "tracked", run_id, k)[last] for k in evals[run_id]} == evals[run_id]
        scalars = tensorboard_scalars(tracking / "tensorboard" / run_id)
        assert scalars["loss"] == pytest.approx(by_step, rel=1e-6)  # event files hold float32
        assert {k: v[last] for k, v in scalars.items() if k.startswith("eval/")} == pytest.approx(evals[run_id],
                                                                                                  rel=1e-6)
