"""RunSpec: everything a worker needs to train one run, typed, frozen and JSON round-trippable.

A RunSpec is complete (model config with mu_rec/mu_bwd, budget, recipe, data, seed, output
directory), so a worker can run from it alone on any node. `canonical_json()` is its stable
serialisation (sorted keys, no whitespace); `run_id` hashes the parts that change the result
(everything except output directory, logging/checkpoint cadence, device choice and trackers) together with
the run-spec version RUN_SPEC_VERSION, so the same plan gives the same ids, also after a code
upgrade. The code version is provenance, recorded with the run (model/train/provenance.py), not
identity. Bump RUN_SPEC_VERSION only when the meaning of a field changes (same spec, different
training): that changes every id on purpose.

Token rule (`plan_tokens`): tokens = floor(budget_flops / flops_per_token) (or the given token
count), then floored to whole optimizer steps of batch_size * grad_accum_steps * world_size * seq_len
tokens (the global batch); a budget below one step is an error.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, get_args

from parcae_scaling.model.flops import FlopConvention

if TYPE_CHECKING:
    from parcae_scaling.model.config import ModelConfig

OptimizerName = Literal["adamw", "muon"]
ScheduleName = Literal["wsd", "cosine", "constant"]
DataSource = Literal["embedded", "bin", "parquet"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]
DepthSampling = Literal["per_rank", "shared"]
Sharding = Literal["ddp", "zero"]
DistBackend = Literal["auto", "gloo", "nccl"]
TokenizerKind = Literal["byte", "bpe"]
TrackerName = Literal["wandb", "mlflow", "tensorboard"]  # db/trackers.py TRACKERS implements each
RUN_SPEC_VERSION = 1  # in every run id: bump only when a field's meaning changes
# Until schema revision 0004 a run id hashed the package version in place of RUN_SPEC_VERSION
# (f"{version}|{blob}"), and every release did so as 0.1.0. Run directories written then (checkpoints,
# summaries, run-dir files) name their run by such an id; `RunSpec.legacy_run_ids` recomputes it.
LEGACY_ID_PACKAGE_VERSIONS = ("0.1.0",)
# Fields that do not change what is trained (excluded from run_id). The process layout is
# placement too: the run_id hashes the global batch, so a run resumes under any world size.
_NON_SCIENTIFIC = ("output_dir", "metrics_every_steps", "checkpoint_every_steps", "device",
                   "nproc_per_node", "nodes", "sharding", "dist_backend", "tracking")


# torch.manual_seed takes seeds in [-2**63, 2**64 - 1]; larger ones fail only at run time.
MAX_SEED = 2**64 - 1


class FieldError(ValueError):
    """A bad field of a spec type: names the type and field, what is wrong and the fix (kept
    apart so a sweep spec can re-prefix them with its file and dotted path)."""

    def __init__(self, owner: str, field_name: str, why: str, fix: str) -> None:
        self.owner, self.field_name, self.why, self.fix = owner, field_name, why, fix
        super().__init__(f"{owner}.{field_name}: {why}; {fix}")


def _bad(cls: str, name: str, why: str, fix: str) -> FieldError:
    return FieldError(cls, name, why, fix)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_real(cls: str, name: str, value: object, *, low: float, high: float | None = None,
                low_open: bool = False, high_open: bool = False, fix: str) -> None:
    """A finite number in the interval (bounds open or closed); a string, bool, nan or inf is refused."""
    ok = _is_real(value) and (value > low if low_open else value >= low)  # type: ignore[operator]
    if ok and high is not None:
        ok = value < high if high_open else value <= high  # type: ignore[operator]
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        where = f"in {lo}{low:g}, {high:g}{hi}" if high is not None else f"{'>' if low_open else '>='} {low:g}"
        raise _bad(cls, name, f"must be a finite number {where}, got {value!r}", fix)


def _check_choice(cls: str, name: str, value: object, choices: Any) -> None:
    options = get_args(choices)
    if value not in options:
        raise _bad(cls, name, f"unknown value {value!r}", f"choose one of {options}")


def _check_positive_int(cls: str, name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(cls, name, f"must be an integer >= {minimum}, got {value!r}", "give a whole number")
    if maximum is not None and value > maximum:
        raise _bad(cls, name, f"{value} is above the largest allowed, {maximum}", f"use an integer <= {maximum}")


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """AdamW everywhere ("adamw"), or Muon on hidden matrices + AdamW on the rest ("muon").

    Weight decay applies to matrix and embedding parameters only; norms, biases and the
    injection (log_A, dt_bias, B), C readout and gate scalars never decay. Muon's lr is scaled
    per matrix to match AdamW's update RMS by default ("match_rms_adamw"), so one lr serves both.
    """

    name: OptimizerName = "adamw"
    lr: float = 3e-3
    matrix_lr: float | None = None  # None: same as lr
    embedding_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip_norm: float = 1.0  # 0 disables clipping (the norm is still measured)
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "match_rms_adamw"

    def __post_init__(self) -> None:
        c = "OptimizerSpec"
        _check_choice(c, "name", self.name, OptimizerName)
        _check_choice(c, "muon_adjust_lr", self.muon_adjust_lr, Literal["original", "match_rms_adamw"])
        for name in ("lr", "matrix_lr", "embedding_lr"):
            v = getattr(self, name)
            if v is not None and not (_is_real(v) and v > 0):
                raise _bad(c, name, f"must be a positive finite learning rate, got {v!r}", "use e.g. 3e-3")
        for name in ("weight_decay", "grad_clip_norm"):
            _check_real(c, name, getattr(self, name), low=0.0, fix="use 0 to disable")
        for name in ("beta1", "beta2", "muon_momentum"):
            _check_real(c, name, getattr(self, name), low=0.0, high=1.0, high_open=True, fix="use e.g. 0.9")
        _check_real(c, "eps", self.eps, low=0.0, low_open=True, fix="use e.g. 1e-8")
        if not isinstance(self.muon_nesterov, bool):
            raise _bad(c, "muon_nesterov", f"{self.muon_nesterov!r} is not true or false", "write true or false")
        _check_positive_int(c, "muon_ns_steps", self.muon_ns_steps)


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """Learning-rate schedule; the default is the published no-warmup, 50%-cooldown-to-0 WSD."""

    name: ScheduleName = "wsd"
    warmup_frac: float = 0.0
    cooldown_frac: float = 0.5
    floor_frac: float = 0.0  # final lr as a fraction of the peak

    def __post_init__(self) -> None:
        c = "ScheduleSpec"
        _check_choice(c, "name", self.name, ScheduleName)
        for name in ("warmup_frac", "cooldown_frac", "floor_frac"):
            v = getattr(self, name)
            if not (_is_real(v) and 0.0 <= v <= 1.0):
                raise _bad(c, name, f"must be a fraction in [0, 1], got {v!r}", "use e.g. 0.5")
        if self.warmup_frac + self.cooldown_frac > 1.0:
            raise _bad(c, "cooldown_frac", f"warmup {self.warmup_frac} + cooldown {self.cooldown_frac} > 1",
                       "shorten one of them")


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where tokens come from.

    - "embedded": the stdlib corpus (model/train/corpus.py), tokenized with `tokenizer`.
    - "bin": pre-tokenized shards; `train_paths` / `val_paths` are files or globs. Accepted
      layouts: headerless flat arrays of `token_dtype` (nanoGPT `train.bin`), and the llm.c /
      nanochat header of 256 int32 (magic 20240520 -> uint16, 20240801 -> uint32; [2] = count).
    - "parquet": text shards with a `text_column` (FineWeb-Edu layout), tokenized once with
      `tokenizer` ("byte", or "bpe" from `tokenizer_path`) and cached as flat token files.
    """

    source: DataSource = "embedded"
    tokenizer: TokenizerKind = "byte"
    bpe_vocab_size: int = 4096
    tokenizer_path: str | None = None
    train_paths: tuple[str, ...] = ()
    val_paths: tuple[str, ...] = ()
    token_dtype: Literal["uint16", "uint32"] = "uint16"
    text_column: str = "text"
    val_percent: float = 5.0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        c = "DataSpec"
        for name in ("train_paths", "val_paths"):
            paths = getattr(self, name)
            if isinstance(paths, (str, Path)):  # one path or glob, not a sequence of characters
                paths = (paths,)
            elif not isinstance(paths, (list, tuple)):
                raise _bad(c, name, f"must be a path or a list of paths, got {paths!r}", "write e.g. [data/train.bin]")
            for p in paths:
                if not isinstance(p, (str, Path)):
                    raise _bad(c, name, f"{p!r} is not a path",
                               "write each path or glob as text, e.g. data/train_*.bin")
            object.__setattr__(self, name, tuple(str(p) for p in paths))
        _check_choice(c, "source", self.source, DataSource)
        _check_choice(c, "tokenizer", self.tokenizer, TokenizerKind)
        _check_choice(c, "token_dtype", self.token_dtype, Literal["uint16", "uint32"])
        if self.source == "embedded":
            if self.train_paths or self.val_paths:
                raise _bad(c, "train_paths", "the embedded corpus takes no paths",
                           "drop them or use source 'bin'/'parquet'")
        elif not self.train_paths or not self.val_paths:
            raise _bad(c, "train_paths" if not self.train_paths else "val_paths",
                       f"source {self.source!r} needs train and validation files", "give paths or globs for both")
        if self.source == "parquet" and self.tokenizer == "bpe" and not self.tokenizer_path:
            raise _bad(c, "tokenizer_path", "a BPE tokenizer for parquet text needs its tokenizer.json",
                       "set tokenizer_path or use tokenizer 'byte'")
        _check_positive_int(c, "bpe_vocab_size", self.bpe_vocab_size, minimum=257)
        _check_real(c, "val_percent", self.val_percent, low=0.0, high=50.0, low_open=True, high_open=True,
                    fix="use e.g. 5")
        for name in ("tokenizer_path", "cache_dir"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise _bad(c, name, f"must be a path, got {getattr(self, name)!r}", "write a path as text")


@dataclass(frozen=True, kw_only=True)
class TrackingSpec:
    """Experiment trackers that also receive a run's metrics, evals and provenance (db/trackers.py).

    Not science: excluded from run_id. The store stays the record; a tracker that fails is
    switched off for the rest of the run with one warning line. Where tracker files go: `dir`
    (None: `<output_dir>/tracking`; a sweep sets `<output_root>/<sweep>/tracking`), holding
    `tensorboard/<run id>/`, `wandb/offline-run-*` (W&B is always offline) and `mlflow.db`
    (unless `mlflow_uri` names another MLflow tracking store)."""

    trackers: tuple[TrackerName, ...] = ()
    dir: str | None = None
    mlflow_uri: str | None = None
    sweep: str = ""  # the sweep's name (set by the planner): W&B project and group, MLflow experiment, a tag

    def __post_init__(self) -> None:
        c = "TrackingSpec"
        trackers = self.trackers
        if isinstance(trackers, str):  # one name, not a sequence of characters
            trackers = (trackers,)
        if not isinstance(trackers, (list, tuple)):
            raise _bad(c, "trackers", f"must be a list of tracker names, got {trackers!r}",
                       f"write e.g. [{', '.join(get_args(TrackerName))}]")
        for name in trackers:
            _check_choice(c, "trackers", name, TrackerName)
        if len(set(trackers)) != len(trackers):
            raise _bad(c, "trackers", f"{list(trackers)} names a tracker twice", "list each tracker once")
        object.__setattr__(self, "trackers", tuple(trackers))
        for name in ("dir", "mlflow_uri"):
            if getattr(self, name) is not None and not (isinstance(getattr(self, name), str) and getattr(self, name)):
                raise _bad(c, name, f"must be a non-empty text, got {getattr(self, name)!r}",
                           "write a path (dir) or a URI such as sqlite:///mlflow.db (mlflow_uri), or drop it")
        if not isinstance(self.sweep, str):
            raise _bad(c, "sweep", f"must be a sweep name, got {self.sweep!r}", "write the name as text")


@dataclass(frozen=True, kw_only=True)
class TokenPlan:
    """How many tokens and steps a run trains, and the FLOPs that plan costs."""

    flops_per_token: int
    tokens_per_step: int
    steps: int
    tokens: int
    planned_flops: int
    requested_tokens: int  # before rounding to whole steps


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run. mu_rec / mu_bwd / seq_len live in `model` (one source of truth)."""

    model: ModelConfig
    output_dir: str
    budget_flops: float | None = None
    tokens: int | None = None
    flop_convention: FlopConvention = "reference"
    batch_size: int = 16  # sequences per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    data: DataSpec = field(default_factory=DataSpec)
    seed: int = 0
    metrics_every_steps: int = 10
    # Periodic checkpoints make preemption, timeouts and lost nodes cheap to resume (0: only at the end).
    checkpoint_every_steps: int = 50
    eval_recurrences: tuple[int, ...] | None = None  # None: 1 ... max(2 mu_rec, 4)
    eval_tokens: int = 16_384  # validation tokens per recurrence (capped by the split)
    precision: Precision = "auto"  # auto: bf16 where the device has bf16 matrix units (model/train/precision.py)
    compile: bool = False  # torch.compile each block (CUDA, and CPU through inductor's C++ backend)
    device: Device = "auto"
    # Data parallelism (model/train/distributed.py). global batch = batch_size x grad_accum_steps x
    # nproc_per_node x nodes; batch_size and grad_accum_steps are per process.
    nproc_per_node: int = 1
    nodes: int = 1
    # "per_rank": every micro-batch draws its depths from its global index, so the run is the
    # same for any world size; "shared": all ranks draw the same depths for a micro-step, so
    # their loops run equally long (no straggler at the all-reduce). Same Poisson law either way.
    depth_sampling: DepthSampling = "per_rank"
    sharding: Sharding = "ddp"  # "zero": ZeroRedundancyOptimizer shards optimizer state over ranks
    dist_backend: DistBackend = "auto"  # auto: nccl on CUDA, gloo on CPU
    tracking: TrackingSpec = field(default_factory=TrackingSpec)  # experiment trackers (not science)

    def __post_init__(self) -> None:
        from parcae_scaling.model.config import ModelConfig

        c = "RunSpec"
        if not isinstance(self.model, ModelConfig):
            raise _bad(c, "model", f"must be a ModelConfig, got {type(self.model).__name__}", "use get_config(...)")
        for name, typ in (("optimizer", OptimizerSpec), ("schedule", ScheduleSpec), ("data", DataSpec),
                          ("tracking", TrackingSpec)):
            if not isinstance(getattr(self, name), typ):
                raise _bad(c, name, f"must be a {typ.__name__}", f"construct {typ.__name__}(...)")
        if not self.output_dir:
            raise _bad(c, "output_dir", "is empty", "give a directory for checkpoints and the summary")
        if (self.budget_flops is None) == (self.tokens is None):
            raise _bad(c, "budget_flops", "give exactly one of budget_flops and tokens", "set one, not both")
        if self.budget_flops is not None:
            _check_real(c, "budget_flops", self.budget_flops, low=0.0, low_open=True, fix="use e.g. 1e12")
        if self.tokens is not None:
            _check_positive_int(c, "tokens", self.tokens)
        _check_choice(c, "flop_convention", self.flop_convention, FlopConvention)
        _check_choice(c, "precision", self.precision, Precision)
        _check_choice(c, "device", self.device, Device)
        _check_choice(c, "depth_sampling", self.depth_sampling, DepthSampling)
        _check_choice(c, "sharding", self.sharding, Sharding)
        _check_choice(c, "dist_backend", self.dist_backend, DistBackend)
        for name in ("batch_size", "grad_accum_steps", "metrics_every_steps", "eval_tokens",
                     "nproc_per_node", "nodes"):
            _check_positive_int(c, name, getattr(self, name))
        _check_positive_int(c, "checkpoint_every_steps", self.checkpoint_every_steps, minimum=0)
        _check_positive_int(c, "seed", self.seed, minimum=0, maximum=MAX_SEED)
        if not isinstance(self.compile, bool):
            raise _bad(c, "compile", f"{self.compile!r} is not true or false", "write true or false")
        if self.eval_recurrences is not None:
            recs = tuple(self.eval_recurrences)
            if not recs or any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in recs):
                raise _bad(c, "eval_recurrences", f"must be integers >= 1, got {recs!r}", "e.g. (1, 2, 4, 8)")
            object.__setattr__(self, "eval_recurrences", tuple(sorted(set(recs))))

    # -- derived ----------------------------------------------------------------------------
    @property
    def mu_rec(self) -> int:
        return self.model.mu_rec

    @property
    def mu_bwd(self) -> int:
        return int(self.model.mu_bwd)  # type: ignore[arg-type]

    @property
    def seq_len(self) -> int:
        return self.model.seq_len

    @property
    def world_size(self) -> int:
        """Processes (ranks) the run trains on."""
        return self.nproc_per_node * self.nodes

    @property
    def global_micro_batches(self) -> int:
        """Micro-batches of batch_size sequences per optimizer step, over all ranks."""
        return self.grad_accum_steps * self.world_size

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step: per-process batch x accumulation x processes."""
        return self.batch_size * self.global_micro_batches

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def with_world_size(self, nproc_per_node: int, nodes: int = 1) -> "RunSpec":
        """The same run (same global batch and run_id) laid out on another number of processes."""
        world = nproc_per_node * nodes
        if world < 1 or self.global_micro_batches % world:
            raise _bad("RunSpec", "nproc_per_node", f"{world} processes do not divide the "
                       f"{self.global_micro_batches} micro-batches of {self.batch_size} sequences per step",
                       f"use a world size dividing {self.global_micro_batches}")
        return self.replace(nproc_per_node=nproc_per_node, nodes=nodes,
                            grad_accum_steps=self.global_micro_batches // world)

    def recurrences_to_evaluate(self) -> tuple[int, ...]:
        """Explicit list (plus the training depth mu_rec), or powers of two up to 2*mu_rec plus
        mu_rec; (1,) for a transformer."""
        if self.eval_recurrences is not None and self.model.is_looped:
            return tuple(sorted({*self.eval_recurrences, self.mu_rec}))
        return default_eval_recurrences(self.mu_rec, looped=self.model.is_looped)

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)

    def with_output_dir(self, output_dir: str) -> "RunSpec":
        """The same run writing to another directory. Only output_dir changes, so the checks of
        the other fields are not run again (the planner does this once per run: 100,000-run sweeps)."""
        if not output_dir or not isinstance(output_dir, str):
            raise _bad("RunSpec", "output_dir", f"must be a non-empty path, got {output_dir!r}",
                       "give a directory for checkpoints and the summary")
        new = copy.copy(self)
        object.__setattr__(new, "output_dir", output_dir)
        return new

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = self.model.to_dict()
        for name in ("optimizer", "schedule", "data"):
            # Shallow: these specs hold only scalars and tuples of strings, and asdict's deep
            # copy dominated planning 10,000 runs. Same output, so run ids do not change.
            spec = d[name]
            d[name] = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
        d["data"]["train_paths"] = list(self.data.train_paths)
        d["data"]["val_paths"] = list(self.data.val_paths)
        if self.tracking.trackers:  # absent when off: the stored specs of untracked runs stay as they were
            d["tracking"] = {f.name: getattr(self.tracking, f.name) for f in dataclasses.fields(TrackingSpec)}
            d["tracking"]["trackers"] = list(self.tracking.trackers)
        else:
            del d["tracking"]
        if self.eval_recurrences is not None:
            d["eval_recurrences"] = list(self.eval_recurrences)
        d["spec_version"] = RUN_SPEC_VERSION
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSpec":
        """A RunSpec from its `to_dict()` form; a wrong shape is a FieldError naming the field."""
        from parcae_scaling.model.config import ModelConfig

        if not isinstance(data, Mapping):
            raise _bad("RunSpec", "<top level>", f"must be an object of RunSpec fields, got {type(data).__name__}",
                       "write {\"model\": {...}, \"output_dir\": ..., ...} (see RunSpec.to_json)")
        d = dict(data)
        version = d.pop("spec_version", RUN_SPEC_VERSION)
        if version != RUN_SPEC_VERSION:
            raise ValueError(f"RunSpec.spec_version {version} is not supported (this code reads {RUN_SPEC_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"RunSpec: unknown field(s) {unknown}; known fields: {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in d and f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)
        if missing:
            raise _bad("RunSpec", missing[0], "is missing", f"give every required field: {', '.join(missing)}")
        d["model"] = _from_mapping("model", d["model"], ModelConfig)
        for name, typ in (("optimizer", OptimizerSpec), ("schedule", ScheduleSpec), ("data", DataSpec),
                          ("tracking", TrackingSpec)):
            if name in d:
                d[name] = _from_mapping(name, d[name], typ)
        if d.get("eval_recurrences") is not None:
            if not isinstance(d["eval_recurrences"], (list, tuple)):
                raise _bad("RunSpec", "eval_recurrences", f"must be a list, got {d['eval_recurrences']!r}",
                           "write e.g. [1, 2, 4]")
            d["eval_recurrences"] = tuple(d["eval_recurrences"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "RunSpec":
        """Read a RunSpec JSON file (`train-one --spec`); every error names the file."""
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                             "give a RunSpec JSON file (RunSpec.to_json)") from None
        except OSError as exc:
            raise ValueError(f"{where}: cannot read it ({exc.strerror or exc}); "
                             "give a readable RunSpec JSON file") from None
        try:
            return cls.from_json(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc}); fix the syntax (RunSpec.to_json writes one)") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls.from_dict(json.loads(text))

    def _identity_blob(self) -> str:
        """The canonical JSON of the scientific content (with spec_version = RUN_SPEC_VERSION)."""
        d = self.to_dict()
        for name in _NON_SCIENTIFIC:
            d.pop(name, None)  # tracking is absent when off
        d["data"].pop("cache_dir")  # where caches live does not change the tokens
        d["grad_accum_steps"] = self.global_micro_batches  # the global batch, not its layout
        if d["depth_sampling"] == "per_rank":
            d.pop("depth_sampling")  # the default: ids of runs specified before it existed stay put
        return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def run_id(self) -> str:
        """Hash of the scientific content (not output dir, cache dir, cadence, device, trackers)
        and the run-spec version (in it as `spec_version`); the package version is not in it."""
        return hashlib.sha256(self._identity_blob().encode()).hexdigest()[:16]

    @property
    def legacy_run_ids(self) -> tuple[str, ...]:
        """The ids this run had while run ids hashed the package version (LEGACY_ID_PACKAGE_VERSIONS)."""
        blob = self._identity_blob()
        return tuple(hashlib.sha256(f"{v}|{blob}".encode()).hexdigest()[:16] for v in LEGACY_ID_PACKAGE_VERSIONS)

    def has_id(self, run_id: str | None) -> bool:
        """`run_id` names this run: its id, or the legacy id that run directories written before
        schema revision 0004 carry (checkpoints, summary.json)."""
        return run_id == self.run_id or run_id in self.legacy_run_ids


def _from_mapping(name: str, value: object, typ: type) -> Any:
    """A nested spec from its dict form; a non-mapping or an unknown key is a FieldError."""
    if not isinstance(value, Mapping):
        raise _bad("RunSpec", name, f"must be an object of {typ.__name__} fields, got {value!r}",
                   f"write {name} as {{field: value, ...}}")
    known = {f.name for f in dataclasses.fields(typ)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise _bad("RunSpec", name, f"unknown {typ.__name__} field(s) {unknown}", f"use some of {sorted(known)}")
    try:
        return typ(**value)
    except TypeError as exc:  # a required field missing
        raise _bad("RunSpec", name, str(exc), f"give the {typ.__name__} fields") from None


def default_eval_recurrences(mu_rec: int, *, looped: bool = True) -> tuple[int, ...]:
    """T = 1 ... 2*mu_rec (REFERENCE.md section 3), at least 1 ... 4 so that every looped run
    has the four depths a saturating-exponential test-time fit needs; (1,) for a fixed-depth model."""
    if not looped:
        return (1,)
    return tuple(range(1, max(2 * mu_rec, 4) + 1))


def plan_tokens(run: RunSpec) -> TokenPlan:
    """Tokens and steps a run trains (rule in the module docstring) and their FLOPs."""
    from parcae_scaling.model.flops import flops_per_token, tokens_for_budget

    fpt = int(flops_per_token(run.model, convention=run.flop_convention))
    if run.tokens is not None:
        requested = int(run.tokens)
    else:
        requested = int(tokens_for_budget(run.budget_flops, fpt))
    steps = requested // run.tokens_per_step
    if steps < 1:
        what = (f"budget_flops={run.budget_flops:g} buys {requested} tokens" if run.tokens is None
                else f"tokens={requested}")
        raise _bad("RunSpec", "budget_flops" if run.tokens is None else "tokens",
                   f"{what}, less than one optimizer step of {run.tokens_per_step} tokens "
                   f"({run.batch_size} x {run.grad_accum_steps} x {run.world_size} processes x {run.seq_len})",
                   "raise the budget or shrink the batch")
    tokens = steps * run.tokens_per_step
    return TokenPlan(
        flops_per_token=fpt, tokens_per_step=run.tokens_per_step, steps=steps, tokens=tokens,
        planned_flops=fpt * tokens, requested_tokens=requested,
    )
