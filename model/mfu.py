"""Model FLOP utilisation: achieved training FLOP/s over the device's peak.

GPU peaks are vendor dense bf16 tensor-core figures (no sparsity); on CPU (and unknown GPUs)
the peak is measured once per process as the best fp32 matmul throughput, so MFU there means
"fraction of what this machine's matmul reaches", not of a datasheet number.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a device is measured: the peak table serves planning too
    import torch

# Dense bf16 peak FLOP/s by marketing-name substring (first match wins: specific names first).
GPU_PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("A6000", 155e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
)


def gpu_peak_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak for a GPU name, or None when it is not in the table."""
    for key, peak in GPU_PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


@functools.lru_cache(maxsize=4)
def measured_matmul_flops(device: str = "cpu", n: int = 512, repeats: int = 8) -> float:
    """Best observed fp32 n x n matmul FLOP/s on `device` (2 n^3 FLOPs per product)."""
    import torch

    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev)
    b = torch.randn(n, n, generator=g).to(dev)
    best = float("inf")
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-9)


def device_peak_flops(device: torch.device) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for the device a run trains on."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        if peak is not None:
            return peak, f"datasheet bf16 ({name})"
        return measured_matmul_flops("cuda"), f"measured fp32 matmul ({name})"
    return measured_matmul_flops("cpu"), "measured fp32 matmul (cpu)"


def model_flops_utilisation(flops_per_token: float, tokens_per_second: float, peak_flops: float) -> float:
    """MFU = flops_per_token * tokens/s / peak."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return flops_per_token * tokens_per_second / peak_flops
