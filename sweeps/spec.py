"""Sweep specs: a YAML or TOML file -> a validated, frozen `SweepSpec`.

A spec names the models (config names plus overrides), the compute axis (FLOP budgets, or fixed
token counts for a test-time study), the mu_rec values and the mu_bwd rule, the FLOP convention,
the training recipe, the data, the seeds, and which axes are zipped instead of crossed.
Transformer configs in `models` (or `baselines`) ignore the mu_rec axis (fixed depth) and so
become baselines on the same budgets. Every error names the file, the field and the fix.

    name: iso-tiny                      # sweep name in the store
    models: [parcae-tiny-48]            # config names (see `parcae-sweep configs`)
    baselines: [transformer-tiny-48]    # optional: fixed-depth runs on the same budgets
    model_overrides: {seq_len: 64}      # ModelConfig fields applied to every model
    budgets_flops: [1e12, 2e12]         # or  tokens: [262144]
    mu_rec: [1, 2, 4]
    mu_bwd: half                        # half = ceil(mu_rec / 2) (paper) | full = mu_rec | an integer
    zip: []                             # e.g. [models, budgets_flops]: pair those lists elementwise
    seeds: [0]                          # several seeds: replicates, whose spread is the noise floor
    noise: {assumed_sd: 0.005}          # optional: the noise to assume where there are no replicates
    recipe: {batch_size: 16, optimizer: {name: adamw, lr: 3e-3}, schedule: {cooldown_frac: 0.5}}
    data: {source: embedded, tokenizer: byte}
    resources: {cpus_per_run: 1, max_concurrent: 2, device: cpu, mfu: 0.3}
    tracking: [tensorboard, mlflow, wandb]  # optional: also send each run's numbers there (W&B offline)
    # recipe also takes grad_accum_steps, eval_recurrences, eval_tokens, precision, device,
    # compile (true: torch.compile per block) and depth_sampling (per_rank | shared);
    # resources also takes gpus_per_run, mem_gb, partition, time_limit_min, torch_threads,
    # retries, nproc_per_node, nodes and sharding (ddp | zero).

Paths in `data` (train_paths, val_paths, tokenizer_path, cache_dir) may name environment variables,
`${PARCAE_DATA}/train/*.parquet`: they are expanded when the spec is read, so one spec file serves
every cluster and the runs carry the resolved paths. An unset variable stays as written; `plan`
notes it and `launch` / `prepare-data` refuse it, naming the variable.

Data-parallel runs: `resources: {nproc_per_node: 2, nodes: 1}` trains every run on 2 processes
(torchrun locally, 2 SLURM tasks, 2 Ray Train workers). The process layout is placement, not
science: the global batch stays batch_size x grad_accum_steps sequences and the processes split
the accumulation steps, so grad_accum_steps must be a multiple of nproc_per_node x nodes, and run
ids, tokens and losses do not depend on the layout. cpus_per_run, gpus_per_run (0 or 1) and
mem_gb are per process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

import yaml

from parcae_scaling.model.flops import FlopConvention
from parcae_scaling.model.run_spec import (
    MAX_SEED, DataSpec, DepthSampling, Device, FieldError, OptimizerSpec, Precision, RunSpec, ScheduleSpec,
    Sharding, TrackingSpec,
)

AXES = ("models", "budgets_flops", "tokens", "mu_rec", "seeds")
MuBwdRule = Literal["half", "full"]
DEFAULT_SPEC_NAME = "default"
_BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
# A sweep name is a directory under output_root and a key in the store (sweeps.name is String(200)).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 200
BYTE_VOCAB = 256  # ids of the byte tokenizer


class SpecError(ValueError):
    """A malformed sweep spec: names the file, the field and the fix."""

    def __init__(self, source: str, field_name: str, why: str, fix: str) -> None:
        self.source, self.field_name, self.why, self.fix = source, field_name, why, fix
        super().__init__(f"{source}: {field_name}: {why}; {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(owner: str, name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise FieldError(owner, name, f"{value!r} must be an integer >= {minimum}", f"use values >= {minimum}")


def _check_fields(owner: str, obj: Any) -> None:
    """Literal-typed fields hold one of their choices, bool fields a YAML true/false."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if get_origin(hint) is Literal and value not in get_args(hint):
            raise FieldError(owner, f.name, f"unknown value {value!r}",
                             f"use one of {', '.join(map(str, get_args(hint)))}")
        if hint is bool and not isinstance(value, bool):
            raise FieldError(owner, f.name, f"{value!r} is not true or false", "write true or false")


def _run_default(name: str) -> Any:
    """RunSpec's default for a recipe field: each default is defined once, in model/run_spec.py,
    so a sweep and `train-one` train alike unless told otherwise."""
    f = {f.name: f for f in dataclasses.fields(RunSpec)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory)
    return field(default=f.default)


@dataclass(frozen=True, kw_only=True)
class RecipeSpec:
    """How each run trains (everything in a RunSpec that is not model, budget, seed or data);
    every field is RunSpec's, with RunSpec's default."""

    batch_size: int = _run_default("batch_size")  # sequences per micro-batch (per process)
    grad_accum_steps: int = _run_default("grad_accum_steps")  # micro-batches per step, over all processes
    optimizer: OptimizerSpec = _run_default("optimizer")
    schedule: ScheduleSpec = _run_default("schedule")
    eval_recurrences: tuple[int, ...] | None = _run_default("eval_recurrences")
    eval_tokens: int = _run_default("eval_tokens")
    metrics_every_steps: int = _run_default("metrics_every_steps")
    checkpoint_every_steps: int = _run_default("checkpoint_every_steps")
    precision: Precision = _run_default("precision")
    device: Device = _run_default("device")
    compile: bool = _run_default("compile")  # torch.compile each block (inductor; CPU too)
    # Data-parallel depth draws: per_rank (each micro-batch its own, any world size trains the same
    # run) or shared (all ranks the same depths per micro-step: no straggler at the all-reduce).
    depth_sampling: DepthSampling = _run_default("depth_sampling")

    def __post_init__(self) -> None:
        c = "RecipeSpec"
        for name, typ in (("optimizer", OptimizerSpec), ("schedule", ScheduleSpec)):
            if not isinstance(getattr(self, name), typ):
                raise FieldError(c, name, f"must be a {typ.__name__}", f"construct {typ.__name__}(...)")
        for name in ("batch_size", "grad_accum_steps", "eval_tokens", "metrics_every_steps"):
            _check_count(c, name, getattr(self, name), 1)
        _check_count(c, "checkpoint_every_steps", self.checkpoint_every_steps, 0)
        if self.eval_recurrences is not None:
            recs = self.eval_recurrences
            if not isinstance(recs, (list, tuple)) or not recs or not all(_is_int(t) and t >= 1 for t in recs):
                raise FieldError(c, "eval_recurrences", f"must be a list of integers >= 1, got {recs!r}",
                                 "write e.g. [1, 2, 4, 8]")
            object.__setattr__(self, "eval_recurrences", tuple(recs))
        _check_fields(c, self)


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    """The seed-to-seed SD of a run's loss the analyses assume where the sweep has no replicates
    (with replicates they measure it; scaling/replicates.py)."""

    assumed_sd: float | None = None  # nats/token; None: the toolkit's default assumption

    def __post_init__(self) -> None:
        v = self.assumed_sd
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v <= 0):
            raise ValueError(f"noise.assumed_sd must be a positive number of nats/token, got {v!r}; e.g. 0.005")


@dataclass(frozen=True, kw_only=True)
class ResourceSpec:
    """What each run asks of a backend, and the assumptions of the cost estimate.

    cpus_per_run, gpus_per_run and mem_gb are per process; a run has nproc_per_node x nodes."""

    cpus_per_run: int = 1
    gpus_per_run: int = 0
    mem_gb: float = 4.0
    # local pool / private Ray cluster: processes at once (a 2-process run takes 2); SLURM: array jobs
    max_concurrent: int = 2
    partition: str | None = None
    time_limit_min: int = 60
    torch_threads: int = 1
    device: str = "cpu"  # key of PEAK_FLOPS for the device-hour estimate
    mfu: float = 0.3  # assumed model FLOP utilisation for the estimate
    retries: int = 2  # Ray: retries of crashed workers
    nproc_per_node: int = 1  # data-parallel processes per node (one GPU each when gpus_per_run is 1)
    nodes: int = 1
    sharding: Sharding = "ddp"  # zero: optimizer state sharded over the processes (ZeRO-1)

    def __post_init__(self) -> None:
        from parcae_scaling.sweeps.cost import PEAK_FLOPS

        c = "ResourceSpec"
        for name in ("cpus_per_run", "max_concurrent", "time_limit_min", "torch_threads", "nproc_per_node", "nodes"):
            _check_count(c, name, getattr(self, name), 1)
        for name in ("gpus_per_run", "retries"):
            _check_count(c, name, getattr(self, name), 0)
        if not (isinstance(self.mem_gb, (int, float)) and not isinstance(self.mem_gb, bool)
                and math.isfinite(self.mem_gb) and self.mem_gb > 0):
            raise FieldError(c, "mem_gb", f"{self.mem_gb!r} must be a number > 0 (GB per process)", "use e.g. 4")
        if not (isinstance(self.mfu, (int, float)) and not isinstance(self.mfu, bool) and 0 < self.mfu <= 1):
            raise FieldError(c, "mfu", f"{self.mfu!r} is not in (0, 1]", "use e.g. 0.3")
        if self.device not in PEAK_FLOPS:
            raise FieldError(c, "device", f"unknown device {self.device!r}", f"use one of {', '.join(PEAK_FLOPS)}")
        if self.partition is not None and not isinstance(self.partition, str):
            raise FieldError(c, "partition", f"{self.partition!r} is not a partition name",
                             "write the SLURM partition as text")
        _check_fields(c, self)
        if self.world_size == 1 and self.sharding != "ddp":
            raise FieldError(c, "sharding", f"{self.sharding!r} shards over data-parallel processes but a run has 1",
                             "raise resources.nproc_per_node (or nodes), or drop sharding")
        if self.world_size > 1 and self.gpus_per_run > 1:
            raise FieldError(c, "gpus_per_run", f"{self.gpus_per_run} GPUs per process in a data-parallel run (each "
                             "rank trains on one device)", "set gpus_per_run: 1 (or 0 on CPU) and raise nproc_per_node")

    @property
    def world_size(self) -> int:
        """Processes per run."""
        return self.nproc_per_node * self.nodes


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A validated sweep: the axes, crossed (or zipped) by `plan`. Built from Python or from a file
    (`spec_from_dict`), it is checked the same way: errors are SpecErrors naming `source`."""

    name: str
    models: tuple[str, ...]
    baselines: tuple[str, ...] = ()
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    budgets_flops: tuple[float, ...] = ()
    tokens: tuple[int, ...] = ()
    mu_rec: tuple[int, ...] = (1,)
    mu_bwd: MuBwdRule | int = "half"
    flop_convention: FlopConvention = "reference"
    zip: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    recipe: RecipeSpec = field(default_factory=RecipeSpec)
    data: DataSpec = field(default_factory=DataSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    # Experiment trackers (not science: no run id changes); the planner sets their sweep and dir.
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    output_root: str = "runs"
    description: str = ""
    source: str = "<spec>"  # the file it came from, for error messages

    def __post_init__(self) -> None:
        for name in ("models", "baselines", "budgets_flops", "tokens", "mu_rec", "zip", "seeds"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        if not isinstance(self.model_overrides, Mapping):
            raise SpecError(self.source, "model_overrides", f"must be a mapping, got {self.model_overrides!r}",
                            "write e.g. {seq_len: 64}")
        object.__setattr__(self, "model_overrides", dict(self.model_overrides))
        _validate_sweep(self)
        # 1e10 and 10000000000 are one budget: a float, so the run ids do not depend on how it was written
        object.__setattr__(self, "budgets_flops", tuple(float(b) for b in self.budgets_flops))

    def mu_bwd_for(self, mu_rec: int) -> int:
        if self.mu_bwd == "half":
            return math.ceil(mu_rec / 2)
        if self.mu_bwd == "full":
            return mu_rec
        return int(self.mu_bwd)  # an integer rule is checked to be <= every mu_rec

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded with the sweep; the config-drift guard compares it)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["tracking"].pop("sweep")  # the sweep's own name, set by the planner
        return json.loads(json.dumps(d, default=list))


def _check_axis(src: str, name: str, values: tuple[Any, ...], *, integer: bool, minimum: float, strict: bool,
                maximum: int | None = None) -> None:
    for v in values:
        if isinstance(v, str):
            raise SpecError(src, name, f"{v!r} is not a number", "write a number such as 1e12")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpecError(src, name, f"{v!r} is not a finite number", "write a number such as 4")
        if integer and not isinstance(v, int):
            raise SpecError(src, name, f"{v!r} is not a whole number", "use integers")
        if (v <= minimum) if strict else (v < minimum):
            rel = ">" if strict else ">="
            raise SpecError(src, name, f"{v!r} must be {rel} {minimum:g}",
                            "mu_rec = 1 means no looping" if name == "mu_rec" else f"use values {rel} {minimum:g}")
        if maximum is not None and v > maximum:
            raise SpecError(src, name, f"{v} is above the largest allowed, {maximum} (torch.manual_seed's limit)",
                            f"use values <= {maximum}")


def _validate_sweep(s: SweepSpec) -> None:
    """Every check of a sweep that needs no file system: the axes, the models and their overrides,
    and how recipe, resources and data fit together."""
    from parcae_scaling.model.config import CONFIGS, get_config

    src = s.source
    if s.name is not None and not isinstance(s.name, str):
        raise SpecError(src, "name", f"must be a string, got {s.name!r}", "quote it, e.g. name: \"iso-tiny\"")
    if not s.name or not s.name.strip():
        raise SpecError(src, "name", "missing or empty", "give the sweep a name, e.g. name: iso-tiny")
    if not NAME_PATTERN.fullmatch(s.name) or ".." in s.name or len(s.name) > MAX_NAME_LENGTH:
        why = (f"is {len(s.name)} characters, over the store's {MAX_NAME_LENGTH}" if len(s.name) > MAX_NAME_LENGTH
               else f"{s.name!r} is not a plain directory name (it names runs/<name>/ and the store key)")
        raise SpecError(src, "name", why, f"use letters, digits, '.', '_' and '-' (starting with a letter or digit, "
                        f"no '..'), at most {MAX_NAME_LENGTH} characters, e.g. iso-tiny")
    if not s.models and not s.baselines:
        raise SpecError(src, "models", "no models given", "list config names, e.g. models: [parcae-tiny-48]")
    for fname in ("models", "baselines"):
        for m in getattr(s, fname):
            if not isinstance(m, str) or m not in CONFIGS:
                raise SpecError(src, fname, f"unknown model config {m!r}", "see `parcae-sweep configs` for names")
    for m in s.baselines:
        if CONFIGS[m].is_looped:
            raise SpecError(src, "baselines", f"{m!r} is a looped model", "list transformer-* configs as baselines")
    both = sorted(set(s.models) & set(s.baselines))
    if both:
        raise SpecError(src, "baselines", f"{both[0]!r} is also listed in models (the same runs twice)",
                        "list it in models or in baselines, not both")
    overrides = s.model_overrides
    for key in ("mu_rec", "mu_bwd", "family", "name"):
        if key in overrides:
            raise SpecError(src, f"model_overrides.{key}", "is set per run by the sweep",
                            f"use the top-level axes, not an override of {key}")
    configs = []
    for m in s.models + s.baselines:
        try:
            configs.append(get_config(m, **overrides))
        except (TypeError, ValueError) as exc:
            raise SpecError(src, "model_overrides", str(exc), "fix or drop the override") from None
    _check_axis(src, "budgets_flops", s.budgets_flops, integer=False, minimum=0, strict=True)
    _check_axis(src, "tokens", s.tokens, integer=True, minimum=0, strict=True)
    if bool(s.budgets_flops) == bool(s.tokens):
        raise SpecError(src, "budgets_flops", "give exactly one of budgets_flops and tokens",
                        "budgets_flops for isoFLOP sweeps, tokens for fixed-token (test-time) studies")
    _check_axis(src, "mu_rec", s.mu_rec, integer=True, minimum=1, strict=False)
    if not s.mu_rec:
        raise SpecError(src, "mu_rec", "is empty", "list at least one value, e.g. [1, 2, 4]")
    if not (s.mu_bwd in get_args(MuBwdRule) or (_is_int(s.mu_bwd) and s.mu_bwd >= 1)):
        raise SpecError(src, "mu_bwd", f"unknown rule {s.mu_bwd!r}",
                        "use half (ceil(mu_rec/2)), full, or an integer >= 1")
    if _is_int(s.mu_bwd) and any(c.is_looped for c in configs) and s.mu_bwd > min(s.mu_rec):
        raise SpecError(src, "mu_bwd", f"{s.mu_bwd} exceeds mu_rec = {min(s.mu_rec)} (backprop cannot cover more "
                        "steps than the mean depth)", f"use an integer <= {min(s.mu_rec)}, or half / full")
    if s.flop_convention not in get_args(FlopConvention):
        raise SpecError(src, "flop_convention", f"unknown convention {s.flop_convention!r}", "use reference or exact")
    _check_axis(src, "seeds", s.seeds, integer=True, minimum=0, strict=False, maximum=MAX_SEED)
    if not s.seeds:
        raise SpecError(src, "seeds", "is empty (the sweep would have no runs)", "list at least one seed, e.g. [0]")
    for axis in s.zip:
        if axis not in AXES:
            raise SpecError(src, "zip", f"unknown axis {axis!r}", f"zip some of {', '.join(AXES)}")
    if len(s.zip) == 1:
        raise SpecError(src, "zip", "needs at least two axes", "list two or more axes, or drop zip to cross all")
    axis_values = {"models": s.models, "budgets_flops": s.budgets_flops, "tokens": s.tokens, "mu_rec": s.mu_rec,
                   "seeds": s.seeds}
    lengths = {a: len(axis_values[a]) for a in s.zip}
    if len(set(lengths.values())) > 1:
        raise SpecError(src, "zip", f"zipped axes differ in length {lengths}", "give them equally long lists")
    _check_repeats(src, "zip", list(zip(*(axis_values[a] for a in s.zip))) if s.zip else [])
    for axis, values in [*((a, v) for a, v in axis_values.items() if a not in s.zip), ("baselines", s.baselines)]:
        _check_repeats(src, axis, list(values))
    for name, typ in (("recipe", RecipeSpec), ("data", DataSpec), ("resources", ResourceSpec),
                      ("tracking", TrackingSpec)):
        if not isinstance(getattr(s, name), typ):
            raise SpecError(src, name, f"must be a {typ.__name__}", f"construct {typ.__name__}(...)")
    world = s.resources.world_size
    if world > 1 and s.recipe.grad_accum_steps % world:
        raise SpecError(src, "resources.nproc_per_node",
                        f"{s.resources.nproc_per_node} x {s.resources.nodes} node(s) = {world} processes do not divide "
                        f"recipe.grad_accum_steps = {s.recipe.grad_accum_steps} (the global batch is batch_size x "
                        "grad_accum_steps sequences, split over the processes)",
                        f"set recipe.grad_accum_steps to a multiple of {world} (e.g. {world}), or use fewer processes")
    if s.data.tokenizer == "byte" and s.data.source != "bin":
        small = [c for c in configs if c.vocab_size < BYTE_VOCAB]
        if small:
            raise SpecError(src, "model_overrides.vocab_size", f"{small[0].vocab_size} is below the byte tokenizer's "
                            f"{BYTE_VOCAB} ids", f"use vocab_size >= {BYTE_VOCAB} (or drop the override)")


def _check_repeats(src: str, axis: str, values: list[Any]) -> None:
    """A value listed twice on an axis would plan the same runs twice (1e10 and 1.0e10 are one value)."""
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise SpecError(src, axis, f"{v!r} is listed twice (the same runs twice)", "remove repeated values")
        seen.add(v)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _numeric_kinds(hint: Any) -> set[type]:
    return {t for t in (get_args(hint) or (hint,)) if t in (int, float)}


def _parse_number(value: Any, *, integer: bool) -> Any:
    """YAML 1.1 reads 3e-3 and 1e12 (no dot) as strings: a number written as text becomes a
    number, and a whole float an int where an int is wanted. Anything else is left as it is, for
    the type's own check to refuse with the field's name."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if integer and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _parse_fields(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of a mapping for dataclass `cls` parsed by each field's type (strings elsewhere
    untouched; ints in float fields stay ints, so run ids of existing specs do not move)."""
    hints, out = _hints(cls), {}
    for key, value in raw.items():
        kinds = _numeric_kinds(hints.get(key))
        if kinds and (isinstance(value, str) or (kinds == {int} and isinstance(value, float))):
            value = _parse_number(value, integer=kinds == {int})
        out[key] = value
    return out


def _parse_axis(value: Any, *, integer: bool) -> tuple[Any, ...]:
    if value is None:
        return ()
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return tuple(_parse_number(v, integer=integer) for v in values)


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_keys(src: str, where: str, raw: Mapping[str, Any], cls: type, skip: tuple[str, ...] = ()) -> None:
    known = sorted(set(_fields(cls)) - set(skip))
    for key in raw:
        if key not in known:
            raise SpecError(src, f"{where}{key}", "unknown key", f"use one of: {', '.join(known)}")


def _mapping(src: str, where: str, raw: Any) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(src, where, f"must be a mapping, got {type(raw).__name__} {raw!r}", "write key: value pairs")
    return raw


def _sub(src: str, where: str, raw: Any, cls: type, **fixed: Any) -> Any:
    """Build a nested spec type from a mapping; its errors get the file name and the dotted path."""
    raw = _mapping(src, where.rstrip("."), raw)
    _check_keys(src, where, raw, cls, skip=tuple(fixed))
    try:
        return cls(**{**_parse_fields(cls, raw), **fixed})
    except FieldError as exc:
        raise SpecError(src, where + exc.field_name, exc.why, exc.fix) from None
    except (TypeError, ValueError) as exc:
        raise SpecError(src, where.rstrip("."), str(exc), "fix the value named above") from None


def spec_from_dict(raw: Mapping[str, Any], *, source: str = "<spec>") -> SweepSpec:
    """Parse a spec mapping (from YAML/TOML or code) into a SweepSpec: unknown keys, shapes and
    numbers written as text are handled here; every value check is in the types' constructors."""
    from parcae_scaling.model.config import ModelConfig

    src = source
    if not isinstance(raw, Mapping):
        raise SpecError(src, "<top level>", "the file must hold a mapping", "write `name: ...`, `models: [...]`, ...")
    _check_keys(src, "", raw, SweepSpec, skip=("source",))
    recipe_raw = dict(_mapping(src, "recipe", raw.get("recipe")))
    opt = _sub(src, "recipe.optimizer.", recipe_raw.pop("optimizer", None), OptimizerSpec)
    sched = _sub(src, "recipe.schedule.", recipe_raw.pop("schedule", None), ScheduleSpec)
    if recipe_raw.get("eval_recurrences") is not None:
        recipe_raw["eval_recurrences"] = _parse_axis(recipe_raw["eval_recurrences"], integer=True)
    recipe = _sub(src, "recipe.", recipe_raw, RecipeSpec, optimizer=opt, schedule=sched)
    overrides = _mapping(src, "model_overrides", raw.get("model_overrides"))
    mu_bwd = raw.get("mu_bwd", "half")
    return SweepSpec(
        name=raw.get("name"),  # type: ignore[arg-type]  # checked by SweepSpec
        models=tuple(str(m) for m in _parse_axis(raw.get("models"), integer=False)),
        baselines=tuple(str(m) for m in _parse_axis(raw.get("baselines"), integer=False)),
        model_overrides=_parse_fields(ModelConfig, overrides),
        budgets_flops=_parse_axis(raw.get("budgets_flops"), integer=False),
        tokens=_parse_axis(raw.get("tokens"), integer=True), mu_rec=_parse_axis(raw.get("mu_rec", [1]), integer=True),
        mu_bwd=mu_bwd if mu_bwd in get_args(MuBwdRule) else _parse_number(mu_bwd, integer=True),
        flop_convention=raw.get("flop_convention", "reference"),
        zip=tuple(str(a) for a in _parse_axis(raw.get("zip"), integer=False)),
        seeds=_parse_axis(raw.get("seeds", [0]), integer=True), recipe=recipe,
        data=_sub(src, "data.", _expand_data_paths(src, raw.get("data")), DataSpec),
        resources=_sub(src, "resources.", raw.get("resources"), ResourceSpec),
        noise=_sub(src, "noise.", raw.get("noise"), NoiseSpec),
        tracking=_tracking(src, raw.get("tracking")),
        output_root=str(raw.get("output_root", "runs")), description=str(raw.get("description", "")), source=src,
    )


DATA_PATH_FIELDS = ("train_paths", "val_paths", "tokenizer_path", "cache_dir")


def _expand_data_paths(src: str, raw: Any) -> Any:
    """`$VAR` / `${VAR}` in the data section's paths replaced from the environment (a variable
    that is not set stays as written, for `plan` to note and `launch` to refuse by name)."""
    raw = _mapping(src, "data", raw)
    out = dict(raw)
    for key in DATA_PATH_FIELDS:
        value = raw.get(key)
        if isinstance(value, str):
            out[key] = os.path.expandvars(value)
        elif isinstance(value, (list, tuple)):
            out[key] = [os.path.expandvars(v) if isinstance(v, str) else v for v in value]
    return out


def _tracking(src: str, raw: Any) -> TrackingSpec:
    """`tracking: [wandb, mlflow]` (the trackers), or the mapping {trackers, dir, mlflow_uri}."""
    if isinstance(raw, (str, list, tuple)):
        raw = {"trackers": raw}
    return _sub(src, "tracking.", raw, TrackingSpec, sweep="")  # the planner names the sweep


def parse_spec_text(text: str, *, fmt: Literal["yaml", "toml"], source: str) -> SweepSpec:
    try:
        raw = tomllib.loads(text) if fmt == "toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(source, "<syntax>", f"not valid {fmt.upper()}: {exc}", "fix the syntax") from None
    return spec_from_dict(raw, source=source)


def builtin_specs() -> list[str]:
    return sorted(p.stem for p in _BUILTIN_DIR.glob("*.yaml"))


def load_spec(path_or_name: str | Path) -> SweepSpec:
    """Read a spec file (.yaml/.yml/.toml) or a built-in spec by name (`builtin_specs()`)."""
    path = Path(path_or_name)
    if not path.exists() and str(path_or_name) in builtin_specs():
        path = _BUILTIN_DIR / f"{path_or_name}.yaml"
    if not path.exists():
        raise SpecError(str(path_or_name), "<file>", "no such file or built-in spec",
                        f"give a .yaml/.toml path or one of: {', '.join(builtin_specs())}")
    if path.is_dir():
        raise SpecError(str(path), "<file>", "is a directory, not a spec file", "give the path of a .yaml/.toml file")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise SpecError(str(path), "<file>", f"unknown extension {suffix!r}", "use .yaml, .yml or .toml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), "<file>", f"is not UTF-8 text ({exc.reason} at byte {exc.start})",
                        "save the spec as UTF-8 text") from None
    except OSError as exc:
        raise SpecError(str(path), "<file>", f"cannot be read ({exc.strerror or exc})",
                        "check the path and its permissions") from None
    return parse_spec_text(text, fmt="toml" if suffix == ".toml" else "yaml", source=str(path))
