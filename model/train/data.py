"""Token sources and deterministic batches.

Every source ends as flat token arrays (numpy memmaps): the embedded stdlib corpus, nanoGPT /
llm.c-style `.bin` shards, or parquet text shards tokenized once, streaming, and cached
(prepare.py). `prepare_data` builds what a DataSpec needs ahead of training (`parcae-sweep
prepare-data`); otherwise `load_data` builds it on first use, through the same locked path.

Training batches are random windows drawn from a generator seeded by (seed, step, micro-batch)
alone, so a run resumed at step s sees exactly the batches it would have seen: the data
position is the step. Validation uses fixed, non-overlapping windows from the start of the
validation split.

`.bin` layouts accepted (`open_token_shard`):
  - llm.c / nanochat header: 256 little-endian int32, [0] magic, [1] version, [2] token count,
    then the tokens; magic 20240520 -> uint16 (GPT-2 vocab), 20240801 -> uint32 (LLaMA-3 vocab);
  - headerless (nanoGPT `train.bin`): a flat array of `token_dtype` (uint16 or uint32).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from parcae_scaling.model.train.corpus import build_stdlib_corpus, prepare_stdlib_corpus
from parcae_scaling.model.run_spec import DataSpec, FieldError
from parcae_scaling.model.train.prepare import (
    ProgressFn, TokenFile, check_parquet_shards, parquet_is_prepared, tokenize_parquet,
)
from parcae_scaling.model.train.tokenizer import Tokenizer, get_tokenizer

HEADER_INTS = 256
HEADER_MAGIC_DTYPES = {20240520: np.dtype(np.uint16), 20240801: np.dtype(np.uint32)}
_BATCH_STREAM = 0xDA7A  # separates data draws from any other use of the same seed


def open_token_shard(path: str | Path, *, headerless_dtype: str = "uint16") -> np.memmap:
    """Memory-map one token shard (layouts in the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    if size >= HEADER_INTS * 4:
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
        dtype = HEADER_MAGIC_DTYPES.get(int(header[0]))
        if dtype is not None:
            n = int(header[2])
            if HEADER_INTS * 4 + n * dtype.itemsize != size:
                raise ValueError(
                    f"{path}: header (magic {int(header[0])}) says {n} tokens of {dtype} but the file has "
                    f"{size - HEADER_INTS * 4} payload bytes; the shard is truncated or not this format"
                )
            return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(n,))
    dtype = np.dtype(headerless_dtype)
    if size == 0 or size % dtype.itemsize:
        raise ValueError(
            f"{path}: {size} bytes is not a whole number of {dtype} tokens; set DataSpec.token_dtype "
            "to the shard's dtype (or add an llm.c header)"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def expand_paths(patterns: Sequence[str], *, field: str) -> list[Path]:
    """Files named by paths or globs, sorted within each pattern; error if one matches nothing."""
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FieldError("DataSpec", field, f"{pattern!r} matches no file", "check the path or glob")
        out.extend(Path(m) for m in matches)
    return out


class TokenStream:
    """Several token arrays seen as one sequence (windows may straddle shard boundaries)."""

    def __init__(self, arrays: Sequence[np.ndarray], *, description: str) -> None:
        self.arrays = [a for a in arrays if len(a) > 0]
        if not self.arrays:
            raise ValueError(f"{description}: no tokens")
        self.description = description
        self._starts = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) outside {self.description} of {len(self)} tokens")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled, pos = 0, start
        while filled < length:
            arr = self.arrays[i]
            lo = pos - int(self._starts[i])
            take = min(length - filled, len(arr) - lo)
            out[filled : filled + take] = arr[lo : lo + take]
            filled += take
            pos += take
            i += 1
        return out


@dataclass(frozen=True, kw_only=True)
class TokenData:
    """Train and validation token streams with what is known about their vocabulary."""

    train: TokenStream
    val: TokenStream
    vocab_size: int | None  # None: pre-tokenized shards of unknown vocabulary
    unigram_entropy_nats: float | None
    description: str


@dataclass(frozen=True, kw_only=True)
class PreparedSplit:
    """One split's token files, ready to memory-map."""

    paths: tuple[str, ...]  # one cached token file, or the given shards of a "bin" source
    tokens: int
    built: bool  # this call tokenized it (False: cached, pre-tokenized, or built by another process)


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    """What `prepare_data` made ready for a DataSpec."""

    spec: DataSpec
    description: str
    train: PreparedSplit
    val: PreparedSplit

    @property
    def built(self) -> bool:
        return self.train.built or self.val.built


def _parquet_files(spec: DataSpec, on_progress: ProgressFn | None) -> tuple[Tokenizer, TokenFile, TokenFile]:
    tok = get_tokenizer(spec.tokenizer, path=spec.tokenizer_path)
    train_paths = expand_paths(spec.train_paths, field="train_paths")
    val_paths = expand_paths(spec.val_paths, field="val_paths")
    kw = dict(text_column=spec.text_column, cache_dir=spec.cache_dir)
    if not all(parquet_is_prepared(p, tok, **kw) for p in (train_paths, val_paths)):
        for paths in (train_paths, val_paths):  # a bad validation shard fails before the train split is tokenized
            check_parquet_shards(paths, spec.text_column)
    train = tokenize_parquet(train_paths, tok, label="train", on_progress=on_progress, **kw)
    val = tokenize_parquet(val_paths, tok, label="val", on_progress=on_progress, **kw)
    return tok, train, val


def prepare_data(spec: DataSpec, *, on_progress: ProgressFn | None = None) -> PreparedData:
    """Build the token files a DataSpec needs, once (cached; concurrent callers wait and reuse),
    reporting tokenization progress of parquet shards. `load_data` does the same on first use."""
    if spec.source == "embedded":
        info, built = prepare_stdlib_corpus(tokenizer=spec.tokenizer, bpe_vocab_size=spec.bpe_vocab_size,
                                            val_percent=spec.val_percent, cache_dir=spec.cache_dir)
        return PreparedData(
            spec=spec, description=f"embedded corpus {info.name} ({info.tokenizer})",
            train=PreparedSplit(paths=(info.train_file,), tokens=info.train_tokens, built=built),
            val=PreparedSplit(paths=(info.val_file,), tokens=info.val_tokens, built=built),
        )
    if spec.source == "parquet":
        tok, train, val = _parquet_files(spec, on_progress)
        return PreparedData(
            spec=spec, description=f"{len(spec.train_paths)} train / {len(spec.val_paths)} val parquet path(s) "
                                   f"({tok.kind}, column {spec.text_column!r})",
            train=PreparedSplit(paths=(train.path,), tokens=train.tokens, built=train.built),
            val=PreparedSplit(paths=(val.path,), tokens=val.tokens, built=val.built),
        )
    data = load_data(spec)  # "bin": pre-tokenized, nothing to build; count what is there
    split = {name: PreparedSplit(paths=tuple(str(p) for p in expand_paths(getattr(spec, f"{name}_paths"),
                                                                          field=f"{name}_paths")),
                                 tokens=len(getattr(data, name)), built=False) for name in ("train", "val")}
    return PreparedData(spec=spec, description=f"pre-tokenized {data.description}", **split)


def load_data(spec: DataSpec) -> TokenData:
    """Open the token streams a DataSpec names (building or tokenizing caches if needed)."""
    if spec.source == "embedded":
        info = build_stdlib_corpus(
            tokenizer=spec.tokenizer, bpe_vocab_size=spec.bpe_vocab_size,
            val_percent=spec.val_percent, cache_dir=spec.cache_dir,
        )
        return TokenData(
            train=TokenStream([info.train_array()], description=f"{info.name}/train"),
            val=TokenStream([info.val_array()], description=f"{info.name}/val"),
            vocab_size=info.vocab_size, unigram_entropy_nats=info.unigram_entropy_nats,
            description=f"embedded corpus {info.name} ({info.train_tokens} train / {info.val_tokens} val tokens)",
        )
    train_paths = expand_paths(spec.train_paths, field="train_paths")
    val_paths = expand_paths(spec.val_paths, field="val_paths")
    if spec.source == "bin":
        train = [open_token_shard(p, headerless_dtype=spec.token_dtype) for p in train_paths]
        val = [open_token_shard(p, headerless_dtype=spec.token_dtype) for p in val_paths]
        return TokenData(
            train=TokenStream(train, description="bin/train"), val=TokenStream(val, description="bin/val"),
            vocab_size=None, unigram_entropy_nats=None,
            description=f"{len(train_paths)} train / {len(val_paths)} val .bin shards",
        )
    if spec.source == "parquet":
        tok, train_file, val_file = _parquet_files(spec, None)
        return TokenData(
            train=TokenStream([train_file.array()], description="parquet/train"),
            val=TokenStream([val_file.array()], description="parquet/val"),
            vocab_size=tok.vocab_size,
            unigram_entropy_nats=train_file.unigram_entropy_nats,  # from the manifest: no rescan per run
            description=f"{len(train_paths)} train / {len(val_paths)} val parquet shards ({tok.kind})",
        )
    raise ValueError(f"unknown data source {spec.source!r}: choose 'embedded', 'bin' or 'parquet'")


def train_batch(
    stream: TokenStream, *, seed: int, step: int, micro: int, batch_size: int, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets [batch_size, seq_len] for (seed, step, micro), pure in those."""
    span = seq_len + 1
    if len(stream) < span:
        raise ValueError(f"{stream.description} has {len(stream)} tokens, fewer than seq_len + 1 = {span}")
    rng = np.random.Generator(np.random.PCG64([_BATCH_STREAM, seed, step, micro]))
    starts = rng.integers(0, len(stream) - span + 1, size=batch_size)
    block = np.stack([stream.window(int(s), span) for s in starts])
    t = torch.from_numpy(block)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def global_micro_index(*, rank: int, micro: int, grad_accum_steps: int) -> int:
    """Which of the step's micro-batches rank `rank` trains as its local micro-batch `micro`.

    Ranks take contiguous, disjoint blocks of grad_accum_steps indices, so world_size ranks
    together cover 0 .. world_size * grad_accum_steps - 1 exactly once: the same batches a
    single process accumulating them all would see, whatever the world size."""
    if not 0 <= micro < grad_accum_steps or rank < 0:
        raise ValueError(f"micro-batch {micro} of {grad_accum_steps} on rank {rank} does not exist")
    return rank * grad_accum_steps + micro


def val_windows(stream: TokenStream, *, seq_len: int, max_tokens: int) -> int:
    """How many fixed validation windows of seq_len predicted tokens fit (at least one)."""
    n = min(max_tokens // seq_len, (len(stream) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"{stream.description} has {len(stream)} tokens: too few for one window of {seq_len + 1}")
    return n


def val_batches(
    stream: TokenStream, *, seq_len: int, batch_size: int, max_tokens: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed non-overlapping validation windows from the split's start, in batches."""
    n = val_windows(stream, seq_len=seq_len, max_tokens=max_tokens)
    for lo in range(0, n, batch_size):
        rows = [stream.window(i * seq_len, seq_len + 1) for i in range(lo, min(n, lo + batch_size))]
        t = torch.from_numpy(np.stack(rows))
        yield t[:, :-1].contiguous(), t[:, 1:].contiguous()
