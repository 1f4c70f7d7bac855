"""Training throughput of a tiny Parcae config on CPU, fp32 and bf16 side by side.

Config (issue 2): d = 256, 2/2/2 layers, 4 heads, d_ff = 1024, vocab 4096, context 256, batch 8,
mu_rec = 8 with the per-sequence depth sampler; forward + backward + AdamW step. Each precision is
measured eager and with per-block torch.compile (inductor's C++ backend), the precisions
interleaved round by round so that a busy neighbour slows both alike; a precision's figure is
its faster mode's median step. The host's GEMM speed is measured in both precisions at the
model's own matmul shapes, so the model's FLOP rate can be read against it.

`precision: auto` trains in bf16 only where the CPU has bf16 matrix units
(model/train/precision.py); on other CPUs bf16 is emulated and slower, and this script says so.

The public reference implementation (sandyresearch/parcae) cannot be installed offline; set
PARCAE_REFERENCE_BENCH to a command that trains the same config and prints `tokens_per_s=<x>`,
and the script runs it in the same session and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import time

import torch

from parcae_scaling.model import build_model, get_config
from parcae_scaling.model.blocks import compile_blocks
from parcae_scaling.model.flops import flops_per_token
from parcae_scaling.model.train.precision import PrecisionChoice, cpu_bf16_units, resolve_precision

BATCH_SIZE, SEQ_LEN = 8, 256
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bench_config():
    return get_config("parcae-tiny-256", vocab_size=4096, seq_len=SEQ_LEN, d_model=256, d_ff=1024, n_heads=4,
                      n_prelude=2, n_recurrent=2, n_coda=2, mu_rec=8)


def model_matmul_shapes(config) -> list[tuple[int, int, int]]:
    """(m, k, n) of the model's weight matmuls for one micro-batch: QKV, attention out, MLP up and
    down, and the vocabulary head."""
    m, d = BATCH_SIZE * config.seq_len, config.d_model
    return [(m, d, 3 * d), (m, d, d), (m, d, config.d_ff), (m, config.d_ff, d), (m, d, config.vocab_size)]


def gemm_gflops(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int = 20) -> float:
    """Best-of-`repeats` throughput over the given shapes (their FLOPs over their summed times)."""
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)) for m, k, n in shapes]
    best = [float("inf")] * len(pairs)
    for _ in range(repeats + 2):
        for i, (a, b) in enumerate(pairs):
            t0 = time.perf_counter()
            a @ b
            best[i] = min(best[i], time.perf_counter() - t0)
    return sum(2 * m * k * n for m, k, n in shapes) / sum(best) / 1e9


class Trainer:
    """One model + optimizer in one precision and mode; `step()` times one training step."""

    def __init__(self, precision: str, compiled: bool) -> None:
        torch.manual_seed(0)
        self.config = bench_config()
        self.model = build_model(self.config).train()
        if compiled:
            compile_blocks(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.choice = PrecisionChoice(precision, f"{precision}: benchmark")  # type: ignore[arg-type]
        self.data = torch.Generator().manual_seed(0)
        self.depths = torch.Generator().manual_seed(1)
        self.seconds: list[float] = []
        self.loss = float("nan")

    def step(self, timed: bool) -> None:
        idx = torch.randint(0, self.config.vocab_size, (BATCH_SIZE, SEQ_LEN + 1), generator=self.data)
        start = time.perf_counter()
        with self.choice.autocast(torch.device("cpu")):
            out = self.model(idx[:, :-1], idx[:, 1:], generator=self.depths)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        if timed:
            self.seconds.append(time.perf_counter() - start)
        self.loss = float(out.loss.detach())


def reference_tokens_per_s() -> float | None:
    """Run PARCAE_REFERENCE_BENCH (if set) and read `tokens_per_s=<x>` from its output."""
    command = os.environ.get("PARCAE_REFERENCE_BENCH")
    if not command:
        return None
    out = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=3600)
    found = re.findall(r"tokens_per_s=([0-9.eE+]+)", out.stdout)
    if out.returncode != 0 or not found:
        print(f"reference: `{command}` exited {out.returncode} without a tokens_per_s=<x> line; ours alone")
        return None
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per precision, mode and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="figures are the median over repeats")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = bench_config()
    shapes = model_matmul_shapes(config)
    units = cpu_bf16_units()
    auto = resolve_precision("auto", torch.device("cpu"), width=config.d_model)
    print(f"CPU bf16 units: {units or 'none'}; precision auto -> {auto.precision} ({auto.reason})")
    gemm = {p: gemm_gflops(shapes, dt) for p, dt in DTYPES.items()}

    # Without bf16 units a bf16 step is emulated (measured ~30x an fp32 step on an AVX2 CPU): time
    # one eager bf16 step per repeat there, enough for the ratio, instead of an hour of them.
    emulated = units is None
    trainers = {(p, c): Trainer(p, c) for p in DTYPES for c in (False, True) if not (emulated and p == "bf16" and c)}
    for w in range(args.warmup):
        for (p, _c), t in trainers.items():
            if not (emulated and p == "bf16" and w > 0):
                t.step(timed=False)
    tokens_per_step = BATCH_SIZE * SEQ_LEN
    per_repeat: dict[str, list[float]] = {p: [] for p in DTYPES}
    for r in range(args.repeats):
        for t in trainers.values():
            t.seconds = []
        for i in range(args.steps):  # round robin: every variant sees the same machine
            for (p, _c), t in trainers.items():
                if not (emulated and p == "bf16" and i > 0):
                    t.step(timed=True)
        best: dict[str, float] = {}
        for (p, c), t in trainers.items():
            rate = tokens_per_step / statistics.median(t.seconds)
            print(f"repeat {r + 1}: {p} compile={c}: {rate:.0f} tok/s (median of {len(t.seconds)} steps), "
                  f"loss {t.loss:.5f}")
            best[p] = max(best.get(p, 0.0), rate)
        for p in DTYPES:
            per_repeat[p].append(best[p])
    tps = {p: statistics.median(v) for p, v in per_repeat.items()}
    print("tok/s per repeat (faster mode): " + "; ".join(f"{p} {', '.join(f'{v:.0f}' for v in vs)}"
                                                          for p, vs in per_repeat.items()))
    gemm = {p: (g + gemm_gflops(shapes, DTYPES[p])) / 2 for p, g in gemm.items()}  # before and after
    exact = flops_per_token(config, convention="exact")
    model_gflops = {p: tps[p] * exact / 1e9 for p in tps}
    speedup = tps["bf16"] / tps["fp32"]
    if units is None:
        print(f"this CPU has no bf16 matrix units: bf16 is emulated here ({speedup:.2f}x fp32), so `auto` "
              "trains in fp32; the >= 1.7x target applies to CPUs with AMX-BF16")
    reference = reference_tokens_per_s()
    if reference is None:
        print("reference implementation: not run (set PARCAE_REFERENCE_BENCH to compare in the same session)")
    else:
        print(f"reference implementation: {reference:.0f} tok/s; ours in {auto.precision}: "
              f"{tps[auto.precision] / reference:.2f}x")
    print(f"BENCH cpu_fp32_matmul_gflops={gemm['fp32']:.1f} GFLOP/s")
    print(f"BENCH cpu_bf16_matmul_gflops={gemm['bf16']:.1f} GFLOP/s")
    print(f"BENCH exact_flops_per_token={exact / 1e6:.1f} MFLOP")
    print(f"BENCH train_tokens_per_s={tps['fp32']:.1f} tok/s")
    print(f"BENCH train_tokens_per_s_bf16={tps['bf16']:.1f} tok/s")
    print(f"BENCH bf16_speedup={speedup:.2f} x")
    print(f"BENCH train_model_gflops={model_gflops['fp32']:.1f} GFLOP/s")
    print(f"BENCH train_model_gflops_bf16={model_gflops['bf16']:.1f} GFLOP/s")
    print(f"BENCH fp32_fraction_of_gemm={model_gflops['fp32'] / gemm['fp32']:.3f}")
    print(f"BENCH bf16_fraction_of_gemm={model_gflops['bf16'] / gemm['bf16']:.3f}")
    print(f"BENCH train_tokens_per_s_auto={tps[auto.precision]:.1f} tok/s")
    if reference is not None:
        print(f"BENCH reference_ratio={tps[auto.precision] / reference:.2f} x")


if __name__ == "__main__":
    main()
