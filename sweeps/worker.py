"""The worker side of every backend: run one RunSpec into the store, heartbeating, and
classify how it ended.

`execute_run` is what a local subprocess, a SLURM job (through submitit) and a Ray task all
call. It skips runs already succeeded or cancelled, heartbeats from a thread, turns SIGTERM into
a clean "preempted" stop (the periodic checkpoint is where `resume` picks up), and records the
failure kind (diverged, oom, error with traceback) itself: the training loop's own FAILED event
is held back so that the classified one is the one stored.

    python -m parcae_scaling.sweeps.worker --store sqlite:///parcae.sqlite --run-id <id>
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any, Callable, Mapping, Sequence

from parcae_scaling.db import EvalRow, RunStatus, Store, StoreSink
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.claims import run_status

HEARTBEAT_ENV = "PARCAE_HEARTBEAT_S"
# Dispatch benchmark only (bench/dispatch_overhead.py): record the run as succeeded without training.
NOOP_ENV = "PARCAE_NOOP_RUNS"
DEFAULT_HEARTBEAT_S = 10.0


class Terminated(BaseException):
    """SIGTERM arrived (cancel, preemption): not an Exception, so the loop does not swallow it."""


class _ClassifyingSink:
    """Pass everything to the store sink except FAILED statuses (the worker classifies those)."""

    def __init__(self, inner: StoreSink) -> None:
        self.inner = inner

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self.inner.log_metrics(run_id, step, values)

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        self.inner.log_evals(run_id, rows)

    def update_status(self, run_id: str, status: RunStatus, *, step: int | None = None,
                      message: str | None = None) -> None:
        if RunStatus(status) is not RunStatus.FAILED:
            self.inner.update_status(run_id, status, step=step, message=message)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


def classify(exc: BaseException) -> str:
    import torch

    if getattr(exc, "failure_kind", None):  # already classified (sweeps/ranks.RankFailure: a rank's failure)
        return str(exc.failure_kind)  # type: ignore[attr-defined]
    if isinstance(exc, (Terminated, SystemExit)):  # SystemExit: submitit's requeue on timeout/preemption
        return "preempted"
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return "oom"
    return "error"


def _heartbeat_loop(store: Store, run_id: str, every_s: float, stop: threading.Event) -> None:
    """Beat, and stop this process when the run was cancelled in the store: `cancel` then works
    on every backend from any shell, native cancellation is only the fast path."""
    while not stop.wait(every_s):
        try:
            store.heartbeat(run_id)
            if run_status(store, run_id) is RunStatus.CANCELLED:
                os.kill(os.getpid(), signal.SIGTERM)
                return
        except Exception:  # a missed beat is harmless; a dead process is what stale detection is for
            pass


def _install_sigterm() -> object | None:
    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _announce_resume(run: RunSpec) -> None:
    """One log line saying where a restarted run picks up (the job logs then show every resume)."""
    from pathlib import Path

    from parcae_scaling.model.checkpoint import CHECKPOINT_FILE

    if (Path(run.output_dir) / CHECKPOINT_FILE).exists():
        import torch

        try:
            step = torch.load(Path(run.output_dir) / CHECKPOINT_FILE, weights_only=True, map_location="cpu")["schedule"]["step"]
        except Exception as exc:  # train_run reports an unreadable checkpoint properly; this is only a log line
            step = f"? ({type(exc).__name__})"
        print(f"parcae worker: run {run.run_id} resumes from its checkpoint at step {step}", file=sys.stderr, flush=True)


def execute_run(run: RunSpec, store_url: str, *, job_id: str | None = None, torch_threads: int = 1,
                heartbeat_s: float | None = None, train: Callable[..., Any] | None = None,
                interruption: Callable[[BaseException], str | None] | None = None) -> RunStatus:
    """Train `run` (resuming from its checkpoint) with metrics into the store; returns its final status.

    `interruption(exc)` lets a backend that knows more name the failure kind (submitit: timeout or
    preempted); None falls back to `classify`. A SIGTERM or a requeue exit leaves the run PREEMPTED.

    `train(run, sink) -> RunResult` defaults to `train_run` in this process, or for a
    multi-process run to torchrun on this node (sweeps/ranks.py: rank 0 writes the metrics)."""
    import torch

    from parcae_scaling.model.train import train_run

    heartbeat_s = heartbeat_s or float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    if train is None and run.world_size > 1:
        from parcae_scaling.sweeps.ranks import torchrun_trainer

        train = torchrun_trainer(store_url, threads=torch_threads, heartbeat_s=heartbeat_s)
    torch.set_num_threads(torch_threads)
    store = Store.open(store_url)
    run_id = run.run_id
    try:
        current = run_status(store, run_id)
        if current in (RunStatus.SUCCEEDED, RunStatus.CANCELLED):
            return current
        store.update_run(run_id, job_id=job_id or f"pid:{socket.gethostname()}:{os.getpid()}")
        _announce_resume(run)
        if os.environ.get(NOOP_ENV) == "1":
            store.update_run(run_id, status=RunStatus.RUNNING)
            store.update_run(run_id, status=RunStatus.SUCCEEDED, message="no-op (dispatch benchmark)")
            return RunStatus.SUCCEEDED
        store.heartbeat(run_id)
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat_loop, args=(store, run_id, heartbeat_s, stop), daemon=True)
        beat.start()
        previous = _install_sigterm()
        try:
            with StoreSink(store, flush_interval_s=min(heartbeat_s, 10.0)) as sink:
                result = (train or train_run)(run, _ClassifyingSink(sink))
            return result.status
        except BaseException as exc:
            kind = (interruption(exc) if interruption else None) or classify(exc)
            interrupted = kind == "preempted" or isinstance(exc, (Terminated, SystemExit))
            if interrupted and run_status(store, run_id) is RunStatus.CANCELLED:
                return RunStatus.CANCELLED
            status = RunStatus.PREEMPTED if interrupted else RunStatus.FAILED
            message = f"{type(exc).__name__}: {exc}"
            if kind == "error" and not hasattr(exc, "failure_kind"):  # a rank's failure carries its own traceback
                message += "\n" + "".join(traceback.format_exception(exc))[-4000:]
            store.update_run(run_id, status=status, failure_kind=kind, message=message)
            if isinstance(exc, Terminated):
                return status
            raise
        finally:
            stop.set()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    store = Store.open(args.store)
    try:
        run = RunSpec.from_dict(store.run_spec(args.run_id))
    finally:
        store.close()
    try:
        status = execute_run(run, args.store, torch_threads=args.threads)
    except Exception:
        return 1
    return 0 if status is RunStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
