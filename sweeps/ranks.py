"""Data-parallel runs in a sweep: one supervising worker, N ranks, one writer.

A run with `RunSpec.world_size` > 1 trains on several processes. In every backend one process,
the worker (`worker.execute_run`), owns the run's store side: skipping finished runs, the job id,
the heartbeat, cancellation, SIGTERM and the classified failure. Rank 0 writes metrics, evals
and the running / succeeded / diverged status through a StoreSink; the other ranks never open
the store (NullSink), so nothing is written twice.

    local     the worker starts torchrun (model/dist_launch.start_local) with `rank_main` on every
              rank and waits. A rank that dies makes torchrun stop the others; the worker then
              classifies the failure from the ranks' reports (`failure_from_reports`).
    submitit  one SLURM task per rank: task 0 is the worker and rank 0 at once (it trains in
              process), the other tasks call `train_rank` (process group from SLURM's environment).
    ray       the worker is a Ray task without CPUs of its own; Ray Train workers are the ranks.

    python -m parcae_scaling.sweeps.ranks SPEC --store URL --reports DIR   (per rank, under torchrun)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from parcae_scaling.db import Store
from parcae_scaling.model.run_spec import RunSpec

if TYPE_CHECKING:  # the training stack is imported lazily (the pool process never trains)
    from parcae_scaling.model.contracts import MetricsSink
    from parcae_scaling.model.contracts import RunResult

    TrainFn = Callable[[RunSpec, MetricsSink], RunResult]

_ENTRY = "parcae_scaling.sweeps.ranks"
STOP_GRACE_S = 30.0  # SIGTERM -> SIGKILL for ranks that do not stop
_RAY_LOST = ("ActorDiedError", "RayActorError", "WorkerCrashedError", "NodeDiedError", "ActorUnavailableError")


class RankFailure(RuntimeError):
    """A data-parallel run failed in one of its ranks; `failure_kind` is the classified kind
    (writer.classify stores it as is)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.failure_kind = kind


# ---- the ranks ----------------------------------------------------------------------------

@contextlib.contextmanager
def rank_sink(store_url: str, rank: int, *, heartbeat_s: float, run: RunSpec | None = None,
              attempt: int | None = None) -> Iterator["MetricsSink"]:
    """Rank 0: the worker's sink (run directory and store, fenced on the worker's attempt,
    FAILED held back for the worker to classify); any other rank: a NullSink, without opening
    the store."""
    from parcae_scaling.model.contracts import NullSink
    from parcae_scaling.sweeps.claims import FencedStore, current_attempt
    from parcae_scaling.sweeps.writer import run_sink

    if rank != 0:
        yield NullSink()
        return
    store = Store.open(store_url)
    try:
        if run is None:
            raise ValueError("rank_sink: rank 0 writes the run's directory and store rows; pass run=")
        fenced = FencedStore(store, run.run_id, current_attempt(store, run.run_id) if attempt is None else attempt)
        with run_sink(fenced, run, heartbeat_s=heartbeat_s) as sink:
            yield sink
    finally:
        store.close()


def train_rank(run: RunSpec, store_url: str, *, rank: int, heartbeat_s: float,
               attempt: int | None = None) -> "RunResult":
    """Train this process's rank of `run` (every rank calls this with the same spec)."""
    from parcae_scaling.model.train.loop import train_run

    with rank_sink(store_url, rank, heartbeat_s=heartbeat_s, run=run, attempt=attempt) as sink:
        return train_run(run, sink)


def write_report(reports: Path, rank: int, exc: BaseException) -> None:
    """Record how this rank ended (atomically) for the worker's classification."""
    from parcae_scaling.sweeps.writer import classify

    report = {"rank": rank, "kind": classify(exc), "message": f"{type(exc).__name__}: {exc}",
              "traceback": "".join(traceback.format_exception(exc))[-3000:], "time": time.time()}
    reports.mkdir(parents=True, exist_ok=True)
    tmp = reports / f".rank-{rank}.json.tmp"
    tmp.write_text(json.dumps(report))
    tmp.replace(reports / f"rank-{rank}.json")


def read_reports(reports: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(reports.glob("rank-*.json"))]


def failure_from_reports(reports: Sequence[Mapping[str, Any]], *, world_size: int, exit_code: int,
                         log: str = "") -> RankFailure:
    """The run's failure from its ranks' reports. A rank without a report died without a Python
    error (SIGKILL, the OOM killer): node_lost, resumable like a lost single-process worker. Else
    the earliest report that is not a SIGTERM the launcher sent after the first failure."""
    where = f" (torchrun exit code {exit_code}; log: {log})" if log else f" (exit code {exit_code})"
    ranks = {int(r["rank"]) for r in reports}
    silent = [r for r in range(world_size) if r not in ranks]
    if silent and len(silent) < world_size:
        return RankFailure("node_lost", f"rank(s) {silent} of {world_size} ended without a Python error (killed by "
                           f"a signal: SIGKILL, the OOM killer) and the other ranks were stopped{where}; "
                           "`parcae-sweep resume` continues from the last checkpoint")
    if silent:
        return RankFailure("error", f"no rank of {world_size} reported how it ended{where}; see the log")
    causes = sorted((r for r in reports if r["kind"] != "preempted"), key=lambda r: r["time"])
    if not causes:
        return RankFailure("preempted", f"all {world_size} ranks were stopped by SIGTERM{where}")
    first = causes[0]
    return RankFailure(str(first["kind"]), f"rank {first['rank']}: {first['message']}{where}\n{first['traceback']}")


def rank_main(argv: Sequence[str] | None = None) -> int:
    """Per-rank entry point under torchrun: train, and on any failure leave a report."""
    import torch

    from parcae_scaling.model.train.distributed import environ_rank
    from parcae_scaling.sweeps.writer import install_sigterm

    p = argparse.ArgumentParser(prog=_ENTRY)
    p.add_argument("spec")
    p.add_argument("--store", required=True)
    p.add_argument("--reports", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--attempt", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = RunSpec.from_json(Path(args.spec).read_text())
    rank = environ_rank()
    install_sigterm()  # torchrun stops the survivors of a failed rank with SIGTERM
    try:
        train_rank(run, args.store, rank=rank, heartbeat_s=args.heartbeat, attempt=args.attempt)
    except BaseException as exc:
        # torchrun's SIGTERM to the survivors may land while this rank handles its own error: the
        # report must still be written (a rank without one would count as killed)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        write_report(Path(args.reports), rank, exc)
        traceback.print_exc()
        return 1
    return 0  # also for diverged: rank 0 has stored that status


# ---- the worker's side ----------------------------------------------------------------------

def _summary(run: RunSpec) -> "RunResult":
    from parcae_scaling.model.train.loop import SUMMARY_FILE
    from parcae_scaling.model.contracts import RunResult

    path = Path(run.output_dir) / SUMMARY_FILE
    if not path.exists():
        raise RankFailure("error", f"run {run.run_id}: every rank ended cleanly but {path} is missing")
    return RunResult.from_dict(json.loads(path.read_text()))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM torchrun and every rank (their own session), SIGKILL what outlives the grace."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def train_local(run: RunSpec, store_url: str, *, threads: int = 1, heartbeat_s: float = 10.0,
                attempt: int | None = None) -> "RunResult":
    """Train `run` on run.nproc_per_node local processes (torchrun); raises RankFailure if a rank
    failed, and stops every rank when this process is interrupted (SIGTERM: cancel, preemption)."""
    from parcae_scaling.sweeps.dist_launch import LAUNCH_LOG_FILE, start_local

    reports = Path(tempfile.mkdtemp(prefix=f"parcae-ranks-{run.run_id}-"))
    try:
        fence = ("--attempt", str(attempt)) if attempt is not None else ()
        proc = start_local(run, threads=threads, entry=_ENTRY,
                           args=("--store", store_url, "--reports", str(reports),
                                 "--heartbeat", str(heartbeat_s), *fence))
        try:
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        if code == 0:
            return _summary(run)
        raise failure_from_reports(read_reports(reports), world_size=run.world_size, exit_code=code,
                                   log=str(Path(run.output_dir) / LAUNCH_LOG_FILE))
    finally:
        shutil.rmtree(reports, ignore_errors=True)


def torchrun_trainer(store_url: str, *, threads: int, heartbeat_s: float, attempt: int | None = None) -> "TrainFn":
    """execute_run's trainer for a multi-process run on this node (the worker's sink stays unused:
    rank 0 writes the metrics, fenced on the worker's attempt)."""
    def train(run: RunSpec, sink: "MetricsSink") -> "RunResult":
        return train_local(run, store_url, threads=threads, heartbeat_s=heartbeat_s, attempt=attempt)

    return train


def _ray_rank(config: dict[str, Any]) -> None:
    """A Ray Train worker: one rank of the run (Ray Train has formed the process group)."""
    import torch

    from parcae_scaling.sweeps.dist_launch import current_rank

    torch.set_num_threads(int(config["threads"]))
    run = RunSpec.from_json(config["spec"])
    train_rank(run, config["store_url"], rank=current_rank(), heartbeat_s=float(config["heartbeat_s"]),
               attempt=config.get("attempt"))


def ray_trainer(store_url: str, *, threads: int, heartbeat_s: float, use_gpu: bool,
                cpus_per_worker: float, attempt: int | None = None) -> "TrainFn":
    """execute_run's trainer for a multi-process run on Ray Train (one placement group of
    run.world_size workers); a lost Ray worker is node_lost, any other failure classified."""
    from parcae_scaling.sweeps.dist_launch import ray_train_run

    def train(run: RunSpec, sink: "MetricsSink") -> "RunResult":
        try:
            ray_train_run(run, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, worker=_ray_rank,
                          config={"store_url": store_url, "heartbeat_s": heartbeat_s, "threads": threads,
                                  "attempt": attempt})
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            kind = ("node_lost" if any(name in text for name in _RAY_LOST)
                    else "oom" if "out of memory" in text.lower() else "error")
            raise RankFailure(kind, f"run {run.run_id} under Ray Train: {text}") from exc
        return _summary(run)

    return train


if __name__ == "__main__":
    sys.exit(rank_main())
