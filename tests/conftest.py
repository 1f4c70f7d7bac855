"""Fixtures every test folder shares, each made once per session: the real single-node SLURM
cluster, and a small real sweep in a SQLite store (for the notebook and report tests).

The SLURM cluster is started by tests/services/slurm.sh (Debian slurmctld/slurmd/munge, installed
if missing, root only); SLURM tests skip with the reason when it cannot start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from services.service import running_service

SLURM_SERVICE = Path(__file__).resolve().parent / "services" / "slurm.sh"


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


# ---- a small real sweep (tests/notebooks, tests/scaling/report) ----------------------------------

SWEEP = "nb-tiny"
ABLATION = "nb-stab"
_RECIPE = {"batch_size": 8, "eval_tokens": 2048, "metrics_every_steps": 2, "checkpoint_every_steps": 0}


def _tiny_sweep_specs(root: Path) -> list[Any]:
    """A tiny isoFLOP spec (3 budgets x mu_rec {1, 2, 4} plus a Transformer baseline) and the
    three sweeps of a tiny injection ablation."""
    from parcae_scaling.sweeps import spec_from_dict
    from parcae_scaling.sweeps.ablation import injection_ablation

    iso = spec_from_dict({
        "name": SWEEP, "models": ["parcae-tiny-48"], "baselines": ["transformer-tiny-48"],
        "model_overrides": {"seq_len": 32}, "budgets_flops": [5e9, 1e10, 2e10], "mu_rec": [1, 2, 4],
        "recipe": {**_RECIPE, "eval_recurrences": [1, 2, 3, 4, 6, 8]},
        "output_root": str(root / "runs"),
    }, source="tests/conftest.py tiny sweep")
    stab = spec_from_dict({
        "name": ABLATION, "models": ["parcae-tiny-48"], "model_overrides": {"seq_len": 32},
        "tokens": [12_288], "mu_rec": [4],
        "recipe": {**_RECIPE, "optimizer": {"name": "adamw", "lr": 3e-2, "grad_clip_norm": 0.0}},
        "output_root": str(root / "runs"),
    }, source="tests/conftest.py tiny ablation")
    return [iso, *injection_ablation(stab)]


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"url": store URL, "sweep": isoFLOP sweep name, "ablation": the three injection sweeps}.

    Made once per session through the sweeps library: plan the tiny specs, record them, and run
    every run with the worker's own `execute_run` in-process (what each backend calls), into a
    SQLite store in a temp folder. Imports are local so that sessions not using it stay light.
    """
    from parcae_scaling.db import Store
    from parcae_scaling.sweeps import plan, record_plan
    from parcae_scaling.sweeps.ablation import INJECTIONS
    from parcae_scaling.sweeps.worker import execute_run

    root = tmp_path_factory.mktemp("sweep_store")
    url = f"sqlite:///{root / 'store.sqlite'}"
    with Store.open(url) as store:
        for spec in _tiny_sweep_specs(root):
            p = plan(spec)
            record_plan(store, p)
            for r in p.runs:
                execute_run(r.run, url)
    return {"url": url, "sweep": SWEEP, "ablation": [f"{ABLATION}-{inj}" for inj in INJECTIONS]}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test: tiny models run fastest and bit-reproducibly that way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
