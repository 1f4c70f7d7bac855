"""End-to-end wall time of the default `parcae-sweep train-one` run (target: under a minute on 2
CPU cores), and how far its validation loss falls below the corpus unigram entropy.

Runs the library call the CLI makes, in a temporary directory (the corpus cache is reused).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from parcae_scaling.sweeps.train_one import train_one, train_one_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-flops", type=float, default=2e11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        spec = train_one_spec(budget_flops=args.budget_flops, output_dir=tmp)
        t0 = time.perf_counter()
        out = train_one(spec)
        wall = time.perf_counter() - t0
    r = out.result
    print(f"BENCH train_one_wall={wall:.1f} s")
    print(f"BENCH train_one_tokens_per_s={r.tokens_trained / max(r.train_seconds, 1e-9):.0f} tokens/s")
    print(f"BENCH train_one_val_loss={r.final_val_loss:.4f} nats/token")
    print(f"BENCH corpus_unigram_entropy={out.unigram_entropy_nats:.4f} nats/token")


if __name__ == "__main__":
    main()
