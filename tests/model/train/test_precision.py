"""precision: auto resolves per device (model/train/precision.py); bf16 and fp32 runs agree."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model.train import precision as prec
from parcae_scaling.model.train.loop import train_run
from parcae_scaling.model.train.precision import cpu_bf16_units, cpu_flags, resolve_precision
from parcae_testing import ListSink, tiny_run, write_bin_shards

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("requested, device, units, expected", [
    ("auto", CUDA, None, "bf16"),
    ("auto", CPU, "amx", "bf16"),
    ("auto", CPU, None, "fp32"),
    ("fp32", CUDA, None, "fp32"),
    ("fp32", CPU, "amx", "fp32"),
    ("bf16", CPU, None, "bf16"),
])
def test_auto_resolves_by_device_and_cpu_units(requested: str, device: torch.device, units: str | None,
                                               expected: str) -> None:
    assert resolve_precision(requested, device, units=units).precision == expected


@pytest.mark.parametrize("speedup, expected", [(3.0, "bf16"), (1.05, "fp32")])
def test_avx512_bf16_without_amx_takes_bf16_only_where_it_measures_faster(monkeypatch: pytest.MonkeyPatch,
                                                                           speedup: float, expected: str) -> None:
    monkeypatch.setattr(prec, "bf16_gemm_speedup", lambda width: speedup)
    choice = resolve_precision("auto", CPU, units="avx512_bf16")
    assert choice.precision == expected and f"{speedup:.2f}x" in choice.reason


def test_a_resumed_auto_run_keeps_its_checkpoints_precision() -> None:
    assert resolve_precision("auto", CPU, units=None, pinned="bf16").precision == "bf16"
    assert resolve_precision("auto", CPU, units="amx", pinned="fp32").precision == "fp32"
    assert resolve_precision("fp32", CPU, pinned="bf16").precision == "fp32"  # an explicit choice is the spec's


def test_cpu_units_are_read_from_the_kernels_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert cpu_bf16_units(cpu_flags(info)) == "amx"
    info.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_bf16_units(cpu_flags(info)) == "avx512_bf16"
    info.write_text("flags\t\t: fpu avx2 fma\n")
    assert cpu_bf16_units(cpu_flags(info)) is None
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_on_this_cpu_follows_its_flags() -> None:
    flags = cpu_flags()
    choice = resolve_precision("auto", CPU)
    if {"amx_bf16", "amx_tile"} <= flags:
        assert (choice.precision, choice.reason) == ("bf16", "auto: the CPU has AMX-BF16 matrix units")
    elif "avx512_bf16" in flags:
        assert "measured" in choice.reason
    else:
        assert choice.precision == "fp32" and "no bf16 matrix units" in choice.reason


def test_bf16_and_fp32_runs_of_one_spec_agree_within_bf16_tolerance(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "data")
    results, sinks = {}, {}
    for p in ("bf16", "fp32"):
        sinks[p] = ListSink()
        results[p] = train_run(tiny_run(tmp_path / p, data, tokens=4 * 32 * 30, precision=p), sinks[p])
    for p, r in results.items():
        assert r.status == RunStatus.SUCCEEDED and r.precision == p
        assert all(math.isfinite(v) for v in sinks[p].losses().values())
    assert sinks["bf16"].losses()[1] != sinks["fp32"].losses()[1]  # autocast really changed the arithmetic
    # 30 steps of a d=32 model: bf16 rounding (8-bit mantissa) moves the final loss by a few 0.001 nats
    assert abs(results["bf16"].final_val_loss - results["fp32"].final_val_loss) < 0.03


class _StopAt(ListSink):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop = step

    def log_metrics(self, run_id: str, step: int, values: dict) -> None:
        super().log_metrics(run_id, step, values)
        if step == self.stop:
            raise RuntimeError("stopped by the test")


def test_resuming_on_a_host_that_resolves_auto_differently_keeps_the_runs_precision(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tiny_run(tmp_path / "run", write_bin_shards(tmp_path / "data"), checkpoint_every_steps=3)
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda flags=None: "amx")  # the first host has AMX
    with pytest.raises(RuntimeError, match="stopped by the test"):
        train_run(run, _StopAt(4))
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda flags=None: None)  # the second has none
    sink = ListSink()
    result = train_run(run, sink)
    assert result.status == RunStatus.SUCCEEDED and result.precision == "bf16"
    assert "as this run's checkpoint was trained" in sink.provenance[0]["precision_reason"]
