"""Running one RunSpec on N ranks: the one way, for sweeps and for `train-one --nproc N`.

Every rank runs `rank_main` (role `rank` of sweeps/entry.py) with the same spec; `rank_sink` is the
one choice of sink: rank 0 writes the run directory, and for a sweep's run also the store
(`--store`, fenced on the worker's attempt); the other ranks write nothing (NullSink).

In a sweep one process, the worker (`worker.execute_run`), owns the run's store side: skipping
finished runs, the job id, the heartbeat, cancellation, SIGTERM and the classified failure.

    local     the worker starts torchrun (`start_local`) with `rank_main` on every rank and
              waits. A rank that dies makes torchrun stop the others; the worker then classifies
              the failure from the ranks' reports (`failure_from_reports`).
    submitit  one SLURM task per rank: task 0 is the worker and rank 0 at once (it trains in
              process), the other tasks call `train_rank` (process group from SLURM's environment).
    ray       the worker is a Ray task without CPUs of its own; Ray Train workers are the ranks
              (`ray_rank`, started by sweeps/backend_ray.py).

    python -m torch.distributed.run ... -m parcae_scaling.sweeps rank SPEC [--store URL --reports DIR]
"""

from __future__ import annotations

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

from parcae_scaling.db import RunDirSink, Store
from parcae_scaling.model.contracts import DEFAULT_HEARTBEAT_S, FailureKind, RunStatus
from parcae_scaling.model.run_spec import RunSpec
import parcae_scaling.sweeps.entry as entry

if TYPE_CHECKING:  # the training stack is imported lazily (the pool process never trains)
    from parcae_scaling.model.contracts import MetricsSink
    from parcae_scaling.model.contracts import RunResult

    TrainFn = Callable[[RunSpec, MetricsSink], RunResult]

STOP_GRACE_S = 30.0  # SIGTERM -> SIGKILL for ranks that do not stop


class RankFailure(RuntimeError):
    """A data-parallel run failed in one of its ranks; `failure_kind` is the classified kind
    (writer.classify stores it as is)."""

    def __init__(self, kind: FailureKind | str, message: str) -> None:
        super().__init__(message)
        self.failure_kind = FailureKind(kind).value


# ---- starting the ranks on this node (torchrun) --------------------------------------------

LAUNCH_SPEC_FILE = "launch_spec.json"  # the exact spec (with its process layout) the ranks read
LAUNCH_LOG_FILE = "launch.log"


def torchrun_command(spec_path: str | Path, *, nproc_per_node: int, **rank_options: Any) -> list[str]:
    """The single-node torchrun command line that trains the spec at `spec_path` on every rank
    (role `rank` of sweeps/entry.py with `rank_options`)."""
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "--monitor-interval=0.2", "-m", entry.MODULE, *entry.arguments("rank", spec=spec_path, **rank_options)]


# Exec `argv[2:]` with PR_SET_PDEATHSIG = SIGTERM: a launcher that dies, even by SIGKILL, takes
# torchrun (which stops its ranks on SIGTERM) with it instead of leaving a run training unseen.
_PARENT_DEATH_GUARD = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit('parcae: the launcher died before torchrun started'); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def _dies_with_this_process(cmd: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _PARENT_DEATH_GUARD, str(os.getpid()), *cmd]


def start_local(run: RunSpec, *, threads: int = 1, **rank_options: Any) -> subprocess.Popen[bytes]:
    """Start `run` on run.nproc_per_node local processes (nodes must be 1) in a session of their own
    (kill the group to stop them all); returns torchrun's process. `rank_options`: those of role
    `rank` in sweeps/entry.py (default: none, rank 0 writing the run directory only)."""
    if run.nodes != 1:
        raise ValueError(f"RunSpec.nodes is {run.nodes}; a local launch uses one node: use the submitit or "
                         "ray backend for several nodes, or set nodes=1")
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / LAUNCH_SPEC_FILE
    spec_path.write_text(run.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = open(out / LAUNCH_LOG_FILE, "ab")
    try:
        cmd = torchrun_command(spec_path, nproc_per_node=run.nproc_per_node, threads=threads, **rank_options)
        return subprocess.Popen(_dies_with_this_process(cmd), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    finally:
        log.close()  # the child holds its own descriptor


def wait_local(proc: subprocess.Popen[bytes], run: RunSpec, *, timeout_s: float | None = None) -> "RunResult":
    """Wait for a started launch; on timeout kill its whole session. Returns the run's summary."""
    from parcae_scaling.model.train.loop import SUMMARY_FILE
    from parcae_scaling.model.contracts import RunResult

    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every rank: nothing is left running
        proc.wait()
        raise RuntimeError(f"run {run.run_id} did not finish within {timeout_s} s; its processes were killed "
                           f"and the last checkpoint in {run.output_dir} remains for a resume") from None
    summary = Path(run.output_dir) / SUMMARY_FILE
    if code != 0 or not summary.exists():
        log = Path(run.output_dir) / LAUNCH_LOG_FILE
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"run {run.run_id}: torchrun exited with code {code}; relaunch to resume from the last "
                           f"checkpoint. Log tail ({log}):\n{tail}")
    return RunResult.from_dict(json.loads(summary.read_text()))


def launch_local(run: RunSpec, *, threads: int = 1, timeout_s: float | None = None) -> "RunResult":
    """Train `run` on run.nproc_per_node local processes and return its summary (raises on failure)."""
    return wait_local(start_local(run, threads=threads), run, timeout_s=timeout_s)


# ---- the ranks ----------------------------------------------------------------------------

@contextlib.contextmanager
def rank_sink(store_url: str | None, rank: int, *, heartbeat_s: float, run: RunSpec | None = None,
              attempt: int | None = None) -> Iterator["MetricsSink"]:
    """The one choice of sink for a rank. Any rank but 0: a NullSink (it computes, rank 0
    writes). Rank 0 of a sweep's run (`store_url`): the worker's sink (run directory and store,
    fenced on the worker's attempt, FAILED held back for the worker to classify). Rank 0 outside
    a sweep (`train-one`, no store): the run directory alone."""
    from parcae_scaling.model.contracts import NullSink
    from parcae_scaling.sweeps.claims import FencedStore, current_attempt
    from parcae_scaling.sweeps.writer import run_sink

    if rank != 0:
        yield NullSink()
        return
    if run is None:
        raise ValueError("rank_sink: rank 0 writes the run's directory (and store rows); pass run=")
    if store_url is None:
        with RunDirSink(run.output_dir) as files:
            yield files
        return
    store = Store.open(store_url)
    try:
        fenced = FencedStore(store, run.run_id, current_attempt(store, run.run_id) if attempt is None else attempt)
        with run_sink(fenced, run, heartbeat_s=heartbeat_s) as sink:
            yield sink
    finally:
        store.close()


def train_rank(run: RunSpec, store_url: str | None, *, rank: int, heartbeat_s: float,
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
        return RankFailure(FailureKind.NODE_LOST, f"rank(s) {silent} of {world_size} ended without a Python error "
                           f"(killed by a signal: SIGKILL, the OOM killer) and the other ranks were stopped{where}; "
                           "`parcae-sweep resume` continues from the last checkpoint")
    if silent:
        return RankFailure(FailureKind.ERROR, f"no rank of {world_size} reported how it ended{where}; see the log")
    causes = sorted((r for r in reports if r["kind"] != FailureKind.PREEMPTED), key=lambda r: r["time"])
    if not causes:
        return RankFailure(FailureKind.PREEMPTED, f"all {world_size} ranks were stopped by SIGTERM{where}")
    first = causes[0]
    return RankFailure(str(first["kind"]), f"rank {first['rank']}: {first['message']}{where}\n{first['traceback']}")


def rank_main(spec_path: str, *, store: str | None = None, reports: str | None = None, threads: int = 1,
              heartbeat_s: float = DEFAULT_HEARTBEAT_S, attempt: int | None = None) -> int:
    """One rank under torchrun (role `rank` of sweeps/entry.py; a sweep's run, or `train-one
    --nproc N`): train (rank 0 also writes `store`, a sweep's run); on a failure leave a report in
    `reports` for the worker and exit 1."""
    import torch

    from parcae_scaling.model.train.distributed import environ_rank
    from parcae_scaling.sweeps.writer import install_sigterm

    torch.set_num_threads(threads)
    run = RunSpec.from_json(Path(spec_path).read_text())
    rank = environ_rank()
    install_sigterm()  # torchrun stops the survivors of a failed rank with SIGTERM
    try:
        train_rank(run, store, rank=rank, heartbeat_s=heartbeat_s, attempt=attempt)
    except BaseException as exc:
        # torchrun's SIGTERM to the survivors may land while this rank handles its own error: the
        # report must still be written (a rank without one would count as killed)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if reports:
            write_report(Path(reports), rank, exc)
        traceback.print_exc()
        return 1
    return 0  # also for diverged: rank 0 has stored that status


def current_rank() -> int:
    """Global rank of this process: from an initialised group (Ray Train), else the launcher's env."""
    import torch.distributed as dist

    from parcae_scaling.model.train.distributed import environ_rank

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else environ_rank()


def ray_rank(config: dict[str, Any]) -> None:
    """A Ray Train worker: one rank of the run (Ray Train has formed the process group)."""
    import torch


    torch.set_num_threads(int(config.get("threads", 1)))
    run = RunSpec.from_json(config["spec"])
    result = train_rank(run, config.get("store_url"), rank=current_rank(),
                        heartbeat_s=float(config.get("heartbeat_s", 10.0)), attempt=config.get("attempt"))
    if config.get("store_url") is None and result.status is not RunStatus.SUCCEEDED:  # no worker classifies it
        raise RuntimeError(f"run {run.run_id} ended {result.status.value}: {result.message}")


# ---- the worker's side ----------------------------------------------------------------------

def run_summary(run: RunSpec) -> "RunResult":
    from parcae_scaling.model.train.loop import SUMMARY_FILE
    from parcae_scaling.model.contracts import RunResult

    path = Path(run.output_dir) / SUMMARY_FILE
    if not path.exists():
        raise RankFailure(FailureKind.ERROR, f"run {run.run_id}: every rank ended cleanly but {path} is missing")
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


def train_local(run: RunSpec, store_url: str, *, threads: int = 1,
                heartbeat_s: float = DEFAULT_HEARTBEAT_S, attempt: int | None = None) -> "RunResult":
    """Train `run` on run.nproc_per_node local processes (torchrun); raises RankFailure if a rank
    failed, and stops every rank when this process is interrupted (SIGTERM: cancel, preemption)."""

    reports = Path(tempfile.mkdtemp(prefix=f"parcae-ranks-{run.run_id}-"))
    try:
        proc = start_local(run, threads=threads, store=store_url, reports=reports, heartbeat=heartbeat_s,
                           attempt=attempt)
        try:
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        if code == 0:
            return run_summary(run)
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

