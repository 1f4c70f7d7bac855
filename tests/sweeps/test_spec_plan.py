"""Spec validation (errors name file, field and fix), plan tables per spec kind, id stability."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import parcae_scaling
from parcae_scaling.cli import sweep_app
from parcae_scaling.model.config import get_config
from parcae_scaling.model.flops import flops_per_token
from parcae_scaling.sweeps import SpecError, builtin_specs, load_spec, plan, spec_from_dict



def _steps_tokens(budget: float, fpt: int, tokens_per_step: int) -> int:
    return (int(budget // fpt) // tokens_per_step) * tokens_per_step


def test_isoflop_plan_tokens_follow_the_flop_accounting(tiny_spec) -> None:  # noqa: ANN001
    p = plan(spec_from_dict(tiny_spec(budgets_flops=[1e10, 4e10], mu_rec=[1, 2, 4], baselines=[])))
    assert len(p.runs) == 6
    for r in p.runs:
        cfg = get_config("parcae-tiny-48", seq_len=32, mu_rec=r.run.mu_rec)
        fpt = flops_per_token(cfg, convention="reference")
        assert r.flops_per_token == fpt
        assert r.run.mu_bwd == math.ceil(r.run.mu_rec / 2)
        assert r.tokens == _steps_tokens(r.budget_flops, fpt, 8 * 32)
        assert r.steps == r.tokens // (8 * 32)
        assert r.planned_flops == fpt * r.tokens <= r.budget_flops
    # isoFLOP: at one budget, deeper recurrence buys fewer tokens
    at = sorted((r.run.mu_rec, r.tokens) for r in p.runs if r.budget_flops == 4e10)
    assert [t for _, t in at] == sorted([t for _, t in at], reverse=True)


def test_fixed_tokens_grid_baselines_and_zip(tiny_spec) -> None:  # noqa: ANN001
    fixed = plan(spec_from_dict(tiny_spec(budgets_flops=None, tokens=[8192], mu_rec=[1, 2, 4])))
    assert {r.tokens for r in fixed.runs} == {8192}
    assert sorted(r.run.mu_rec for r in fixed.runs) == [1, 1, 2, 4]  # 3 looped + transformer baseline
    grid = plan(spec_from_dict(tiny_spec(models=["parcae-tiny-48", "parcae-tiny-64"], budgets_flops=[1e10, 2e10],
                                         mu_rec=[2], baselines=[])))
    assert {(r.model.split("[")[0], r.budget_flops) for r in grid.runs} == {
        (m, b) for m in ("parcae-tiny-48", "parcae-tiny-64") for b in (1e10, 2e10)}
    base = [r for r in plan(spec_from_dict(tiny_spec(budgets_flops=[1e10, 2e10]))).runs if r.arch == "transformer"]
    assert sorted(r.budget_flops for r in base) == [1e10, 2e10] and all(r.run.mu_rec == 1 for r in base)
    zipped = plan(spec_from_dict(tiny_spec(models=["parcae-tiny-48", "parcae-tiny-64"], budgets_flops=[1e10, 2e10],
                                           mu_rec=[2], baselines=[], zip=["models", "budgets_flops"])))
    assert sorted((r.model.split("[")[0], r.budget_flops) for r in zipped.runs) == [
        ("parcae-tiny-48", 1e10), ("parcae-tiny-64", 2e10)]


def test_ids_stay_across_code_versions_and_change_with_content(tiny_spec, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    ids = [r.run_id for r in plan(spec_from_dict(tiny_spec())).runs]
    assert ids == [r.run_id for r in plan(spec_from_dict(tiny_spec())).runs]
    assert len(set(ids)) == len(ids)
    changed = tiny_spec()
    changed["recipe"] = {**changed["recipe"], "optimizer": {"lr": 1e-3}}
    assert not set(ids) & {r.run_id for r in plan(spec_from_dict(changed)).runs}
    # cadence and output location do not change what is trained
    moved = tiny_spec(output_root="/elsewhere")
    moved["recipe"] = {**moved["recipe"], "checkpoint_every_steps": 7}
    assert ids == [r.run_id for r in plan(spec_from_dict(moved)).runs]
    # an upgraded package plans the same runs: the version is provenance, not identity
    monkeypatch.setattr(parcae_scaling, "__version__", "999.0")
    assert ids == [r.run_id for r in plan(spec_from_dict(tiny_spec())).runs]


@pytest.mark.parametrize(("change", "field", "fix"), [
    ({"budgetz": [1e10]}, "budgetz", "use one of"),
    ({"budgets_flops": [0]}, "budgets_flops", "> 0"),
    ({"budgets_flops": [-1e10]}, "budgets_flops", "> 0"),
    ({"mu_rec": [0, 2]}, "mu_rec", "mu_rec = 1 means no looping"),
    ({"budgets_flops": [1e6]}, "budgets_flops", "raise the budget"),
    ({"mu_rec": [2, 2]}, "mu_rec", "remove repeated values"),
    ({"seeds": [0, 0]}, "seeds", "remove repeated values"),
    ({"models": ["parcae-huge"]}, "models", "parcae-sweep configs"),
    ({"recipe": {"batch_size": 0}}, "recipe.batch_size", ">= 1"),
    ({"recipe": {"optimizer": {"lr": -1}}}, "recipe.optimizer", "learning rate"),
    ({"zip": ["models", "mu_rec"]}, "zip", "equally long"),
    ({"tokens": [1000]}, "budgets_flops", "exactly one"),
    ({"model_overrides": {"mu_rec": 3}}, "model_overrides.mu_rec", "top-level axes"),
])
def test_malformed_specs_name_file_field_and_fix(write_spec, tiny_spec, change, field, fix) -> None:  # noqa: ANN001
    path = write_spec(tiny_spec(**change))
    with pytest.raises(SpecError) as err:
        plan(load_spec(path))
    msg = str(err.value)
    assert str(path) in msg and f": {field}" in msg and fix in msg, msg


def test_plan_cli_prints_table_refuses_over_budget_and_writes_nothing(write_spec, tiny_spec, tmp_path: Path) -> None:  # noqa: ANN001
    runner = CliRunner()
    path = write_spec(tiny_spec())
    ok = runner.invoke(sweep_app, ["plan", str(path)])
    assert ok.exit_code == 0, ok.output
    for r in plan(load_spec(path)).runs:
        assert r.run_id in ok.output
    assert "runs" in ok.output and "cpu-hours" in ok.output
    over = runner.invoke(sweep_app, ["plan", str(path), "--budget-hours", "1e-9"])
    assert over.exit_code == 1 and "over the budget" in over.output
    bad = runner.invoke(sweep_app, ["plan", str(write_spec(tiny_spec(mu_rec=[0]), "bad.yaml"))])
    assert bad.exit_code == 1 and "mu_rec" in bad.output
    launch_bad = runner.invoke(sweep_app, ["launch", str(tmp_path / "bad.yaml"), "--store",
                                           f"sqlite:///{tmp_path / 'never.sqlite'}"])
    assert launch_bad.exit_code == 1
    assert not (tmp_path / "never.sqlite").exists() and not (tmp_path / "runs").exists()


def test_toml_spec_and_builtin_default(tmp_path: Path) -> None:
    toml = ('name = "t"\nmodels = ["parcae-tiny-48"]\nbudgets_flops = [1e10]\nmu_rec = [1, 2]\n'
            '[model_overrides]\nseq_len = 32\n')
    path = tmp_path / "spec.toml"
    path.write_text(toml)
    assert len(plan(load_spec(path)).runs) == 2
    assert "default" in builtin_specs()
    default = plan(load_spec("default"))
    assert {r.arch for r in default.runs} == {"parcae", "transformer"}
    assert len({r.run.mu_rec for r in default.runs}) >= 3 and not default.problems
