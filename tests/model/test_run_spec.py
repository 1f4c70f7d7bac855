"""RunSpec: validation, JSON round trip, stable ids, token planning rule."""

from __future__ import annotations

import json

import pytest

from parcae_scaling.model.config import get_config
from parcae_scaling.model.flops import flops_per_token
from parcae_scaling.model.run_spec import (
    DataSpec,
    OptimizerSpec,
    RunSpec,
    ScheduleSpec,
    default_eval_recurrences,
    plan_tokens,
)


def _spec(**changes) -> RunSpec:
    base = dict(model=get_config("parcae-tiny-64", mu_rec=4), output_dir="/tmp/r", budget_flops=1e12)
    base.update(changes)
    return RunSpec(**base)


def test_json_round_trip_and_canonical_form() -> None:
    spec = _spec(optimizer=OptimizerSpec(name="muon", lr=8e-3), schedule=ScheduleSpec(warmup_frac=0.1),
                 data=DataSpec(source="bin", train_paths=("a/*.bin",), val_paths=("v.bin",)),
                 eval_recurrences=(8, 1, 2))
    again = RunSpec.from_json(spec.to_json())
    assert again == spec and again.canonical_json() == spec.canonical_json()
    assert again.eval_recurrences == (1, 2, 8)
    assert json.loads(spec.canonical_json())["spec_version"] == 1
    assert " " not in spec.canonical_json().replace("parcae-tiny-64", "")


def test_run_id_tracks_science_not_placement() -> None:
    spec = _spec()
    assert spec.run_id == _spec().run_id and len(spec.run_id) == 16
    assert spec.replace(output_dir="/elsewhere", metrics_every_steps=1).run_id == spec.run_id
    assert spec.replace(data=DataSpec(cache_dir="/scratch/cache")).run_id == spec.run_id
    assert spec.replace(data=DataSpec(tokenizer="bpe")).run_id != spec.run_id
    assert spec.replace(seed=1).run_id != spec.run_id
    assert _spec(model=get_config("parcae-tiny-64", mu_rec=2)).run_id != spec.run_id


# The id of _spec(): pinned so that a change of what the id hashes cannot pass unnoticed (the
# ids of every recorded run would move with it). Change it only together with RUN_SPEC_VERSION.
PINNED_ID = "1ae0e99a9b407371"


def test_run_id_survives_code_upgrades(monkeypatch: pytest.MonkeyPatch) -> None:
    import parcae_scaling

    spec = _spec()
    assert spec.run_id == PINNED_ID
    monkeypatch.setattr(parcae_scaling, "__version__", "99.0.0")  # an upgrade: provenance, not identity
    assert _spec().run_id == PINNED_ID
    assert _spec(optimizer=OptimizerSpec(lr=1e-3)).run_id != PINNED_ID  # a scientific field still counts


def test_run_id_changes_with_the_run_spec_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from parcae_scaling.model import run_spec

    monkeypatch.setattr(run_spec, "RUN_SPEC_VERSION", run_spec.RUN_SPEC_VERSION + 1)
    assert _spec().run_id != PINNED_ID


def test_legacy_ids_are_the_package_version_hashes() -> None:
    import hashlib

    from parcae_scaling.model.run_spec import LEGACY_ID_PACKAGE_VERSIONS

    spec = _spec()
    blob = spec._identity_blob()
    assert spec.legacy_run_ids == tuple(hashlib.sha256(f"{v}|{blob}".encode()).hexdigest()[:16]
                                        for v in LEGACY_ID_PACKAGE_VERSIONS)
    assert spec.has_id(spec.run_id) and spec.has_id(spec.legacy_run_ids[0])
    assert not spec.has_id(_spec(seed=1).legacy_run_ids[0]) and not spec.has_id(None)


def test_derived_fields_come_from_the_model() -> None:
    spec = _spec(batch_size=8, grad_accum_steps=2)
    assert (spec.mu_rec, spec.mu_bwd, spec.seq_len) == (4, 2, 128)
    assert spec.tokens_per_step == 8 * 2 * 128
    assert spec.recurrences_to_evaluate() == tuple(range(1, 9))
    assert default_eval_recurrences(3) == (1, 2, 3, 4, 5, 6)
    assert default_eval_recurrences(1) == (1, 2, 3, 4)  # a test-time fit needs 4 depths
    assert default_eval_recurrences(1, looped=False) == (1,)


def test_plan_follows_the_flop_accounting() -> None:
    spec = _spec(budget_flops=1e12, batch_size=16)
    plan = plan_tokens(spec)
    fpt = flops_per_token(spec.model, convention="reference")
    assert plan.flops_per_token == fpt
    assert plan.requested_tokens == int(1e12 // fpt)
    assert plan.tokens == plan.steps * 16 * 128 and plan.planned_flops == plan.tokens * fpt
    exact = plan_tokens(spec.replace(flop_convention="exact"))
    assert exact.flops_per_token == flops_per_token(spec.model, convention="exact")
    by_tokens = plan_tokens(_spec(budget_flops=None, tokens=10_000, batch_size=16))
    assert (by_tokens.steps, by_tokens.tokens) == (4, 8192)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(budget_flops=None), "budget_flops"),
        (dict(tokens=100), "budget_flops"),  # both given
        (dict(batch_size=0), "batch_size"),
        (dict(flop_convention="6nd"), "flop_convention"),
        (dict(output_dir=""), "output_dir"),
        (dict(eval_recurrences=(0, 2)), "eval_recurrences"),
        (dict(model="parcae-tiny-64"), "model"),
        (dict(precision="fp8"), "precision"),
    ],
)
def test_bad_run_specs_name_the_field(changes, field) -> None:
    with pytest.raises(ValueError, match=f"RunSpec.{field}"):
        _spec(**changes)


def test_bad_recipe_specs_name_the_field() -> None:
    with pytest.raises(ValueError, match="OptimizerSpec.name"):
        OptimizerSpec(name="sgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="OptimizerSpec.lr"):
        OptimizerSpec(lr=-1.0)
    with pytest.raises(ValueError, match="OptimizerSpec.beta2"):
        OptimizerSpec(beta2=1.0)
    with pytest.raises(ValueError, match="unknown field"):
        RunSpec.from_dict({**_spec().to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="spec_version"):
        RunSpec.from_dict({**_spec().to_dict(), "spec_version": 99})
