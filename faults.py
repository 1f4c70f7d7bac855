"""Fault points: named places in a run's life where the fault-injection suite kills the process.

`fault_point(name)` is a no-op unless the environment variable PARCAE_FAULT names it:
`PARCAE_FAULT=name` SIGKILLs this process at the first hit of that point, `name:n` at the n-th.
SIGKILL (not an exception) because that is the fault to survive: no handler, no cleanup, no flush.
The points (tests/faults/ arms each in turn):

    claim             sweeps side: runs claimed in the store, nothing submitted yet
    step              an optimizer step of this process done, before its metrics (`step:n`: the n-th)
    checkpoint_tmp    a checkpoint's temporary file durable, not yet renamed into place
    checkpoint_saved  a checkpoint renamed into place
    summary_written   summary.json written, the final status not yet reported
    final_flush       the final status reported to the sink, before the last flush
    status_update     the worker is about to record how its run ended

Kept free of imports from the rest of the package so that model/, db/ and sweeps/ can all use it.
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "PARCAE_FAULT"
_hits: dict[str, int] = {}


def _armed() -> tuple[str, int] | None:
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    name, _, nth = value.partition(":")
    return name, int(nth) if nth else 1


def fault_point(name: str) -> None:
    """SIGKILL this process if PARCAE_FAULT arms `name` and this is its n-th hit."""
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == armed[1]:
        print(f"parcae fault: SIGKILL at {name} (hit {_hits[name]}, pid {os.getpid()})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
