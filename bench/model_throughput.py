"""Training throughput of a tiny Parcae config on CPU (fp32): forward + backward + AdamW step.

Config (issue 2): d = 256, 2/2/2 layers, 4 heads, d_ff = 1024, vocab 4096, context 256,
batch 8, mu_rec = 8 with the per-sequence depth sampler. Prints the median step's tokens/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from parcae_scaling.model import build_model, get_config
from parcae_scaling.model.blocks import compile_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="torch.compile the recurrent block")
    parser.add_argument("--no-fused", action="store_true", help="plain logits + cross-entropy head")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = get_config(
        "parcae-tiny-256", vocab_size=4096, seq_len=256, d_model=256, d_ff=1024, n_heads=4,
        n_prelude=2, n_recurrent=2, n_coda=2, mu_rec=8, fused_ops=not args.no_fused,
    )
    model = build_model(config).train()
    if args.compile:
        compile_blocks(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=False, foreach=True)
    data = torch.Generator().manual_seed(0)
    depth_rng = torch.Generator().manual_seed(1)
    batch_size, tokens_per_step = 8, 8 * config.seq_len

    step_seconds, depths = [], []
    for step in range(args.warmup + args.steps):
        idx = torch.randint(0, config.vocab_size, (batch_size, config.seq_len + 1), generator=data)
        start = time.perf_counter()
        out = model(idx[:, :-1], idx[:, 1:], generator=depth_rng)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            step_seconds.append(elapsed)
            depths.append(float(out.depths.float().mean()))

    median = statistics.median(step_seconds)
    print(f"threads={args.threads} compile={args.compile} fused={not args.no_fused} "
          f"median step {median * 1e3:.0f} ms over {args.steps} steps, mean sampled depth {statistics.mean(depths):.2f}")
    print(f"BENCH train_tokens_per_s={tokens_per_step / median:.1f} tok/s")


if __name__ == "__main__":
    main()
