"""Data-parallel layout: environment parsing, layout checks, disjoint micro-batches, run ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from parcae_scaling.model.train.data import global_micro_index
from parcae_scaling.sweeps.ranks import torchrun_command
from parcae_scaling.model.train.distributed import DistEnv, check_layout, env_from_environ, environ_rank
from parcae_scaling.model.run_spec import DataSpec, plan_tokens
from parcae_scaling.model.train.loop import train_run
from parcae_testing import ListSink, tiny_run



def _run(tmp_path: Path, **changes):
    return tiny_run(tmp_path / "run", DataSpec(), **changes)


def test_env_from_torchrun_variables() -> None:
    env = env_from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert env == DistEnv(rank=3, world_size=4, local_rank=1, local_world_size=2, source="torchrun")
    assert env_from_environ({}) == DistEnv() and env_from_environ({}).is_main
    with pytest.raises(ValueError, match="RANK"):
        env_from_environ({"RANK": "4", "WORLD_SIZE": "4"})
    assert environ_rank({"SLURM_PROCID": "2"}) == 2 and environ_rank({}) == 0


def test_layout_must_match_the_launcher(tmp_path: Path) -> None:
    run = _run(tmp_path, nproc_per_node=2)
    check_layout(run, DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2))
    with pytest.raises(ValueError, match="nproc_per_node x nodes = 2 x 1 = 2 processes"):
        check_layout(run, DistEnv())
    with pytest.raises(ValueError, match="launcher started 1"):
        train_run(run, ListSink())  # no torchrun around this process: fails before touching data


def test_ranks_read_disjoint_micro_batches_covering_the_step() -> None:
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        seen = [global_micro_index(rank=r, micro=m, grad_accum_steps=accum) for r in range(world) for m in range(accum)]
        assert sorted(seen) == list(range(4))
    with pytest.raises(ValueError):
        global_micro_index(rank=0, micro=2, grad_accum_steps=2)


def test_global_batch_and_run_id_do_not_depend_on_the_layout(tmp_path: Path) -> None:
    one = _run(tmp_path, grad_accum_steps=4, tokens=4 * 4 * 32 * 3)
    two = one.with_world_size(2)
    four = one.with_world_size(2, nodes=2)
    assert (two.grad_accum_steps, four.grad_accum_steps, four.world_size) == (2, 1, 4)
    assert one.run_id == two.run_id == four.run_id
    assert plan_tokens(one) == plan_tokens(two) == plan_tokens(four)
    assert two.replace(sharding="zero").run_id == one.run_id
    assert one.replace(depth_sampling="shared").run_id != one.run_id
    # Doubling the processes without shrinking accumulation doubles the global batch: a new run.
    assert one.replace(nproc_per_node=2).run_id != one.run_id
    assert plan_tokens(one.replace(nproc_per_node=2, tokens=4 * 8 * 32 * 3)).steps == 3
    with pytest.raises(ValueError, match="do not divide the 4 micro-batches"):
        one.with_world_size(3)


def test_distributed_fields_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nproc_per_node"):
        _run(tmp_path, nproc_per_node=0)
    with pytest.raises(ValueError, match="depth_sampling"):
        _run(tmp_path, depth_sampling="sometimes")
    with pytest.raises(ValueError, match="sharding"):
        _run(tmp_path, sharding="fsdp3")
    spec = _run(tmp_path, nproc_per_node=2, sharding="zero", depth_sampling="shared")
    assert type(spec).from_json(spec.to_json()) == spec


def test_torchrun_command_runs_the_rank_entry_point(tmp_path: Path) -> None:
    cmd = torchrun_command(tmp_path / "s.json", nproc_per_node=2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd
    at = cmd.index("-m", 3)
    assert cmd[at + 1:at + 4] == ["parcae_scaling.sweeps", "rank", str(tmp_path / "s.json")]
