"""The fixed-depth baseline shares Parcae's blocks and head."""

import pytest
import torch

from parcae_scaling.model import ParcaeLM, TransformerLM, build_model, get_config


def test_transformer_trains_and_reports_no_loop_diagnostics():
    torch.manual_seed(0)
    model = build_model(get_config("transformer-tiny-64"))
    assert isinstance(model, TransformerLM) and len(model.blocks) == 3
    idx = torch.randint(0, 256, (4, 129))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert torch.isnan(out.diagnostics.rho_a)


def test_transformer_refuses_a_recurrence():
    model = build_model(get_config("transformer-tiny-64"))
    with pytest.raises(ValueError, match="fixed depth"):
        model(torch.zeros(1, 8, dtype=torch.long), recurrence=4)


def test_families_refuse_each_others_configs():
    with pytest.raises(ValueError, match="use ParcaeLM"):
        TransformerLM(get_config("parcae-tiny-64"))
    with pytest.raises(ValueError, match="use TransformerLM"):
        ParcaeLM(get_config("transformer-tiny-64"))


def test_fused_and_plain_heads_agree():
    torch.manual_seed(0)
    fused = build_model(get_config("transformer-tiny-64", fused_ops=True))
    plain = build_model(get_config("transformer-tiny-64", fused_ops=False))
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 256, (2, 65))
    torch.testing.assert_close(fused(idx[:, :-1], idx[:, 1:]).loss, plain(idx[:, :-1], idx[:, 1:]).loss)
