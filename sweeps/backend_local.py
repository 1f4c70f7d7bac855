"""The local backend: a pool process running one worker subprocess per run, with a cap.

`submit` starts `python -m parcae_scaling.sweeps pool` (sweeps/entry.py) and returns; with
detach the pool runs in its own session and outlives the caller. The pool heartbeats the runs it
still holds in its queue (so a killed pool leaves them stale, hence resumable), starts at most
`max_concurrent` processes, and on a GPU machine gives each process `gpus_per_run` GPUs via
CUDA_VISIBLE_DEVICES. A data-parallel run of N processes takes N of those slots (and N GPU
groups); its worker starts the ranks through torchrun (sweeps/ranks.py). A run's job id is
`pid:<host>:<pid>` of its worker; cancel sends SIGTERM, which the worker passes to its ranks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

from parcae_scaling.db import RunStatus, Store
from parcae_scaling.model.run_spec import RunSpec, plan_tokens
from parcae_scaling.sweeps.backend import BackendError, DispatchOptions, JobHandle
import parcae_scaling.sweeps.entry as entry
from parcae_scaling.sweeps.claims import release_unstarted, run_status, touch
from parcae_scaling.sweeps.worker import HEARTBEAT_ENV


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; treat it as ended.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def parse_job_id(job_id: str) -> tuple[str, int] | None:
    parts = job_id.split(":")
    if len(parts) == 3 and parts[0] == "pid" and parts[2].isdigit():
        return parts[1], int(parts[2])
    return None


class LocalBackend:
    name = "local"
    can_detach = True

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def submit(self, runs: Sequence[RunSpec], options: DispatchOptions) -> list[JobHandle]:
        if not runs:
            return []
        cap = options.resources.max_concurrent
        for r in runs:
            if r.nodes != 1:
                raise BackendError(f"run {r.run_id} spans {r.nodes} nodes; the local backend runs on one node: "
                                   "set resources.nodes: 1, or use --backend submitit or ray")
            if r.world_size > cap:
                raise BackendError(f"run {r.run_id} needs {r.world_size} processes but resources.max_concurrent "
                                   f"(the local pool's process cap) is {cap}; raise max_concurrent to "
                                   f">= {r.world_size} (or --max-concurrent)")
        runs = longest_first(runs)
        log_dir = Path(options.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        manifest = log_dir / f"pool-{os.getpid()}-{time.time_ns()}.json"
        manifest.write_text(json.dumps({"run_ids": [r.run_id for r in runs], "slots": [r.world_size for r in runs],
                                        "attempts": [options.attempts.get(r.run_id) for r in runs]}))
        cmd = entry.command("pool", store=options.store_url, manifest=manifest,
                            max_workers=options.resources.max_concurrent, threads=options.resources.torch_threads,
                            gpus_per_run=options.resources.gpus_per_run, heartbeat=options.heartbeat_s)
        log = open(log_dir / f"{manifest.stem}.log", "ab")
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=options.detach)
        finally:
            log.close()
        handles = [JobHandle(run_id=r.run_id, backend=self.name, job_id=f"pool:{socket.gethostname()}:{proc.pid}")
                   for r in runs]
        self._children.append(proc)  # keeps the Popen so its exit is reaped
        return handles

    def poll(self, job_ids: Sequence[str]) -> dict[str, RunStatus | None]:
        for child in self._children:
            child.poll()
        out: dict[str, RunStatus | None] = {}
        for job_id in job_ids:
            parsed = parse_job_id(job_id.replace("pool:", "pid:"))
            alive = parsed is not None and parsed[0] == socket.gethostname() and _pid_alive(parsed[1])
            out[job_id] = RunStatus.RUNNING if alive else None
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            parsed = parse_job_id(job_id)
            if parsed and parsed[0] == socket.gethostname() and _pid_alive(parsed[1]):
                os.kill(parsed[1], signal.SIGTERM)




def longest_first(runs: Sequence[RunSpec]) -> list[RunSpec]:
    """Queue order: most planned FLOPs per process first (longest-processing-time scheduling), so
    the pool does not end on one long run while the other slots idle; ties keep the plan's order."""
    return sorted(runs, key=lambda r: -plan_tokens(r).planned_flops / r.world_size)


# ---- the pool process ---------------------------------------------------------------------

def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def run_pool(store_url: str, run_ids: list[str], *, max_workers: int, threads: int, gpus_per_run: int,
             heartbeat_s: float, slots: list[int] | None = None, attempts: list[int | None] | None = None) -> int:
    """Run every queued run, in order, with at most `max_workers` processes at once (a run of
    world size N, `slots[i]`, takes N); returns how many failed. SIGTERM or SIGINT stops it: the
    workers get SIGTERM, and runs still queued become PREEMPTED at once (resumable)."""
    store = Store.open(store_url)
    need = dict(zip(run_ids, slots or [1] * len(run_ids)))
    attempt_of = dict(zip(run_ids, attempts or [None] * len(run_ids)))
    queue = list(run_ids)
    gpus = list(range(_gpu_count())) if gpus_per_run > 0 else []
    if gpus:  # GPU packing: never more processes than whole GPU groups
        max_workers = min(max_workers, len(gpus) // gpus_per_run) or 1
    running: dict[subprocess.Popen[bytes], tuple[list[int], int, str]] = {}
    failures = 0
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # Ctrl-C reaches the whole process group: stop like SIGTERM
    last_beat = 0.0
    released = False
    while (queue and not stop) or running:
        for proc in [p for p in running if p.poll() is not None]:
            failures += proc.returncode != 0
            gpus += running.pop(proc)[0]
        if queue and not stop and not running and need[queue[0]] > max_workers:  # would wait forever
            run_id = queue.pop(0)
            store.update_run(run_id, status=RunStatus.FAILED, failure_kind="error",
                             message=f"needs {need[run_id]} processes x {gpus_per_run} GPU(s) but this machine fits "
                                     f"{max_workers}; lower resources.nproc_per_node or run it on SLURM/Ray")
            failures += 1
        while queue and not stop and sum(n for _, n, _ in running.values()) + need[queue[0]] <= max_workers:
            run_id = queue.pop(0)
            if run_status(store, run_id) is not RunStatus.PENDING:
                continue  # cancelled (or taken over) while queued: starting a worker would be waste
            env = {**os.environ, HEARTBEAT_ENV: str(heartbeat_s), "OMP_NUM_THREADS": str(threads)}
            mine = [gpus.pop(0) for _ in range(gpus_per_run * need[run_id])] if gpus else []
            if mine:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, mine))
            cmd = entry.command("worker", store=store_url, run_id=run_id, threads=threads,
                                attempt=attempt_of.get(run_id))
            running[subprocess.Popen(cmd, env=env)] = (mine, need[run_id], run_id)
        if stop and queue and not released:
            known = {rid: a for rid, a in attempt_of.items() if rid in queue and a is not None}
            release_unstarted(store, known, message="the local pool was stopped (SIGTERM/SIGINT) before the run "
                                                     "started; `parcae-sweep resume` starts it")
            released = True
        if stop:
            for proc in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        if time.monotonic() - last_beat >= heartbeat_s:
            # queued runs, and started ones until their worker reports, stay alive while we are
            touch(store, queue + [rid for _, _, rid in running.values()], status=RunStatus.PENDING)
            last_beat = time.monotonic()
        time.sleep(0.2)
    store.close()
    return failures


def pool_main(store_url: str, manifest_path: str, *, max_workers: int, threads: int, gpus_per_run: int,
              heartbeat_s: float) -> int:
    """The pool process (sweeps/entry.py role `pool`): run the manifest's runs; exit status 0 if
    none failed."""
    manifest = json.loads(Path(manifest_path).read_text())
    failed = run_pool(store_url, manifest["run_ids"], max_workers=max_workers, threads=threads,
                      gpus_per_run=gpus_per_run, heartbeat_s=heartbeat_s, slots=manifest.get("slots"),
                      attempts=manifest.get("attempts"))
    return 1 if failed else 0
