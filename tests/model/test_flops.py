"""FLOP conventions: the reference formula to the unit, the exact one against torch's counter."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from parcae_scaling.model import build_model, get_config
from parcae_scaling.model.flops import flops_per_token, tokens_for_budget, training_flops


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("parcae-small-140m", 1_359_902_976),
        ("transformer-small-140m", 821_098_368),
        ("parcae-medium-370m", 4_173_740_032),
        ("transformer-medium-370m", 2_416_081_920),
    ],
)
def test_reference_convention_reproduces_published_figures(name, expected):
    assert flops_per_token(get_config(name), 8, 4, "reference") == expected


def counted_flops_per_token(config, recurrence: int | None) -> float:
    torch.manual_seed(0)
    model = build_model(config).train()
    idx = torch.randint(0, config.vocab_size, (2, config.seq_len))
    counter = FlopCounterMode(display=False)
    # The math backend runs attention as matmuls, which the counter sees (the CPU flash
    # kernel is invisible to it).
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(idx, idx, recurrence=recurrence).loss.backward()
    return counter.get_total_flops() / idx.numel()


@pytest.mark.parametrize(
    ("name", "mu_rec", "recurrence"),
    [("parcae-tiny-64", 2, 2), ("parcae-tiny-64", 4, 4), ("parcae-tiny-128", 6, 6), ("parcae-tiny-64", 2, 5)],
)
def test_exact_convention_matches_flop_counter_for_parcae(name, mu_rec, recurrence):
    config = get_config(name, mu_rec=mu_rec, fused_ops=False)
    predicted = flops_per_token(config, recurrence, min(recurrence, config.mu_bwd), "exact")
    assert counted_flops_per_token(config, recurrence) == pytest.approx(predicted, rel=0.02)


@pytest.mark.parametrize("injection", ["addition", "concatenation"])
def test_exact_convention_follows_the_injection(injection):
    config = get_config("parcae-tiny-64", injection=injection, fused_ops=False)
    predicted = flops_per_token(config, convention="exact")
    assert counted_flops_per_token(config, config.mu_rec) == pytest.approx(predicted, rel=0.02)


def test_exact_convention_matches_flop_counter_for_transformer():
    config = get_config("transformer-tiny-96", fused_ops=False)
    assert counted_flops_per_token(config, None) == pytest.approx(flops_per_token(config, convention="exact"), rel=0.02)


def test_flops_grow_with_depth_and_conventions_differ():
    config = get_config("parcae-small-140m")
    by_mu = [flops_per_token(config, mu, -(-mu // 2), "exact") for mu in (1, 2, 4, 8)]
    assert by_mu == sorted(by_mu) and len(set(by_mu)) == 4
    assert flops_per_token(config, convention="exact") != flops_per_token(config, convention="reference")


def test_tokens_for_budget_is_floor_of_budget_over_flops():
    fpt = flops_per_token(get_config("parcae-small-140m"))
    tokens = tokens_for_budget(1e18, fpt)
    assert tokens == int(1e18 // 1_359_902_976)
    assert training_flops(get_config("parcae-small-140m"), tokens) <= 1e18 < (tokens + 1) * fpt


@pytest.mark.parametrize(("budget", "fpt"), [(0, 10), (-1e18, 10), (1e18, 0)])
def test_tokens_for_budget_rejects_non_positive_inputs(budget, fpt):
    with pytest.raises(ValueError, match="must be positive"):
        tokens_for_budget(budget, fpt)


def test_unknown_convention_and_bad_depths_are_rejected():
    config = get_config("parcae-tiny-64")
    with pytest.raises(ValueError, match="unknown FLOP convention 'chinchilla'"):
        flops_per_token(config, convention="chinchilla")
    with pytest.raises(ValueError, match="mu_bwd <= mu_rec"):
        flops_per_token(config, 2, 3)
