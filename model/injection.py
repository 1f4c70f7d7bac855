"""How the prelude output e enters the loop: h_{t+1} = R(inject(h_t, e)).

One registry: `diagonal` (Parcae: stable by construction), `addition` and `concatenation`
(the unstable prior designs, kept for ablations). Each splits into `encode(e)`, the part
that depends on e alone and so runs once per forward, and `forward(h, encoded)`, run on
every loop step: a loop of T steps then pays for the e-side matmul once, not T times.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from parcae_scaling import kernels
from parcae_scaling.model.blocks import trunc_normal_
from parcae_scaling.model.config import ModelConfig

# Ā = exp(-softplus(dt_bias)) at log_A = 0; Parcae starts every channel at Ā = sqrt(1/5).
INITIAL_A_BAR = math.sqrt(1.0 / 5.0)


def dt_bias_for(a_bar: float) -> float:
    """Inverse of Ā = exp(-softplus(dt_bias)) at log_A = 0."""
    delta = -math.log(a_bar)
    return math.log(math.expm1(delta))


class DiagonalInjection(nn.Module):
    """Ā ⊙ h + B̄ e with A = -exp(log_A), Δ = softplus(dt_bias), Ā = exp(ΔA) (zero-order hold),
    B̄ = Δ ⊙ B (Euler). Every Ā entry lies in (0, 1), so ρ(Ā) < 1 for any parameter values."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.fused = config.fused_ops
        self.log_a = nn.Parameter(torch.zeros(d))
        self.dt_bias = nn.Parameter(torch.full((d,), dt_bias_for(INITIAL_A_BAR)))
        self.b = nn.Parameter(torch.eye(d))

    def reset_parameters(self, generator: torch.Generator | None, std: float) -> None:
        with torch.no_grad():
            self.log_a.zero_()
            self.dt_bias.fill_(dt_bias_for(INITIAL_A_BAR))
            self.b.copy_(torch.eye(self.b.shape[0]))

    def a_bar(self) -> torch.Tensor:
        return torch.exp(-F.softplus(self.dt_bias) * torch.exp(self.log_a))

    def encode(self, e: torch.Tensor) -> torch.Tensor:
        return F.linear(e, self.b)  # u = B e; Δ scales it per step, inside the fused op

    def forward(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return kernels.diagonal_injection(h, u, self.log_a, self.dt_bias)
        return self.a_bar() * h + F.softplus(self.dt_bias) * u

    def spectral_radius(self) -> torch.Tensor:
        return self.a_bar().max()


class AdditionInjection(nn.Module):
    """h + e: Ā = I, marginally stable (the prior recurrent-depth design)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()

    def reset_parameters(self, generator: torch.Generator | None, std: float) -> None:
        pass

    def encode(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + e

    def spectral_radius(self) -> torch.Tensor:
        return torch.tensor(1.0)


class ConcatenationInjection(nn.Module):
    """W [h; e]: an unconstrained linear adapter; ρ is that of its h-block, which nothing bounds."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.adapter = nn.Linear(2 * config.d_model, config.d_model, bias=False)

    def reset_parameters(self, generator: torch.Generator | None, std: float) -> None:
        trunc_normal_(self.adapter.weight, std, generator)

    def encode(self, e: torch.Tensor) -> torch.Tensor:
        return F.linear(e, self.adapter.weight[:, e.shape[-1]:])  # W [h; e] = W_h h + W_e e

    def forward(self, h: torch.Tensor, w_e_e: torch.Tensor) -> torch.Tensor:
        return torch.addmm(w_e_e.reshape(-1, w_e_e.shape[-1]), h.reshape(-1, h.shape[-1]),
                           self.adapter.weight[:, : h.shape[-1]].t()).view(h.shape)

    def spectral_radius(self) -> torch.Tensor:
        d = self.adapter.weight.shape[0]
        return torch.linalg.eigvals(self.adapter.weight.detach()[:, :d].float()).abs().max()


INJECTIONS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "diagonal": DiagonalInjection,
    "addition": AdditionInjection,
    "concatenation": ConcatenationInjection,
}


def build_injection(config: ModelConfig) -> nn.Module:
    try:
        return INJECTIONS[config.injection](config)
    except KeyError:
        raise ValueError(f"unknown injection {config.injection!r}; known: {sorted(INJECTIONS)}") from None
