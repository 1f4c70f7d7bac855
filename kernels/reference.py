"""Plain PyTorch definitions of the fused ops: the ground truth every fast path is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets` (materialises all logits)."""
    logits = (h.reshape(-1, h.shape[-1]) @ weight.t()).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets.reshape(-1), ignore_index=ignore_index)


def diagonal_injection_reference(
    h: torch.Tensor, u: torch.Tensor, log_a: torch.Tensor, dt_bias: torch.Tensor
) -> torch.Tensor:
    """One Parcae injection step Ā ⊙ h + Δ ⊙ u, where u = B e (the same on every loop step, so
    the caller computes it once), A = -exp(log_A), Δ = softplus(dt_bias), Ā = exp(Δ·A)
    (zero-order hold) and B̄ e = Δ ⊙ B e (Euler)."""
    delta = F.softplus(dt_bias)
    a_bar = torch.exp(-delta * torch.exp(log_a))
    return a_bar * h + delta * u
