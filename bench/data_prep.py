"""Tokenizing parquet text into a token file: streaming (model/train/prepare.py) vs the in-memory
builder it replaced, side by side on one generated parquet file.

The file: FineWeb-like documents (random words, 0.5-8 KB each) totalling `--mb` MB of text
(default 48), written with pyarrow's default row groups. Both variants use the same tokenizer
(byte-level by default; `--tokenizer bpe` trains a 4,096-token BPE on a sample first) and must
write byte-identical token files (checked).

How memory is measured: each variant runs in its own fresh Python process (freed-but-cached
memory of one cannot hide or inflate the other's); the worker imports everything, reads its
resident set, tokenizes, and reports peak RSS - RSS_before: the extra resident memory at the
peak of the work, whatever allocator made it (numpy, pyarrow, the tokenizer). Peak RSS is VmHWM
on Linux (ru_maxrss elsewhere; on Linux it carries the parent's peak across fork + exec). Throughput is the
wall time of the same call. Variants run in interleaved rounds so load from other processes on a
shared machine hits both alike; medians over the rounds are reported.

Usage: python bench/data_prep.py [--mb 48] [--rounds 2] [--tokenizer byte|bpe]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("streaming", "in_memory")


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))
    except OSError:
        return None  # not Linux


def _rss_kib() -> int:
    rss = _status_kib("VmRSS")
    return rss if rss is not None else _maxrss_kib()


def _maxrss_kib() -> int:
    """This process's peak RSS. VmHWM on Linux: ru_maxrss survives fork + exec, so a worker's
    would start at the parent's peak (the generated documents)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _in_memory(paths: list[Path], tokenizer, text_column: str, out: Path) -> int:  # noqa: ANN001
    """The builder before streaming: every document's ids kept in memory, concatenated at the end."""
    import numpy as np
    import pyarrow.parquet as pq

    from parcae_scaling.model.train.tokenizer import encode_documents, token_dtype_for

    dtype = token_dtype_for(tokenizer.vocab_size)
    chunks = []
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(columns=[text_column], batch_size=1024):
            texts = [t for t in batch.column(0).to_pylist() if t]
            chunks.extend(ids.astype(dtype) for ids in encode_documents(tokenizer, texts))
    tokens = np.concatenate(chunks)
    tokens.tofile(out)
    return int(tokens.size)


def run_worker(variant: str, parquet: Path, tokenizer_path: str | None, work: Path) -> dict:
    from parcae_scaling.model.train.prepare import tokenize_parquet
    from parcae_scaling.model.train.tokenizer import get_tokenizer

    tok = get_tokenizer("bpe" if tokenizer_path else "byte", path=tokenizer_path)
    before = _rss_kib()
    t0 = time.perf_counter()
    if variant == "streaming":
        tf = tokenize_parquet([parquet], tok, text_column="text", cache_dir=work)
        out, tokens = Path(tf.path), tf.tokens
    else:
        out = work / "in_memory.bin"
        tokens = _in_memory([parquet], tok, "text", out)
    seconds = time.perf_counter() - t0
    peak_extra_mib = (_maxrss_kib() - before) / 1024  # before hashing: the check is not the work
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"variant": variant, "seconds": seconds, "tokens": tokens, "peak_extra_mib": peak_extra_mib,
            "sha256": digest.hexdigest()}


def _write_parquet(path: Path, mb: float) -> tuple[int, int]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = np.array(["".join(rng.choice(letters, size=n)) for n in rng.integers(2, 11, 5000)])
    texts, total = [], 0
    while total < mb * 1e6:
        n_words = int(rng.integers(80, 1300))  # ~0.5-8 KB documents
        text = " ".join(words[rng.integers(0, len(words), n_words)]) + "."
        texts.append(text)
        total += len(text)
    pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), path)
    return len(texts), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=48.0, help="MB of text in the generated parquet file")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokenizer", choices=("byte", "bpe"), default="byte")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--parquet", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer-path", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, Path(args.parquet), args.tokenizer_path, Path(args.work))))
        return

    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        root = Path(tmp)
        parquet = root / "docs.parquet"
        docs, chars = _write_parquet(parquet, args.mb)
        print(f"generated {docs:,} documents, {chars / 1e6:.1f} MB of text, parquet file "
              f"{parquet.stat().st_size / 1e6:.1f} MB", flush=True)
        tok_args: list[str] = []
        if args.tokenizer == "bpe":
            import pyarrow.parquet as pq

            from parcae_scaling.model.train.tokenizer import train_bpe

            sample = pq.read_table(parquet, columns=["text"]).slice(0, 500)["text"].to_pylist()
            train_bpe(sample, vocab_size=4096, path=root / "tokenizer.json")
            tok_args = ["--tokenizer-path", str(root / "tokenizer.json")]
        results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for variant in VARIANTS:
                work = root / f"{variant}-{r}"
                work.mkdir()
                proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--parquet", str(parquet),
                                       "--work", str(work), *tok_args], capture_output=True, text=True, check=True)
                res = json.loads(proc.stdout)
                results[variant].append(res)
                print(f"round {r}: {variant:>9}: {res['seconds']:.2f} s, {res['tokens']:,} tokens, "
                      f"peak +{res['peak_extra_mib']:.0f} MiB", flush=True)
                for p in work.rglob("*.bin"):
                    p.unlink()  # keep at most one token file on disk at a time
        digests = {res["sha256"] for rs in results.values() for res in rs}
        if len(digests) != 1:
            raise SystemExit(f"streaming and in-memory token files differ: {digests}")
        tokens = results["streaming"][0]["tokens"]
        summary = {v: (statistics.median(r["peak_extra_mib"] for r in rs),
                       statistics.median(tokens / r["seconds"] for r in rs)) for v, rs in results.items()}
        (mem_s, tps_s), (mem_m, tps_m) = summary["streaming"], summary["in_memory"]
        print(f"BENCH data_prep_tokens={tokens} tokens")
        print(f"BENCH data_prep_peak_rss_streaming={mem_s:.1f} MiB")
        print(f"BENCH data_prep_peak_rss_in_memory={mem_m:.1f} MiB")
        print(f"BENCH data_prep_peak_rss_ratio={mem_m / max(mem_s, 1e-9):.2f} x")
        print(f"BENCH data_prep_tokens_per_s_streaming={tps_s:.0f} tokens/s")
        print(f"BENCH data_prep_tokens_per_s_in_memory={tps_m:.0f} tokens/s")
        print("BENCH data_prep_identical_token_files=1 bool")


if __name__ == "__main__":
    main()
