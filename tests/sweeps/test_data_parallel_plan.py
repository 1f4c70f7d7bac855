"""Data-parallel sweep specs: validation of `resources.nproc_per_node` / `nodes`, plans that keep
the 1-process ids and tokens, the plan table's processes, nodes, wall- and device-hours, and the
backends' parameters and refusals for a layout they cannot run."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.db import Store
from parcae_scaling.sweeps import SpecError, get_backend, launch, plan, spec_from_dict
from parcae_scaling.sweeps.backend import BackendError
from parcae_scaling.sweeps.cost import device_hours


def _dp(tiny_spec, nproc: int = 2, nodes: int = 1, accum: int = 2, **resources: Any) -> dict[str, Any]:  # noqa: ANN001
    spec = tiny_spec(mu_rec=[1, 2])
    spec["recipe"] = {**spec["recipe"], "grad_accum_steps": accum}
    spec["resources"] = {**spec["resources"], "nproc_per_node": nproc, "nodes": nodes, **resources}
    return spec


@pytest.mark.parametrize(("changes", "field", "fix"), [
    ({"accum": 3}, "resources.nproc_per_node", "set recipe.grad_accum_steps to a multiple of 2"),
    ({"nodes": 2, "accum": 2}, "resources.nproc_per_node", "set recipe.grad_accum_steps to a multiple of 4"),
    ({"nproc": 0}, "resources.nproc_per_node", "use values >= 1"),
    ({"nodes": 0}, "resources.nodes", "use values >= 1"),
    ({"gpus_per_run": 2}, "resources.gpus_per_run", "set gpus_per_run: 1"),
    ({"sharding": "fsdp"}, "resources.sharding", "use one of ddp, zero"),
    ({"nproc": 1, "accum": 1, "sharding": "zero"}, "resources.sharding", "raise resources.nproc_per_node"),
])
def test_bad_layouts_name_the_field_and_the_fix(tiny_spec, changes, field, fix) -> None:  # noqa: ANN001
    with pytest.raises(SpecError) as err:
        spec_from_dict(_dp(tiny_spec, **changes), source="dp.yaml")
    assert err.value.field_name == field and fix in str(err.value) and str(err.value).startswith("dp.yaml: ")


def test_zero_sharding_and_shared_depths_reach_the_runs(tiny_spec) -> None:  # noqa: ANN001
    ddp = plan(spec_from_dict(_dp(tiny_spec)))
    zero = plan(spec_from_dict(_dp(tiny_spec, sharding="zero")))
    assert {r.run.sharding for r in zero.runs} == {"zero"} and {r.run.sharding for r in ddp.runs} == {"ddp"}
    assert [r.run_id for r in zero.runs] == [r.run_id for r in ddp.runs]  # placement, not science
    raw = _dp(tiny_spec)
    shared = plan(spec_from_dict(raw | {"recipe": {**raw["recipe"], "depth_sampling": "shared", "compile": True}}))
    assert {(r.run.depth_sampling, r.run.compile) for r in shared.runs} == {("shared", True)}
    assert not {r.run_id for r in shared.runs} & {r.run_id for r in ddp.runs}  # other depths: other runs


@pytest.mark.parametrize(("recipe", "field", "fix"), [
    ({"depth_sampling": "random"}, "recipe.depth_sampling", "use one of per_rank, shared"),
    ({"compile": "yes"}, "recipe.compile", "write true or false"),
    ({"precision": "fp16"}, "recipe.precision", "use one of auto, fp32, bf16"),
])
def test_bad_recipe_choices_name_the_field(tiny_spec, recipe, field, fix) -> None:  # noqa: ANN001
    raw = tiny_spec()
    with pytest.raises(SpecError) as err:
        spec_from_dict(raw | {"recipe": {**raw["recipe"], **recipe}}, source="r.yaml")
    assert err.value.field_name == field and fix in str(err.value)


def test_layout_is_placement_same_ids_tokens_and_device_hours(tiny_spec) -> None:  # noqa: ANN001
    one = plan(spec_from_dict(_dp(tiny_spec, nproc=1)))
    two = plan(spec_from_dict(_dp(tiny_spec, nproc=2)))
    four = plan(spec_from_dict(_dp(tiny_spec, nproc=2, nodes=2, accum=4)))
    assert [r.run_id for r in two.runs] == [r.run_id for r in one.runs]
    assert [(r.tokens, r.steps) for r in two.runs] == [(r.tokens, r.steps) for r in one.runs]
    for r1, r2 in zip(one.runs, two.runs):
        assert (r2.processes, r2.nodes, r2.run.nproc_per_node, r2.run.grad_accum_steps) == (2, 1, 2, 1)
        assert r2.run.global_batch_size == r1.run.global_batch_size
        assert r2.wall_hours == pytest.approx(r1.wall_hours / 2)
        assert r2.device_hours == pytest.approx(r2.wall_hours * 2) == pytest.approx(r1.device_hours)
        assert r1.device_hours == pytest.approx(device_hours(r1.planned_flops, device="cpu", mfu=0.3))
    assert {(r.processes, r.nodes, r.run.grad_accum_steps) for r in four.runs} == {(4, 2, 1)}
    assert two.total_device_hours == pytest.approx(2 * two.total_wall_hours)
    assert two.runs[0].row()["processes"] == 2 and two.runs[0].row()["device_hours"] == two.runs[0].device_hours


def test_plan_command_shows_processes_nodes_and_device_hours(tiny_spec, write_spec) -> None:  # noqa: ANN001
    path = write_spec(_dp(tiny_spec) | {"baselines": []})
    res = CliRunner().invoke(sweep_app, ["plan", str(path)])
    assert res.exit_code == 0, res.output
    p = plan(spec_from_dict(_dp(tiny_spec) | {"baselines": []}))
    header = next(line for line in res.output.splitlines() if "run id" in line)
    for column in ("procs", "nodes", "wall-hours", "cpu-hours"):
        assert column in header
    assert "processes   4 over all runs (per run: 2 processes on 1 node)" in res.output
    assert f"wall-hours  {p.total_wall_hours:.4g} (runs one after another)" in res.output
    assert f"cpu-hours   {p.total_device_hours:.4g} (wall-hours x processes" in res.output


def test_slurm_job_has_one_task_per_rank_and_per_process_resources(tiny_spec) -> None:  # noqa: ANN001
    pytest.importorskip("submitit")
    from parcae_scaling.sweeps.backend_submitit import slurm_parameters

    spec = spec_from_dict(_dp(tiny_spec, nproc=2, nodes=2, accum=4, cpus_per_run=3, gpus_per_run=1, mem_gb=5))
    got = slurm_parameters(spec.resources, plan(spec).runs[0].run)
    assert got == {"timeout_min": 10, "cpus_per_task": 3, "mem_gb": 10.0, "nodes": 2, "tasks_per_node": 2,
                   "gpus_per_node": 2}
    single = spec_from_dict(tiny_spec())
    assert slurm_parameters(single.resources, plan(single).runs[0].run) == {
        "timeout_min": 10, "cpus_per_task": 1, "mem_gb": 1.0, "nodes": 1, "tasks_per_node": 1}


@pytest.mark.parametrize(("layout", "message"), [
    ({"nproc": 2, "nodes": 2, "accum": 4, "max_concurrent": 4}, "spans 2 nodes; the local backend runs on one node"),
    ({"nproc": 4, "accum": 4, "max_concurrent": 2}, "needs 4 processes but resources.max_concurrent"),
])
def test_local_backend_refuses_layouts_it_cannot_run(tiny_spec, store_url, tmp_path, layout, message) -> None:  # noqa: ANN001
    p = plan(spec_from_dict(_dp(tiny_spec, **layout) | {"output_root": str(tmp_path / "runs")}))
    with Store.open(store_url) as store:
        with pytest.raises(BackendError, match=message):
            launch(p, store, get_backend("local"), store_url=store_url)
        runs = store.runs(p.sweep)  # nothing started: the claims are handed back as retryable failures
    assert set(runs["status"]) == {"failed"} and set(runs["failure_kind"]) == {"node_lost"}


def test_sweeps_recorded_before_the_layout_fields_are_not_drift(tiny_spec, store_url) -> None:  # noqa: ANN001
    from parcae_scaling.sweeps.claims import sweep_spec
    from parcae_scaling.sweeps.launch import ConfigDriftError, record_plan

    p = plan(spec_from_dict(tiny_spec()))
    old = p.spec.to_dict()
    for key in ("nproc_per_node", "nodes"):  # as stored by the code before these fields existed
        del old["resources"][key]
    with Store.open(store_url) as store:
        store.record_sweep(p.sweep, old)
        assert record_plan(store, p) == len(p.runs)
        assert sweep_spec(store, p.sweep) == p.spec.to_dict()  # rewritten in full
        with pytest.raises(ConfigDriftError, match="resources.nproc_per_node"):
            record_plan(store, plan(spec_from_dict(_dp(tiny_spec))))
