"""Start a test service script (tests/services/*.sh start|stop WORKDIR) for a fixture's lifetime.

Shared by the PostgreSQL and SLURM fixtures (imported by file path: tests are not a package).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def running_service(script: Path, label: str, *, start_timeout_s: float, world_readable: bool = False) -> Iterator[str]:
    """Yield the last line `script start WORKDIR` prints (a URL or a config path); stop the
    service and remove its work dir afterwards. Skips the requesting tests, with the script's
    reason, when the service cannot start."""
    workdir = tempfile.mkdtemp(prefix=f"parcae-{script.stem}-")
    if world_readable:  # e.g. PostgreSQL runs as its own user and must enter the dir
        Path(workdir).chmod(0o755)
    try:
        proc = subprocess.run(["bash", str(script), "start", workdir], capture_output=True, text=True,
                              timeout=start_timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"{label} could not start: {err}")
    if proc.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"{label} could not start: {proc.stderr.strip()[-500:]}")
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(script), "stop", workdir], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)
