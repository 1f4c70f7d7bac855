"""Parquet text shards (FineWeb-Edu layout) tokenized once, streaming, into a cached token file.

The shards are read in record batches, each batch tokenized and appended to a partial file, so
peak memory is one batch, not the corpus (`bench/data_prep.py`). The file is renamed into place
when complete (a reader never sees a partial file), after a JSON manifest with its token count
and unigram entropy (so a run opening it never rescans the tokens). A builder holds
`<cache>/parquet/<key>.lock` (cache.py): processes that need the same file at once tokenize it
once, the others wait and reuse it.

Layout and order (unchanged from the in-memory builder this replaced, so token files, run
ids and losses are the same): shards in the order given, rows in file order, rows whose text is
empty or null skipped, each document `Tokenizer.encode_document` (its text then the document
separator), ids stored as the vocabulary's smallest unsigned dtype. The cache key hashes each
shard's resolved path, size and mtime, the tokenizer's fingerprint and the column name.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from parcae_scaling.model.train.cache import cache_root, file_lock
from parcae_scaling.model.train.corpus import entropy_from_counts
from parcae_scaling.model.train.tokenizer import Tokenizer, encode_documents, token_dtype_for

TOKEN_FILE_FORMAT_VERSION = 1
BATCH_ROWS = 1024  # parquet rows tokenized at a time: bounds peak memory
_SCAN_TOKENS = 1 << 24  # tokens per chunk when counting an existing token file
_READ_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class TokenFile:
    """A prepared flat token file and what it holds. `built`: this call tokenized it (False: it
    was cached, or another process built it while this one waited)."""

    path: str
    dtype: str
    tokens: int
    documents: int | None  # None: a file cached before manifests existed
    vocab_size: int
    unigram_entropy_nats: float
    sources: tuple[str, ...]
    text_column: str
    tokenizer: str  # the tokenizer's fingerprint
    format_version: int = TOKEN_FILE_FORMAT_VERSION
    built: bool = False

    def array(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r")


@dataclass(frozen=True, kw_only=True)
class PrepProgress:
    """Where a tokenization stands, reported after each record batch."""

    label: str
    rows_done: int
    rows_total: int  # from the shards' footers
    documents: int  # rows with text
    tokens: int
    elapsed_s: float

    @property
    def done(self) -> bool:
        return self.rows_done >= self.rows_total


ProgressFn = Callable[[PrepProgress], None]


def _file_fingerprint(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _is_text(kind: object) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return _is_text(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"


def check_parquet_shards(paths: Sequence[Path], text_column: str) -> list:
    """Open every shard (footers only) and check its text column: a bad shard fails before any
    tokenizing. Returns the opened `pyarrow.parquet.ParquetFile`s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = []
    for path in paths:
        try:
            # Read column chunks through a small buffer, no pre-buffering: pyarrow's defaults read
            # whole column chunks (a shard's text, for a one-row-group file) ahead into memory.
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: not a readable parquet file ({' '.join(str(err).split())}); "
                             "fix the file or drop it from the data spec's train_paths / val_paths") from None
        names = pf.schema_arrow.names
        if text_column not in names:
            raise ValueError(f"{path}: no column {text_column!r} (columns: {names}); set text_column in the data spec")
        kind = pf.schema_arrow.field(text_column).type
        if not _is_text(kind):
            raise ValueError(f"{path}: column {text_column!r} holds {kind}, not text; "
                             "set text_column in the data spec to the text column")
        shards.append(pf)
    return shards


def _stream_tokens(paths: Sequence[Path], tokenizer: Tokenizer, *, text_column: str, dest: Path,
                   batch_rows: int, label: str, on_progress: ProgressFn | None) -> tuple[int, int, np.ndarray]:
    """Tokenize the shards batch by batch, appending to `dest`; (tokens, documents, unigram counts)."""
    import pyarrow as pa

    shards = check_parquet_shards(paths, text_column)
    rows_total = sum(pf.metadata.num_rows for pf in shards)
    dtype = token_dtype_for(tokenizer.vocab_size)
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    rows = documents = tokens = 0
    start = time.perf_counter()
    with open(dest, "wb") as f:
        for path, pf in zip(paths, shards):
            try:
                for batch in pf.iter_batches(columns=[text_column], batch_size=batch_rows):
                    texts = [t for t in batch.column(0).to_pylist() if t]
                    if texts:
                        ids = np.concatenate(encode_documents(tokenizer, texts)).astype(dtype)
                        ids.tofile(f)
                        counts += np.bincount(ids, minlength=tokenizer.vocab_size)
                        tokens += int(ids.size)
                    rows += batch.num_rows
                    documents += len(texts)
                    if on_progress is not None:
                        on_progress(PrepProgress(label=label, rows_done=rows, rows_total=rows_total,
                                                 documents=documents, tokens=tokens,
                                                 elapsed_s=time.perf_counter() - start))
            except pa.ArrowException as err:
                raise ValueError(f"{path}: unreadable parquet data ({' '.join(str(err).split())}); "
                                 "re-download or remove the shard") from None
    if tokens == 0:
        raise ValueError(f"parquet shards {[str(p) for p in paths]} hold no text in column {text_column!r}")
    return tokens, documents, counts


def _scan_counts(path: Path, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """Unigram counts of an existing token file, read in chunks (bounded memory)."""
    arr = np.memmap(path, dtype=dtype, mode="r")
    counts = np.zeros(vocab_size, dtype=np.int64)
    for lo in range(0, len(arr), _SCAN_TOKENS):
        counts += np.bincount(arr[lo:lo + _SCAN_TOKENS], minlength=vocab_size)
    return counts


def _partial(final: Path) -> Path:
    """A new, unique temporary file beside `final`: even if the lock does not hold (a filesystem
    without locking), two builders never write into one file."""
    path = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies (mkstemp: 0600)
    return path


def _write_json(path: Path, payload: dict) -> None:
    tmp = _partial(path)
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _read_manifest(path: Path) -> TokenFile:
    raw = json.loads(path.read_text())
    raw["sources"] = tuple(raw["sources"])
    return TokenFile(**raw)


def _cache_entry(paths: Sequence[Path], tokenizer: Tokenizer, text_column: str,
                 cache_dir: str | Path | None) -> tuple[Path, str]:
    """(directory, key) of the token file of these shards."""
    key = f"{_file_fingerprint(paths)}-{tokenizer.fingerprint()}-{text_column}"
    return cache_root(cache_dir) / "parquet", key


def parquet_is_prepared(paths: Sequence[Path], tokenizer: Tokenizer, *, text_column: str,
                        cache_dir: str | Path | None) -> bool:
    """Whether `tokenize_parquet` would return a cached file without tokenizing."""
    directory, key = _cache_entry([Path(p) for p in paths], tokenizer, text_column, cache_dir)
    # the manifest is published before the token file: both there means done
    return (directory / f"{key}.bin").is_file() and (directory / f"{key}.json").is_file()


def tokenize_parquet(paths: Sequence[Path], tokenizer: Tokenizer, *, text_column: str,
                     cache_dir: str | Path | None, label: str = "parquet", batch_rows: int = BATCH_ROWS,
                     on_progress: ProgressFn | None = None) -> TokenFile:
    """The token file of the `text_column` of parquet shards: cached, else tokenized now (once
    across processes: a second caller waits on the lock, then reuses the file)."""
    paths = [Path(p) for p in paths]
    directory, key = _cache_entry(paths, tokenizer, text_column, cache_dir)
    out, manifest = directory / f"{key}.bin", directory / f"{key}.json"
    if out.is_file() and manifest.is_file():  # the manifest is published first: both there means done
        return _read_manifest(manifest)
    with file_lock(directory / f"{key}.lock"):
        if out.is_file() and manifest.is_file():
            return _read_manifest(manifest)
        dtype = token_dtype_for(tokenizer.vocab_size)
        documents: int | None
        if out.is_file():  # cached before manifests existed: count it, do not tokenize again
            counts = _scan_counts(out, dtype, tokenizer.vocab_size)
            tokens, documents, built = int(counts.sum()), None, False
        else:
            for stale in directory.glob(f".{key}.bin.*.partial"):  # left by a killed builder
                stale.unlink(missing_ok=True)
            partial = _partial(out)
            try:
                tokens, documents, counts = _stream_tokens(paths, tokenizer, text_column=text_column, dest=partial,
                                                           batch_rows=batch_rows, label=label,
                                                           on_progress=on_progress)
            except BaseException:  # a bad shard or Ctrl-C: leave no partial file behind
                partial.unlink(missing_ok=True)
                raise
            built = True
        info = TokenFile(path=str(out), dtype=dtype.name, tokens=tokens, documents=documents,
                         vocab_size=int(tokenizer.vocab_size), unigram_entropy_nats=entropy_from_counts(counts),
                         sources=tuple(str(p.resolve()) for p in paths), text_column=text_column,
                         tokenizer=tokenizer.fingerprint())
        payload = asdict(info)
        del payload["built"]
        _write_json(manifest, payload)
        if built:
            os.replace(partial, out)  # atomic: a killed build never leaves a partial token file
    return replace(info, built=built)
