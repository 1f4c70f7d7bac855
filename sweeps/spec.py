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
    seeds: [0]
    recipe: {batch_size: 16, optimizer: {name: adamw, lr: 3e-3}, schedule: {cooldown_frac: 0.5}}
    data: {source: embedded, tokenizer: byte}
    resources: {cpus_per_run: 1, max_concurrent: 2, device: cpu, mfu: 0.3}
    # recipe also takes grad_accum_steps, eval_recurrences, eval_tokens, precision, device,
    # compile (true: torch.compile per block) and depth_sampling (per_rank | shared);
    # resources also takes gpus_per_run, mem_gb, partition, time_limit_min, torch_threads,
    # retries, nproc_per_node, nodes and sharding (ddp | zero).

Data-parallel runs: `resources: {nproc_per_node: 2, nodes: 1}` trains every run on 2 processes
(torchrun locally, 2 SLURM tasks, 2 Ray Train workers). The process layout is placement, not
science: the global batch stays batch_size x grad_accum_steps sequences and the processes split
the accumulation steps, so grad_accum_steps must be a multiple of nproc_per_node x nodes, and run
ids, tokens and losses do not depend on the layout. cpus_per_run, gpus_per_run (0 or 1) and
mem_gb are per process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin, get_type_hints

import yaml

from parcae_scaling.model.run_spec import DataSpec, OptimizerSpec, ScheduleSpec

AXES = ("models", "budgets_flops", "tokens", "mu_rec", "seeds")
MuBwdRule = Literal["half", "full"]
DEFAULT_SPEC_NAME = "default"
_BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


class SpecError(ValueError):
    """A malformed sweep spec: names the file, the field and the fix."""

    def __init__(self, source: str, field_name: str, why: str, fix: str) -> None:
        self.source, self.field_name = source, field_name
        super().__init__(f"{source}: {field_name}: {why}; {fix}")


@dataclass(frozen=True, kw_only=True)
class RecipeSpec:
    """How each run trains (everything in a RunSpec that is not model, budget, seed or data)."""

    batch_size: int = 16  # sequences per micro-batch (per process)
    grad_accum_steps: int = 1  # micro-batches per optimizer step, over all processes of a run
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    eval_recurrences: tuple[int, ...] | None = None
    eval_tokens: int = 16_384
    metrics_every_steps: int = 10
    # Periodic checkpoints make preemption, timeouts and lost nodes cheap to resume.
    checkpoint_every_steps: int = 50
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile each block (inductor; CPU too): faster steps after a warm-up
    # Data-parallel depth draws: per_rank (each micro-batch its own, any world size trains the same
    # run) or shared (all ranks the same depths per micro-step: no straggler at the all-reduce).
    depth_sampling: Literal["per_rank", "shared"] = "per_rank"


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
    sharding: Literal["ddp", "zero"] = "ddp"  # zero: optimizer state sharded over the processes (ZeRO-1)

    @property
    def world_size(self) -> int:
        """Processes per run."""
        return self.nproc_per_node * self.nodes


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A validated sweep: the axes, crossed (or zipped) by `plan`."""

    name: str
    models: tuple[str, ...]
    baselines: tuple[str, ...] = ()
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    budgets_flops: tuple[float, ...] = ()
    tokens: tuple[int, ...] = ()
    mu_rec: tuple[int, ...] = (1,)
    mu_bwd: MuBwdRule | int = "half"
    flop_convention: Literal["reference", "exact"] = "reference"
    zip: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    recipe: RecipeSpec = field(default_factory=RecipeSpec)
    data: DataSpec = field(default_factory=DataSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    output_root: str = "runs"
    description: str = ""
    source: str = "<spec>"  # the file it came from, for error messages

    def mu_bwd_for(self, mu_rec: int) -> int:
        if self.mu_bwd == "half":
            return math.ceil(mu_rec / 2)
        if self.mu_bwd == "full":
            return mu_rec
        return min(int(self.mu_bwd), mu_rec)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded with the sweep; the config-drift guard compares it)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return json.loads(json.dumps(d, default=list))


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_keys(src: str, where: str, raw: Mapping[str, Any], cls: type, skip: tuple[str, ...] = ()) -> None:
    known = sorted(set(_fields(cls)) - set(skip))
    for key in raw:
        if key not in known:
            raise SpecError(src, f"{where}{key}", "unknown key", f"use one of: {', '.join(known)}")


def _as_tuple(src: str, name: str, value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _numbers(src: str, name: str, value: Any, *, integer: bool, minimum: float, strict: bool) -> tuple[Any, ...]:
    out = []
    for v in _as_tuple(src, name, value):
        if isinstance(v, str):  # YAML reads "1e12" (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                raise SpecError(src, name, f"{v!r} is not a number", "write a number such as 1e12") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpecError(src, name, f"{v!r} is not a finite number", "write a number such as 4")
        if integer:
            if float(v) != int(v):
                raise SpecError(src, name, f"{v!r} is not a whole number", "use integers")
            v = int(v)
        bad = v <= minimum if strict else v < minimum
        if bad:
            rel = ">" if strict else ">="
            raise SpecError(src, name, f"{v!r} must be {rel} {minimum:g}",
                            "mu_rec = 1 means no looping" if name == "mu_rec" else f"use values {rel} {minimum:g}")
        out.append(v)
    return tuple(out)


def _sub(src: str, where: str, raw: Any, cls: type, **fixed: Any) -> Any:
    """Build a nested dataclass from a mapping, rewrapping its ValueError with the file name."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(src, where.rstrip("."), f"must be a mapping, got {type(raw).__name__}", "write key: value pairs")
    _check_keys(src, where, raw, cls, skip=tuple(fixed))
    try:
        return cls(**{**raw, **fixed})
    except (TypeError, ValueError) as exc:
        raise SpecError(src, where.rstrip("."), str(exc), "fix the value named above") from None


def spec_from_dict(raw: Mapping[str, Any], *, source: str = "<spec>") -> SweepSpec:
    """Validate a parsed spec mapping (from YAML/TOML or code) into a SweepSpec."""
    from parcae_scaling.model.config import CONFIGS, get_config

    src = source
    if not isinstance(raw, Mapping):
        raise SpecError(src, "<top level>", "the file must hold a mapping", "write `name: ...`, `models: [...]`, ...")
    _check_keys(src, "", raw, SweepSpec, skip=("source",))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(src, "name", "missing or empty", "give the sweep a name, e.g. name: iso-tiny")
    models = tuple(str(m) for m in _as_tuple(src, "models", raw.get("models")))
    baselines = tuple(str(m) for m in _as_tuple(src, "baselines", raw.get("baselines")))
    if not models and not baselines:
        raise SpecError(src, "models", "no models given", "list config names, e.g. models: [parcae-tiny-48]")
    for fname, group in (("models", models), ("baselines", baselines)):
        for m in group:
            if m not in CONFIGS:
                raise SpecError(src, fname, f"unknown model config {m!r}", "see `parcae-sweep configs` for names")
    for m in baselines:
        if CONFIGS[m].is_looped:
            raise SpecError(src, "baselines", f"{m!r} is a looped model", "list transformer-* configs as baselines")
    overrides = raw.get("model_overrides") or {}
    if not isinstance(overrides, Mapping):
        raise SpecError(src, "model_overrides", "must be a mapping", "write e.g. {seq_len: 64}")
    for key in ("mu_rec", "mu_bwd", "family", "name"):
        if key in overrides:
            raise SpecError(src, f"model_overrides.{key}", "is set per run by the sweep", f"use the top-level axes, not an override of {key}")
    for m in models + baselines:
        try:
            get_config(m, **overrides)
        except (TypeError, ValueError) as exc:
            raise SpecError(src, "model_overrides", str(exc), "fix or drop the override") from None
    budgets = _numbers(src, "budgets_flops", raw.get("budgets_flops"), integer=False, minimum=0, strict=True)
    tokens = _numbers(src, "tokens", raw.get("tokens"), integer=True, minimum=0, strict=True)
    if bool(budgets) == bool(tokens):
        raise SpecError(src, "budgets_flops", "give exactly one of budgets_flops and tokens",
                        "budgets_flops for isoFLOP sweeps, tokens for fixed-token (test-time) studies")
    mu_rec = _numbers(src, "mu_rec", raw.get("mu_rec", [1]), integer=True, minimum=1, strict=False)
    if not mu_rec:
        raise SpecError(src, "mu_rec", "is empty", "list at least one value, e.g. [1, 2, 4]")
    mu_bwd = raw.get("mu_bwd", "half")
    if not (mu_bwd in get_args(MuBwdRule) or (isinstance(mu_bwd, int) and not isinstance(mu_bwd, bool) and mu_bwd >= 1)):
        raise SpecError(src, "mu_bwd", f"unknown rule {mu_bwd!r}", "use half (ceil(mu_rec/2)), full, or an integer >= 1")
    convention = raw.get("flop_convention", "reference")
    if convention not in ("reference", "exact"):
        raise SpecError(src, "flop_convention", f"unknown convention {convention!r}", "use reference or exact")
    seeds = _numbers(src, "seeds", raw.get("seeds", [0]), integer=True, minimum=0, strict=False)
    zipped = tuple(str(a) for a in _as_tuple(src, "zip", raw.get("zip")))
    for axis in zipped:
        if axis not in AXES:
            raise SpecError(src, "zip", f"unknown axis {axis!r}", f"zip some of {', '.join(AXES)}")
    if len(zipped) == 1:
        raise SpecError(src, "zip", "needs at least two axes", "list two or more axes, or drop zip to cross all")
    axis_values = {"models": models, "budgets_flops": budgets, "tokens": tokens, "mu_rec": mu_rec, "seeds": seeds}
    lengths = {a: len(axis_values[a]) for a in zipped}
    if len(set(lengths.values())) > 1:
        raise SpecError(src, "zip", f"zipped axes differ in length {lengths}", "give them equally long lists")
    recipe_raw = dict(raw.get("recipe") or {})
    if not isinstance(raw.get("recipe") or {}, Mapping):
        raise SpecError(src, "recipe", "must be a mapping", "write key: value pairs")
    opt = _sub(src, "recipe.optimizer.", recipe_raw.pop("optimizer", None), OptimizerSpec)
    sched = _sub(src, "recipe.schedule.", recipe_raw.pop("schedule", None), ScheduleSpec)
    if recipe_raw.get("eval_recurrences") is not None:
        recipe_raw["eval_recurrences"] = _numbers(src, "recipe.eval_recurrences", recipe_raw["eval_recurrences"],
                                                  integer=True, minimum=1, strict=False)
    _check_keys(src, "recipe.", recipe_raw, RecipeSpec)
    for key in ("batch_size", "grad_accum_steps", "eval_tokens", "metrics_every_steps"):
        if key in recipe_raw:
            _numbers(src, f"recipe.{key}", recipe_raw[key], integer=True, minimum=1, strict=False)
    recipe = RecipeSpec(**{**recipe_raw, "optimizer": opt, "schedule": sched})
    data = _sub(src, "data.", raw.get("data"), DataSpec)
    resources = _sub(src, "resources.", raw.get("resources"), ResourceSpec)
    for key in ("cpus_per_run", "max_concurrent", "time_limit_min", "torch_threads", "nproc_per_node", "nodes"):
        _numbers(src, f"resources.{key}", getattr(resources, key), integer=True, minimum=1, strict=False)
    for where, obj in (("recipe.", recipe), ("resources.", resources)):
        _check_choices(src, where, obj)
    _check_layout(src, resources, recipe)
    if not 0 < resources.mfu <= 1:
        raise SpecError(src, "resources.mfu", f"{resources.mfu!r} is not in (0, 1]", "use e.g. 0.3")
    from parcae_scaling.sweeps.cost import PEAK_FLOPS

    if resources.device not in PEAK_FLOPS:
        raise SpecError(src, "resources.device", f"unknown device {resources.device!r}", f"use one of {', '.join(PEAK_FLOPS)}")
    return SweepSpec(
        name=name.strip(), models=models, baselines=baselines, model_overrides=dict(overrides),
        budgets_flops=tuple(float(b) for b in budgets), tokens=tokens, mu_rec=mu_rec, mu_bwd=mu_bwd,
        flop_convention=convention, zip=zipped, seeds=seeds, recipe=recipe, data=data, resources=resources,
        output_root=str(raw.get("output_root", "runs")), description=str(raw.get("description", "")), source=src,
    )


def _check_choices(src: str, where: str, obj: Any) -> None:
    """Literal-typed fields hold one of their choices, bool fields a YAML true/false."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if get_origin(hint) is Literal and value not in get_args(hint):
            raise SpecError(src, f"{where}{f.name}", f"unknown value {value!r}",
                            f"use one of {', '.join(map(str, get_args(hint)))}")
        if hint is bool and not isinstance(value, bool):
            raise SpecError(src, f"{where}{f.name}", f"{value!r} is not true or false", "write true or false")


def _check_layout(src: str, resources: ResourceSpec, recipe: RecipeSpec) -> None:
    """A data-parallel layout must split the global batch evenly and use one GPU per process."""
    world = resources.world_size
    if world == 1:
        if resources.sharding != "ddp":
            raise SpecError(src, "resources.sharding", f"{resources.sharding!r} shards over data-parallel processes "
                            "but a run has 1", "raise resources.nproc_per_node (or nodes), or drop sharding")
        return
    if recipe.grad_accum_steps % world:
        raise SpecError(src, "resources.nproc_per_node",
                        f"{resources.nproc_per_node} x {resources.nodes} node(s) = {world} processes do not divide "
                        f"recipe.grad_accum_steps = {recipe.grad_accum_steps} (the global batch is batch_size x "
                        "grad_accum_steps sequences, split over the processes)",
                        f"set recipe.grad_accum_steps to a multiple of {world} (e.g. {world}), or use fewer processes")
    if resources.gpus_per_run > 1:
        raise SpecError(src, "resources.gpus_per_run", f"{resources.gpus_per_run} GPUs per process in a data-parallel "
                        "run (each rank trains on one device)", "set gpus_per_run: 1 (or 0 on CPU) and raise nproc_per_node")


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
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise SpecError(str(path), "<file>", f"unknown extension {suffix!r}", "use .yaml, .yml or .toml")
    return parse_spec_text(path.read_text(), fmt="toml" if suffix == ".toml" else "yaml", source=str(path))
