"""The fixed-depth Transformer baseline, built from the same blocks as Parcae."""

from __future__ import annotations

import torch
import torch.nn as nn

from parcae_scaling.model.blocks import (
    Block, Diagnostics, ModelOutput, ParamGroups, RMSNorm, Rotary, ValueEmbeddings,
    scaled_zero_init_, split_param_groups,
)
from parcae_scaling.model.config import ModelConfig
from parcae_scaling.model.head import lm_head


class TransformerLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.family != "transformer":
            raise ValueError(f"TransformerLM needs family 'transformer', got {config.family!r}; use ParcaeLM")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.value_embeddings = ValueEmbeddings(config)
        self.rotary = Rotary(config.head_dim, config.seq_len, config.rope_base)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        scaled_zero_init_(self, self.config, generator)

    def param_groups(self) -> ParamGroups:
        return split_param_groups(self, ("embed.", "value_embeddings."), ())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        recurrence: int | None = None,
        generator: torch.Generator | None = None,
    ) -> ModelOutput:
        """Same signature as ParcaeLM; a fixed-depth model only accepts recurrence None or 1."""
        if recurrence not in (None, 1):
            raise ValueError(f"a transformer has fixed depth; recurrence must be None or 1, got {recurrence}")
        ves = self.value_embeddings(idx)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.rotary, ves.get(block.layer_index))
        loss, logits = lm_head(self.final_norm(x), self.embed.weight, targets, self.config)
        return ModelOutput(loss=loss, logits=logits, diagnostics=Diagnostics.empty())
