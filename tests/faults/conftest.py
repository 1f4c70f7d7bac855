"""Fixtures of the fault-injection suite: a tiny sweep, the parcae-sweep CLI as a subprocess
(with a fault armed through PARCAE_FAULT, see faults.py), an uninterrupted reference, and what
a store holds per run (status, attempts, job ids, losses, duplicate metric rows)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from sqlalchemy import text

from parcae_scaling.db import Store
from parcae_scaling.faults import FAULT_ENV
from parcae_testing import wait_for

SWEEP = "faults"
HEARTBEAT = "0.5"  # s: short, so lost runs go stale within seconds (the window must be >= 3 beats)
STALE_AFTER = "1.5"
CLI = [sys.executable, "-c", "from parcae_scaling.cli import sweep_app; sweep_app()"]


def _spec(root: Path) -> dict[str, Any]:
    """Two tiny runs (parcae-tiny-48 at mu_rec 1 and 2, seq_len 32, ~100 optimizer steps each),
    checkpointed every 20 steps, run side by side."""
    return {
        "name": SWEEP, "output_root": str(root / "runs"), "models": ["parcae-tiny-48"], "baselines": [],
        "model_overrides": {"seq_len": 32}, "tokens": [25600], "mu_rec": [1, 2],
        "recipe": {"batch_size": 8, "eval_tokens": 1024, "metrics_every_steps": 5, "checkpoint_every_steps": 20},
        "resources": {"max_concurrent": 2, "time_limit_min": 10, "mem_gb": 1},
    }


@dataclass(frozen=True)
class Sweep:
    """One copy of the tiny sweep: its spec file, store URL and directory."""

    root: Path
    spec: Path
    url: str
    name: str = SWEEP

    def cli(self, *args: str, fault: str | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `parcae-sweep ARGS --store URL` to the end (a fault kills some process of it)."""
        return subprocess.run([*CLI, *args, "--store", self.url], capture_output=True, text=True, timeout=timeout,
                              env=_env(fault, env), cwd=self.root)

    def start(self, *args: str, fault: str | None = None) -> subprocess.Popen[str]:
        """Start `parcae-sweep ARGS --store URL` as a terminal would: its own session and process
        group (so a signal reaches launch, its pool and workers alike) and SIGINT at its default
        (a non-interactive shell's `&` ignores it, and then Ctrl-C would test nothing)."""
        return subprocess.Popen([*CLI, *args, "--store", self.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_env(fault, None), cwd=self.root, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def launch(self, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli("launch", str(self.spec), "--heartbeat", HEARTBEAT, "--stale-after", STALE_AFTER,
                        *extra, fault=fault)

    def resume(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("resume", SWEEP, "--heartbeat", HEARTBEAT, "--stale-after", STALE_AFTER, *extra)

    def resume_until_done(self, rounds: int = 3) -> None:
        """Plain `resume` (no fault) until every run succeeded; a killed worker's run needs the
        stale window to pass before it is resumable, hence the short sleep."""
        for _ in range(rounds):
            time.sleep(float(STALE_AFTER) + 0.5)
            out = self.resume()
            if set(self.state()["status"].values()) == {"succeeded"}:
                return
        raise AssertionError(f"not all runs succeeded after {rounds} resumes: {self.state()}\n{out.stdout}{out.stderr}")

    def logs(self) -> str:
        """Everything the pools and their workers printed."""
        return "".join(p.read_text(errors="replace") for p in (self.root / "runs").rglob("_logs/*.log"))

    def state(self) -> dict[str, dict[str, Any]]:
        """status, failure_kind, attempt, job_id per run id."""
        with Store.open(self.url) as store:
            df = store.runs(SWEEP).set_index("run_id")
        return {c: df[c].to_dict() for c in ("status", "failure_kind", "failure_message", "attempt", "job_id")}

    def losses(self) -> dict[tuple[str, int], float]:
        """(run id, step) -> training loss."""
        with Store.open(self.url) as store:
            h = store.metric_history(sweep=SWEEP, names=["loss"])
        return {(r, int(s)): float(v) for r, s, v in zip(h["run_id"], h["step"], h["value"])}

    def evals(self) -> dict[tuple[str, int], float]:
        with Store.open(self.url) as store, store.engine.connect() as conn:
            return {(r, int(t)): float(v) for r, t, v in conn.execute(text(
                "SELECT run_id, recurrence, loss FROM evals WHERE split = 'val'"))}

    def duplicate_metric_rows(self) -> int:
        with Store.open(self.url) as store, store.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(*) FROM (SELECT 1 FROM metrics GROUP BY run_id, name, step "
                "HAVING COUNT(*) > 1)")).scalar())

    def metric_steps(self) -> dict[str, set[int]]:
        with Store.open(self.url) as store, store.engine.connect() as conn:
            out: dict[str, set[int]] = {}
            for r, s in conn.execute(text("SELECT run_id, step FROM metrics WHERE name = 'loss'")):
                out.setdefault(r, set()).add(int(s))
            return out


def _env(fault: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return {**env, **(extra or {})}


def _make_sweep(root: Path, **changes: Any) -> Sweep:
    root.mkdir(parents=True, exist_ok=True)
    spec = {**_spec(root), **changes}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Sweep(root=root, spec=path, url=f"sqlite:///{root / 'store.sqlite'}")


@pytest.fixture
def new_sweep(tmp_path: Path) -> Iterator[Callable[..., Sweep]]:
    """A fresh copy of the tiny sweep (spec changes as keyword arguments) in its own directory."""
    count = iter(range(1000))

    made: list[Sweep] = []

    def make(**changes: Any) -> Sweep:
        made.append(_make_sweep(tmp_path / f"sweep{next(count)}", **changes))
        return made[-1]

    yield make
    for sweep in made:
        stop_processes_of(sweep.url)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The tiny sweep launched once, uninterrupted: the losses every faulted sweep must match."""
    sweep = _make_sweep(tmp_path_factory.mktemp("reference"))
    out = sweep.launch()
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(sweep.state()["status"].values()) == {"succeeded"}
    return sweep


@pytest.fixture
def assert_matches_reference(reference: Sweep) -> Callable[[Sweep], None]:
    """Every run succeeded, each (run, name, step) metric row once, losses and evals bit-identical
    to the uninterrupted reference."""

    def check(sweep: Sweep) -> None:
        state = sweep.state()
        assert set(state["status"].values()) == {"succeeded"}, state
        assert sweep.duplicate_metric_rows() == 0
        assert sweep.metric_steps() == reference.metric_steps()
        assert sweep.losses() == reference.losses()
        assert sweep.evals() == reference.evals()

    return check


def is_worker(cmd: list[bytes]) -> bool:
    """A command line `python -m parcae_scaling.sweeps worker ...` (sweeps/entry.py)."""
    return any(cmd[i:i + 3] == [b"-m", b"parcae_scaling.sweeps", b"worker"] for i in range(len(cmd)))


def _proc(pid: int | str) -> tuple[list[bytes], str, int] | None:
    """(command line, state, parent pid) of a process, or None once it is gone."""
    try:
        cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        fields = (Path("/proc") / str(pid) / "stat").read_text().split(")")[-1].split()
    except OSError:
        return None
    return cmd, fields[0], int(fields[1])


def worker_table(run_id: str, store_url: str) -> dict[int, str]:
    """Live worker processes of one run of one store, pid -> a line of what /proc showed (for
    messages).

    The worker's command line names the run and the store (run ids are content hashes: another
    test's sweep has the same ids, in another store). A scan of /proc is not a snapshot, so two cases
    would look like a second worker and are not counted: a worker's own child between fork and
    exec (it still shows the worker's command line; e.g. provenance starting `git`), and such a
    child read after its worker exited mid-scan (reparented to init). Every process counted is
    read again after the scan: still there, not a zombie, same parent."""
    found: dict[int, tuple[str, int]] = {}
    for proc in Path("/proc").iterdir():
        seen = _proc(proc.name) if proc.name.isdigit() else None
        if seen and is_worker(seen[0]) and {run_id.encode(), store_url.encode()} <= set(seen[0]) and seen[1] != "Z":
            found[int(proc.name)] = (seen[1], seen[2])
    table: dict[int, str] = {}
    for pid, (state, parent) in found.items():
        again = _proc(pid)
        if parent in found or again is None or again[1] == "Z" or again[2] != parent:
            continue
        parent_seen = _proc(parent)
        parent_cmd = b" ".join(parent_seen[0][-6:]).decode(errors="replace") if parent_seen else "gone"
        table[pid] = f"pid {pid} state {state} parent {parent} ({parent_cmd})"
    return table


def worker_pids(run_id: str, store_url: str) -> list[int]:
    """Live worker processes of one run of one store (see worker_table)."""
    return list(worker_table(run_id, store_url))


def stop_processes_of(store_url: str) -> None:
    """SIGKILL every process whose command line names this store (detached pools and workers a
    test left behind), so no test's processes outlive it."""
    for proc in Path("/proc").iterdir():
        seen = _proc(proc.name) if proc.name.isdigit() else None
        if seen and store_url.encode() in seen[0] and int(proc.name) != os.getpid():
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def live_workers() -> Callable[[str, str], list[int]]:
    return worker_pids


@pytest.fixture
def live_worker_table() -> Callable[[str, str], dict[int, str]]:
    return worker_table


@pytest.fixture
def wait_until() -> Callable[..., None]:
    return functools.partial(wait_for, timeout_s=120.0, poll_s=0.1)
