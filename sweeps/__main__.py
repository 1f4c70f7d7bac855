"""`python -m parcae_scaling.sweeps ROLE ...`: one internal process (the roles of sweeps/entry.py)."""

import sys

from parcae_scaling.sweeps.backend_local import pool_main
from parcae_scaling.sweeps.entry import parse
from parcae_scaling.sweeps.ranks import rank_main
from parcae_scaling.sweeps.worker import worker_main


def main(argv: list[str] | None = None) -> int:
    role, a = parse(argv)
    if role == "worker":
        return worker_main(a.store, a.run_id, threads=a.threads, attempt=a.attempt)
    if role == "pool":
        return pool_main(a.store, a.manifest, max_workers=a.max_workers, threads=a.threads,
                         gpus_per_run=a.gpus_per_run, heartbeat_s=a.heartbeat)
    return rank_main(a.spec, store=a.store, reports=a.reports, threads=a.threads, heartbeat_s=a.heartbeat,
                     attempt=a.attempt)


if __name__ == "__main__":
    sys.exit(main())
