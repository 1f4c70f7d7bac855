"""Tokenizers for the training data: byte-level by default, or a locally trained BPE.

Nothing is downloaded. The byte tokenizer has a fixed vocabulary of 256 (the setting of the
CPU calibration in REFERENCE.md section 5). A BPE tokenizer is trained locally with the
`tokenizers` library on the training split and saved as `tokenizer.json`; loading it again
gives the same ids. Registry: `get_tokenizer(kind, path=...)` raises on unknown kinds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Iterator, Protocol, get_args, runtime_checkable

import numpy as np

from parcae_scaling.model.run_spec import TokenizerKind

TOKENIZER_KINDS: tuple[str, ...] = get_args(TokenizerKind)
# Document separator for BPE: a special token that never occurs in text.
BPE_EOS = "<|endoftext|>"


@runtime_checkable
class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as a 1-D uint32 array."""

    def encode_document(self, text: str) -> np.ndarray:
        """Token ids of one document followed by the document separator (if any)."""

    def decode(self, ids: Iterable[int]) -> str: ...

    def fingerprint(self) -> str:
        """Short stable hash of the vocabulary, part of cache keys."""


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256). Documents are separated by a blank line."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)

    def encode_document(self, text: str) -> np.ndarray:
        # No free id for an end-of-text token in 256 bytes; a blank line marks the boundary.
        return self.encode(text.rstrip("\n") + "\n\n")

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "byte256"


class BpeTokenizer:
    """A byte-level BPE from the `tokenizers` library, loaded from a local `tokenizer.json`."""

    kind = "bpe"

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"tokenizer path {path} does not exist: train one with `train_bpe(...)` "
                "or point `tokenizer_path` at a tokenizer.json"
            )
        self.path = path
        self._tok = HFTokenizer.from_file(str(path))
        self.vocab_size = int(self._tok.get_vocab_size())
        self._eos_id = self._tok.token_to_id(BPE_EOS)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in self._tok.encode_batch(texts)]

    def encode_document(self, text: str) -> np.ndarray:
        ids = self.encode(text)
        if self._eos_id is None:
            return ids
        return np.concatenate([ids, np.asarray([self._eos_id], dtype=np.uint32)])

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        return "bpe-" + hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """`encode_document` over many texts; batched (multi-threaded in Rust) for BPE."""
    if isinstance(tokenizer, BpeTokenizer):
        eos = [] if tokenizer._eos_id is None else [tokenizer._eos_id]
        return [np.concatenate([ids, np.asarray(eos, dtype=np.uint32)]) for ids in tokenizer.encode_batch(texts)]
    return [tokenizer.encode_document(t) for t in texts]


def train_bpe(texts: Iterator[str] | list[str], *, vocab_size: int, path: str | Path) -> BpeTokenizer:
    """Train a byte-level BPE on `texts` and save it atomically to `path`."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 or vocab_size > 65535:
        raise ValueError(f"bpe_vocab_size={vocab_size}: choose 257..65535 (ids are stored as uint16)")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return BpeTokenizer(path)


def get_tokenizer(kind: str, *, path: str | Path | None = None) -> Tokenizer:
    """The tokenizer registry: "byte" or "bpe" (needs `path` to a tokenizer.json)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        if path is None:
            raise ValueError("tokenizer 'bpe' needs a path to tokenizer.json (field tokenizer_path)")
        return BpeTokenizer(path)
    raise ValueError(f"unknown tokenizer {kind!r}: choose one of {TOKENIZER_KINDS}")


def token_dtype_for(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)
