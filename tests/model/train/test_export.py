"""Model export: safetensors + config.json that rebuild the model bit for bit; shared tensors
survive; a malformed or foreign config, or weights that do not fit it, fail in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn

from parcae_scaling import __version__
from parcae_scaling.model import build_model
from parcae_scaling.model.config import get_config
from parcae_scaling.model.run_spec import DataSpec, RunSpec
from parcae_scaling.model.train.checkpoint import CHECKPOINT_FILE, TrainProgress, save_checkpoint
from parcae_scaling.model.train.export import (
    CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, export_model, load_exported, load_weights, save_weights,
)
from parcae_scaling.model.train.loop import train_run
from parcae_scaling.model.train.optim import build_optimizer
from parcae_scaling.model.train.tokenizer import train_bpe
from parcae_testing import ListSink, tiny_run, write_bin_shards


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """parcae-tiny-48 (context 32) trained 2 optimizer steps on byte shards, and its summary."""
    root = tmp_path_factory.mktemp("export")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tiny_run(root / "run", write_bin_shards(root / "data"),
                       model=get_config("parcae-tiny-48", seq_len=32), tokens=4 * 32 * 2)
        result = train_run(run, ListSink())
    finally:
        torch.set_num_threads(threads)
    assert result.status.value == "succeeded"
    return {"run": run, "result": result, "checkpoint": root / "run" / CHECKPOINT_FILE}


def _checkpoint_model(run: RunSpec, checkpoint: Path) -> nn.Module:
    model = build_model(run.model)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def _logits(model: nn.Module, recurrence: int | None = None) -> torch.Tensor:
    idx = torch.arange(2 * 32).reshape(2, 32) * 7 % 256
    with torch.no_grad():  # the loop's initial state is drawn from this generator: same seed, same draw
        return model(idx, recurrence=recurrence, generator=torch.Generator().manual_seed(3)).logits


def test_the_exported_run_gives_the_checkpoints_logits_bit_for_bit(trained, tmp_path: Path) -> None:
    run, result = trained["run"], trained["result"]
    config = export_model(run, trained["checkpoint"], tmp_path / "out", sweep="s1")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    umask = os.umask(0)
    os.umask(umask)
    for name in (CONFIG_FILE, WEIGHTS_FILE):  # meant for others: as readable as any new file here
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~umask
    rng = torch.get_rng_state()
    model, loaded = load_exported(tmp_path / "out")
    assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the caller's RNG alone
    reference = _checkpoint_model(run, trained["checkpoint"])
    for recurrence in (None, 1, 6):
        assert torch.equal(_logits(model, recurrence), _logits(reference, recurrence))
    assert not model.training and loaded == config
    assert (loaded.run_id, loaded.sweep, loaded.package_version) == (run.run_id, "s1", __version__)
    assert (loaded.seq_len, loaded.mu_rec, loaded.mu_bwd, loaded.model) == (32, 4, 2, run.model)
    assert (loaded.tokens_trained, loaded.steps_trained) == (result.tokens_trained, 2)
    assert loaded.final_val_loss == result.final_val_loss is not None
    assert loaded.val_loss_by_recurrence == {e.recurrence: e.loss for e in result.evals}
    assert loaded.tokenizer.kind == "pretokenized" and RunSpec.from_dict(loaded.run_spec) == run
    raw = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())  # plain JSON for other tools
    assert (raw["seq_len"], raw["mu_rec"], raw["model"]["d_model"], raw["weights"]["dtype"]) == (32, 4, 48, "float32")


def test_a_transformer_round_trips_from_a_random_init_checkpoint(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run", DataSpec(), model=get_config("transformer-tiny-48", seq_len=32))
    torch.manual_seed(5)
    model = build_model(run.model)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run", run_id=run.run_id, model=model, optimizer=build_optimizer(model, run.optimizer),
                    progress=TrainProgress(step=0))
    config = export_model(run, tmp_path / "run" / CHECKPOINT_FILE, tmp_path / "out")
    loaded, _ = load_exported(tmp_path / "out")
    assert torch.equal(_logits(loaded), _logits(model.eval()))
    assert config.final_val_loss is None and config.tokenizer.kind == "byte" and config.tokenizer.vocab_size == 256


def test_a_checkpoint_written_under_the_runs_legacy_id_exports_under_its_id(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run", DataSpec(), model=get_config("parcae-tiny-48", seq_len=32))
    model = build_model(run.model)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run", run_id=run.legacy_run_ids[0], model=model,
                    optimizer=build_optimizer(model, run.optimizer), progress=TrainProgress(step=0))
    assert export_model(run, tmp_path / "run" / CHECKPOINT_FILE, tmp_path / "out").run_id == run.run_id


class _Tied(nn.Module):
    """One embedding registered under two names: the state dict holds one tensor twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = self.embed
        self.out = nn.Linear(4, 3)


def test_shared_tensors_are_written_once_and_stay_shared(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = _Tied()
    with pytest.raises(RuntimeError, match="share memory"):  # what plain safetensors does with an alias
        save_file(source.state_dict(), str(tmp_path / "plain.safetensors"))
    save_weights(source, tmp_path / "w.safetensors", {"run_id": "r1"})
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        assert len([k for k in f.keys() if k in ("embed.weight", "head.weight")]) == 1
        assert f.metadata()["run_id"] == "r1"
    target = _Tied()
    load_weights(target, tmp_path / "w.safetensors")
    assert target.head.weight is target.embed.weight
    assert torch.equal(target.embed.weight, source.embed.weight) and torch.equal(target.out.bias, source.out.bias)


def test_the_tied_head_is_the_embedding_in_the_file(trained, tmp_path: Path) -> None:
    from safetensors import safe_open

    export_model(trained["run"], trained["checkpoint"], tmp_path / "out")
    with safe_open(str(tmp_path / "out" / WEIGHTS_FILE), framework="pt") as f:
        names = set(f.keys())
    assert names == set(build_model(trained["run"].model).state_dict())  # no separate head copy
    assert "embed.weight" in names


def test_a_bpe_run_carries_its_tokenizer_file_and_force_replaces_the_export(trained, tmp_path: Path) -> None:
    tok = train_bpe(["def add(a, b):\n    return a + b\n"] * 50, vocab_size=300, path=tmp_path / "tok" / "t.json")
    data = DataSpec(source="parquet", tokenizer="bpe", tokenizer_path=str(tok.path), train_paths=("a.parquet",),
                    val_paths=("b.parquet",))
    run = trained["run"].replace(data=data)
    out = tmp_path / "out"
    config = export_model(run, trained["checkpoint"], out, run_id=trained["run"].run_id)
    assert (config.tokenizer.kind, config.tokenizer.vocab_size, config.tokenizer.file) == ("bpe", tok.vocab_size,
                                                                                         TOKENIZER_FILE)
    assert (out / TOKENIZER_FILE).read_bytes() == tok.path.read_bytes()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*--force"):
        export_model(trained["run"], trained["checkpoint"], out)
    export_model(trained["run"], trained["checkpoint"], out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE, "notes.txt"]  # stale BPE file gone
    assert load_exported(out)[1].tokenizer.kind == "pretokenized"


def test_export_refuses_another_runs_a_missing_or_a_torn_checkpoint_and_a_file_target(trained, tmp_path: Path) -> None:
    run = trained["run"]
    with pytest.raises(ValueError, match="belongs to run"):
        export_model(run.replace(seed=99), trained["checkpoint"], tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(run, tmp_path / "nope.pt", tmp_path / "b")
    (tmp_path / "torn.pt").write_bytes(trained["checkpoint"].read_bytes()[:1000])
    with pytest.raises(ValueError, match="torn.pt is unreadable .*; export another run"):
        export_model(run, tmp_path / "torn.pt", tmp_path / "c")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        export_model(run, trained["checkpoint"], tmp_path / "file")


def _edit(key_path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        *parents, last = key_path.split(".")
        for p in parents:
            d = d[p]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value
    return apply


_DELETE = object()
BAD_CONFIGS = {
    "missing key": (_edit("run", _DELETE), r"missing key\(s\) \['run'\]"),
    "missing model field": (_edit("model.d_model", _DELETE), r"missing key\(s\) \['model.d_model'\]"),
    "unknown key": (_edit("extra", 1), r"unknown key\(s\) \['extra'\]"),
    "unknown version": (_edit("format_version", 99), "format_version 99 is not supported"),
    "another format": (_edit("format", "hf"), "not a parcae-scaling-model config"),
    "bad model field": (_edit("model.d_model", "big"), "ModelConfig.d_model"),
    "seq_len disagrees": (_edit("seq_len", 64), "seq_len = 64 disagrees with model.seq_len = 32"),
    "bad tokens": (_edit("run.tokens_trained", -1), "run.tokens_trained must be a non-negative integer"),
    "bad tokenizer": (_edit("tokenizer.kind", "sentencepiece"), "tokenizer.kind 'sentencepiece' is unknown"),
    "weights outside": (_edit("weights.file", "../x.safetensors"), "must be a file name inside"),
    "weights of another shape": (_edit("model.d_ff", 96), "cannot load these weights"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_malformed_config_fails_in_one_line_naming_the_file(trained, tmp_path: Path, case: str) -> None:
    export_model(trained["run"], trained["checkpoint"], tmp_path / "out")
    path = tmp_path / "out" / CONFIG_FILE
    raw = json.loads(path.read_text())
    edit, message = BAD_CONFIGS[case]
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as info:
        load_exported(tmp_path / "out")
    text = str(info.value)
    assert "\n" not in text and "re-export" in text
    assert str(path) in text or str(tmp_path / "out" / WEIGHTS_FILE) in text


def test_no_config_bad_json_and_missing_weights_each_name_the_fix(trained, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json does not exist.*export-model"):
        load_exported(tmp_path)
    export_model(trained["run"], trained["checkpoint"], tmp_path / "out")
    (tmp_path / "out" / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors does not exist.*re-export"):
        load_exported(tmp_path / "out")
    (tmp_path / "out" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*re-export"):
        load_exported(tmp_path / "out")
