"""The Parcae middle-looped language model (REFERENCE.md section 1).

    e       = RMSNorm(Prelude(tokens))
    h_0     ~ truncated normal (std = embedding init std, cut at ±3 std)      "like-init"
    h_{t+1} = R(inject(h_t, e))                         R = the recurrent blocks
              inject(h, e) = Ā ⊙ h + B̄ e: B̄ e is computed once and reused on every step
    logits  = Head(FinalNorm(Coda(C h_T)))             C: linear readout, head tied to the embedding
"""

from __future__ import annotations

import torch
import torch.nn as nn

from parcae_scaling.model.blocks import (
    Block, Diagnostics, ModelOutput, ParamGroups, RMSNorm, Rotary, ValueEmbeddings,
    init_std, scaled_zero_init_, split_param_groups, trunc_normal_,
)
from parcae_scaling.model.config import ModelConfig
from parcae_scaling.model.depth import DepthPlan, fixed_depths, sample_depths
from parcae_scaling.model.head import lm_head
from parcae_scaling.model.injection import build_injection


class ParcaeLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.family != "parcae":
            raise ValueError(f"ParcaeLM needs family 'parcae', got {config.family!r}; use TransformerLM")
        self.config = config
        p, r = config.n_prelude, config.n_recurrent
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.value_embeddings = ValueEmbeddings(config)
        self.rotary = Rotary(config.head_dim, config.seq_len, config.rope_base)
        self.prelude = nn.ModuleList(Block(config, i) for i in range(p))
        self.prelude_norm = RMSNorm(config.d_model, config.norm_eps)
        self.injection = build_injection(config)
        self.recurrent = nn.ModuleList(Block(config, p + i) for i in range(r))
        self.readout = nn.Linear(config.d_model, config.d_model, bias=False)  # C
        self.coda = nn.ModuleList(Block(config, p + r + i) for i in range(config.n_coda))
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self._recurrent_ve_layers = [b.layer_index for b in self.recurrent if b.has_value_embedding]
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        scaled_zero_init_(self, self.config, generator)
        std = init_std(self.config)
        with torch.no_grad():
            trunc_normal_(self.readout.weight, std, generator)
            self.injection.reset_parameters(generator, std)

    def param_groups(self) -> ParamGroups:
        return split_param_groups(self, ("embed.", "value_embeddings."), ("injection.", "readout."))

    def depth_plan(self, batch_size: int, recurrence: int | None, generator: torch.Generator | None) -> DepthPlan:
        if recurrence is not None:
            return fixed_depths(batch_size, recurrence, self.config.mu_bwd)
        if not self.training:
            return fixed_depths(batch_size, self.config.mu_rec, self.config.mu_bwd)
        return sample_depths(batch_size, self.config.mu_rec, self.config.mu_bwd, generator)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        recurrence: int | None = None,
        generator: torch.Generator | None = None,
    ) -> ModelOutput:
        """Next-token loss (or logits) at a sampled depth (training) or a fixed `recurrence` T.

        In training mode without `recurrence`, each sequence draws its own depth from
        `generator` (a CPU torch.Generator); in eval mode the default depth is mu_rec."""
        batch_size = idx.shape[0]
        ves = self.value_embeddings(idx)
        x = self.embed(idx)
        for block in self.prelude:
            x = block(x, self.rotary, ves.get(block.layer_index))
        e = self.prelude_norm(x)

        plan = self.depth_plan(batch_size, recurrence, generator)
        h = trunc_normal_(torch.empty_like(e), init_std(self.config), _on_device(generator, e))
        # Deepest sequences first: the active set of every step is then a prefix of the batch,
        # so frozen sequences cost nothing and no step needs a gather or scatter.
        order = torch.argsort(plan.total_steps, descending=True, stable=True)
        sorted_plan = DepthPlan(no_grad_steps=plan.no_grad_steps[order], grad_steps=plan.grad_steps[order])
        order_on_device = order.to(e.device)
        encoded = self.injection.encode(e.index_select(0, order_on_device))
        ves_sorted = {i: ves[i].index_select(0, order_on_device) for i in self._recurrent_ve_layers}
        h = h.index_select(0, order_on_device)
        final_delta = torch.zeros(batch_size, device=e.device)
        with torch.no_grad():
            # Detached inputs: views of grad-requiring tensors made under no_grad would still
            # claim requires_grad and confuse autograd hooks.
            h = self._run_loop(h, encoded.detach(), {i: ve.detach() for i, ve in ves_sorted.items()},
                               sorted_plan.no_grad_steps, final_delta, last_phase=False)
        h = self._run_loop(h, encoded, ves_sorted, sorted_plan.grad_steps, final_delta, last_phase=True)
        inverse = torch.argsort(order).to(e.device)
        h, final_delta = h.index_select(0, inverse), final_delta.index_select(0, inverse)

        x = self.readout(h)
        for block in self.coda:
            x = block(x, self.rotary, ves.get(block.layer_index))
        loss, logits = lm_head(self.final_norm(x), self.embed.weight, targets, self.config)
        with torch.no_grad():
            diagnostics = Diagnostics(
                rho_a=self.injection.spectral_radius().detach(),
                state_norm=h.detach().norm(dim=-1).mean(),
                residual_norm=final_delta.mean(),
            )
        return ModelOutput(loss=loss, logits=logits, diagnostics=diagnostics, depths=plan.total_steps)

    def _run_loop(
        self,
        h: torch.Tensor,
        encoded: torch.Tensor,
        ves: dict[int, torch.Tensor],
        steps: torch.Tensor,
        final_delta: torch.Tensor,
        *,
        last_phase: bool,
    ) -> torch.Tensor:
        """Run `steps[i]` loop steps on sequence i, where `steps` is non-increasing: the first
        `active` rows step, the rest stay frozen. In the last phase, record each sequence's
        final state change for the diagnostics."""
        counts = steps.tolist()
        for t in range(counts[0] if counts else 0):
            active = sum(c > t for c in counts)
            h_active = h[:active]
            h_new = self._step(h_active, encoded[:active], {i: ve[:active] for i, ve in ves.items()})
            if last_phase:
                finishing = [i for i in range(active) if counts[i] == t + 1]
                if finishing:
                    lo, hi = finishing[0], finishing[-1] + 1  # contiguous: counts are sorted
                    with torch.no_grad():
                        final_delta[lo:hi] = (h_new[lo:hi] - h_active[lo:hi]).norm(dim=-1).mean(dim=-1)
            h = h_new if active == h.shape[0] else torch.cat((h_new, h[active:]))
        return h

    def _step(self, h: torch.Tensor, encoded: torch.Tensor, ves: dict[int, torch.Tensor]) -> torch.Tensor:
        x = self.injection(h, encoded)
        for block in self.recurrent:
            x = block(x, self.rotary, ves.get(block.layer_index))
        return x


def _on_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.Generator | None:
    """Use the caller's generator for the initial state only when it lives on the same device."""
    return generator if generator is not None and generator.device == like.device else None
