"""Per-sequence recurrence depths: how many loop steps each sequence runs, and how many get gradients.

Training (REFERENCE.md section 1): T_i ~ Poisson(mu_rec) floored at 1; the last
min(T_i, mu_bwd) steps get gradients, the earlier ones run without. A batch runs
max_i(no-grad steps) then max_i(grad steps); a sequence is frozen once its own count is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DepthPlan:
    """Per-sequence step counts (int64 CPU tensors, so loop control never syncs a device)."""

    no_grad_steps: torch.Tensor
    grad_steps: torch.Tensor

    @property
    def total_steps(self) -> torch.Tensor:
        return self.no_grad_steps + self.grad_steps

    def __post_init__(self) -> None:
        if self.no_grad_steps.shape != self.grad_steps.shape:
            raise ValueError("DepthPlan: no_grad_steps and grad_steps must have one entry per sequence")
        if bool((self.total_steps < 1).any()):
            raise ValueError("DepthPlan: every sequence must run at least one recurrence step")


def split_depths(total_steps: torch.Tensor, mu_bwd: int) -> DepthPlan:
    """Truncated backprop: gradients flow through the last min(T, mu_bwd) steps only."""
    total_steps = total_steps.to(device="cpu", dtype=torch.int64)
    grad_steps = total_steps.clamp(max=mu_bwd)
    return DepthPlan(no_grad_steps=total_steps - grad_steps, grad_steps=grad_steps)


def sample_depths(batch_size: int, mu_rec: int, mu_bwd: int, generator: torch.Generator | None = None) -> DepthPlan:
    """Draw T_i ~ max(1, Poisson(mu_rec)) for each sequence of a batch (seeded by `generator`,
    which must be a CPU generator so that the draw is the same on every device)."""
    rates = torch.full((batch_size,), float(mu_rec))
    total_steps = torch.poisson(rates, generator=generator).clamp_min(1).to(torch.int64)
    return split_depths(total_steps, mu_bwd)


def fixed_depths(batch_size: int, recurrence: int, mu_bwd: int) -> DepthPlan:
    """Every sequence runs exactly `recurrence` steps (evaluation, or fixed-depth training)."""
    if recurrence < 1:
        raise ValueError(f"recurrence must be >= 1, got {recurrence}; the loop runs at least once")
    return split_depths(torch.full((batch_size,), recurrence, dtype=torch.int64), mu_bwd)
