"""The worker side of every backend: run one RunSpec into the store, heartbeating, and
classify how it ended.

`execute_run` is what a local subprocess, a SLURM job (through submitit) and a Ray task all
call. It skips runs already succeeded or cancelled, heartbeats from a thread, turns SIGTERM into
a clean "preempted" stop (the periodic checkpoint is where `resume` picks up), and records the
failure kind (diverged, oom, error with traceback) itself: the training loop's own FAILED event
is held back so that the classified one is the one stored. Ctrl-C (KeyboardInterrupt) is a
preemption too: resumable by default.

One attempt, one writer: the worker writes under the attempt number its dispatcher claimed
(claims.FencedStore: a superseded attempt's writes are refused and it stops), and it holds an
exclusive lock on `<output_dir>/worker.lock` for its lifetime, so a second worker on the same
directory fails at once (kind "locked") instead of training alongside.

Everything the run reports also goes to its output directory (db/files.RunDirSink: append-only
metrics.jsonl, evals.jsonl, status.jsonl), so a finished run directory is complete on its own:
a worker that finds its run already finished there (summary.json) ingests it into the store
instead of training again (a new store beside old runs, a kill before the final report).

    python -m parcae_scaling.sweeps worker --store sqlite:///parcae.sqlite --run-id <id> [--attempt N]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from parcae_scaling.db import RunStatus, Store, Superseded
from parcae_scaling.db.files import METRICS_FILE
from parcae_scaling.faults import fault_point
from parcae_scaling.model.contracts import DEFAULT_HEARTBEAT_S, FailureKind
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.claims import FencedStore, current_attempt, run_status
from parcae_scaling.sweeps.writer import Terminated, classify, install_sigterm, run_sink

HEARTBEAT_ENV = "PARCAE_HEARTBEAT_S"
# Dispatch benchmark only (bench/dispatch_overhead.py): record the run as succeeded without training.
NOOP_ENV = "PARCAE_NOOP_RUNS"
LOCK_FILE = "worker.lock"


class OutputDirLocked(RuntimeError):
    """Another live worker holds the run's output directory. Not retried by plain `resume`:
    the holder is still training (or stopping), and a retry now would fail the same way."""

    failure_kind = FailureKind.LOCKED.value


def _heartbeat_loop(store: FencedStore, run_id: str, every_s: float, stop: threading.Event) -> None:
    """Beat, and stop this process when the run was cancelled in the store or its attempt was
    superseded: `cancel` then works on every backend from any shell, native cancellation is
    only the fast path. A failed beat is retried at the next one; the first is logged."""
    logged = False
    while not stop.wait(every_s):
        try:
            store.heartbeat(run_id)
            if run_status(store.store, run_id) is RunStatus.CANCELLED:
                os.kill(os.getpid(), signal.SIGTERM)
                return
        except Superseded as exc:  # no signal (an exception mid-write could strand a transaction):
            # the training's next write through the fenced sink raises Superseded and stops it
            print(f"parcae worker: {exc}", file=sys.stderr, flush=True)
            return
        except Exception as exc:  # a missed beat is harmless; a dead process is what stale detection is for
            if not logged:
                print(f"parcae worker: run {run_id}: heartbeat failed ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:300]}); retrying every {every_s:g} s", file=sys.stderr, flush=True)
                logged = True


def _announce_resume(run: RunSpec) -> None:
    """One log line saying where a restarted run picks up (the job logs then show every resume)."""
    from parcae_scaling.model.train.checkpoint import CHECKPOINT_FILE

    if (Path(run.output_dir) / CHECKPOINT_FILE).exists():
        import torch

        try:
            step = torch.load(Path(run.output_dir) / CHECKPOINT_FILE,
                              weights_only=True, map_location="cpu")["schedule"]["step"]
        except Exception as exc:  # train_run reports an unreadable checkpoint properly; this is only a log line
            step = f"? ({type(exc).__name__})"
        print(f"parcae worker: run {run.run_id} resumes from its checkpoint at step {step}",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def lock_output_dir(run: RunSpec, attempt: int) -> Iterator[None]:
    """Hold an exclusive flock on the run's output directory for this block (released by the
    kernel if this process dies); OutputDirLocked at once if another process holds it."""
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    f: IO[str] = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise OutputDirLocked(
                f"{path} is held by another worker ({holder}), which is still running run {run.run_id}; this "
                f"worker (attempt {attempt}, pid {os.getpid()}) did not start; wait for that process to end, then "
                "`parcae-sweep resume SWEEP --include-failed`") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, attempt {attempt}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def _finished_summary(run: RunSpec) -> Any | None:
    """The run's summary.json result if it records this run as succeeded, else None."""
    from parcae_scaling.model.train.loop import SUMMARY_FILE
    from parcae_scaling.model.contracts import RunResult

    path = Path(run.output_dir) / SUMMARY_FILE
    if not path.exists():
        return None
    done = RunResult.from_dict(json.loads(path.read_text()))
    return done if done.status is RunStatus.SUCCEEDED and run.has_id(done.run_id) else None


def _ingest_finished(run: RunSpec, fenced: FencedStore, done: Any) -> RunStatus:
    """A run that finished in its output directory but not in the store: its metrics and evals
    from the directory (idempotent), its evals and status from summary.json."""
    out = Path(run.output_dir)
    has_metrics = (out / METRICS_FILE).exists()
    if has_metrics or any(out.glob("*.jsonl")):
        fenced.ingest_run_dir(out)
    fenced.log_evals(run.run_id, list(done.evals))
    note = ("its metrics, evals and status were ingested from the run directory" if has_metrics else
            f"its evals and status come from {out / 'summary.json'}; the directory holds no {METRICS_FILE} "
            "(written before runs kept their metrics there), so the store has no per-step metrics for it")
    print(f"parcae worker: run {run.run_id} had already finished in {out}: {note}", file=sys.stderr, flush=True)
    fenced.update_run(run.run_id, status=RunStatus.SUCCEEDED, step=done.steps_done)
    return RunStatus.SUCCEEDED


def execute_run(run: RunSpec, store_url: str, *, job_id: str | None = None, torch_threads: int = 1,
                heartbeat_s: float | None = None, train: Callable[..., Any] | None = None,
                interruption: Callable[[BaseException], str | None] | None = None,
                attempt: int | None = None) -> RunStatus:
    """Train `run` (resuming from its checkpoint) with metrics into the store; returns its final status.

    `attempt` is the attempt number the dispatcher claimed (claims.claim_runs); every write is
    fenced on it. None (a direct call) takes the run's current attempt.

    `interruption(exc)` lets a backend that knows more name the failure kind (submitit: timeout or
    preempted); None falls back to `classify`. A SIGTERM, Ctrl-C or a requeue exit leaves the run
    PREEMPTED.

    `train(run, sink) -> RunResult` defaults to `train_run` in this process, or for a
    multi-process run to torchrun on this node (sweeps/ranks.py: rank 0 writes the metrics)."""
    import torch

    from parcae_scaling.model.train.loop import train_run

    heartbeat_s = heartbeat_s or float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    store = Store.open(store_url)
    run_id = run.run_id
    try:
        attempt = current_attempt(store, run_id) if attempt is None else attempt
        if train is None and run.world_size > 1:
            from parcae_scaling.sweeps.ranks import torchrun_trainer

            train = torchrun_trainer(store_url, threads=torch_threads, heartbeat_s=heartbeat_s, attempt=attempt)
        torch.set_num_threads(torch_threads)
        fenced = FencedStore(store, run_id, attempt)
        current = run_status(store, run_id)
        if current in (RunStatus.SUCCEEDED, RunStatus.CANCELLED):
            return current
        try:
            with lock_output_dir(run, attempt):
                return _execute_locked(run, fenced, job_id=job_id, heartbeat_s=heartbeat_s,
                                       train=train or train_run, interruption=interruption)
        except OutputDirLocked as exc:
            fault_point("status_update")
            fenced.update_run(run_id, status=RunStatus.FAILED, failure_kind=exc.failure_kind, message=str(exc))
            raise
    except Superseded as exc:  # the run is another attempt's now: nothing of ours may be written
        print(f"parcae worker: {exc}", file=sys.stderr, flush=True)
        return RunStatus.PREEMPTED
    finally:
        store.close()


def _execute_locked(run: RunSpec, fenced: FencedStore, *, job_id: str | None, heartbeat_s: float,
                    train: Callable[..., Any],
                    interruption: Callable[[BaseException], str | None] | None) -> RunStatus:
    run_id = run.run_id
    fenced.update_run(run_id, job_id=job_id or f"pid:{socket.gethostname()}:{os.getpid()}")
    done = _finished_summary(run)
    if done is not None:
        return _ingest_finished(run, fenced, done)
    _announce_resume(run)
    if os.environ.get(NOOP_ENV) == "1":
        fenced.update_run(run_id, status=RunStatus.RUNNING)
        fenced.update_run(run_id, status=RunStatus.SUCCEEDED, message="no-op (dispatch benchmark)")
        return RunStatus.SUCCEEDED
    fenced.heartbeat(run_id)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(fenced, run_id, heartbeat_s, stop), daemon=True)
    beat.start()
    previous = install_sigterm()
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        with run_sink(fenced, run, heartbeat_s=heartbeat_s) as sink:
            result = train(run, sink)
        return result.status
    except Superseded:
        raise
    except BaseException as exc:
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C reaches the whole process group and the pool follows with SIGTERM: a second
            # signal must not cut short the recording of how the run ended.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kind = (interruption(exc) if interruption else None) or classify(exc)
        interrupted = kind == FailureKind.PREEMPTED or isinstance(exc, (Terminated, SystemExit, KeyboardInterrupt))
        if interrupted:
            fenced.check()  # superseded meanwhile: write nothing
            if run_status(fenced.store, run_id) is RunStatus.CANCELLED:
                return RunStatus.CANCELLED
        status = RunStatus.PREEMPTED if interrupted else RunStatus.FAILED
        message = f"{type(exc).__name__}: {exc}"
        if kind == FailureKind.ERROR and not hasattr(exc, "failure_kind"):  # a rank's failure carries its own traceback
            message += "\n" + "".join(traceback.format_exception(exc))[-4000:]
        fault_point("status_update")
        fenced.update_run(run_id, status=status, failure_kind=kind, message=message)
        if isinstance(exc, Terminated):
            return status
        raise
    finally:
        stop.set()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
            signal.signal(signal.SIGINT, previous_int)


def worker_main(store_url: str, run_id: str, *, threads: int = 1, attempt: int | None = None) -> int:
    """The worker process (sweeps/entry.py role `worker`): run the recorded run; exit status 0 if
    it succeeded."""
    try:
        store = Store.open(store_url)
        try:
            run = RunSpec.from_dict(store.run_spec(run_id))
        finally:
            store.close()
        status = execute_run(run, store_url, torch_threads=threads, attempt=attempt)
    except Exception as exc:  # the store holds the classified failure; the log gets one line
        print(f"parcae worker: run {run_id} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
              file=sys.stderr, flush=True)
        return 1
    return 0 if status is RunStatus.SUCCEEDED else 1
