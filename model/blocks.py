"""Transformer blocks shared by the Parcae model and the fixed-depth baseline (the "nanochat setup").

Pre-norm RMSNorm, causal attention with QK-norm and RoPE (base 50,000), ReLU² MLP, no biases,
value embeddings gated by 2·sigmoid(Linear(first 32 channels -> n_kv_heads)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from parcae_scaling.model.config import ModelConfig


def init_std(config: ModelConfig) -> float:
    """The "scaled" init std sqrt(2 / (5 d)) (Nguyen & Salazar small init), used for every
    non-output weight and for the like-init recurrent state."""
    return math.sqrt(2.0 / (5.0 * config.d_model))


def trunc_normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Normal(0, std) truncated at ±3 std."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Rotary(nn.Module):
    """RoPE tables (cos, sin) for positions 0..seq_len-1, rotating channel halves."""

    def __init__(self, head_dim: int, seq_len: int, base: float) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        # [1, seq, 1, head_dim/2]: broadcasts over batch and heads of a [B, T, H, D] tensor.
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        cos, sin = self.cos[:, :t].to(x.dtype), self.sin[:, :t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, has_value_embedding: bool) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.eps = config.norm_eps
        self.q = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k = nn.Linear(config.d_model, config.kv_dim, bias=False)
        self.v = nn.Linear(config.d_model, config.kv_dim, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.ve_gate_channels = config.ve_gate_channels
        self.ve_gate = (nn.Linear(config.ve_gate_channels, config.n_kv_heads, bias=False) if has_value_embedding
                        else None)

    def forward(self, x: torch.Tensor, rotary: Rotary, ve: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        # One matmul for q, k and v (separate parameters, so Muon and the parameter inventory
        # see three matrices): a wide GEMM runs much closer to peak than three narrow ones.
        qkv = F.linear(x, torch.cat((self.q.weight, self.k.weight, self.v.weight)))
        q, k, v = qkv.split((self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim,
                             self.n_kv_heads * self.head_dim), dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)
        v = v.view(b, t, self.n_kv_heads, self.head_dim)
        if self.ve_gate is not None:
            # Value residual (ResFormer): a per-head gate in (0, 2), exactly 1 at init.
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(b, t, self.n_kv_heads, self.head_dim)
        q = F.rms_norm(rotary(q), (self.head_dim,), eps=self.eps)  # QK-norm, no weights
        k = F.rms_norm(rotary(k), (self.head_dim,), eps=self.eps)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.has_value_embedding = config.has_value_embedding(layer_index)
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, self.has_value_embedding)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rotary: Rotary, ve: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rotary, ve)
        return x + self.mlp(self.mlp_norm(x))


def compile_blocks(model: nn.Module, **compile_kwargs: object) -> None:
    """torch.compile each transformer block in place (per-block compile, as torchtitan does):
    fuses the norms, RoPE, ReLU² and residual adds around the matmuls. The batch dimension is
    dynamic because the loop steps a shrinking prefix of the batch."""
    # Every block shares Block.forward's code object, and each grad mode (steps past mu_bwd run
    # without grad) and autocast dtype is a cache entry of its own: dynamo's default limit of 8
    # would send the later variants back to eager without a word beyond a log line.
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    for module in model.modules():
        if isinstance(module, Block):
            module.compile(dynamic=True, **compile_kwargs)


class ValueEmbeddings(nn.Module):
    """One vocab x kv_dim table per effective layer that has a value embedding; a recurrent
    layer reuses its table on every loop."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.tables = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, config.kv_dim)
            for i in range(config.n_layers) if config.has_value_embedding(i)
        })

    def forward(self, idx: torch.Tensor) -> dict[int, torch.Tensor]:
        return {int(i): table(idx) for i, table in self.tables.items()}


def scaled_zero_init_(model: nn.Module, config: ModelConfig, generator: torch.Generator | None) -> None:
    """Scaled-zero init of every embedding, block and norm of `model`: truncated-normal token and
    value embeddings and block inputs, zero output projections, gates at zero (gate = 1), unit
    norms. Model-specific parameters (injection, readout) are initialised by their owner."""
    std = init_std(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                trunc_normal_(module.weight, std, generator)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, Block):
                for linear in (module.attn.q, module.attn.k, module.attn.v, module.mlp.up):
                    trunc_normal_(linear.weight, std, generator)
                nn.init.zeros_(module.attn.out.weight)
                nn.init.zeros_(module.mlp.down.weight)
                if module.attn.ve_gate is not None:
                    nn.init.zeros_(module.attn.ve_gate.weight)


@dataclass(frozen=True)
class Diagnostics:
    """Per-forward health of the loop (detached 0-d tensors; NaN where not applicable).

    rho_a: spectral radius of the linearised injection, max Ā (< 1 for the diagonal injection).
    state_norm: mean L2 norm of the final recurrent state per token.
    residual_norm: mean L2 norm of the last step's state change h_T - h_{T-1} per token."""

    rho_a: torch.Tensor
    state_norm: torch.Tensor
    residual_norm: torch.Tensor

    @classmethod
    def empty(cls) -> "Diagnostics":
        nan = torch.tensor(float("nan"))
        return cls(rho_a=nan, state_norm=nan, residual_norm=nan)

    def as_floats(self) -> dict[str, float]:
        return {"rho_a": float(self.rho_a), "state_norm": float(self.state_norm),
                "residual_norm": float(self.residual_norm)}


@dataclass(frozen=True)
class ModelOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    diagnostics: Diagnostics
    depths: torch.Tensor | None = None  # per-sequence recurrence actually run (Parcae only)


@dataclass(frozen=True)
class ParamGroups:
    """How the optimiser should treat each parameter.

    matrix: 2-D hidden weights of transformer blocks (Muon candidates, weight decay allowed).
    embedding: token and value embeddings (AdamW).
    no_decay: norms, injection parameters (log_A, dt_bias, B), the readout C (AdamW, no decay)."""

    matrix: list[nn.Parameter] = field(default_factory=list)
    embedding: list[nn.Parameter] = field(default_factory=list)
    no_decay: list[nn.Parameter] = field(default_factory=list)


def split_param_groups(model: nn.Module, embedding_names: tuple[str, ...],
                       no_decay_names: tuple[str, ...]) -> ParamGroups:
    """Group parameters by name prefix; every parameter lands in exactly one group."""
    groups = ParamGroups()
    for name, param in model.named_parameters():
        if name.startswith(embedding_names):
            groups.embedding.append(param)
        elif param.ndim < 2 or name.startswith(no_decay_names):
            groups.no_decay.append(param)
        else:
            groups.matrix.append(param)
    return groups
