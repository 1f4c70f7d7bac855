"""Models, configurations and FLOP accounting for looped (Parcae) and fixed-depth LMs.

Names are loaded on first use (PEP 562), so the light modules here (configs, FLOPs, the run
contracts that the store imports) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from parcae_scaling.model.config import ModelConfig

_EXPORTS = {
    "CONFIGS": "config", "ModelConfig": "config", "get_config": "config", "list_configs": "config",
    "Diagnostics": "blocks", "ModelOutput": "blocks", "ParamGroups": "blocks",
    "ParcaeLM": "parcae", "TransformerLM": "transformer",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"parcae_scaling.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'parcae_scaling.model' has no attribute {name!r}")


def model_families() -> dict[str, type[nn.Module]]:
    from parcae_scaling.model.parcae import ParcaeLM
    from parcae_scaling.model.transformer import TransformerLM

    return {"parcae": ParcaeLM, "transformer": TransformerLM}


def build_model(config: ModelConfig) -> nn.Module:
    """The model for a config, initialised from the global torch RNG (seed it first)."""
    return model_families()[config.family](config)


__all__ = [*_EXPORTS, "build_model", "model_families"]
