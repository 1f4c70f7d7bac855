"""Every (re)start of a run records what produced it, in its run directory and in the store."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

import parcae_scaling
from parcae_scaling.db import RunDirSink, RunRecord, Store, StoreSink
from parcae_scaling.db.files import PROVENANCE_FILE, read_run_dir
from parcae_scaling.model.train.loop import train_run
from parcae_scaling.model.train.provenance import collect_provenance, git_commit
from parcae_scaling.model.train.precision import PrecisionChoice
from parcae_testing import ListSink, tiny_run, write_bin_shards


def test_a_run_records_versions_hardware_and_its_precision(tmp_path: Path) -> None:
    sink = ListSink()
    result = train_run(tiny_run(tmp_path / "run", write_bin_shards(tmp_path / "data")), sink)
    [record] = sink.provenance
    assert record["package_version"] == parcae_scaling.__version__ and record["torch"] == torch.__version__
    assert record["host"] == socket.gethostname() and record["device"] == "cpu"
    assert record["precision"] == result.precision and record["precision_reason"].startswith("auto:")
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["git_commit"] == git_commit() and json.loads(json.dumps(record)) == record


def test_git_commit_names_the_checkout_or_is_none() -> None:
    commit = git_commit()
    assert commit is None or (len(commit.split("-")[0]) == 40 and commit.split("-")[1:] in ([], ["dirty"]))


def test_provenance_reaches_the_store_directly_and_by_ingest(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run", write_bin_shards(tmp_path / "data"))
    record = collect_provenance(torch.device("cpu"), PrecisionChoice("fp32", "fp32: as the run spec asks"))
    with Store.open(f"sqlite:///{tmp_path / 's.sqlite'}") as store:
        store.record_sweep("sw", {})
        store.record_run(RunRecord(run_id=run.run_id, sweep="sw", spec=run.to_dict(), arch="parcae", model="tiny",
                                   params=10, params_non_embedding=5, mu_rec=2, mu_bwd=1, budget_flops=1e12,
                                   flop_convention="reference", flops_per_token=1e6, tokens=1000))
        with StoreSink(store) as sink:
            sink.log_provenance(run.run_id, record)
        assert store.run_provenance(run.run_id) == record
        with RunDirSink(tmp_path / "dir") as files:
            files.log_provenance(run.run_id, {**record, "host": "elsewhere"})
        assert [r for _, r in read_run_dir(tmp_path / "dir").provenance] == [{**record, "host": "elsewhere"}]
        store.ingest_run_dir(run.run_id, tmp_path / "dir")
        assert store.run_provenance(run.run_id)["host"] == "elsewhere"
        with pytest.raises(KeyError, match="not recorded"):
            store.run_provenance("nope")
    assert (tmp_path / "dir" / PROVENANCE_FILE).exists()
