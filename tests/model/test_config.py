"""Named configs reproduce the published parameter counts; overrides are validated."""

import pytest
import torch

from parcae_scaling.model import build_model, get_config, list_configs
from parcae_scaling.model.params import parameter_breakdown

PUBLISHED_PARAMS = {
    "parcae-small-140m": 144_323_136,
    "parcae-medium-370m": 388_003_328,
    "parcae-large-770m": 776_655_680,
    "parcae-xlarge-1.3b": 1_338_591_744,
    "transformer-small-140m": 143_141_184,
    "transformer-medium-370m": 385_903_104,
    "transformer-large-770m": 773_375_040,
    "transformer-xlarge-1.3b": 1_333_868_544,
}


def count_on_meta(config) -> int:
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_sizes_match_the_paper_exactly(name):
    config = get_config(name)
    assert count_on_meta(config) == PUBLISHED_PARAMS[name]
    assert parameter_breakdown(config).total == PUBLISHED_PARAMS[name]


def test_parcae_adds_exactly_the_injection_readout_and_prelude_norm():
    parcae, transformer = get_config("parcae-small-140m"), get_config("transformer-small-140m")
    d = parcae.d_model
    # diagonal injection (log_a, dt_bias) + prelude norm: 3 d; readout C and injection B: 2 d^2
    assert count_on_meta(parcae) - count_on_meta(transformer) == 3 * d + 2 * d**2 == 1_181_952


def test_value_embeddings_are_most_of_small_140m():
    breakdown = parameter_breakdown(get_config("parcae-small-140m"))
    assert breakdown.value_embedding == 3 * 32_768 * 768  # 75.5M of the "140M"


CASES = [(n, inj) for n in list_configs() for inj in ("diagonal", "addition", "concatenation")
         if n.startswith("parcae") or inj == "diagonal"]


@pytest.mark.parametrize(("name", "injection"), CASES)
def test_analytic_breakdown_matches_every_built_model(name, injection):
    config = get_config(name, injection=injection)
    with torch.device("meta"):
        model = build_model(config)
    breakdown = parameter_breakdown(config)
    assert breakdown.total == sum(p.numel() for p in model.parameters())
    assert breakdown.embedding == model.embed.weight.numel()
    if config.is_looped:
        assert breakdown.core == sum(p.numel() for p in model.recurrent.parameters())
        assert breakdown.injection == sum(p.numel() for p in model.injection.parameters())


def test_override_is_one_call_and_rederives_mu_bwd():
    config = get_config("parcae-small-140m", mu_rec=6)
    assert (config.mu_rec, config.mu_bwd) == (6, 3)
    assert get_config("parcae-small-140m", mu_rec=5, mu_bwd=5).mu_bwd == 5
    assert config.replace(d_model=512, n_heads=4).head_dim == 128


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"d_model": 770}, "d_model"),
        ({"mu_rec": 0}, "mu_rec"),
        ({"mu_rec": 4, "mu_bwd": 5}, "mu_bwd"),
        ({"injection": "gated"}, "injection"),
        ({"n_recurrent": 0}, "n_recurrent"),
        ({"family": "rnn"}, "family"),
        ({"n_kv_heads": 4}, "n_kv_heads"),
    ],
)
def test_impossible_overrides_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}"):
        get_config("parcae-small-140m", **overrides)


def test_transformer_cannot_loop():
    with pytest.raises(ValueError, match="fixed depth"):
        get_config("transformer-small-140m", mu_rec=4)


def test_unknown_names_and_fields_are_reported():
    with pytest.raises(ValueError, match="unknown model config 'parcae-huge'"):
        get_config("parcae-huge")
    with pytest.raises(ValueError, match="no field"):
        get_config("parcae-tiny-64", depth=3)


def test_config_round_trips_through_a_dict():
    config = get_config("parcae-tiny-96", mu_rec=3)
    assert type(config).from_dict(config.to_dict()) == config
