"""Cost estimates for plans: hours from planned FLOPs, a peak-FLOP table and an MFU.

A run on N data-parallel processes (one device each) takes wall-hours = FLOPs / (N x peak x MFU)
and costs device-hours = wall-hours x N (the estimate assumes perfect scaling).

GPU peaks are the datasheet dense bf16 figures of model/mfu.py. "cpu" is a nominal 50 GFLOP/s
(the order of one modern core's fp32 matmul); the estimate is a planning aid, not a promise.
"""

from __future__ import annotations

from parcae_scaling.model.mfu import GPU_PEAK_BF16_FLOPS

PEAK_FLOPS: dict[str, float] = {"cpu": 5e10,
                                **{name.lower().replace(" ", "-"): peak for name, peak in GPU_PEAK_BF16_FLOPS}}


def device_hours(planned_flops: float, *, device: str, mfu: float) -> float:
    """Hours one device needs for `planned_flops` at utilisation `mfu` of its peak."""
    if device not in PEAK_FLOPS:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(PEAK_FLOPS)}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    return planned_flops / (PEAK_FLOPS[device] * mfu) / 3600.0


def wall_hours(planned_flops: float, *, device: str, mfu: float, devices: int = 1) -> float:
    """Hours a run of `devices` data-parallel processes (one device each) needs for `planned_flops`."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    return device_hours(planned_flops, device=device, mfu=mfu) / devices
