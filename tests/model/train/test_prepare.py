"""Parquet tokenized streaming into a cached token file, once across processes (model/train/prepare.py)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parcae_testing import wait_for

from parcae_scaling.model.run_spec import DataSpec
from parcae_scaling.model.train.corpus import prepare_stdlib_corpus, unigram_entropy_nats
from parcae_scaling.model.train.data import load_data, prepare_data
from parcae_scaling.model.train.prepare import PrepProgress, tokenize_parquet
from parcae_scaling.model.train.tokenizer import ByteTokenizer, encode_documents, token_dtype_for, train_bpe

# The byte-level token file of `_write_shards` as the in-memory builder wrote it before streaming
# replaced it (computed with that code): token files, and so run ids and losses, must not change.
EXPECTED_TOKENS = 303_252
EXPECTED_SHA256 = "7e3afb36d863827ca5a3f54022b25fdad1a51a0c0be53ed645761d7b808c3cba"


def _texts(n: int, salt: str) -> list[str | None]:
    """Unicode, nulls, empty strings and trailing blank lines: every case the layout must keep."""
    out: list[str | None] = []
    for i in range(n):
        if i % 97 == 0:
            out.append(None)
        elif i % 89 == 0:
            out.append("")
        else:
            out.append(f"doc {salt}-{i}: héllo wörld ✓\n" * (1 + i % 7) + ("trailing\n\n" if i % 5 == 0 else ""))
    return out


def _write_shards(root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(1500)), "text": _texts(1500, "a")}), root / "a.parquet",
                   row_group_size=700)
    pq.write_table(pa.table({"text": _texts(1100, "b")}), root / "b.parquet", row_group_size=400)
    return [root / "a.parquet", root / "b.parquet"]


def _in_memory_reference(paths: list[Path], tokenizer, text_column: str = "text") -> np.ndarray:  # noqa: ANN001
    """The builder before streaming: every document in memory, concatenated at the end."""
    dtype = token_dtype_for(tokenizer.vocab_size)
    chunks: list[np.ndarray] = []
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(columns=[text_column], batch_size=1024):
            texts = [t for t in batch.column(0).to_pylist() if t]
            chunks.extend(ids.astype(dtype) for ids in encode_documents(tokenizer, texts))
    return np.concatenate(chunks)


@pytest.mark.parametrize("batch_rows", [1024, 333, 1])
def test_streamed_file_is_byte_identical_to_the_in_memory_builder(tmp_path: Path, batch_rows: int) -> None:
    paths = _write_shards(tmp_path / "shards")
    tf = tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=tmp_path / "cache",
                          batch_rows=batch_rows)
    data = Path(tf.path).read_bytes()
    assert tf.built and tf.tokens == EXPECTED_TOKENS and tf.dtype == "uint16"
    assert hashlib.sha256(data).hexdigest() == EXPECTED_SHA256
    reference = _in_memory_reference(paths, ByteTokenizer())
    assert data == reference.tobytes()
    assert tf.documents == sum(1 for p in paths for t in pq.read_table(p)["text"].to_pylist() if t)
    assert tf.unigram_entropy_nats == unigram_entropy_nats(reference, 256)  # exactly: counts summed per batch


def test_bpe_streamed_file_matches_in_memory_builder(tmp_path: Path) -> None:
    paths = _write_shards(tmp_path / "shards")
    tok = train_bpe([t for t in _texts(300, "a") if t], vocab_size=300, path=tmp_path / "tok.json")
    tf = tokenize_parquet(paths, tok, text_column="text", cache_dir=tmp_path / "cache", batch_rows=250)
    assert Path(tf.path).read_bytes() == _in_memory_reference(paths, tok).tobytes()
    assert tf.vocab_size == tok.vocab_size and tf.tokens < EXPECTED_TOKENS  # BPE compresses


def test_tokens_reach_disk_batch_by_batch(tmp_path: Path) -> None:
    """Streaming, not concatenating: after each batch the partial file already holds every token so far."""
    paths = _write_shards(tmp_path / "shards")
    seen: list[tuple[int, int]] = []

    def check(p: PrepProgress) -> None:
        (partial,) = (tmp_path / "cache" / "parquet").glob(".*.bin.*.partial")
        seen.append((p.tokens * 2, partial.stat().st_size))

    tf = tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=tmp_path / "cache",
                          batch_rows=200, on_progress=check)
    assert len(seen) == 8 + 6  # ceil(1500 / 200) + ceil(1100 / 200) record batches
    assert all(expected == on_disk for expected, on_disk in seen)
    assert seen[-1][0] == tf.tokens * 2 and not list((tmp_path / "cache" / "parquet").glob("*.partial"))


def test_cached_file_is_reused_and_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    paths = _write_shards(tmp_path / "shards")
    cache = tmp_path / "cache"

    def interrupt(p: PrepProgress) -> None:
        if p.rows_done > 1000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=cache, on_progress=interrupt)
    assert [p.name for p in (cache / "parquet").iterdir() if not p.name.endswith(".lock")] == []
    first = tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=cache)
    inode = os.stat(first.path).st_ino
    again = tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=cache,
                             on_progress=lambda p: pytest.fail("a cached file was tokenized again"))
    assert first.built and not again.built
    assert os.stat(again.path).st_ino == inode and again.tokens == first.tokens == EXPECTED_TOKENS


def test_a_killed_builders_partial_file_is_removed_by_the_next_build(tmp_path: Path) -> None:
    paths = _write_shards(tmp_path / "shards")
    cache = tmp_path / "cache"
    out = Path(tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=cache).path)
    out.unlink()
    out.with_suffix(".json").unlink()
    stale = out.with_name(f".{out.name}.1-dead.partial")
    stale.write_bytes(b"half a file")
    rebuilt = tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=cache)
    assert rebuilt.built and not stale.exists()
    assert sorted(p.name for p in (cache / "parquet").iterdir()) == sorted(
        [out.name, out.with_suffix(".json").name, out.with_suffix(".lock").name])


def test_file_cached_before_manifests_is_counted_not_retokenized(tmp_path: Path) -> None:
    paths = _write_shards(tmp_path / "shards")
    cache = tmp_path / "cache"
    tf = tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=cache)
    Path(tf.path).with_suffix(".json").unlink()  # what the in-memory builder left: a .bin alone
    old = tokenize_parquet(paths, ByteTokenizer(), text_column="text", cache_dir=cache,
                           on_progress=lambda p: pytest.fail("a cached file was tokenized again"))
    assert not old.built and old.documents is None
    assert (old.tokens, old.unigram_entropy_nats) == (tf.tokens, tf.unigram_entropy_nats)
    assert Path(tf.path).with_suffix(".json").is_file()


def test_bad_shards_fail_before_tokenizing(tmp_path: Path) -> None:
    good = _write_shards(tmp_path / "shards")[0]
    (tmp_path / "junk.parquet").write_text("not parquet")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"text": ["", None]}), tmp_path / "empty.parquet")
    cases = [([good, tmp_path / "junk.parquet"], "text", "junk.parquet: not a readable parquet file"),
             ([good], "body", "no column 'body'"),
             ([tmp_path / "ints.parquet"], "text", "holds int64, not text"),
             ([tmp_path / "empty.parquet"], "text", "hold no text")]
    for paths, column, message in cases:
        with pytest.raises(ValueError, match=message):
            tokenize_parquet(paths, ByteTokenizer(), text_column=column, cache_dir=tmp_path / "cache",
                             on_progress=lambda p: None)
    assert not list((tmp_path / "cache" / "parquet").glob("*.bin*"))


def test_prepare_data_then_load_data_reuses_the_files(tmp_path: Path) -> None:
    paths = _write_shards(tmp_path / "shards")
    spec = DataSpec(source="parquet", train_paths=(str(paths[0]),), val_paths=(str(paths[1]),),
                    cache_dir=str(tmp_path / "cache"))
    labels: set[str] = set()
    prepared = prepare_data(spec, on_progress=lambda p: labels.add(p.label))
    assert prepared.built and labels == {"train", "val"}
    mtimes = [os.stat(p).st_mtime_ns for p in prepared.train.paths + prepared.val.paths]
    data = load_data(spec)
    assert len(data.train) == prepared.train.tokens and len(data.val) == prepared.val.tokens
    assert data.unigram_entropy_nats == unigram_entropy_nats(np.asarray(data.train.arrays[0]), 256)
    assert [os.stat(p).st_mtime_ns for p in prepared.train.paths + prepared.val.paths] == mtimes
    assert not prepare_data(spec).built


def test_embedded_corpus_reports_whether_it_was_built(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    for i in range(30):
        (root / f"m{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"m{i}.py").write_text(f"x = {i}\n" * 20)
    kw = dict(cache_dir=tmp_path / "cache", stdlib_root=root, val_percent=20)
    info, built = prepare_stdlib_corpus(**kw)
    again, built_again = prepare_stdlib_corpus(**kw)
    assert built and not built_again and again == info
    assert (Path(info.directory).parent / f"{info.name}.lock").is_file()


# Two processes ask for the same token file at once. The first pauses after its first batch
# (holding the lock) until the test releases it; the second starts meanwhile, confirms the lock
# is held, then asks too. It must wait and reuse the first's file, never tokenize.
_WORKER = r"""
import fcntl, hashlib, json, os, sys, time
from pathlib import Path
from parcae_scaling.model.train.prepare import tokenize_parquet
from parcae_scaling.model.train.tokenizer import ByteTokenizer

shard, cache, role, signals = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
calls = []

def on_progress(p):
    calls.append(p.rows_done)
    if role == "first" and len(calls) == 1:
        (signals / "first-holds-lock").touch()
        while not (signals / "release").exists():
            time.sleep(0.01)

lock_held = None
if role == "second":
    (lock,) = (Path(cache) / "parquet").glob("*.lock")
    with open(lock, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock_held = False
        except BlockingIOError:
            lock_held = True
    (signals / "second-asks").touch()
tf = tokenize_parquet([Path(shard)], ByteTokenizer(), text_column="text", cache_dir=cache, batch_rows=100,
                      on_progress=on_progress)
print(json.dumps({"built": tf.built, "progress_calls": len(calls), "lock_held": lock_held,
                  "sha": hashlib.sha256(Path(tf.path).read_bytes()).hexdigest(), "inode": os.stat(tf.path).st_ino}))
"""


def _waits_on_a_lock(pid: int) -> bool:
    """/proc/locks marks a process blocked on a lock with `->` before the lock's fields."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid)
               for line in Path("/proc/locks").read_text().splitlines() if "->" in line)


def test_two_processes_tokenize_the_same_data_once(tmp_path: Path) -> None:
    shard = _write_shards(tmp_path / "shards")[0]
    cache, signals = tmp_path / "cache", tmp_path / "signals"
    signals.mkdir()

    def start(role: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", _WORKER, str(shard), str(cache), role, str(signals)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start("first")
    second = None
    try:
        wait_for(lambda: (signals / "first-holds-lock").exists() or first.poll() is not None, 120,
                 "the first process to hold the lock", poll_s=0.05)
        second = start("second")
        wait_for(lambda: (signals / "second-asks").exists() or second.poll() is not None, 120,
                 "the second process to ask", poll_s=0.05)
        if Path("/proc/locks").exists():  # Linux: release only once the second is queued on the lock
            wait_for(lambda: _waits_on_a_lock(second.pid) or second.poll() is not None, 120,
                     "the second process to wait on the lock", poll_s=0.05)
    finally:
        (signals / "release").touch()
    outs = []
    for proc in (first, second):
        assert proc is not None
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(json.loads(out))
    a, b = outs
    assert a["built"] and a["progress_calls"] == 15  # ceil(1500 / 100) batches, tokenized once
    assert not b["built"] and b["progress_calls"] == 0 and b["lock_held"] is True
    assert a["sha"] == b["sha"] and a["inode"] == b["inode"]
    assert hashlib.sha256(_in_memory_reference([shard], ByteTokenizer()).tobytes()).hexdigest() == a["sha"]
    assert len(list((cache / "parquet").glob("*.bin"))) == 1


def test_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    """A killed builder leaves no stale lock: the kernel drops a dead process's flock."""
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); fcntl.flock(f.fileno(), fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(600)"), str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with open(lock, "a+b") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.kill()
        holder.wait()
    from parcae_scaling.model.train.cache import file_lock

    with file_lock(lock):  # would block forever if the lock outlived its holder
        pass
