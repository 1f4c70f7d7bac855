"""diagonal_injection: the Triton elementwise kernels (interpreted) against the PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch

from parcae_scaling.kernels import INJECTION_IMPLS, diagonal_injection
from parcae_scaling.kernels.reference import diagonal_injection_reference

# Odd sizes: 3×11 = 33 rows and 37 channels leave masked tails in both tile dimensions.
BATCH, SEQ, DIM = 3, 11, 37
NAMES = ("h", "u", "log_a", "dt_bias")


def make_inputs(param_dtype=torch.float32, act_dtype=torch.float32):
    h = torch.randn(BATCH, SEQ, DIM, dtype=act_dtype)
    u = torch.randn(BATCH, SEQ, DIM, dtype=act_dtype)  # B e, computed once per forward by the model
    log_a = (torch.randn(DIM) * 0.5).to(param_dtype)
    dt_bias = (torch.randn(DIM) * 2).to(param_dtype)  # both signs: exercises the stable softplus
    return [t.requires_grad_() for t in (h, u, log_a, dt_bias)]


def output_and_grads(fn, inputs, grad_out):
    out = fn(*inputs)
    return [out.detach(), *torch.autograd.grad(out, inputs, grad_out.to(out.dtype))]


@pytest.mark.parametrize("blocks", [(8, 16), (32, 128)])
def test_triton_matches_reference_fp32(triton_interpreted, blocks):
    inputs = make_inputs()
    grad_out = torch.randn(BATCH, SEQ, DIM)
    expected = output_and_grads(diagonal_injection_reference, inputs, grad_out)
    triton_fn = triton_interpreted.injection.diagonal_injection_triton
    actual = output_and_grads(lambda *xs: triton_fn(*xs, blocks=blocks), inputs, grad_out)
    for name, exp, act in zip(("out", *NAMES), expected, actual):
        assert act.dtype == exp.dtype, name
        torch.testing.assert_close(act, exp, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32])
def test_triton_bf16_is_as_accurate_as_the_bf16_reference(triton_interpreted, param_dtype):
    """bf16 activations (fp32 or bf16 parameters): error vs an fp64 ground truth must not
    exceed the bf16 reference's own error by more than 2×."""
    inputs = make_inputs(param_dtype=param_dtype, act_dtype=torch.bfloat16)
    grad_out = torch.randn(BATCH, SEQ, DIM)
    truth = output_and_grads(diagonal_injection_reference,
                             [t.detach().double().requires_grad_() for t in inputs], grad_out)
    ref = output_and_grads(diagonal_injection_reference, inputs, grad_out)
    got = output_and_grads(lambda *xs: diagonal_injection(*xs, impl="triton"), inputs, grad_out)
    assert [t.dtype for t in got] == [t.dtype for t in ref]
    for name, g, r, t in zip(("out", *NAMES), got, ref, truth):
        got_err = (g.double() - t).abs().max().item()
        ref_err = (r.double() - t).abs().max().item()
        assert got_err <= 2 * ref_err + 1e-3 * t.abs().max().item(), f"{name}: {got_err:.3g} vs {ref_err:.3g}"


def test_reference_is_the_paper_formula_at_init():
    """log_A = 0 and dt_bias with Ā = sqrt(1/5) (REFERENCE.md §1), B = I (so u = B e = e):
    out = sqrt(1/5)·h + Δ·e with Δ = -log(sqrt(1/5))."""
    h, e = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    delta = -math.log(math.sqrt(1 / 5))
    dt_bias = torch.full((8,), math.log(math.expm1(delta)))  # softplus⁻¹(Δ)
    out = diagonal_injection(h, e, torch.zeros(8), dt_bias)
    torch.testing.assert_close(out, math.sqrt(1 / 5) * h + delta * e)


def test_default_impl_on_cpu_is_reference(monkeypatch):
    calls = []
    monkeypatch.setitem(INJECTION_IMPLS, "reference", lambda *a: calls.append("reference") or a[0])
    diagonal_injection(*make_inputs())
    assert calls == ["reference"]


def test_unknown_impl_and_bad_shapes_raise():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="unknown impl='cuda'"):
        diagonal_injection(*inputs, impl="cuda")
    h, u, log_a, dt_bias = inputs
    with pytest.raises(ValueError, match="h, u \\[..., d\\]"):
        diagonal_injection(h, u[..., :-1], log_a, dt_bias)
    with pytest.raises(ValueError, match="log_a"):
        diagonal_injection(h, u, log_a[:-1], dt_bias)


def test_triton_rejects_non_power_of_two_blocks(triton_interpreted):
    with pytest.raises(ValueError, match="powers of two"):
        triton_interpreted.injection.diagonal_injection_triton(*make_inputs(), blocks=(12, 16))
