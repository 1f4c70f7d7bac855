"""Models, configurations and FLOP accounting for looped (Parcae) and fixed-depth LMs."""

from __future__ import annotations

import torch.nn as nn

from parcae_scaling.model.blocks import Diagnostics, ModelOutput, ParamGroups
from parcae_scaling.model.config import CONFIGS, ModelConfig, get_config, list_configs
from parcae_scaling.model.parcae import ParcaeLM
from parcae_scaling.model.transformer import TransformerLM

MODEL_FAMILIES: dict[str, type[nn.Module]] = {"parcae": ParcaeLM, "transformer": TransformerLM}


def build_model(config: ModelConfig) -> nn.Module:
    """The model for a config, initialised from the global torch RNG (seed it first)."""
    return MODEL_FAMILIES[config.family](config)


__all__ = [
    "CONFIGS", "Diagnostics", "ModelConfig", "ModelOutput", "ParamGroups", "ParcaeLM",
    "TransformerLM", "build_model", "get_config", "list_configs", "MODEL_FAMILIES",
]
