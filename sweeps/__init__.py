"""Sweeps: spec files -> validated SweepSpec -> Plan of content-addressed RunSpecs -> backends.

    from parcae_scaling.sweeps import load_spec, plan, launch, get_backend
    p = plan(load_spec("default"))                       # or a .yaml / .toml path
    with Store.open("sqlite:///parcae.sqlite") as store:
        launch(p, store, get_backend("local"), store_url="sqlite:///parcae.sqlite")
"""

from parcae_scaling.sweeps.backend import Backend, BackendError, DispatchOptions, JobHandle, backend_names, get_backend
from parcae_scaling.sweeps.claims import RETRYABLE_KINDS, mark_stale
from parcae_scaling.sweeps.launch import (
    ConfigDriftError, LaunchReport, cancel, launch, record_plan, resume, status_table,
)
from parcae_scaling.sweeps.plan import Plan, PlannedRun, plan
from parcae_scaling.sweeps.spec import (
    RecipeSpec, ResourceSpec, SpecError, SweepSpec, builtin_specs, load_spec, spec_from_dict,
)

__all__ = [
    "Backend", "BackendError", "ConfigDriftError", "DispatchOptions", "JobHandle", "LaunchReport", "Plan",
    "PlannedRun", "RETRYABLE_KINDS", "RecipeSpec", "ResourceSpec", "SpecError", "SweepSpec", "backend_names",
    "builtin_specs", "cancel", "get_backend", "launch", "load_spec", "mark_stale", "plan", "record_plan",
    "resume", "spec_from_dict", "status_table",
]
