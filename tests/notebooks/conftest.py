"""A small real sweep for the notebook and report tests, made once per session through the
sweeps library: plan a tiny isoFLOP spec (3 budgets x mu_rec {1, 2, 4} plus a Transformer
baseline) and a tiny injection ablation, record them, and run every run with the worker's own
`execute_run` in-process (what each backend calls), into a SQLite store in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from parcae_scaling.db import Store
from parcae_scaling.sweeps.ablation import INJECTIONS, injection_ablation
from parcae_scaling.sweeps import plan, record_plan, spec_from_dict
from parcae_scaling.sweeps.worker import execute_run

SWEEP = "nb-tiny"
ABLATION = "nb-stab"
_RECIPE = {"batch_size": 8, "eval_tokens": 2048, "metrics_every_steps": 2, "checkpoint_every_steps": 0}


def tiny_specs(root: Path):
    iso = spec_from_dict({
        "name": SWEEP, "models": ["parcae-tiny-48"], "baselines": ["transformer-tiny-48"],
        "model_overrides": {"seq_len": 32}, "budgets_flops": [5e9, 1e10, 2e10], "mu_rec": [1, 2, 4],
        "recipe": {**_RECIPE, "eval_recurrences": [1, 2, 3, 4, 6, 8]},
        "output_root": str(root / "runs"),
    }, source="tests/notebooks tiny sweep")
    stab = spec_from_dict({
        "name": ABLATION, "models": ["parcae-tiny-48"], "model_overrides": {"seq_len": 32},
        "tokens": [12_288], "mu_rec": [4],
        "recipe": {**_RECIPE, "optimizer": {"name": "adamw", "lr": 3e-2, "grad_clip_norm": 0.0}},
        "output_root": str(root / "runs"),
    }, source="tests/notebooks tiny ablation")
    return [iso, *injection_ablation(stab)]


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory) -> dict:
    """{"url": store URL, "sweep": isoFLOP sweep name, "ablation": the three injection sweeps}."""
    root = tmp_path_factory.mktemp("nb_store")
    url = f"sqlite:///{root / 'store.sqlite'}"
    with Store.open(url) as store:
        for spec in tiny_specs(root):
            p = plan(spec)
            record_plan(store, p)
            for r in p.runs:
                execute_run(r.run, url)
    return {"url": url, "sweep": SWEEP, "ablation": [f"{ABLATION}-{inj}" for inj in INJECTIONS]}
