"""Cluster launch paths of a multi-process run: Ray Train (local Ray cluster) and SLURM layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parcae_scaling.sweeps.backend_submitit import slurm_task_layout
from parcae_scaling.model.train.loop import SUMMARY_FILE
from parcae_testing import tiny_run, write_bin_shards



def test_slurm_layout_has_one_task_per_rank(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, write_bin_shards(tmp_path / "d"), nproc_per_node=4, nodes=2)
    assert slurm_task_layout(run, gpus=True) == {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4}
    assert "gpus_per_node" not in slurm_task_layout(run, gpus=False)


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.timeout(600)
def test_two_worker_run_through_a_local_ray_cluster(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    from parcae_scaling.sweeps.backend_ray import ray_train_run

    run = tiny_run(tmp_path / "run", write_bin_shards(tmp_path / "data"), tokens=8 * 32 * 4, nproc_per_node=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray_train_run(run)
    finally:
        ray.shutdown()
    summary = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert summary["status"] == "succeeded" and summary["steps_done"] == 4
    assert summary["tokens_trained"] == 8 * 32 * 4
