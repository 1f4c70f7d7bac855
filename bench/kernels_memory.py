"""Peak memory and time of linear-CE loss + backward on CPU: plain logits path vs chunked path.

Shapes from issue 7: vocabulary 32,768, d = 768, 8,192 tokens, fp32.

How memory is measured: each variant runs in its own fresh Python process (so one
variant's freed-but-cached memory cannot hide or inflate the other's). The worker builds
the inputs, warms the libraries up on a tiny problem, resets the kernel's resident-set
high-water mark (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), reads the current RSS,
runs one loss + backward, and reports VmHWM - RSS_before: the extra resident memory at
the peak of the step, gradients included. RSS counts every page the step touched,
whatever allocator made it, which tracemalloc (Python objects only) cannot see. If the
reset is not permitted, the worker falls back to ru_maxrss - RSS_before, which is the
same figure as long as nothing before the step used more memory (true here: the inputs
are allocated once and the warm-up is tiny).

Time: median wall time of all loss + backward runs of a variant. Workers run in
interleaved rounds (plain, chunked, plain, chunked, ...) so that load from other
processes on a shared machine hits both variants alike; memory is reported from the
first round.

Usage: python bench/kernels_memory.py [--rounds R] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time

VOCAB = 32_768
DIM = 768
TOKENS = 8_192
VARIANTS = {"plain": "reference", "chunked": "chunked"}  # name -> kernels impl


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def run_worker(variant: str, repeats: int) -> dict:
    import torch

    from parcae_scaling.kernels import linear_cross_entropy

    impl = VARIANTS[variant]
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(TOKENS, DIM, generator=generator).requires_grad_()
    weight = (torch.randn(VOCAB, DIM, generator=generator) * 0.02).requires_grad_()
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=generator)

    def loss_and_backward(h, weight, targets) -> float:
        loss = linear_cross_entropy(h, weight, targets, impl=impl)
        loss.backward()
        return loss.item()

    # Warm-up on 16 tokens: loads BLAS / kernels without raising the high-water mark much.
    loss_and_backward(h[:16].detach().requires_grad_(), weight, targets[:16])
    h.grad = weight.grad = None

    reset_ok = _reset_peak_rss()
    rss_before_kib = _status_kib("VmRSS")
    start = time.perf_counter()
    loss = loss_and_backward(h, weight, targets)
    first_s = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM") if reset_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times_s = [first_s]
    for _ in range(repeats):
        h.grad = weight.grad = None
        start = time.perf_counter()
        loss_and_backward(h, weight, targets)
        times_s.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "loss": loss,
        "peak_extra_mib": (peak_kib - rss_before_kib) / 1024,
        "peak_method": "VmHWM after clear_refs" if reset_ok else "ru_maxrss",
        "times_s": times_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="extra timed runs per worker")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of one worker per variant")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.repeats)))
        return 0

    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", variant, "--repeats", str(args.repeats)],
                capture_output=True, text=True, check=True,
            )
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if variant in results:
                results[variant]["times_s"] += result["times_s"]
            else:
                results[variant] = result
    for result in results.values():
        result["time_s"] = statistics.median(result["times_s"])

    plain, chunked = results["plain"], results["chunked"]
    print(f"linear CE loss+backward, vocab={VOCAB} d={DIM} tokens={TOKENS} fp32 CPU")
    print(f"{'variant':<10}{'peak extra MiB':>16}{'median s':>10}  {'loss':>10}  runs (s)")
    for r in (plain, chunked):
        runs = " ".join(f"{t:.1f}" for t in r["times_s"])
        print(f"{r['variant']:<10}{r['peak_extra_mib']:>16.0f}{r['time_s']:>10.2f}  {r['loss']:>10.6f}  {runs}")
    print(f"peak memory method: {plain['peak_method']}; logits alone would be "
          f"{TOKENS * VOCAB * 4 / 2**20:.0f} MiB")
    print(f"BENCH linear_ce_peak_mem_ratio={plain['peak_extra_mib'] / chunked['peak_extra_mib']:.2f} x")
    print(f"BENCH linear_ce_time_ratio={chunked['time_s'] / plain['time_s']:.2f} x")
    print(f"BENCH linear_ce_plain_peak_mem={plain['peak_extra_mib']:.0f} MiB")
    print(f"BENCH linear_ce_chunked_peak_mem={chunked['peak_extra_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
