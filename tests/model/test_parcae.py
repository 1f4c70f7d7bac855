"""The Parcae model: depth sampling, frozen sequences, truncated backprop, stability, learning."""

import math

import pytest
import torch

from parcae_scaling.model import build_model, get_config
from parcae_scaling.model.depth import fixed_depths, sample_depths
from parcae_scaling.model.injection import INITIAL_A_BAR


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model(get_config("parcae-tiny-64", **overrides))


def batch(config, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (size, config.seq_len + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


@pytest.mark.parametrize("mu_rec", [1, 2, 8])
def test_depth_sampler_statistics(mu_rec):
    mu_bwd = math.ceil(mu_rec / 2)
    plan = sample_depths(200_000, mu_rec, mu_bwd, torch.Generator().manual_seed(0))
    total = plan.total_steps.double()
    # E[max(1, Poisson(mu))] = mu + e^-mu; the floor adds a little only at small mu.
    assert total.mean().item() == pytest.approx(mu_rec + math.exp(-mu_rec), rel=0.01)
    assert int(total.min()) >= 1
    assert int(plan.grad_steps.max()) <= mu_bwd
    assert torch.equal(plan.grad_steps, plan.total_steps.clamp(max=mu_bwd))


def test_depth_sampler_is_reproducible_under_a_seed():
    def draw(seed):
        return sample_depths(64, 8, 4, torch.Generator().manual_seed(seed)).total_steps
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_fixed_depth_rejects_zero():
    with pytest.raises(ValueError, match="recurrence must be >= 1"):
        fixed_depths(2, 0, 1)


def test_training_forward_reports_sampled_depths_and_is_seeded():
    model = tiny(mu_rec=4)
    idx, targets = batch(model.config)
    out1 = model(idx, targets, generator=torch.Generator().manual_seed(7))
    out2 = model(idx, targets, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out1.depths, sample_depths(4, 4, 2, torch.Generator().manual_seed(7)).total_steps)
    assert out1.loss.item() == out2.loss.item()


def test_frozen_sequences_equal_running_each_alone_at_its_own_depth():
    """A batch with mixed depths must give every sequence exactly its own trajectory."""
    model = tiny(mu_rec=4, fused_ops=False).eval()
    idx, targets = batch(model.config, size=3)
    torch.manual_seed(1)
    depths = torch.tensor([1, 6, 3])
    model.depth_plan = lambda b, r, g: fixed_depths(b, 1, model.config.mu_bwd).__class__(
        no_grad_steps=depths - depths.clamp(max=2), grad_steps=depths.clamp(max=2))
    # Same initial state for the batch and the single runs: zero the like-init noise scale.
    with torch.no_grad(), _deterministic_state(model):
        mixed = model(idx, recurrence=None).logits
    del model.depth_plan
    for i, depth in enumerate(depths.tolist()):
        with torch.no_grad(), _deterministic_state(model):
            alone = model(idx[i : i + 1], recurrence=depth).logits
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-4, atol=1e-5)


class _deterministic_state:
    """Replace the random initial state with zeros so runs are comparable."""

    def __init__(self, model):
        import parcae_scaling.model.parcae as parcae

        self.module, self.original = parcae, parcae.trunc_normal_

    def __enter__(self):
        self.module.trunc_normal_ = lambda t, std, g=None: t.zero_()

    def __exit__(self, *exc):
        self.module.trunc_normal_ = self.original


@pytest.mark.parametrize(("recurrence", "mu_bwd"), [(5, 2), (2, 2), (1, 1), (6, 3)])
def test_backprop_is_truncated_to_the_last_mu_bwd_steps(recurrence, mu_bwd):
    model = tiny(mu_rec=6, mu_bwd=mu_bwd).train()
    calls = []
    model.recurrent[0].register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    idx, targets = batch(model.config)
    model(idx, targets, recurrence=recurrence).loss.backward()
    assert len(calls) == recurrence
    assert calls == [False] * (recurrence - min(recurrence, mu_bwd)) + [True] * min(recurrence, mu_bwd)
    assert model.injection.b.grad is not None and model.injection.b.grad.abs().sum() > 0


def test_diagonal_injection_starts_at_sqrt_one_fifth():
    model = tiny()
    a_bar = model.injection.a_bar()
    torch.testing.assert_close(a_bar, torch.full_like(a_bar, INITIAL_A_BAR))
    assert model.injection.spectral_radius().item() == pytest.approx(INITIAL_A_BAR, rel=1e-6)


@pytest.mark.parametrize("injection", ["diagonal", "addition", "concatenation"])
def test_encoding_e_once_gives_each_injections_formula(injection):
    """The loop computes the e-only part of the injection once per forward; encode + step must
    still be the formula of REFERENCE.md §1 (and of the ablation baselines) on every step."""
    model = tiny(injection=injection)
    with torch.no_grad():
        for p in model.injection.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    inj, d = model.injection, model.config.d_model
    h, e = torch.randn(2, 5, d), torch.randn(2, 5, d)
    expected = {
        "diagonal": lambda: inj.a_bar() * h + torch.nn.functional.softplus(inj.dt_bias) * (e @ inj.b.t()),
        "addition": lambda: h + e,
        "concatenation": lambda: torch.cat((h, e), dim=-1) @ inj.adapter.weight.t(),
    }[injection]()
    torch.testing.assert_close(inj(h, inj.encode(e)), expected)


def test_diagonal_spectral_radius_is_below_one_for_any_parameter_values():
    """Exactly, Ā < 1 always; in fp32 it holds while the decay rate Δ·exp(log_A) exceeds
    2^-24, i.e. for log_A and dt_bias anywhere in [-8, 8] (far beyond trained values)."""
    model = tiny()
    grid = torch.linspace(-8, 8, 64)
    for value in grid:
        with torch.no_grad():
            model.injection.log_a.copy_(grid)
            model.injection.dt_bias.fill_(value)
        a_bar = model.injection.a_bar()
        assert bool(((a_bar >= 0) & (a_bar < 1)).all())  # large rates underflow to 0
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        with torch.no_grad():
            model.injection.log_a.copy_(torch.randn(64, generator=g) * 3)
            model.injection.dt_bias.copy_(torch.randn(64, generator=g) * 3)
        assert model.injection.spectral_radius().item() < 1.0


def test_diagnostics_are_reported_per_forward():
    model = tiny()
    idx, targets = batch(model.config)
    d = model(idx, targets, generator=torch.Generator().manual_seed(0)).diagnostics.as_floats()
    assert d["rho_a"] == pytest.approx(INITIAL_A_BAR, rel=1e-6)
    assert d["state_norm"] > 0 and d["residual_norm"] > 0
    add = tiny(injection="addition")(idx, targets).diagnostics.as_floats()
    assert add["rho_a"] == 1.0


@pytest.mark.parametrize("injection", ["diagonal", "addition", "concatenation"])
def test_a_few_training_steps_reduce_loss_on_a_fixed_batch(injection):
    model = tiny(injection=injection)
    idx, targets = batch(model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        loss = model(idx, targets, generator=g).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_evaluation_at_any_fixed_depth():
    model = tiny().eval()
    idx, targets = batch(model.config)
    with torch.no_grad():
        losses = {t: model(idx, targets, recurrence=t, generator=torch.Generator().manual_seed(0)).loss.item()
                  for t in (1, 2, 3, 9)}
        again = model(idx, targets, recurrence=9, generator=torch.Generator().manual_seed(0)).loss.item()
    assert len(set(losses.values())) == 4
    assert again == losses[9]
    out = model(idx, recurrence=3)
    assert out.logits.shape == (*idx.shape, model.config.vocab_size) and out.loss is None


def test_param_groups_cover_every_parameter_once():
    model = tiny()
    groups = model.param_groups()
    ids = [id(p) for group in (groups.matrix, groups.embedding, groups.no_decay) for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    no_decay = {id(p) for p in groups.no_decay}
    for p in (model.injection.log_a, model.injection.dt_bias, model.injection.b, model.readout.weight):
        assert id(p) in no_decay
    assert id(model.recurrent[0].attn.q.weight) in {id(p) for p in groups.matrix}


@pytest.mark.parametrize("family", ["parcae", "transformer"])
def test_compiled_blocks_train_like_eager(family):
    """The CPU torch.compile path (inductor's C++ backend; what RunSpec.compile and the throughput
    bench use): same loss and gradients as eager at a sampled per-sequence depth."""
    from parcae_scaling.model.blocks import compile_blocks

    config = get_config(f"{family}-tiny-48", seq_len=32, mu_rec=3 if family == "parcae" else 1)
    torch.manual_seed(0)
    eager, compiled = build_model(config), build_model(config)
    compiled.load_state_dict(eager.state_dict())
    compile_blocks(compiled)
    idx = torch.randint(0, config.vocab_size, (6, config.seq_len + 1), generator=torch.Generator().manual_seed(1))
    outs = []
    for model in (eager, compiled):
        out = model.train()(idx[:, :-1], idx[:, 1:], generator=torch.Generator().manual_seed(2))
        out.loss.backward()
        outs.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = outs
    assert torch.equal(a.depths, b.depths) if a.depths is not None else b.depths is None
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-5)
    for name, grad in ga.items():
        torch.testing.assert_close(gb[name], grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")
