"""`parcae-sweep prepare-data SPEC`: every dataset of a sweep tokenized once, ahead of launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from parcae_testing import tiny_sweep_spec, write_bin_shards

from parcae_scaling.cli import sweep_app


def _spec(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_spec("prep", data=data, output_root=str(tmp_path / "runs"))))
    return str(path)


def _parquet(tmp_path: Path) -> dict[str, Any]:
    texts = [f"document {i}: the quick brown fox ✓\n" * (1 + i % 5) for i in range(600)]
    pq.write_table(pa.table({"text": texts[:500]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": texts[500:]}), tmp_path / "val.parquet")
    return {"source": "parquet", "train_paths": [str(tmp_path / "train.parquet")],
            "val_paths": [str(tmp_path / "val.parquet")], "cache_dir": str(tmp_path / "cache")}


def _invoke(*args: str):  # noqa: ANN202
    return CliRunner().invoke(sweep_app, ["prepare-data", *args])


def test_prepare_data_tokenizes_once_then_says_already_prepared(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _parquet(tmp_path))
    first = _invoke(spec, "--progress", "plain")
    assert first.exit_code == 0, first.output
    token_files = sorted((tmp_path / "cache" / "parquet").glob("*.bin"))
    assert len(token_files) == 2  # train and val, though the sweep has three runs
    expected = {f: f.stat().st_size // 2 for f in token_files}  # uint16 tokens
    for f, n in expected.items():
        assert f"{n:,} tokens in {f}" in first.stdout
    assert first.stdout.count("(prepared now)") == 2
    assert "1 dataset(s) ready: 1 prepared now, 0 already prepared" in first.stdout
    assert "train: 500/500 rows (100%)" in first.stderr and "documents/s" in first.stderr
    assert "val: 100/100 rows (100%)" in first.stderr

    mtimes = [f.stat().st_mtime_ns for f in token_files]
    again = _invoke(spec, "--progress", "plain")
    assert again.exit_code == 0, again.output
    assert again.stdout.count("(already prepared)") == 2 and "rows" not in again.stderr
    assert "1 dataset(s) ready: 0 prepared now, 1 already prepared" in again.stdout
    assert [f.stat().st_mtime_ns for f in token_files] == mtimes


def test_prepare_data_on_pre_tokenized_shards_prepares_nothing(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "bin")
    res = _invoke(_spec(tmp_path, {"source": "bin", "train_paths": list(data.train_paths),
                                   "val_paths": list(data.val_paths)}), "--progress", "none")
    assert res.exit_code == 0, res.output
    assert "train: 20,000 tokens in" in res.stdout and "val: 4,000 tokens in" in res.stdout
    assert res.stdout.count("(pre-tokenized, nothing to prepare)") == 2


@pytest.mark.parametrize("case, message", [
    ("missing", "data.val_paths: '{root}/nope.parquet' matches no file"),
    ("column", "train.parquet: no column 'body'"),
    ("unreadable", "val.parquet: not a readable parquet file"),
])
def test_bad_data_is_one_error_line(tmp_path: Path, case: str, message: str) -> None:
    data = _parquet(tmp_path)
    if case == "missing":
        data["val_paths"] = [str(tmp_path / "nope.parquet")]
    elif case == "column":
        data["text_column"] = "body"
    else:
        (tmp_path / "val.parquet").write_bytes(b"PAR1 but not really")
    res = _invoke(_spec(tmp_path, data))
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message.format(root=tmp_path) in lines[0] and "Traceback" not in res.output
    assert not list((tmp_path / "cache").rglob("*.bin"))
