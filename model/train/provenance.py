"""What produced a run: code, libraries, hardware and the arithmetic chosen, recorded with it.

`collect_provenance` is called by the training loop once per (re)start; the sink stores it
(run directory: provenance.json; store: the run's `provenance` column). It is provenance, not
identity: a run id hashes the scientific content of its spec (model/run_spec.py).
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

import parcae_scaling
from parcae_scaling.model.train.precision import PrecisionChoice, cpu_bf16_units

PROVENANCE_VERSION = 1


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree this package runs from (with "-dirty" if it has uncommitted
    changes), or None outside a git checkout (an installed wheel)."""
    root = Path(parcae_scaling.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _cuda_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def collect_provenance(device: torch.device, precision: PrecisionChoice, *, world_size: int = 1) -> dict[str, Any]:
    """A JSON-able record of this process: package version and commit, Python, torch, CUDA and
    driver, the device, the CPU's capability and bf16 units, host, threads and the precision."""
    cuda = device.type == "cuda"
    return {
        "provenance_version": PROVENANCE_VERSION,
        "package_version": parcae_scaling.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cuda_driver": _cuda_driver() if cuda else None,
        "device": device.type,
        "device_name": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_units": cpu_bf16_units(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "precision": precision.precision,
        "precision_reason": precision.reason,
    }
