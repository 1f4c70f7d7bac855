"""The internal command line: the processes the backends start (users type `parcae-sweep`).

    python -m parcae_scaling.sweeps worker --store URL --run-id ID [--attempt N] [--threads T]
    python -m parcae_scaling.sweeps pool --store URL --manifest FILE [--max-workers N] ...
    python -m parcae_scaling.sweeps rank SPEC [--store URL --reports DIR] ...   (each rank, under torchrun)

Each role's options are declared once, in ROLES: `command()` builds a process's arguments from
them and `parse()` reads them back in that process (sweeps/__main__.py runs the role).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from parcae_scaling.model.contracts import DEFAULT_HEARTBEAT_S

MODULE = "parcae_scaling.sweeps"
REQUIRED = object()  # an option without a default
POSITIONAL = object()  # the role's one positional argument

# role -> option -> (type, default)
ROLES: dict[str, dict[str, tuple[type, Any]]] = {
    "worker": {"store": (str, REQUIRED), "run_id": (str, REQUIRED), "threads": (int, 1),
               "attempt": (int, None)},  # the attempt the dispatcher claimed: the worker's writes are fenced on it
    "pool": {"store": (str, REQUIRED), "manifest": (str, REQUIRED), "max_workers": (int, 2), "threads": (int, 1),
             "gpus_per_run": (int, 0), "heartbeat": (float, DEFAULT_HEARTBEAT_S)},
    "rank": {"spec": (str, POSITIONAL), "store": (str, None), "reports": (str, None), "threads": (int, 1),
             "heartbeat": (float, DEFAULT_HEARTBEAT_S), "attempt": (int, None)},
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def arguments(role: str, **values: Any) -> list[str]:
    """The arguments after `-m MODULE` that start `role` with `values` (None values are left out)."""
    options = ROLES[role]
    unknown = set(values) - set(options)
    if unknown:
        raise TypeError(f"{role} has no option(s) {sorted(unknown)}; it takes {sorted(options)}")
    out = [role]
    for name, (_, default) in options.items():
        value = values.get(name, None if default in (REQUIRED, POSITIONAL) else default)
        if value is None and default in (REQUIRED, POSITIONAL):
            raise TypeError(f"{role} needs {name}")
        if value is not None:
            out += [str(value)] if default is POSITIONAL else [_flag(name), str(value)]
    return out


def command(role: str, **values: Any) -> list[str]:
    """The full command line of a `role` process with this interpreter."""
    return [sys.executable, "-m", MODULE, *arguments(role, **values)]


def parse(argv: Sequence[str] | None = None) -> tuple[str, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    for role, options in ROLES.items():
        sub = roles.add_parser(role)
        for name, (kind, default) in options.items():
            if default is POSITIONAL:
                sub.add_argument(name, type=kind)
            elif default is REQUIRED:
                sub.add_argument(_flag(name), type=kind, required=True)
            else:
                sub.add_argument(_flag(name), type=kind, default=default)
    args = parser.parse_args(argv)
    return args.role, args
