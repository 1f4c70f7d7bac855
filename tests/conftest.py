"""Fixtures every test folder shares: the real single-node SLURM cluster (one per session).

It is started by tests/services/slurm.sh (Debian slurmctld/slurmd/munge, installed if missing,
root only); SLURM tests skip with the reason when it cannot start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from services.service import running_service

SLURM_SERVICE = Path(__file__).resolve().parent / "services" / "slurm.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """SLURM_CONF path of a private single-node cluster (exported for submitit's sbatch/squeue)."""
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM test cluster needs root (slurmd)")
    with running_service(SLURM_SERVICE, "SLURM test cluster", start_timeout_s=900) as conf:
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = conf
        try:
            yield conf
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old
