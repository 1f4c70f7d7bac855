"""Optimizers from an OptimizerSpec and the model's parameter groups.

"adamw": AdamW on every group. "muon": torch.optim.Muon (Newton–Schulz orthogonalised momentum)
on the 2-D hidden matrices and AdamW on embeddings and no-decay parameters, as the published
runs do (REFERENCE.md section 3). Weight decay never touches norms, biases, the injection
(log_A, dt_bias, B) or the readout C: the model's `param_groups()` puts those in `no_decay`.

Each torch param group carries its `peak_lr`; the training loop sets `lr = peak_lr * schedule`
every step, so the schedule needs no state of its own beyond the step.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn as nn

from parcae_scaling.model.run_spec import OptimizerSpec


class OptimizerBundle:
    """One or two torch optimizers driven as one (zero_grad / step / lr / state dict)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("OptimizerBundle needs at least one optimizer")
        self.optimizers = optimizers

    def param_groups(self) -> Iterator[dict[str, Any]]:
        for opt in self.optimizers.values():
            yield from opt.param_groups

    def set_lr_multiplier(self, multiplier: float) -> None:
        for group in self.param_groups():
            group["lr"] = group["peak_lr"] * multiplier

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(
                f"checkpoint holds optimizers {sorted(state)} but this run builds {sorted(self.optimizers)}; "
                "resume with the optimizer the run started with"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def _group(params: list[nn.Parameter], *, name: str, lr: float, weight_decay: float) -> dict[str, Any]:
    return {"params": params, "lr": lr, "peak_lr": lr, "weight_decay": weight_decay, "group_name": name}


def build_optimizer(model: nn.Module, spec: OptimizerSpec) -> OptimizerBundle:
    """Optimizers for `model` (which must provide `param_groups()`) following `spec`."""
    groups = model.param_groups()
    grouped = [*groups.matrix, *groups.embedding, *groups.no_decay]
    ids = [id(p) for p in grouped]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len(set(ids)) != len(ids) or set(ids) != trainable:
        raise ValueError(
            "model.param_groups() must list every trainable parameter exactly once "
            f"({len(ids)} listed, {len(set(ids))} distinct, {len(trainable)} trainable)"
        )
    matrix_lr = spec.matrix_lr if spec.matrix_lr is not None else spec.lr
    embedding_lr = spec.embedding_lr if spec.embedding_lr is not None else spec.lr
    adam_groups = [
        _group(groups.embedding, name="embedding", lr=embedding_lr, weight_decay=spec.weight_decay),
        _group(groups.no_decay, name="no_decay", lr=spec.lr, weight_decay=0.0),
    ]
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if spec.name == "adamw":
        adam_groups.insert(0, _group(groups.matrix, name="matrix", lr=matrix_lr, weight_decay=spec.weight_decay))
    elif spec.name == "muon":
        if groups.matrix:
            if any(p.ndim != 2 for p in groups.matrix):
                raise ValueError("Muon needs 2-D matrix parameters; the model's `matrix` group has others")
            optimizers["muon"] = torch.optim.Muon(
                [_group(groups.matrix, name="matrix", lr=matrix_lr, weight_decay=spec.weight_decay)],
                lr=matrix_lr, weight_decay=spec.weight_decay, momentum=spec.muon_momentum,
                nesterov=spec.muon_nesterov, ns_steps=spec.muon_ns_steps, adjust_lr_fn=spec.muon_adjust_lr,
            )
    else:
        raise ValueError(f"unknown optimizer {spec.name!r}: choose 'adamw' or 'muon'")
    adam_groups = [g for g in adam_groups if g["params"]]
    if adam_groups:
        # On CUDA the fused kernel updates every tensor in one launch (the foreach default launches
        # several per tensor group). CPU keeps the default: its results are the published ones.
        on_cuda = all(p.is_cuda for g in adam_groups for p in g["params"])
        optimizers["adamw"] = torch.optim.AdamW(
            adam_groups, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps, weight_decay=spec.weight_decay,
            fused=True if on_cuda else None,
        )
    return OptimizerBundle(optimizers)
