"""Export a trained run as safetensors weights plus a `config.json`, and load it back.

An export directory holds:

    model.safetensors   the model's weights (data only, no pickle); a tensor shared by several
                        modules is stored once (safetensors refuses aliases; `save_model` drops
                        the duplicate names and `load_model` restores them from the model)
    config.json         what rebuilds the model: format version, the ModelConfig (seq_len,
                        mu_rec, mu_bwd inside, and copied to the top level for other tools), the
                        tokenizer, and the run it came from (id, sweep, tokens, final losses, spec)
    tokenizer.json      only for a BPE run: the `tokenizers` file its data was encoded with

`load_exported(dir)` rebuilds the model from config.json alone and gives the same logits, bit
for bit, as the model restored from the run's own checkpoint. config.json is written last, so a
directory without one is an unfinished export.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import torch
import torch.nn as nn

from parcae_scaling.model.config import ModelConfig
from parcae_scaling.model.contracts import RunResult
from parcae_scaling.model.run_spec import DataSpec, RunSpec

EXPORT_FORMAT = "parcae-scaling-model"
EXPORT_FORMAT_VERSION = 1  # bump when a key's meaning changes; the loader refuses other versions
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
EXPORT_EXTRA = "pip install 'parcae-scaling[export]'"
ExportedTokenizer = Literal["byte", "bpe", "pretokenized"]  # pretokenized: .bin shards, tokenizer not recorded
_TOP_KEYS = ("format", "format_version", "package_version", "model", "seq_len", "mu_rec", "mu_bwd",
             "tokenizer", "weights", "run")
_RUN_KEYS = ("run_id", "sweep", "tokens_trained", "steps_trained", "final_val_loss", "val_loss_by_recurrence",
             "spec")


@dataclass(frozen=True, kw_only=True)
class TokenizerInfo:
    """How the run's token ids map to text."""

    kind: ExportedTokenizer
    vocab_size: int | None  # ids the tokenizer produces (the model's vocab_size may be larger); None: unknown
    file: str | None = None  # tokenizer.json beside the weights (BPE only)
    document_separator: str | None = None  # byte: a blank line; BPE: its end-of-text token

    def __post_init__(self) -> None:
        if self.kind not in get_args(ExportedTokenizer):
            raise ValueError(f"tokenizer.kind {self.kind!r} is unknown; use one of {get_args(ExportedTokenizer)}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size < 1):
            raise ValueError(f"tokenizer.vocab_size must be a positive integer or null, got {self.vocab_size!r}")
        for name in ("file", "document_separator"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"tokenizer.{name} must be text or null, got {getattr(self, name)!r}")
        if self.file is not None and Path(self.file).name != self.file:
            raise ValueError(f"tokenizer.file {self.file!r} must be a file name inside the export directory")


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """The content of config.json (`to_dict` / `from_dict`); seq_len, mu_rec, mu_bwd live in `model`."""

    model: ModelConfig
    tokenizer: TokenizerInfo
    run_id: str
    sweep: str | None = None
    tokens_trained: int
    steps_trained: int
    final_val_loss: float | None = None  # at the training depth mu_rec (1 for a transformer)
    val_loss_by_recurrence: Mapping[int, float] = field(default_factory=dict)
    run_spec: Mapping[str, Any]  # RunSpec.to_dict() of the run (provenance: recipe, data, seed, budget)
    package_version: str
    weights_file: str = WEIGHTS_FILE
    dtype: str = "float32"

    @property
    def seq_len(self) -> int:
        return self.model.seq_len

    @property
    def mu_rec(self) -> int:
        return self.model.mu_rec

    @property
    def mu_bwd(self) -> int:
        return int(self.model.mu_bwd)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "package_version": self.package_version,
            "model": self.model.to_dict(), "seq_len": self.seq_len, "mu_rec": self.mu_rec, "mu_bwd": self.mu_bwd,
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "weights": {"file": self.weights_file, "dtype": self.dtype},
            "run": {
                "run_id": self.run_id, "sweep": self.sweep, "tokens_trained": self.tokens_trained,
                "steps_trained": self.steps_trained, "final_val_loss": self.final_val_loss,
                "val_loss_by_recurrence": {str(t): v for t, v in sorted(self.val_loss_by_recurrence.items())},
                "spec": dict(self.run_spec),
            },
        }

    @classmethod
    def from_dict(cls, data: object, *, where: str = CONFIG_FILE) -> "ExportConfig":
        """Validate a config.json; every problem is one ValueError line naming `where` and the fix."""
        fix = "re-export the run with `parcae-sweep export-model RUN_ID --to DIR`"
        try:
            return cls._from_dict(data, fix)
        except (ValueError, TypeError, KeyError) as exc:
            message = " ".join(str(exc).split())
            raise ValueError(f"{where}: {message}" + ("" if fix in message else f"; {fix}")) from None

    @classmethod
    def _from_dict(cls, data: object, fix: str) -> "ExportConfig":
        from parcae_scaling import __version__

        if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not a {EXPORT_FORMAT} config (no \"format\": \"{EXPORT_FORMAT}\")")
        version = data.get("format_version")
        if version != EXPORT_FORMAT_VERSION:
            raise ValueError(f"format_version {version!r} is not supported by parcae-scaling {__version__} "
                             f"(it reads version {EXPORT_FORMAT_VERSION}); load it with the parcae-scaling "
                             f"version that wrote it ({data.get('package_version', 'unknown')}) or {fix}")
        _require_keys(data, _TOP_KEYS, "")
        run, weights, tok = data["run"], data["weights"], data["tokenizer"]
        for name, value in (("run", run), ("weights", weights), ("tokenizer", tok), ("model", data["model"])):
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must be an object, got {value!r}")
        _require_keys(run, _RUN_KEYS, "run.")
        _require_keys(weights, ("file", "dtype"), "weights.")
        _require_keys(tok, tuple(f.name for f in dataclasses.fields(TokenizerInfo)), "tokenizer.")
        # Every model field, none defaulted: a config from elsewhere must not quietly build another shape.
        _require_keys(data["model"], tuple(f.name for f in dataclasses.fields(ModelConfig)), "model.")
        model = ModelConfig.from_dict(dict(data["model"]))
        for name in ("seq_len", "mu_rec", "mu_bwd"):
            if data[name] != getattr(model, name):
                raise ValueError(f"{name} = {data[name]!r} disagrees with model.{name} = {getattr(model, name)!r}")
        if Path(str(weights["file"])).name != weights["file"]:
            raise ValueError(f"weights.file {weights['file']!r} must be a file name inside the export directory")
        losses = run["val_loss_by_recurrence"]
        if not isinstance(losses, Mapping):
            raise ValueError(f"run.val_loss_by_recurrence must be an object, got {losses!r}")
        for name in ("tokens_trained", "steps_trained"):
            if not isinstance(run[name], int) or isinstance(run[name], bool) or run[name] < 0:
                raise ValueError(f"run.{name} must be a non-negative integer, got {run[name]!r}")
        if run["final_val_loss"] is not None and not isinstance(run["final_val_loss"], (int, float)):
            raise ValueError(f"run.final_val_loss must be a number or null, got {run['final_val_loss']!r}")
        if run["sweep"] is not None and not isinstance(run["sweep"], str):
            raise ValueError(f"run.sweep must be text or null, got {run['sweep']!r}")
        if not isinstance(run["spec"], Mapping):
            raise ValueError(f"run.spec must be an object, got {run['spec']!r}")
        return cls(
            model=model, tokenizer=TokenizerInfo(**tok), run_id=str(run["run_id"]), sweep=run["sweep"],
            tokens_trained=run["tokens_trained"], steps_trained=run["steps_trained"],
            final_val_loss=run["final_val_loss"], val_loss_by_recurrence={int(k): float(v) for k, v in losses.items()},
            run_spec=dict(run["spec"]), package_version=str(data["package_version"]),
            weights_file=str(weights["file"]), dtype=str(weights["dtype"]),
        )


def _require_keys(data: Mapping[str, Any], keys: tuple[str, ...], prefix: str) -> None:
    missing = [f"{prefix}{k}" for k in keys if k not in data]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    unknown = sorted(f"{prefix}{k}" for k in set(data) - set(keys))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}")


# ---- weights: safetensors, shared tensors stored once ---------------------------------------------

def _safetensors_torch() -> Any:
    """safetensors.torch (an optional extra): its absence is one line naming the install command."""
    try:
        import safetensors.torch
    except ImportError:
        raise RuntimeError(f"model export needs the safetensors package: {EXPORT_EXTRA}") from None
    return safetensors.torch


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write `model`'s state dict to `path` as safetensors, atomically (temp file, then rename).
    Tied parameters (one tensor under several names) are written once."""
    save_model = _safetensors_torch().save_model
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        save_model(model, str(tmp), metadata={"format": "pt", **(metadata or {})})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600; an export is meant for others too
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _temp_beside(path: Path) -> Path:
    """A temporary name next to `path` (same file system: the rename is atomic). Not mkstemp,
    whose 0600 files would keep an export meant for others unreadable to them."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def load_weights(model: nn.Module, path: str | Path, *, device: str | torch.device = "cpu") -> None:
    """Load a safetensors file written by `save_weights` into `model` in place (strict: every
    parameter present, none extra, same shapes). One ValueError line on a mismatch or a bad file."""
    load_model = _safetensors_torch().load_model
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except Exception as exc:  # SafetensorError (torn header), RuntimeError (names/shapes), OSError
        why = " ".join(str(exc).split())[:400]
        raise ValueError(f"{path}: cannot load these weights into a {type(model).__name__} ({why}); "
                         "the weights and config.json do not belong together: re-export the run") from None


def _fresh_model(config: ModelConfig) -> nn.Module:
    """The model for `config`, initialised without touching the caller's RNG (its weights are
    about to be overwritten)."""
    from parcae_scaling.model import build_model

    with torch.random.fork_rng(devices=[]):
        return build_model(config)


# ---- export -------------------------------------------------------------------------------------

def _tokenizer(data: DataSpec) -> tuple[TokenizerInfo, Path | None]:
    """The run's tokenizer description and the tokenizer.json to copy (BPE only)."""
    from parcae_scaling.model.train.tokenizer import BPE_EOS, ByteTokenizer, BpeTokenizer

    if data.source == "bin":
        return TokenizerInfo(kind="pretokenized", vocab_size=None), None
    if data.tokenizer == "byte":
        return TokenizerInfo(kind="byte", vocab_size=ByteTokenizer.vocab_size, document_separator="\n\n"), None
    if data.tokenizer_path:
        path = Path(data.tokenizer_path)
    else:  # the embedded corpus trains its BPE once and caches it (a cache hit where the run trained)
        from parcae_scaling.model.train.corpus import build_stdlib_corpus

        info = build_stdlib_corpus(tokenizer="bpe", bpe_vocab_size=data.bpe_vocab_size,
                                   val_percent=data.val_percent, cache_dir=data.cache_dir)
        path = Path(str(info.tokenizer_path))
    tok = BpeTokenizer(path)
    return TokenizerInfo(kind="bpe", vocab_size=tok.vocab_size, file=TOKENIZER_FILE, document_separator=BPE_EOS), path


def _read_summary(directory: Path, run_ids: tuple[str, ...]) -> RunResult | None:
    """The run's summary.json (model/train/loop.py) if it names one of this run's ids, else None."""
    from parcae_scaling.model.train.loop import SUMMARY_FILE

    path = directory / SUMMARY_FILE
    try:
        result = RunResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: the losses are then unknown, the weights still export
    return result if result.run_id in run_ids else None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _prepare_target(out: Path, *, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a directory; choose a directory to export to")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} already exists and is not empty; export to a new directory, or pass "
                              "--force (force=True) to overwrite the export files in it")
    out.mkdir(parents=True, exist_ok=True)


def export_model(run_spec: RunSpec, checkpoint_path: str | Path, out_dir: str | Path, *, run_id: str | None = None,
                 sweep: str | None = None, force: bool = False) -> ExportConfig:
    """Write the weights of `checkpoint_path` (a checkpoint of `run_spec`) and its config.json to
    `out_dir`; returns what config.json holds.

    `run_id`: the id the run was recorded under (default: `run_spec.run_id`); the checkpoint must
    carry it or the run's legacy id (`RunSpec.legacy_run_ids`). The final losses come from the
    run's summary.json beside the checkpoint when it has one. An existing non-empty `out_dir` is
    refused unless `force` (then only the export's own files in it are replaced)."""
    from parcae_scaling import __version__
    from parcae_scaling.model.train.checkpoint import read_model_state

    _safetensors_torch()  # before any work: a missing extra is the first thing to hear
    checkpoint_path = Path(checkpoint_path)
    run_id = run_id or run_spec.run_id
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path} does not exist; give the checkpoint.pt of a trained run")
    ids = (run_id, *run_spec.legacy_run_ids)  # a run trained before ids left out the code version
    state, progress = read_model_state(checkpoint_path, run_id=run_id, aliases=ids[1:])
    model = _fresh_model(run_spec.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        why = " ".join(str(exc).split())[:300]
        raise ValueError(f"{checkpoint_path} does not fit model {run_spec.model.name} of the run spec ({why}); "
                         "give the checkpoint and spec of the same run") from None
    summary = _read_summary(checkpoint_path.parent, ids)
    if summary is not None and summary.steps_done != progress.step:
        raise ValueError(f"{checkpoint_path} is at step {progress.step} but the run finished at step "
                         f"{summary.steps_done}; the final checkpoint was replaced or lost: train the run again")
    tok_info, tok_file = _tokenizer(run_spec.data)
    at_mu = run_spec.mu_rec if run_spec.model.is_looped else 1
    evals = {e.recurrence: e.loss for e in summary.evals if e.split == "val"} if summary else {}
    config = ExportConfig(
        model=run_spec.model, tokenizer=tok_info, run_id=run_id, sweep=sweep, tokens_trained=progress.tokens,
        steps_trained=progress.step, final_val_loss=_finite(evals.get(at_mu)),
        val_loss_by_recurrence={t: v for t, v in evals.items() if _finite(v) is not None},
        run_spec=run_spec.to_dict(), package_version=__version__,
        dtype=", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})),
    )
    out = Path(out_dir)
    _prepare_target(out, force=force)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # until the new one is written the export is unfinished
    save_weights(model, out / WEIGHTS_FILE, {"run_id": run_id})
    if tok_file is not None:
        shutil.copyfile(tok_file, out / TOKENIZER_FILE)
    else:
        (out / TOKENIZER_FILE).unlink(missing_ok=True)  # a stale one from an overwritten BPE export
    tmp = _temp_beside(out / CONFIG_FILE)
    try:
        tmp.write_text(json.dumps(config.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, out / CONFIG_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return config


def load_exported(directory: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ExportConfig]:
    """The model of an export directory (in eval mode, on `device`) and its config.

    Every problem (no config.json, malformed or from another format version, weights that do not
    fit) is one ValueError/FileNotFoundError line naming the file and the fix."""
    _safetensors_torch()
    d = Path(directory)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a directory written by "
                                "`parcae-sweep export-model` (or export_model)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({' '.join(str(exc).split())}); re-export the run with "
                         "`parcae-sweep export-model RUN_ID --to DIR`") from None
    config = ExportConfig.from_dict(raw, where=str(path))
    weights = d / config.weights_file
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist (config.json names it); re-export the run with "
                                "`parcae-sweep export-model RUN_ID --to DIR`")
    model = _fresh_model(config.model).to(device)
    load_weights(model, weights, device=device)
    return model.eval(), config
