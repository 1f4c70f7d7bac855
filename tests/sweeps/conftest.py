"""Fixtures for sweep tests: tiny spec files, stores, and a real single-node SLURM cluster.

The SLURM cluster is started by tests/services/slurm.sh (Debian slurmctld/slurmd/munge, installed
if missing, root only); SLURM tests skip with the reason when it cannot start.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from parcae_scaling.db import RunStatus, Store

SLURM_SERVICE = Path(__file__).resolve().parents[1] / "services" / "slurm.sh"
_service_spec = importlib.util.spec_from_file_location(
    "parcae_test_services", Path(__file__).resolve().parents[1] / "services" / "service.py")
_service = importlib.util.module_from_spec(_service_spec)
_service_spec.loader.exec_module(_service)
running_service = _service.running_service


def _tiny_spec(name: str = "tiny", **changes: Any) -> dict[str, Any]:
    """A sweep of three tiny runs (~50 optimizer steps each) on the embedded corpus."""
    spec: dict[str, Any] = {
        "name": name, "models": ["parcae-tiny-48"], "baselines": ["transformer-tiny-48"],
        "model_overrides": {"seq_len": 32}, "budgets_flops": [1.0e10], "mu_rec": [1, 2],
        "recipe": {"batch_size": 8, "eval_tokens": 1024, "metrics_every_steps": 5, "checkpoint_every_steps": 10},
        "resources": {"max_concurrent": 2, "time_limit_min": 10, "mem_gb": 1},
    }
    spec.update(changes)
    return spec


@pytest.fixture
def tiny_spec() -> Callable[..., dict[str, Any]]:
    return _tiny_spec


@pytest.fixture
def wait_for() -> Callable[..., None]:
    return _wait_for


@pytest.fixture
def final_losses() -> Callable[[str, str], dict[tuple[str, int], float]]:
    return _final_losses


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec mapping as YAML (output_root inside tmp_path unless given); returns the path."""

    def write(spec: dict[str, Any], filename: str = "spec.yaml") -> Path:
        spec = {"output_root": str(tmp_path / "runs"), **spec}
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


def _wait_for(pred: Callable[[], bool], timeout_s: float = 300.0, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def _final_losses(url: str, sweep: str) -> dict[tuple[str, int], float]:
    """(model, mu_rec) -> eval loss at T = mu_rec, for comparing backends."""
    with Store.open(url) as store:
        df = store.final_losses(sweep)
    assert (df["status"] == RunStatus.SUCCEEDED.value).all(), df[["run_id", "status"]]
    return {(r.model_size, int(r.mu_rec)): float(r.eval_loss) for r in df.itertuples()}


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """SLURM_CONF path of a private single-node cluster (exported for submitit's sbatch/squeue)."""
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM test cluster needs root (slurmd)")
    with running_service(SLURM_SERVICE, "SLURM test cluster", start_timeout_s=900) as conf:
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = conf
        try:
            yield conf
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old
