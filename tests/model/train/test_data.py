"""Embedded corpus, tokenizers, shard loaders and deterministic batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from parcae_scaling.model.train.corpus import build_stdlib_corpus, is_validation_file, stdlib_source_files
from parcae_scaling.model.train.data import (
    TokenStream,
    expand_paths,
    load_data,
    open_token_shard,
    train_batch,
    val_batches,
)
from parcae_scaling.model.run_spec import DataSpec
from parcae_scaling.model.train.tokenizer import ByteTokenizer, get_tokenizer


def _fake_stdlib(root: Path, n: int = 40) -> Path:
    for i in range(n):
        sub = root / ("pkg" if i % 3 else "") / f"mod_{i:02d}.py"
        sub.parent.mkdir(parents=True, exist_ok=True)
        sub.write_text(f'"""Module {i} docstring."""\n\ndef f_{i}(x):\n    return x * {i} + {i}\n' * 5)
    for skipped in ("site-packages/evil.py", "test/test_x.py", "_sysconfigdata_x.py"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("SKIP = 1\n")
    return root


def test_corpus_build_is_deterministic_and_cached(tmp_path: Path) -> None:
    root = _fake_stdlib(tmp_path / "lib")
    a = build_stdlib_corpus(cache_dir=tmp_path / "c1", stdlib_root=root, val_percent=20)
    train_file = Path(a.train_file)
    mtime = train_file.stat().st_mtime_ns
    again = build_stdlib_corpus(cache_dir=tmp_path / "c1", stdlib_root=root, val_percent=20)
    assert again == a
    assert train_file.stat().st_mtime_ns == mtime  # served from cache, not rebuilt
    b = build_stdlib_corpus(cache_dir=tmp_path / "c2", stdlib_root=root, val_percent=20)
    assert Path(b.train_file).read_bytes() == train_file.read_bytes()
    assert Path(b.val_file).read_bytes() == Path(a.val_file).read_bytes()
    assert a.train_files + a.val_files == 40 and a.val_files > 0
    assert a.train_tokens == len(a.train_array()) and a.vocab_size == 256
    assert 0 < a.unigram_entropy_nats < np.log(256)
    text = ByteTokenizer().decode(a.train_array()[:2000])
    assert "SKIP" not in Path(a.train_file).read_bytes().decode() and "docstring" in text


def test_split_is_by_path_hash_and_excludes_tests(tmp_path: Path) -> None:
    root = _fake_stdlib(tmp_path / "lib")
    files = stdlib_source_files(root)
    assert files == sorted(files) and len(files) == 40
    assert not any("site-packages" in f or f.startswith("test/") or "_sysconfigdata" in f for f in files)
    assert [is_validation_file(f, 20) for f in files] == [is_validation_file(f, 20) for f in files]
    assert 0 < sum(is_validation_file(f, 20) for f in files) < 40


def test_real_stdlib_corpus_builds(tmp_path: Path) -> None:
    info = build_stdlib_corpus(cache_dir=tmp_path)
    assert info.train_tokens > 1_000_000 and info.val_tokens > 50_000
    assert 2.0 < info.unigram_entropy_nats < 4.5  # nats per byte of Python source


def test_env_var_sets_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARCAE_CACHE_DIR", str(tmp_path / "envcache"))
    info = build_stdlib_corpus(stdlib_root=_fake_stdlib(tmp_path / "lib"), val_percent=20)
    assert Path(info.directory).is_relative_to(tmp_path / "envcache")


def test_bpe_corpus_trains_and_round_trips(tmp_path: Path) -> None:
    root = _fake_stdlib(tmp_path / "lib")
    info = build_stdlib_corpus(tokenizer="bpe", bpe_vocab_size=300, cache_dir=tmp_path,
                               stdlib_root=root, val_percent=20)
    assert info.tokenizer_path and Path(info.tokenizer_path).is_file()
    tok = get_tokenizer("bpe", path=info.tokenizer_path)
    assert tok.vocab_size <= 300 and info.vocab_size == tok.vocab_size
    assert tok.decode(tok.encode("def f_3(x):\n    return x")) == "def f_3(x):\n    return x"
    assert info.train_tokens < sum((root / f).stat().st_size for f in stdlib_source_files(root))


def test_bad_corpus_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        build_stdlib_corpus(tokenizer="wordpiece", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no .py files"):
        build_stdlib_corpus(cache_dir=tmp_path, stdlib_root=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("sentencepiece")
    with pytest.raises(ValueError, match="tokenizer_path"):
        get_tokenizer("bpe")


def _write_header_shard(path: Path, tokens: np.ndarray, magic: int, version: int) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, version, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def test_bin_shard_layouts(tmp_path: Path) -> None:
    toks16 = np.arange(1000, dtype=np.uint16)
    toks16.tofile(tmp_path / "plain16.bin")
    np.arange(70_000, 71_000, dtype=np.uint32).tofile(tmp_path / "plain32.bin")
    _write_header_shard(tmp_path / "llmc16.bin", toks16, 20240520, 1)
    _write_header_shard(tmp_path / "llmc32.bin", np.arange(70_000, 71_000, dtype=np.uint32), 20240801, 7)
    assert np.array_equal(open_token_shard(tmp_path / "plain16.bin"), toks16)
    assert open_token_shard(tmp_path / "plain32.bin", headerless_dtype="uint32")[0] == 70_000
    llmc16 = open_token_shard(tmp_path / "llmc16.bin")
    assert llmc16.dtype == np.uint16 and np.array_equal(llmc16, toks16)
    llmc32 = open_token_shard(tmp_path / "llmc32.bin")
    assert llmc32.dtype == np.uint32 and int(llmc32[-1]) == 70_999
    # A header whose count disagrees with the payload is an error, not silent garbage.
    _write_header_shard(tmp_path / "torn.bin", toks16[:500], 20240520, 1)
    with open(tmp_path / "torn.bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(ValueError, match="truncated"):
        open_token_shard(tmp_path / "torn.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="token_dtype"):
        open_token_shard(tmp_path / "odd.bin")


def test_token_stream_windows_straddle_shards() -> None:
    s = TokenStream([np.arange(0, 5), np.arange(5, 7), np.arange(7, 20)], description="t")
    assert len(s) == 20
    assert s.window(3, 8).tolist() == list(range(3, 11))
    with pytest.raises(IndexError):
        s.window(15, 6)


def test_batches_are_pure_in_seed_step_micro() -> None:
    s = TokenStream([np.arange(10_000) % 251], description="t")
    kw = dict(batch_size=4, seq_len=16)
    x1, y1 = train_batch(s, seed=3, step=7, micro=1, **kw)
    x2, y2 = train_batch(s, seed=3, step=7, micro=1, **kw)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 16) and x1.dtype == torch.long
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the next tokens
    assert not torch.equal(x1, train_batch(s, seed=3, step=8, micro=1, **kw)[0])
    assert not torch.equal(x1, train_batch(s, seed=4, step=7, micro=1, **kw)[0])
    assert not torch.equal(x1, train_batch(s, seed=3, step=7, micro=0, **kw)[0])


def test_val_batches_are_fixed_windows() -> None:
    s = TokenStream([np.arange(1000)], description="v")
    batches = list(val_batches(s, seq_len=10, batch_size=4, max_tokens=95))
    assert sum(x.shape[0] for x, _ in batches) == 9
    assert batches[0][0][1, 0].item() == 10 and batches[0][1][0, -1].item() == 10
    with pytest.raises(ValueError, match="too few"):
        list(val_batches(TokenStream([np.arange(5)], description="v"), seq_len=10, batch_size=1, max_tokens=100))


def test_load_bin_and_parquet_sources(tmp_path: Path) -> None:
    np.arange(3000, dtype=np.uint16).tofile(tmp_path / "shard_train_000.bin")
    _write_header_shard(tmp_path / "shard_train_001.bin", np.arange(500, dtype=np.uint16), 20240520, 1)
    np.arange(400, dtype=np.uint16).tofile(tmp_path / "shard_val_000.bin")
    data = load_data(DataSpec(source="bin", train_paths=(str(tmp_path / "shard_train_*.bin"),),
                              val_paths=(str(tmp_path / "shard_val_000.bin"),)))
    assert len(data.train) == 3500 and len(data.val) == 400 and data.vocab_size is None

    texts = [f"document number {i}: héllo wörld" for i in range(50)]
    pq.write_table(pa.table({"text": texts[:40], "id": list(range(40))}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": texts[40:]}), tmp_path / "val.parquet")
    spec = DataSpec(source="parquet", train_paths=(str(tmp_path / "train.parquet"),),
                    val_paths=(str(tmp_path / "val.parquet"),), cache_dir=str(tmp_path / "cache"))
    pdata = load_data(spec)
    first = ByteTokenizer().decode(pdata.train.window(0, 40))
    assert first.startswith("document number 0: héllo wörld\n\n")
    assert pdata.vocab_size == 256 and pdata.unigram_entropy_nats is not None
    assert len(pdata.train) == sum(len(t.encode()) + 2 for t in texts[:40])
    cached = list((tmp_path / "cache" / "parquet").glob("*.bin"))
    assert len(cached) == 2
    with pytest.raises(ValueError, match="text_column"):
        load_data(DataSpec(source="parquet", train_paths=spec.train_paths, val_paths=spec.val_paths,
                           text_column="body", cache_dir=str(tmp_path / "cache")))


def test_data_spec_validation() -> None:
    with pytest.raises(ValueError, match="DataSpec.val_paths"):
        DataSpec(source="bin", train_paths=("a.bin",))
    with pytest.raises(ValueError, match="DataSpec.train_paths"):
        DataSpec(source="embedded", train_paths=("a.bin",))
    with pytest.raises(ValueError, match="tokenizer_path"):
        DataSpec(source="parquet", tokenizer="bpe", train_paths=("a",), val_paths=("b",))
    with pytest.raises(ValueError, match="matches no file"):
        expand_paths(["/nonexistent/*.bin"], field="train_paths")


def test_parquet_with_local_bpe_tokenizer(tmp_path: Path) -> None:
    from parcae_scaling.model.train.tokenizer import BPE_EOS, train_bpe

    texts = [f"import os\nprint(os.path.join('a', 'b{i}'))\n" * 3 for i in range(40)]
    tok = train_bpe(texts[:30], vocab_size=320, path=tmp_path / "tok" / "tokenizer.json")
    pq.write_table(pa.table({"text": texts[:30]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": texts[30:]}), tmp_path / "val.parquet")
    data = load_data(DataSpec(source="parquet", tokenizer="bpe",
                              tokenizer_path=str(tmp_path / "tok" / "tokenizer.json"),
                              train_paths=(str(tmp_path / "train.parquet"),),
                              val_paths=(str(tmp_path / "val.parquet"),),
                              cache_dir=str(tmp_path / "cache")))
    assert data.vocab_size == tok.vocab_size <= 320
    first = tok.encode_document(texts[0])
    assert data.train.window(0, len(first)).tolist() == first.tolist()
    assert int(first[-1]) == tok._tok.token_to_id(BPE_EOS)  # documents end with the separator
    assert len(data.train) < sum(len(t) for t in texts[:30])  # BPE compresses
