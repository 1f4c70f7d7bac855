"""The model trained with fused ops matches the model with plain ops step for step (issue 7)."""

from __future__ import annotations

import pytest
import torch

from parcae_scaling import kernels
from parcae_scaling.model import build_model, get_config

CONFIG_NAME = "parcae-tiny-64"
STEPS, BATCH, SEQ = 4, 2, 33  # odd sequence length: masked tails in every kernel tile


def train_losses(fused_ops: bool, steps: int = STEPS) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of `steps` SGD steps from a fixed init, and the final parameters.

    SGD rather than Adam: Adam divides by sqrt(v), which turns fp32 noise in near-zero
    gradients into lr-sized parameter differences; SGD keeps differences proportional
    to the gradient differences the fused ops could introduce."""
    torch.manual_seed(0)
    config = get_config(CONFIG_NAME, fused_ops=fused_ops, seq_len=SEQ)
    model = build_model(config).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    # One fixed batch: the loss then falls step by step, so the run makes real updates.
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))
    targets = tokens[:, 1:].clone()
    targets[0, :5] = -100  # the model's ignore index must flow through the fused loss
    losses = []
    for step in range(steps):
        # Same depth sample and initial state for both models at each step.
        out = model(tokens[:, :-1], targets, generator=torch.Generator().manual_seed(100 + step))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_training(fused, plain, rtol: float, atol: float) -> None:
    fused_losses, fused_params = fused
    plain_losses, plain_params = plain
    assert fused_losses == pytest.approx(plain_losses, rel=rtol, abs=atol)
    assert fused_params.keys() == plain_params.keys()
    for name in plain_params:
        torch.testing.assert_close(fused_params[name], plain_params[name], rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")


def test_fused_ops_match_plain_ops_step_for_step():
    plain = train_losses(fused_ops=False)
    fused = train_losses(fused_ops=True)
    assert plain[0][-1] < plain[0][0] - 0.1  # it learns, so the comparison covers real updates
    assert_same_training(fused, plain, rtol=1e-4, atol=1e-5)


def test_fused_triton_kernels_match_plain_ops_step_for_step(triton_interpreted, monkeypatch):
    """The same with the dispatcher's CPU defaults pointed at the interpreted Triton kernels,
    so the model exercises exactly the code CUDA runs."""
    monkeypatch.setitem(kernels.LINEAR_CE_IMPLS, "chunked", triton_interpreted.linear_ce.linear_cross_entropy_triton)
    monkeypatch.setitem(kernels.INJECTION_IMPLS, "reference", triton_interpreted.injection.diagonal_injection_triton)
    calls = {"ce": 0}
    triton_ce = kernels.LINEAR_CE_IMPLS["chunked"]

    def counting_ce(*args, **kwargs):
        calls["ce"] += 1
        return triton_ce(*args, **kwargs)

    monkeypatch.setitem(kernels.LINEAR_CE_IMPLS, "chunked", counting_ce)
    fused = train_losses(fused_ops=True, steps=2)
    assert calls["ce"] == 2
    monkeypatch.undo()
    plain = train_losses(fused_ops=False, steps=2)
    assert_same_training(fused, plain, rtol=1e-4, atol=1e-5)
