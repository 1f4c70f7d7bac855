"""The tied output head and its loss, shared by both model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parcae_scaling import kernels
from parcae_scaling.model.config import ModelConfig


def lm_head(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor | None, config: ModelConfig
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(loss, logits) from final hidden states and the tied embedding matrix.

    With targets the loss is the mean next-token cross-entropy (ignore index -100) and no
    logits are returned: the fused path never materialises the [tokens, vocab] tensor."""
    if targets is None:
        return None, _logits(x, weight, config.logit_softcap)
    if config.fused_ops:
        return kernels.linear_cross_entropy(x, weight, targets, softcap=config.logit_softcap), None
    logits = _logits(x, weight, config.logit_softcap)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return loss, None


def _logits(x: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = F.linear(x, weight).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits
