"""Parameter counts from a config alone (no model built), broken down the way FLOP
conventions and scaling laws need them. Tests check every figure against a real model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from parcae_scaling.model.config import ModelConfig


@dataclass(frozen=True, kw_only=True)
class BlockParams:
    """One transformer block: `matmul` weights do FLOPs; `norm` weights are elementwise."""

    matmul: int
    norm: int

    @property
    def total(self) -> int:
        return self.matmul + self.norm


def block_params(config: ModelConfig, layer_index: int) -> BlockParams:
    d, kv = config.d_model, config.kv_dim
    attention = 2 * d * d + 2 * d * kv  # q, out: d x d; k, v: d x kv_dim
    mlp = 2 * d * config.d_ff  # up and down
    gate = config.ve_gate_channels * config.n_kv_heads if config.has_value_embedding(layer_index) else 0
    return BlockParams(matmul=attention + mlp + gate, norm=2 * d)


def injection_params(config: ModelConfig) -> int:
    """diagonal: log_A, dt_bias (d each) + B (d x d); concatenation: W (d x 2d); addition: none."""
    if not config.is_looped:
        return 0
    d = config.d_model
    return {"diagonal": 2 * d + d * d, "concatenation": 2 * d * d, "addition": 0}[config.injection]


def injection_input_matmul_params(config: ModelConfig) -> int:
    """The injection's matmul on e alone (B, or the adapter's e-half W_e): e is the same on
    every loop step, so this runs once per forward."""
    if not config.is_looped:
        return 0
    d = config.d_model
    return {"diagonal": d * d, "concatenation": d * d, "addition": 0}[config.injection]


def injection_state_matmul_params(config: ModelConfig) -> int:
    """The injection's matmul on the state h, run on every loop step (the adapter's h-half W_h)."""
    if not config.is_looped:
        return 0
    d = config.d_model
    return {"diagonal": 0, "concatenation": d * d, "addition": 0}[config.injection]


@dataclass(frozen=True, kw_only=True)
class ParamBreakdown:
    """Parameter counts of one model.

    core: the recurrent blocks (counted once; 0 for a transformer). non_core: everything but
    the token embedding (which the head shares) and the core. `total` matches the model's
    `sum(p.numel())`."""

    total: int
    embedding: int
    value_embedding: int
    prelude: int
    core: int
    coda: int
    injection: int
    readout: int
    norms_outside_blocks: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def non_core(self) -> int:
        return self.total - self.embedding - self.core

    def effective(self, mu_rec: float) -> float:
        """Unrolled parameter count N(mu_rec) = non_core + mu_rec * core (embedding excluded)."""
        return self.non_core + mu_rec * self.core

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "non_embedding": self.non_embedding, "non_core": self.non_core}


def segment_layer_indices(config: ModelConfig) -> tuple[range, range, range]:
    """Effective layer indices of (prelude, recurrent block, coda); a transformer has no loop,
    so all its layers count as prelude for FLOP purposes (run once, with backprop)."""
    p, r, c = config.n_prelude, config.n_recurrent, config.n_coda
    if not config.is_looped:
        return range(p + r + c), range(0), range(0)
    return range(p), range(p, p + r), range(p + r, p + r + c)


def parameter_breakdown(config: ModelConfig) -> ParamBreakdown:
    d = config.d_model
    prelude_layers, core_layers, coda_layers = segment_layer_indices(config)
    n_tables = sum(config.has_value_embedding(i) for i in range(config.n_layers))
    value_embedding = n_tables * config.vocab_size * config.kv_dim
    prelude = sum(block_params(config, i).total for i in prelude_layers)
    core = sum(block_params(config, i).total for i in core_layers)
    coda = sum(block_params(config, i).total for i in coda_layers)
    embedding = config.vocab_size * d
    injection = injection_params(config)
    readout = d * d if config.is_looped else 0
    norms = d + (d if config.is_looped else 0)  # final norm (+ prelude norm)
    total = embedding + value_embedding + prelude + core + coda + injection + readout + norms
    return ParamBreakdown(
        total=total, embedding=embedding, value_embedding=value_embedding, prelude=prelude,
        core=core, coda=coda, injection=injection, readout=readout, norms_outside_blocks=norms,
    )
