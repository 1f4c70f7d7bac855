"""The arithmetic a run trains in: `RunSpec.precision` resolved for the device it runs on.

    requested  device                        trains in
    auto       CUDA                          bf16 autocast; fp32 matmuls left outside it in TF32
    auto       CPU with AMX-BF16 units       bf16 autocast (the matrix units: ~5x the fp32 GEMM rate)
    auto       CPU with AVX512-BF16 only     bf16 if a GEMM at the model's width measures >= 1.2x
                                             faster in bf16 than in fp32 (once per process), else fp32
    auto       any other CPU                 fp32 (bf16 there is emulated and slower)
    bf16       any                           bf16 autocast
    fp32       any                           fp32, IEEE matmuls (no TF32 on CUDA)

Parameters, optimizer state and the loss stay fp32 in every case (autocast casts matmul inputs).
A run keeps the precision it started in: resumed from a checkpoint, `auto` takes the one the
checkpoint records, so one run never mixes two (another host may resolve `auto` differently).
What was chosen, and why, is in the run's summary and provenance.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from parcae_scaling.model.run_spec import Precision

Resolved = Literal["fp32", "bf16"]
CPU_FLAGS_FILE = Path("/proc/cpuinfo")
AVX512_BF16_MIN_SPEEDUP = 1.2  # below this the casts eat the gain: stay in fp32


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Resolved
    reason: str  # one line, e.g. "auto: the CPU has AMX-BF16 matrix units"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The context every forward pass of the run runs in."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cpu_flags(path: Path = CPU_FLAGS_FILE) -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux); empty where there is no such file."""
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_units(flags: frozenset[str] | None = None) -> Literal["amx", "avx512_bf16"] | None:
    """The CPU's bf16 matrix hardware: AMX tiles, AVX512-BF16 dot products, or none."""
    flags = cpu_flags() if flags is None else flags
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return None


@functools.lru_cache(maxsize=8)
def bf16_gemm_speedup(width: int, rows: int = 2048, repeats: int = 20) -> float:
    """bf16 over fp32 GEMM throughput on this CPU at [rows, width] x [width, 4 width] (an MLP's
    shape): best of `repeats`, measured once per process and width."""
    def best_seconds(dtype: torch.dtype) -> float:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(rows, width, generator=g).to(dtype)
        b = torch.randn(width, 4 * width, generator=g).to(dtype)
        best = float("inf")
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        return best

    return best_seconds(torch.float32) / max(best_seconds(torch.bfloat16), 1e-9)


def resolve_precision(requested: Precision, device: torch.device, *, width: int = 256,
                      pinned: str | None = None, units: str | None | Literal["detect"] = "detect") -> PrecisionChoice:
    """What a run with `requested` precision trains in on `device` (see the module docstring).
    `pinned`: the precision the run's checkpoint was trained in (kept by `auto`); `units`: the
    CPU's bf16 hardware (default: detected)."""
    if requested in ("fp32", "bf16"):
        return PrecisionChoice(requested, f"{requested}: as the run spec asks")
    if requested != "auto":
        raise ValueError(f"precision {requested!r}: choose auto, fp32 or bf16")
    if pinned in ("fp32", "bf16"):
        return PrecisionChoice(pinned, f"auto: {pinned}, as this run's checkpoint was trained")  # type: ignore[arg-type]
    if device.type == "cuda":
        return PrecisionChoice("bf16", "auto: bf16 autocast on CUDA")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 on {device.type}")
    units = cpu_bf16_units() if units == "detect" else units
    if units == "amx":
        return PrecisionChoice("bf16", "auto: the CPU has AMX-BF16 matrix units")
    if units == "avx512_bf16":
        speedup = bf16_gemm_speedup(width)
        if speedup >= AVX512_BF16_MIN_SPEEDUP:
            return PrecisionChoice("bf16", f"auto: the CPU has AVX512-BF16; bf16 GEMM measured {speedup:.2f}x fp32")
        return PrecisionChoice("fp32", f"auto: the CPU has AVX512-BF16 but bf16 GEMM measured only {speedup:.2f}x "
                                       f"fp32 (< {AVX512_BF16_MIN_SPEEDUP}x)")
    return PrecisionChoice("fp32", "auto: the CPU has no bf16 matrix units (AMX-BF16 or AVX512-BF16)")


def configure_matmuls(requested: Precision, device: torch.device) -> None:
    """Process-wide matmul settings: on CUDA, `auto` lets the fp32 matmuls outside autocast use
    TF32 (10-bit mantissa, as bf16 autocast already accepts); an explicit `fp32` keeps IEEE fp32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = requested == "auto"
        torch.backends.cudnn.allow_tf32 = requested == "auto"
