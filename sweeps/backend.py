"""The backend protocol and registry: submit / poll / cancel over RunSpecs.

A backend only moves work; the store is the source of truth for run state (workers write it).
`poll` maps the backend's native states to `RunStatus` once, here at the edge, and returns
None for a job the backend no longer knows (finished or lost: the store decides which).
Adding a backend is one file that calls `register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

from parcae_scaling.db import RunStatus
from parcae_scaling.model.contracts import DEFAULT_HEARTBEAT_S
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.spec import ResourceSpec


class BackendError(RuntimeError):
    """A backend could not submit, poll or cancel (its message says why and what to do)."""


@dataclass(frozen=True, kw_only=True)
class JobHandle:
    run_id: str
    backend: str
    job_id: str


@dataclass(frozen=True, kw_only=True)
class DispatchOptions:
    """What every backend gets besides the runs."""

    store_url: str
    resources: ResourceSpec
    log_dir: str
    detach: bool = False
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    # run id -> the attempt its claim took: each worker writes fenced on it (sweeps/claims.py)
    attempts: Mapping[str, int] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    can_detach: bool  # whether submitted work outlives the submitting process

    def submit(self, runs: Sequence[RunSpec], options: DispatchOptions) -> list[JobHandle]:
        """Start (or queue) every run; with options.detach False, block until all have ended."""

    def poll(self, job_ids: Sequence[str]) -> dict[str, RunStatus | None]:
        """Native state of each job as a RunStatus (None: the backend no longer knows the job)."""

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Stop the jobs (best effort; the caller records CANCELLED in the store)."""


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register(name: str, factory: Callable[..., Backend]) -> None:
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_backend(name: str, **options: object) -> Backend:
    """A backend by name (local, submitit, ray); unknown names raise with the choices."""
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(sorted(_REGISTRY))}") from None
    return factory(**options)


# Built-ins by module path: imported on first use (submitit and ray only when chosen), so this
# protocol module imports no backend, and a new backend is one file plus one line here.
_BUILTIN = {"local": ("parcae_scaling.sweeps.backend_local", "LocalBackend"),
            "submitit": ("parcae_scaling.sweeps.backend_submitit", "SubmititBackend"),
            "ray": ("parcae_scaling.sweeps.backend_ray", "RayBackend")}


def _load_builtin() -> None:
    for name, (module, cls) in _BUILTIN.items():
        _REGISTRY.setdefault(name, _lazy(module, cls))


def _lazy(module: str, cls: str) -> Callable[..., Backend]:
    def make(**options: object) -> Backend:
        import importlib

        return getattr(importlib.import_module(module), cls)(**options)

    return make
