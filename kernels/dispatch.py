"""The public fused ops: validate inputs once, then pick an implementation from a registry.

Default choice: Triton on CUDA tensors (when triton is importable), otherwise the chunked
PyTorch path for linear-CE and the plain PyTorch expression for the injection. `impl=`
forces one implementation by name (tests use it to run the Triton kernels on CPU under
TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Literal

import torch

from parcae_scaling.kernels.chunked import linear_cross_entropy_chunked
from parcae_scaling.kernels.reference import diagonal_injection_reference, linear_cross_entropy_reference

LinearCEImpl = Literal["reference", "chunked", "triton"]
InjectionImpl = Literal["reference", "triton"]


def _linear_ce_triton(h, weight, targets, *, ignore_index=-100, softcap=None):
    # Imported lazily: triton is optional, and the kernels must be defined after
    # TRITON_INTERPRET is set when running on CPU.
    from parcae_scaling.kernels.triton_linear_ce import linear_cross_entropy_triton

    return linear_cross_entropy_triton(h, weight, targets, ignore_index=ignore_index, softcap=softcap)


def _injection_triton(h, u, log_a, dt_bias):
    from parcae_scaling.kernels.triton_injection import diagonal_injection_triton

    return diagonal_injection_triton(h, u, log_a, dt_bias)


LINEAR_CE_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": linear_cross_entropy_reference,
    "chunked": linear_cross_entropy_chunked,
    "triton": _linear_ce_triton,
}
INJECTION_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": diagonal_injection_reference,
    "triton": _injection_triton,
}


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _pick(registry: dict[str, Callable], impl: str | None, on_cuda: bool, cpu_default: str, op: str) -> Callable:
    if impl is None:
        impl = "triton" if on_cuda and triton_available() else cpu_default
    if impl not in registry:
        raise ValueError(f"{op}: unknown impl={impl!r}; choose one of {sorted(registry)} or None for automatic")
    if impl == "triton" and not triton_available():
        raise ValueError(f"{op}: impl='triton' needs the triton package: pip install 'parcae-scaling[triton]'")
    return registry[impl]


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    impl: LinearCEImpl | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets` over non-ignored targets,
    without materialising the [tokens, vocab] logits (except with impl='reference').

    h: [..., d]; weight: [vocab, d] (the tied embedding); targets: [...] int64.
    softcap: if set, logits become softcap·tanh(logits / softcap) before the softmax.
    Differentiable in h and weight. All targets ignored gives nan, like F.cross_entropy.
    """
    if weight.ndim != 2 or h.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: h [..., d] and weight [vocab, d] disagree: h {tuple(h.shape)}, "
            f"weight {tuple(weight.shape)}; pass the head weight as [vocab, d]"
        )
    if targets.shape != h.shape[:-1]:
        raise ValueError(
            f"linear_cross_entropy: targets {tuple(targets.shape)} must have h's leading shape "
            f"{tuple(h.shape[:-1])}"
        )
    if targets.dtype != torch.int64:
        raise ValueError(f"linear_cross_entropy: targets must be int64, got {targets.dtype}; use targets.long()")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"linear_cross_entropy: softcap must be > 0 or None, got {softcap}")
    fn = _pick(LINEAR_CE_IMPLS, impl, h.is_cuda, "chunked", "linear_cross_entropy")
    if fn is not linear_cross_entropy_reference:
        h, weight = _autocast_matmul_inputs(h, weight)
    return fn(h, weight, targets, ignore_index=ignore_index, softcap=softcap)


def _autocast_matmul_inputs(h: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast (h, weight) as autocast would cast the `h @ weight.T` of the reference: custom
    autograd Functions are not autocast, so the fused paths do it here (differentiably, so
    an fp32 master weight still gets an fp32 gradient)."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return h.to(dtype), weight.to(dtype)
    if h.dtype != weight.dtype:
        raise ValueError(
            f"linear_cross_entropy: h is {h.dtype} but weight is {weight.dtype}; cast one, or run under "
            "torch.autocast to compute in a lower precision"
        )
    return h, weight


def diagonal_injection(
    h: torch.Tensor,
    u: torch.Tensor,
    log_a: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    impl: InjectionImpl | None = None,
) -> torch.Tensor:
    """One Parcae injection step Ā ⊙ h + Δ ⊙ u, with u = e @ Bᵀ, Δ = softplus(dt_bias) and
    Ā = exp(-Δ·exp(log_a)) (REFERENCE.md §1). u does not change between loop steps, so the
    model computes it once per forward and this op is the elementwise rest.
    h, u: [batch, seq, d]; log_a, dt_bias: [d]. Differentiable in all four inputs."""
    d = h.shape[-1]
    if u.shape != h.shape or log_a.shape != (d,) or dt_bias.shape != (d,):
        raise ValueError(
            "diagonal_injection: expected h, u [..., d] and log_a, dt_bias [d]; got "
            f"h {tuple(h.shape)}, u {tuple(u.shape)}, log_a {tuple(log_a.shape)}, dt_bias {tuple(dt_bias.shape)}"
        )
    fn = _pick(INJECTION_IMPLS, impl, h.is_cuda, "reference", "diagonal_injection")
    return fn(h, u, log_a, dt_bias)
