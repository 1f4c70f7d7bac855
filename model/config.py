"""Model configurations: one frozen dataclass, a registry of named sizes, validated overrides.

The four published sizes reproduce the parameter counts of the Parcae paper's table exactly
(REFERENCE.md section 1); the tiny sizes are for CPU sweeps on the embedded corpus.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

Family = Literal["parcae", "transformer"]
Injection = Literal["diagonal", "addition", "concatenation"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything that fixes a model's shape and forward computation.

    Parcae: prelude (n_prelude blocks) -> recurrent block (n_recurrent blocks, looped mu_rec
    times on average during training) -> coda (n_coda blocks). Transformer: the same three
    segments stacked once (n_prelude + n_recurrent + n_coda layers), mu_rec = mu_bwd = 1.
    """

    name: str = "custom"
    family: Family = "parcae"
    vocab_size: int = 32_768
    seq_len: int = 2048
    d_model: int = 768
    d_ff: int = 3072
    n_heads: int = 6
    n_kv_heads: int | None = None  # None: same as n_heads (no grouped-query attention)
    n_prelude: int = 2
    n_recurrent: int = 2
    n_coda: int = 2
    mu_rec: int = 8
    mu_bwd: int | None = None  # None: ceil(mu_rec / 2), the paper's default
    injection: Injection = "diagonal"
    rope_base: float = 50_000.0
    value_embeddings: bool = True
    ve_gate_channels: int = 32
    logit_softcap: float | None = None  # not used by the paper; nanochat uses 15
    norm_eps: float = 1e-6
    fused_ops: bool = True  # fused linear-CE and injection kernels (kernels/); exact references on CPU

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.mu_bwd is None:
            object.__setattr__(self, "mu_bwd", 1 if self.family == "transformer" else math.ceil(self.mu_rec / 2))
        _validate(self)

    # -- derived shapes -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Effective (unrolled-once) layer count: prelude, recurrent block counted once, coda."""
        return self.n_prelude + self.n_recurrent + self.n_coda

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def is_looped(self) -> bool:
        return self.family == "parcae"

    def has_value_embedding(self, layer_index: int) -> bool:
        """Value embeddings on alternating effective layers, the last one always (nanochat)."""
        return self.value_embeddings and layer_index % 2 == (self.n_layers - 1) % 2

    def replace(self, **overrides: object) -> "ModelConfig":
        """A validated copy with some fields changed.

        Fields that default from another are re-derived when that one changes and they are
        not given: mu_bwd = ceil(mu_rec / 2), n_kv_heads = n_heads."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"ModelConfig has no field(s) {unknown}; known fields: {known}")
        rederived = {d: None for d, source in _DERIVED_FROM.items() if source in overrides and d not in overrides}
        overrides = {**overrides, **rederived}
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, object]:
        # Every field is a scalar, so a shallow dict equals asdict() and is ~10x faster (the
        # sweep planner hashes one per run: 10,000-run plans).
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)


_DERIVED_FROM = {"mu_bwd": "mu_rec", "n_kv_heads": "n_heads"}


def _validate(c: ModelConfig) -> None:
    def bad(field: str, why: str, fix: str) -> ValueError:
        return ValueError(f"ModelConfig.{field}: {why}; {fix}")

    if c.family not in get_args(Family):
        raise bad("family", f"unknown family {c.family!r}", f"use one of {get_args(Family)}")
    if c.injection not in get_args(Injection):
        raise bad("injection", f"unknown injection {c.injection!r}", f"use one of {get_args(Injection)}")
    for field in ("vocab_size", "seq_len", "d_model", "d_ff", "n_heads", "n_kv_heads", "n_recurrent"):
        value = getattr(c, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(field, f"must be a positive integer, got {value!r}", "give a whole number >= 1")
    for field in ("n_prelude", "n_coda"):
        value = getattr(c, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(field, f"must be a non-negative integer, got {value!r}", "give a whole number >= 0")
    if c.d_model % c.n_heads:
        raise bad("d_model", f"{c.d_model} is not divisible by n_heads = {c.n_heads}",
                  "choose d_model as a multiple of n_heads")
    if c.n_heads % c.n_kv_heads:
        raise bad("n_kv_heads", f"n_heads = {c.n_heads} is not a multiple of n_kv_heads = {c.n_kv_heads}",
                  "choose n_kv_heads dividing n_heads")
    if c.head_dim % 2:
        raise bad("n_heads", f"head dimension {c.head_dim} is odd and RoPE needs pairs",
                  "use an even d_model / n_heads")
    for field in ("mu_rec", "mu_bwd"):
        value = getattr(c, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(field, f"must be an integer >= 1, got {value!r}", "the loop runs at least once")
    if c.mu_bwd > c.mu_rec:
        raise bad("mu_bwd", f"mu_bwd = {c.mu_bwd} exceeds mu_rec = {c.mu_rec}",
                  "backprop cannot cover more steps than the mean depth; use mu_bwd <= mu_rec")
    if c.family == "transformer" and (c.mu_rec != 1 or c.mu_bwd != 1):
        raise bad("mu_rec", "a transformer has fixed depth", "use mu_rec = 1 (and mu_bwd = 1) or family 'parcae'")
    if c.value_embeddings and not 1 <= c.ve_gate_channels <= c.d_model:
        raise bad("ve_gate_channels", f"{c.ve_gate_channels} is not in 1..d_model = {c.d_model}",
                  "use at most d_model gate channels")
    if c.rope_base <= 0 or c.norm_eps <= 0:
        raise bad("rope_base" if c.rope_base <= 0 else "norm_eps", "must be positive", "give a value > 0")
    if c.logit_softcap is not None and c.logit_softcap <= 0:
        raise bad("logit_softcap", f"must be positive or None, got {c.logit_softcap}", "use e.g. 15.0 or None")


# -- the registry -------------------------------------------------------------------------

# name: (prelude/recurrent/coda layers, d_model, d_ff, heads); heads are 128 wide (REFERENCE table).
_PUBLISHED = {
    "small-140m": ((2, 2, 2), 768, 3072, 6),
    "medium-370m": ((4, 4, 4), 1024, 4096, 8),
    "large-770m": ((6, 6, 6), 1280, 5120, 10),
    "xlarge-1.3b": ((8, 8, 8), 1536, 6144, 12),
}
# Tiny CPU sizes for the embedded byte-level corpus: d_ff = 4d, short context.
_TINY = {
    48: ((1, 1, 1), 3),
    64: ((1, 1, 1), 2),
    96: ((1, 1, 1), 3),
    128: ((1, 1, 1), 4),
    192: ((2, 2, 2), 6),
    256: ((2, 2, 2), 4),
}


def _build_registry() -> dict[str, ModelConfig]:
    registry: dict[str, ModelConfig] = {}
    for family in get_args(Family):
        looped = family == "parcae"
        for size, ((p, r, c), d, d_ff, heads) in _PUBLISHED.items():
            name = f"{family}-{size}"
            registry[name] = ModelConfig(
                name=name, family=family, d_model=d, d_ff=d_ff, n_heads=heads,
                n_prelude=p, n_recurrent=r, n_coda=c, mu_rec=8 if looped else 1,
            )
        for d, ((p, r, c), heads) in _TINY.items():
            name = f"{family}-tiny-{d}"
            registry[name] = ModelConfig(
                name=name, family=family, vocab_size=256, seq_len=128, d_model=d, d_ff=4 * d,
                n_heads=heads, n_prelude=p, n_recurrent=r, n_coda=c, mu_rec=4 if looped else 1,
            )
    return registry


CONFIGS: dict[str, ModelConfig] = _build_registry()


def list_configs() -> list[str]:
    return list(CONFIGS)


def get_config(name: str, **overrides: object) -> ModelConfig:
    """A named configuration, optionally with validated field overrides.

    >>> get_config("parcae-small-140m", mu_rec=4).mu_bwd
    2
    """
    try:
        base = CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}") from None
    return base.replace(**overrides) if overrides else base
