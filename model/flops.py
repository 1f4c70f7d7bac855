"""FLOP accounting: what "FLOP-matched" means (REFERENCE.md section 2).

Two named conventions, one registry; the convention is part of every run's identity.

`reference` — the public reference implementation's formula, per trained token:

    non_core  = (all params - token embedding) - core params
    FLOPs/tok = 6·non_core + 3·(n_prelude + n_coda)·attn
              + 2·core·mu_rec + 4·core·mu_bwd + attn_core·(mu_rec + 2·mu_bwd)
    attn      = 4·d·seq_len per layer (forward, full — not causal-halved)
    Transformer: 6·(all params - token embedding) + 3·n_layers·attn

  Its quirks are kept on purpose: value-embedding tables are charged 6 FLOPs per parameter
  although a lookup does no arithmetic, and the tied output head is dropped.

`exact` — the matmul FLOPs the model really performs per trained token, at the nominal
  (mu_rec, mu_bwd): forward 2 FLOPs per matmul weight, backward 4 (input and weight
  gradients); loop steps without gradients pay forward only; lookups (token and value
  embeddings) cost nothing; the injection's matmul on e (B e, or the adapter's W_e e) runs
  once per forward, since e does not change between loop steps, and its matmul on h (the
  adapter's W_h h) on every step; the readout C and the tied head count; attention counts
  both score and value products over the full seq_len x seq_len matrix, as the dense SDPA
  kernels compute it and as torch.utils.flop_counter counts it (a causal flash kernel skips
  about half of that).
"""

from __future__ import annotations

from typing import Callable, Literal, get_args

from parcae_scaling.model.config import ModelConfig
from parcae_scaling.model.params import (
    block_params, injection_input_matmul_params, injection_state_matmul_params, parameter_breakdown,
    segment_layer_indices,
)

FlopConvention = Literal["reference", "exact"]


def attention_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs per token of one attention layer: Q·Kᵀ and A·V, 2·seq_len·d each."""
    return 4 * config.d_model * seq_len


def reference_flops_per_token(config: ModelConfig, mu_rec: int, mu_bwd: int, seq_len: int) -> int:
    breakdown = parameter_breakdown(config)
    attn = attention_flops_per_token(config, seq_len)
    _, core_layers, _ = segment_layer_indices(config)
    once_layers = config.n_layers - len(core_layers)
    return (
        6 * breakdown.non_core
        + 3 * once_layers * attn
        + 2 * breakdown.core * mu_rec
        + 4 * breakdown.core * mu_bwd
        + len(core_layers) * attn * (mu_rec + 2 * mu_bwd)
    )


def exact_flops_per_token(config: ModelConfig, mu_rec: int, mu_bwd: int, seq_len: int) -> int:
    attn = attention_flops_per_token(config, seq_len)
    prelude_layers, core_layers, coda_layers = segment_layer_indices(config)
    once_layers = [*prelude_layers, *coda_layers]
    once_matmul = sum(block_params(config, i).matmul for i in once_layers)
    loop_matmul = sum(block_params(config, i).matmul for i in core_layers) + injection_state_matmul_params(config)
    readout_and_head = (config.d_model if config.is_looped else 0) * config.d_model + config.vocab_size * config.d_model
    return (
        6 * (once_matmul + injection_input_matmul_params(config) + readout_and_head)
        + 3 * len(once_layers) * attn
        + (2 * mu_rec + 4 * mu_bwd) * loop_matmul
        + len(core_layers) * attn * (mu_rec + 2 * mu_bwd)
    )


FLOP_CONVENTIONS: dict[str, Callable[[ModelConfig, int, int, int], int]] = {
    "reference": reference_flops_per_token,
    "exact": exact_flops_per_token,
}


def flops_per_token(
    config: ModelConfig,
    mu_rec: int | None = None,
    mu_bwd: int | None = None,
    convention: FlopConvention = "reference",
    *,
    seq_len: int | None = None,
) -> int:
    """Training FLOPs per token (forward + backward) under a named convention.

    mu_rec, mu_bwd and seq_len default to the config's; a transformer ignores mu (fixed depth)."""
    if convention not in FLOP_CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; use one of {list(FLOP_CONVENTIONS)}")
    mu_rec = config.mu_rec if mu_rec is None else mu_rec
    mu_bwd = config.mu_bwd if mu_bwd is None else mu_bwd
    seq_len = config.seq_len if seq_len is None else seq_len
    if mu_rec < 1 or mu_bwd < 1 or mu_bwd > mu_rec:
        raise ValueError(f"need 1 <= mu_bwd <= mu_rec, got mu_rec={mu_rec}, mu_bwd={mu_bwd}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return FLOP_CONVENTIONS[convention](config, mu_rec, mu_bwd, seq_len)


def tokens_for_budget(budget_flops: float, flops_per_token: int) -> int:
    """Tokens a FLOP budget buys: int(budget / FLOPs per token), as the reference does."""
    if not budget_flops > 0:
        raise ValueError(f"budget_flops must be positive, got {budget_flops}")
    if flops_per_token <= 0:
        raise ValueError(f"flops_per_token must be positive, got {flops_per_token}")
    return int(budget_flops // flops_per_token)


def training_flops(config: ModelConfig, tokens: int, convention: FlopConvention = "reference", **kwargs: int) -> int:
    """Total training FLOPs for `tokens` trained tokens."""
    return tokens * flops_per_token(config, convention=convention, **kwargs)


def conventions() -> tuple[str, ...]:
    return tuple(get_args(FlopConvention))


def config_summary(config: ModelConfig, convention: FlopConvention = "reference") -> dict[str, object]:
    """One row describing a config's size and per-token cost (for tables and reports)."""
    from parcae_scaling.model.params import parameter_breakdown

    breakdown = parameter_breakdown(config)
    return {
        "name": config.name, "family": config.family,
        "layers": (f"{config.n_prelude}/{config.n_recurrent}/{config.n_coda}" if config.is_looped
                   else str(config.n_layers)),
        "d_model": config.d_model, "params": breakdown.total, "non_embedding": breakdown.non_embedding,
        "value_embedding": breakdown.value_embedding, "core": breakdown.core, "non_core": breakdown.non_core,
        "mu_rec": config.mu_rec, "mu_bwd": config.mu_bwd, "seq_len": config.seq_len,
        "flops_per_token": flops_per_token(config, convention=convention), "convention": convention,
    }
