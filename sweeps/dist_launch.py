"""Start one RunSpec on N local processes with torchrun; the per-rank entry point.

`launch_local(run)` writes the spec beside the run, starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m parcae_scaling.sweeps.dist_launch
<spec>` in its own session and waits. torchrun watches the ranks: if one dies (even by SIGKILL)
it stops the others and exits non-zero, so a failed rank never leaves the run hanging; the
checkpoint left behind lets the next launch resume (with any world size dividing the global batch).

The entry point also serves multi-node launches: under SLURM run it once per task with
`srun` (model/train/distributed.py exports the layout via submitit), or per node through torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from parcae_scaling.model.run_spec import RunSpec

if TYPE_CHECKING:  # the training stack is imported lazily, in the ranks
    from parcae_scaling.model.contracts import RunResult

LAUNCH_SPEC_FILE = "launch_spec.json"  # the exact spec (with its process layout) the ranks read
LAUNCH_LOG_FILE = "launch.log"
_ENTRY = "parcae_scaling.sweeps.dist_launch"


def torchrun_command(spec_path: str | Path, *, nproc_per_node: int, threads: int = 1, entry: str = _ENTRY,
                     args: Sequence[str] = ()) -> list[str]:
    """The single-node torchrun command line that trains the spec at `spec_path` with the per-rank
    entry module `entry` (`python -m entry SPEC --threads=N *args` on every rank)."""
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "--monitor-interval=0.2", "-m", entry, str(spec_path), f"--threads={threads}", *args]


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


def start_local(run: RunSpec, *, threads: int = 1, entry: str = _ENTRY,
                args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start `run` on run.nproc_per_node local processes (nodes must be 1) in a session of their own
    (kill the group to stop them all); returns torchrun's process. `entry`/`args`: the per-rank
    module and its extra arguments (default: this module, rank 0 writing the run directory)."""
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
        cmd = torchrun_command(spec_path, nproc_per_node=run.nproc_per_node, threads=threads, entry=entry, args=args)
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


def main(argv: list[str] | None = None) -> int:
    """Per-rank entry point: train the spec; rank 0 alone writes the run directory's metrics."""
    import argparse

    import torch

    from parcae_scaling.db.files import RunDirSink
    from parcae_scaling.model.contracts import RunStatus
    from parcae_scaling.model.train.distributed import environ_rank
    from parcae_scaling.model.contracts import NullSink
    from parcae_scaling.model.train.loop import train_run

    parser = argparse.ArgumentParser(prog=_ENTRY)
    parser.add_argument("spec")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = RunSpec.from_json(Path(args.spec).read_text())
    if environ_rank() == 0:
        with RunDirSink(run.output_dir) as sink:
            result = train_run(run, sink)
    else:
        result = train_run(run, NullSink())
    return 0 if result.status == RunStatus.SUCCEEDED else 1


def slurm_task_layout(run: RunSpec, *, gpus: bool) -> dict[str, int]:
    """submitit parameters for one multi-process run: one SLURM task per rank (each task calls
    the job's function, which trains with `train_run` after model/train/distributed.py exports the
    layout from SLURM's environment through submitit's TorchDistributedEnvironment)."""
    layout = {"nodes": run.nodes, "tasks_per_node": run.nproc_per_node}
    if gpus:
        layout["gpus_per_node"] = run.nproc_per_node
    return layout


def current_rank() -> int:
    """Global rank of this process: from an initialised group (Ray Train), else the launcher's env."""
    import torch.distributed as dist

    from parcae_scaling.model.train.distributed import environ_rank

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else environ_rank()


def ray_train_run(run: RunSpec, *, use_gpu: bool = False, cpus_per_worker: float = 1.0,
                  storage_path: str | None = None, worker: Callable[[dict[str, Any]], None] | None = None,
                  config: Mapping[str, Any] | None = None) -> None:
    """Train `run` on run.world_size Ray workers (one placement group) through Ray Train's
    TorchTrainer, which forms the process group before `train_run` reuses it. Each worker calls
    `worker({"spec": <run JSON>, **config})`; the default has rank 0 write the run directory's
    JSON-lines metrics. Raises if the run did not succeed."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        worker or _ray_worker, train_loop_config={**(config or {}), "spec": run.to_json()},
        scaling_config=ScalingConfig(num_workers=run.world_size, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"parcae-{run.run_id}",
                             storage_path=storage_path or str(Path(run.output_dir).resolve())),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"run {run.run_id} failed under Ray Train: {result.error}")


def _ray_worker(config: dict[str, str]) -> None:
    import torch

    from parcae_scaling.db.files import RunDirSink
    from parcae_scaling.model.contracts import RunStatus
    from parcae_scaling.model.contracts import NullSink
    from parcae_scaling.model.train.loop import train_run

    torch.set_num_threads(1)
    run = RunSpec.from_json(config["spec"])
    if current_rank() == 0:
        with RunDirSink(run.output_dir) as sink:
            result = train_run(run, sink)
    else:
        result = train_run(run, NullSink())
    if result.status != RunStatus.SUCCEEDED:
        raise RuntimeError(f"run {run.run_id} ended {result.status.value}: {result.message}")


if __name__ == "__main__":
    sys.exit(main())
