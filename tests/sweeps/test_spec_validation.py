"""Spec validation lives in the spec types' constructors (a spec built in Python is checked like one
read from a file), numbers written as YAML text are numbers, and large plans print a summary."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.model.run_spec import DataSpec, FieldError, RunSpec
from parcae_scaling.sweeps import RecipeSpec, ResourceSpec, SpecError, SweepSpec, load_spec, plan, spec_from_dict
from parcae_scaling.sweeps import spec as spec_module
from parcae_scaling.sweeps.render import PLAN_ROWS_SHOWN

CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"


def _docstring_example() -> str:
    """The YAML block of sweeps/spec.py's docstring, verbatim (its indented lines)."""
    doc = spec_module.__doc__ or ""
    block = doc.split("\n\n")[2]  # title, summary, then the example
    assert block.lstrip().startswith("name: iso-tiny"), block[:80]
    return textwrap.dedent(block)


def test_the_docstring_example_parses_verbatim() -> None:
    raw = yaml.safe_load(_docstring_example())
    assert isinstance(raw["recipe"]["optimizer"]["lr"], str)  # PyYAML reads 3e-3 as text...
    spec = spec_from_dict(raw, source="spec.py docstring")
    assert spec.recipe.optimizer.lr == 3e-3  # ...and the spec reads it as the number
    assert spec.budgets_flops == (1e12, 2e12) and spec.resources.mfu == 0.3
    assert len(plan(spec).runs) == 2 * (3 + 1)  # 3 mu_rec + 1 baseline per budget


def test_numbers_written_as_text_are_numbers_everywhere_and_keep_the_ids(tiny_spec) -> None:  # noqa: ANN001
    raw = tiny_spec()
    text = {**raw, "budgets_flops": ["1e10"], "mu_rec": ["1", "2e0"], "seeds": ["0"],
            "model_overrides": {"seq_len": "3.2e1"},
            "recipe": {**raw["recipe"], "batch_size": "8", "eval_tokens": "1.024e3",
                       "optimizer": {"lr": "3e-3", "weight_decay": "1e-1", "eps": "1e-8"},
                       "schedule": {"cooldown_frac": "5e-1"}},
            "resources": {**raw["resources"], "mem_gb": "1e0", "mfu": "3e-1"}}
    dotted = {**raw, "recipe": {**raw["recipe"], "optimizer": {"lr": 3.0e-3, "weight_decay": 1.0e-1, "eps": 1.0e-8},
                                "schedule": {"cooldown_frac": 0.5}},
              "resources": {**raw["resources"], "mem_gb": 1.0, "mfu": 0.3}}
    a, b = spec_from_dict(text), spec_from_dict(dotted)
    assert (a.recipe.batch_size, a.recipe.eval_tokens, a.model_overrides["seq_len"]) == (8, 1024, 32)
    assert a.to_dict() == b.to_dict()
    assert [r.run_id for r in plan(a).runs] == [r.run_id for r in plan(b).runs]


@pytest.mark.parametrize(("build", "match"), [
    (lambda: SweepSpec(name="../../etc/evil", models=("parcae-tiny-48",), budgets_flops=(1e10,)), "name:"),
    (lambda: SweepSpec(name="ok", models=("parcae-tiny-48",), budgets_flops=(1e10,), seeds=()), "seeds: is empty"),
    (lambda: SweepSpec(name="ok", models=("parcae-tiny-48",), budgets_flops=(1e10,), mu_rec=(2,), mu_bwd=3),
     "mu_bwd: 3 exceeds"),
    (lambda: SweepSpec(name="ok", models=("transformer-tiny-48",), baselines=("transformer-tiny-48",),
                       budgets_flops=(1e10,)), "also listed in models"),
    (lambda: RecipeSpec(checkpoint_every_steps=-5), "RecipeSpec.checkpoint_every_steps"),
    (lambda: ResourceSpec(mem_gb=-4), "ResourceSpec.mem_gb"),
    (lambda: ResourceSpec(gpus_per_run=-1), "ResourceSpec.gpus_per_run"),
    (lambda: ResourceSpec(retries=-3), "ResourceSpec.retries"),
])
def test_specs_built_in_python_are_checked_like_files(build, match) -> None:  # noqa: ANN001
    with pytest.raises((SpecError, FieldError), match=match):
        build()


def test_python_built_spec_plans_the_same_runs_as_its_file(tiny_spec) -> None:  # noqa: ANN001
    from_file = spec_from_dict(tiny_spec())
    built = SweepSpec(name="tiny", models=["parcae-tiny-48"], baselines=["transformer-tiny-48"],
                      model_overrides={"seq_len": 32}, budgets_flops=[10**10], mu_rec=[1, 2],
                      recipe=from_file.recipe, resources=from_file.resources)
    assert built.budgets_flops == (1e10,)  # an int budget is the same budget (and the same run ids)
    assert [r.run_id for r in plan(built).runs] == [r.run_id for r in plan(from_file).runs]


def test_a_string_data_path_is_one_path() -> None:
    data = DataSpec(source="bin", train_paths="data/train.bin", val_paths="data/val.bin")  # type: ignore[arg-type]
    assert data.train_paths == ("data/train.bin",) and data.val_paths == ("data/val.bin",)
    assert RunSpec.from_dict({"model": {"seq_len": 32, "d_model": 48, "d_ff": 192, "n_heads": 2, "mu_rec": 1},
                              "output_dir": "x", "tokens": 1000, "data": data.__dict__}).data == data


def test_missing_data_files_are_found_by_plan_naming_the_file(tiny_spec, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "train.bin").write_bytes(b"\0" * 64)
    raw = tiny_spec(data={"source": "bin", "train_paths": str(tmp_path / "train.bin"),
                          "val_paths": [str(tmp_path / "val_*.bin")]})
    with pytest.raises(SpecError, match=r"data\.val_paths: '.*val_\*\.bin' matches no file"):
        plan(spec_from_dict(raw, source="d.yaml"))
    assert len(plan(spec_from_dict(raw), check_files=False).runs) == 3


def _default_spec_cases() -> list[Path]:
    """The corpus's spec cases run by the folder's default command (`plan FILE`)."""
    return [p for p in sorted((CORPUS / "specs").glob("*.yaml"))
            if not (p.with_name(p.name + ".expect").exists() or "# command:" in p.read_text())]


@pytest.mark.parametrize("path", _default_spec_cases(), ids=lambda p: p.name)
def test_every_bad_spec_error_names_the_file_once_with_one_fix(path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as err:
        plan(load_spec(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: "), msg
    assert msg.count(str(path)) == 1 and msg.count("; ") == 1, msg  # one why, one fix (1.11: not twice)


def test_launch_with_max_concurrent_zero_records_nothing(write_spec, tiny_spec, tmp_path: Path) -> None:  # noqa: ANN001
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(sweep_app, ["launch", str(write_spec(tiny_spec())), "--store", f"sqlite:///{store}",
                                            "--max-concurrent", "0"])
    assert result.exit_code == 2 and "--max-concurrent" in result.output
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_large_plans_print_a_summary_and_all_rows_on_request(write_spec, tiny_spec) -> None:  # noqa: ANN001
    seeds = list(range(PLAN_ROWS_SHOWN))  # 2 mu_rec + 1 baseline per seed: well over the threshold
    path = write_spec(tiny_spec(seeds=seeds))
    ids = [r.run_id for r in plan(load_spec(path)).runs]
    short = CliRunner().invoke(sweep_app, ["plan", str(path)])
    assert short.exit_code == 0, short.output
    shown = [i for i in ids if i in short.output]
    half = PLAN_ROWS_SHOWN // 2
    assert shown == ids[:half] + ids[-half:]
    assert f"{len(ids) - 2 * half:,} more runs" in short.output and "--all" in short.output
    assert f"{len(ids):,}" in short.output  # the totals count every run
    full = CliRunner().invoke(sweep_app, ["plan", str(path), "--all"])
    assert full.exit_code == 0 and all(i in full.output for i in ids)
