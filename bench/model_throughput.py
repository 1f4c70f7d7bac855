"""Training throughput of a tiny Parcae config on CPU (fp32): forward + backward + AdamW step.

Config (issue 2): d = 256, 2/2/2 layers, 4 heads, d_ff = 1024, vocab 4096, context 256,
batch 8, mu_rec = 8 with the per-sequence depth sampler. Eager and per-block torch.compile
(inductor's C++ backend) are measured one after the other; the headline figure is the faster
one's median step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from parcae_scaling.model import build_model, get_config
from parcae_scaling.model.blocks import compile_blocks
from parcae_scaling.model.flops import flops_per_token


def bench_config(fused: bool = True):
    return get_config(
        "parcae-tiny-256", vocab_size=4096, seq_len=256, d_model=256, d_ff=1024, n_heads=4,
        n_prelude=2, n_recurrent=2, n_coda=2, mu_rec=8, fused_ops=fused,
    )


def measure(*, compiled: bool, fused: bool, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds per training step and mean sampled depth."""
    torch.manual_seed(0)
    config = bench_config(fused)
    model = build_model(config).train()
    if compiled:
        compile_blocks(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    data = torch.Generator().manual_seed(0)
    depth_rng = torch.Generator().manual_seed(1)
    step_seconds, depths = [], []
    for step in range(warmup + steps):
        idx = torch.randint(0, config.vocab_size, (BATCH_SIZE, config.seq_len + 1), generator=data)
        start = time.perf_counter()
        out = model(idx[:, :-1], idx[:, 1:], generator=depth_rng)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step >= warmup:
            step_seconds.append(elapsed)
            depths.append(float(out.depths.float().mean()))
    return statistics.median(step_seconds), statistics.mean(depths)


BATCH_SIZE, SEQ_LEN = 8, 256


def matmul_gflops(repeats: int = 100) -> float:
    """This host's fp32 GEMM speed right now ([2048, 256] x [256, 1024], the model's MLP shape):
    on shared machines it varies between runs, and every figure above scales with it."""
    a, b = torch.randn(2048, 256), torch.randn(256, 1024)
    for _ in range(5):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * 2048 * 256 * 1024 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps (compilation happens here)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-fused", action="store_true", help="plain logits + cross-entropy head")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens_per_step = BATCH_SIZE * SEQ_LEN
    peak_before = matmul_gflops()
    results = {}
    for compiled in (False, True):
        median, depth = measure(compiled=compiled, fused=not args.no_fused, steps=args.steps, warmup=args.warmup)
        results[compiled] = tokens_per_step / median
        print(f"threads={args.threads} compile={compiled} fused={not args.no_fused}: median step "
              f"{median * 1e3:.0f} ms over {args.steps} steps, mean sampled depth {depth:.2f}, "
              f"{results[compiled]:.0f} tok/s")
    peak = (peak_before + matmul_gflops()) / 2
    print(f"BENCH cpu_fp32_matmul_gflops={peak:.1f} GFLOP/s")
    print(f"BENCH train_tokens_per_s_eager={results[False]:.1f} tok/s")
    best = max(results.values())
    # Model FLOP rate: what the tokens/s means in matmul work (exact convention, nominal depth).
    exact_flops = flops_per_token(bench_config(), convention="exact")
    print(f"BENCH exact_flops_per_token={exact_flops / 1e6:.1f} MFLOP")
    print(f"BENCH train_model_gflops={best * exact_flops / 1e9:.1f} GFLOP/s")
    print(f"BENCH train_tokens_per_s={best:.1f} tok/s")


if __name__ == "__main__":
    main()
