"""Planning: a SweepSpec -> a Plan of content-addressed RunSpecs with costs and flagged problems.

Axes (models, budgets_flops or tokens, mu_rec, seeds) are crossed, except those listed in
`zip`, which are paired elementwise. Transformer configs have fixed depth, so the mu_rec axis
collapses to 1 for them. Tokens follow the RunSpec token rule (`plan_tokens`): floor(budget /
FLOPs per token), floored to whole optimizer steps. Run ids are `RunSpec.run_id`: a hash of the
resolved spec's science and the run-spec version, so planning twice gives the same ids, also
under another package version. A data-parallel layout (`resources.nproc_per_node` x `nodes`)
splits each step's micro-batches over the processes (`RunSpec.with_world_size`): ids and tokens
stay those of the 1-process run, and the cost is shown as wall-hours and device-hours =
wall-hours x processes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parcae_scaling.db.records import RunRecord
from parcae_scaling.model.config import ModelConfig, get_config
from parcae_scaling.model.params import parameter_breakdown
from parcae_scaling.model.run_spec import DataSpec, FieldError, RunSpec, TokenPlan, TrackingSpec, plan_tokens
from parcae_scaling.sweeps.cost import wall_hours
from parcae_scaling.sweeps.spec import SpecError, SweepSpec

MIN_STEPS_OK = 20  # fewer optimizer steps than this: the schedule barely runs
MAX_ROUNDING = 0.05  # tokens lost to whole-step rounding above this fraction get flagged


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """One row of a plan: the RunSpec plus what the table shows."""

    run: RunSpec
    run_id: str  # run.run_id, computed once (hashing a RunSpec is the planner's main cost)
    model: str
    arch: str  # model family: parcae | transformer
    params: int
    params_non_embedding: int
    core_params: int
    budget_flops: float | None
    flops_per_token: int
    tokens: int
    steps: int
    planned_flops: int
    processes: int  # data-parallel ranks (devices) of the run: nproc_per_node x nodes
    nodes: int
    wall_hours: float
    problems: tuple[str, ...] = ()

    @property
    def device_hours(self) -> float:
        return self.wall_hours * self.processes

    def record(self, sweep: str) -> RunRecord:
        """The store's row for this run: the planned tokens, exact FLOPs per token and parameter
        counts computed here, so no later stage recomputes them."""
        return RunRecord(
            run_id=self.run_id, sweep=sweep, spec=self.run.to_dict(), arch=self.arch,
            model=self.model, params=self.params,
            params_non_embedding=self.params_non_embedding, core_params=self.core_params,
            mu_rec=self.run.mu_rec, mu_bwd=self.run.mu_bwd,
            budget_flops=float(self.budget_flops if self.budget_flops is not None else self.planned_flops),
            flop_convention=self.run.flop_convention, flops_per_token=float(self.flops_per_token),
            tokens=self.tokens, output_dir=self.run.output_dir)

    def row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "model": self.model, "params": self.params,
            "mu_rec": self.run.mu_rec, "mu_bwd": self.run.mu_bwd, "budget_flops": self.budget_flops,
            "flops_per_token": self.flops_per_token, "tokens": self.tokens, "steps": self.steps,
            "processes": self.processes, "nodes": self.nodes, "wall_hours": self.wall_hours,
            "device_hours": self.device_hours, "seed": self.run.seed, "problems": "; ".join(self.problems),
        }


@dataclass(frozen=True, kw_only=True)
class Plan:
    spec: SweepSpec
    runs: tuple[PlannedRun, ...]
    # what `plan(check_files=False)` found missing of the data here (launch refuses it): one line each
    data_notes: tuple[str, ...] = ()

    @property
    def sweep(self) -> str:
        return self.spec.name

    @property
    def total_flops(self) -> int:
        return sum(r.planned_flops for r in self.runs)

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.runs)

    @property
    def total_device_hours(self) -> float:
        return sum(r.device_hours for r in self.runs)

    @property
    def total_wall_hours(self) -> float:
        """Wall-hours if the runs ran one after another."""
        return sum(r.wall_hours for r in self.runs)

    @property
    def problems(self) -> list[tuple[str, str]]:
        return [(r.run_id, p) for r in self.runs for p in r.problems]

    def run_specs(self) -> list[RunSpec]:
        return [r.run for r in self.runs]

    def data_specs(self) -> list[DataSpec]:
        """The distinct datasets the runs train on, in run order (what `prepare-data` builds)."""
        return list(dict.fromkeys(r.run.data for r in self.runs))

    def check_budget(self, budget_hours: float) -> None:
        """Refuse a plan whose estimated device-hours exceed the budget."""
        if self.total_device_hours > budget_hours:
            raise ValueError(
                f"{self.spec.source}: plan needs {self.total_device_hours:.3g} device-hours, over the budget "
                f"of {budget_hours:g}; drop budgets or mu_rec values, or raise --budget-hours")


@functools.lru_cache(maxsize=4096)
def _config(name: str, overrides: tuple[tuple[str, Any], ...], mu_rec: int, mu_bwd: int) -> ModelConfig:
    base = get_config(name, **dict(overrides))
    if overrides:  # an overridden model is another model: its name says how (the store groups by it)
        base = base.replace(name=name + "[" + ",".join(f"{k}={v}" for k, v in overrides) + "]")
    if not base.is_looped:
        return base
    return base.replace(mu_rec=mu_rec, mu_bwd=mu_bwd)


@functools.lru_cache(maxsize=4096)
def _params(config: ModelConfig) -> tuple[int, int, int]:
    b = parameter_breakdown(config)
    return b.total, b.non_embedding, b.core


def _combinations(spec: SweepSpec, models: tuple[str, ...], zipped: tuple[str, ...]) -> list[dict[str, Any]]:
    compute_axis = "budgets_flops" if spec.budgets_flops else "tokens"
    axes: dict[str, tuple[Any, ...]] = {
        "models": models, compute_axis: getattr(spec, compute_axis), "mu_rec": spec.mu_rec, "seeds": spec.seeds,
    }
    zipped = tuple(a for a in zipped if a in axes)
    groups: list[list[dict[str, Any]]] = []
    if len(zipped) >= 2:
        groups.append([dict(zip(zipped, values)) for values in zip(*(axes[a] for a in zipped))])
        rest = [a for a in axes if a not in zipped]
    else:
        rest = list(axes)
    groups += [[{a: v} for v in axes[a]] for a in rest]
    out = []
    for combo in itertools.product(*groups):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        merged["compute_axis"] = compute_axis
        out.append(merged)
    return out


@functools.lru_cache(maxsize=65536)
def _token_plan(model: ModelConfig, convention: str, budget: float | None, tokens: int | None, batch: int,
                global_micro_batches: int) -> TokenPlan:
    """plan_tokens depends on these fields only (the layout only through the global batch);
    memoised because sweeps repeat them a lot."""
    return plan_tokens(RunSpec(model=model, output_dir="-", flop_convention=convention,  # type: ignore[arg-type]
                               budget_flops=budget, tokens=tokens, batch_size=batch,
                               grad_accum_steps=global_micro_batches))


def _run_spec(spec: SweepSpec, c: dict[str, Any], output_root: Path, tracking: TrackingSpec) -> tuple[RunSpec, str]:
    mu = int(c["mu_rec"])
    overrides = tuple(sorted(spec.model_overrides.items()))
    config = _config(c["models"], overrides, mu, spec.mu_bwd_for(mu))
    r = spec.recipe
    budget = c.get("budgets_flops") if c["compute_axis"] == "budgets_flops" else None
    tokens = c.get("tokens") if c["compute_axis"] == "tokens" else None
    run = RunSpec(
        model=config, output_dir="pending", budget_flops=budget, tokens=tokens,
        flop_convention=spec.flop_convention, batch_size=r.batch_size, grad_accum_steps=r.grad_accum_steps,
        optimizer=r.optimizer, schedule=r.schedule, data=spec.data, seed=int(c["seeds"]),
        metrics_every_steps=r.metrics_every_steps, checkpoint_every_steps=r.checkpoint_every_steps,
        eval_recurrences=r.eval_recurrences, eval_tokens=r.eval_tokens, precision=r.precision, device=r.device,
        compile=r.compile, depth_sampling=r.depth_sampling, tracking=tracking,
    )
    run_id = run.run_id
    res = spec.resources
    if res.world_size > 1:  # placement only: same global batch, same id (checked by the spec)
        run = run.with_world_size(res.nproc_per_node, res.nodes).replace(sharding=res.sharding)
    return run.with_output_dir(str(output_root / run_id)), run_id


def _planned(spec: SweepSpec, run: RunSpec, run_id: str) -> PlannedRun:
    field_name = "budgets_flops" if run.budget_flops is not None else "tokens"
    try:
        tp = _token_plan(run.model, run.flop_convention, run.budget_flops, run.tokens, run.batch_size,
                         run.global_micro_batches)
    except FieldError as exc:
        raise SpecError(spec.source, field_name, f"{run.model.name} at mu_rec={run.mu_rec}: {exc.why}",
                        "raise the budget or lower recipe.batch_size / model_overrides.seq_len") from None
    total, non_emb, core = _params(run.model)
    problems = []
    if tp.steps < MIN_STEPS_OK:
        problems.append(f"only {tp.steps} optimizer steps")
    lost = 1.0 - tp.tokens / tp.requested_tokens
    if lost > MAX_ROUNDING:
        problems.append(f"{lost:.0%} of the budget lost to whole-step rounding")
    if tp.tokens < non_emb:
        problems.append("under 1 token per non-embedding parameter")
    return PlannedRun(
        run=run, run_id=run_id, model=run.model.name, arch=run.model.family, params=total,
        params_non_embedding=non_emb, core_params=core, budget_flops=run.budget_flops,
        flops_per_token=tp.flops_per_token,
        tokens=tp.tokens, steps=tp.steps, planned_flops=tp.planned_flops, processes=run.world_size, nodes=run.nodes,
        wall_hours=wall_hours(tp.planned_flops, device=spec.resources.device, mfu=spec.resources.mfu,
                              devices=run.world_size),
        problems=tuple(problems),
    )


def data_problems(spec: SweepSpec) -> list[SpecError]:
    """What is missing of the spec's data here, one error per path: an environment variable a path
    names that is not set, a path or glob that matches no file, a tokenizer file that is missing
    and cannot be trained (a parquet source trains its BPE from its shards at `prepare-data`).
    Relative paths are relative to the current directory, as they are for the workers."""
    data: DataSpec = spec.data
    if not (data.train_paths or data.val_paths or data.tokenizer_path or data.cache_dir):
        return []  # the embedded corpus: nothing to look for (and no torch import)
    out: list[SpecError] = []
    named = {"train_paths": data.train_paths, "val_paths": data.val_paths,
             "tokenizer_path": (data.tokenizer_path,) if data.tokenizer_path else (),
             "cache_dir": (data.cache_dir,) if data.cache_dir else ()}
    unset = {name: _unset_variables(paths) for name, paths in named.items()}
    for name, variables in unset.items():
        if variables:
            out.append(SpecError(spec.source, f"data.{name}", f"{named[name][0]!r} names the environment variable "
                                 f"{variables[0]}, which is not set here",
                                 f"export {variables[0]}=<the directory it stands for> before this command "
                                 "(docs/cluster.md)"))
    from parcae_scaling.model.train.data import expand_paths

    for name in ("train_paths", "val_paths"):
        for pattern in named[name] if not unset[name] else ():
            try:
                expand_paths([pattern], field=name)
            except FieldError as exc:
                out.append(SpecError(spec.source, f"data.{exc.field_name}", exc.why, exc.fix))
    trainable = data.source == "parquet" and data.tokenizer == "bpe"  # prepare-data trains it from the shards
    if (data.tokenizer_path is not None and not unset["tokenizer_path"] and not trainable
            and not Path(data.tokenizer_path).expanduser().is_file()):
        out.append(SpecError(spec.source, "data.tokenizer_path", f"{data.tokenizer_path!r} is not a file",
                             "give the path of the tokenizer.json"))
    return out


def _unset_variables(paths: tuple[str, ...]) -> list[str]:
    """Environment variables named in `paths` (left as written by the spec reader: not set)."""
    return [m.group(1) or m.group(2) for p in paths for m in _ENV_VARIABLE.finditer(p)]


_ENV_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def check_data_files(spec: SweepSpec) -> None:
    """The first of `data_problems`, raised: a missing file is found now, naming it, not after the
    runs are claimed and dispatched."""
    problems = data_problems(spec)
    if problems:
        raise problems[0]


def check_trackers(spec: SweepSpec) -> None:
    """Every tracker the spec names can be imported here: a missing library is one line now,
    naming the extra to install, not a warning in every worker's log."""
    from parcae_scaling.db.trackers import TRACKING_EXTRA, missing_packages

    for tracker, package in missing_packages(spec.tracking.trackers):
        raise SpecError(spec.source, "tracking", f"the {tracker} tracker needs the {package} package, which is not "
                        "installed", f"{TRACKING_EXTRA} (or drop {tracker} from tracking)")


def run_tracking(spec: SweepSpec, sweep_dir: Path) -> TrackingSpec:
    """The sweep's trackers as its runs carry them: named after the sweep, writing under
    `<output_root>/<sweep>/tracking` unless the spec gives a dir (made absolute here)."""
    from parcae_scaling.db.trackers import TRACKING_SUBDIR

    t = spec.tracking
    if not t.trackers:
        return TrackingSpec()
    where = Path(t.dir).expanduser().resolve() if t.dir else sweep_dir / TRACKING_SUBDIR
    return dataclasses.replace(t, sweep=spec.name, dir=str(where))


def plan(spec: SweepSpec, *, check_files: bool = True) -> Plan:
    """Every run of a sweep as a PlannedRun (ordered by model, budget/tokens, mu_rec, seed).
    With check_files, data files must exist here (see `check_data_files`); without, what is missing
    is listed in `Plan.data_notes` (planning a sweep whose data is elsewhere, e.g. a cluster's). The
    trackers the spec names must be installed (`check_trackers`)."""
    if check_files:
        check_data_files(spec)
    check_trackers(spec)
    output_root = Path(spec.output_root).resolve() / spec.name
    tracking = run_tracking(spec, output_root)
    baseline_zip = tuple(a for a in spec.zip if a not in ("models", "mu_rec"))
    combos = _combinations(spec, spec.models, spec.zip) + (
        _combinations(spec, spec.baselines, baseline_zip) if spec.baselines else [])
    runs: dict[str, PlannedRun] = {}
    seen_fixed: set[tuple[Any, ...]] = set()
    for c in combos:
        run, run_id = _run_spec(spec, c, output_root, tracking)
        if not run.model.is_looped:  # fixed depth: the mu_rec axis collapses to one run
            key = (c["models"], c.get("budgets_flops"), c.get("tokens"), c["seeds"])
            if key in seen_fixed:
                continue
            seen_fixed.add(key)
        if run_id in runs:  # the spec refuses repeated axis values; this guards what it cannot see
            raise SpecError(spec.source, "<runs>", f"duplicate run {run_id} ({run.model.name}, "
                            f"mu_rec={run.mu_rec}, budget={run.budget_flops}, tokens={run.tokens}, seed={run.seed})",
                            "remove values that give the same run twice")
        runs[run_id] = _planned(spec, run, run_id)
    notes = () if check_files else tuple(str(e) for e in data_problems(spec))
    return Plan(spec=spec, runs=tuple(runs.values()), data_notes=notes)
