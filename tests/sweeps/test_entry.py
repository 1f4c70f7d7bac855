"""The internal command line (sweeps/entry.py): what a launcher builds is what the process reads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parcae_scaling.sweeps import entry


@pytest.mark.parametrize("role, values", [
    ("worker", {"store": "sqlite:///x.sqlite", "run_id": "abc", "threads": 2, "attempt": 3}),
    ("pool", {"store": "sqlite:///x.sqlite", "manifest": "/tmp/m.json", "max_workers": 4, "threads": 1,
              "gpus_per_run": 0, "heartbeat": 0.5}),
    ("rank", {"spec": "/tmp/launch_spec.json", "store": None, "reports": "/tmp/r", "threads": 1, "heartbeat": 10.0,
              "attempt": None}),
])
def test_a_built_command_line_parses_back_to_its_values(role: str, values: dict) -> None:
    cmd = entry.command(role, **values)
    assert cmd[:3] == [sys.executable, "-m", entry.MODULE] and cmd[3] == role
    parsed_role, args = entry.parse(cmd[3:])
    assert parsed_role == role and {k: getattr(args, k) for k in values} == values


def test_defaults_are_filled_and_missing_or_unknown_options_are_refused() -> None:
    _, args = entry.parse(entry.arguments("worker", store="s", run_id="r"))
    assert (args.threads, args.attempt) == (1, None)
    with pytest.raises(TypeError, match="worker needs run_id"):
        entry.arguments("worker", store="s")
    with pytest.raises(TypeError, match="no option"):
        entry.arguments("worker", store="s", run_id="r", gpus=1)


def test_the_module_runs_a_role_and_rejects_a_bad_one() -> None:
    out = subprocess.run([sys.executable, "-m", entry.MODULE, "nope"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid choice: 'nope'" in out.stderr
    out = subprocess.run(entry.command("worker", store="sqlite:////nonexistent/dir/x.sqlite", run_id="r"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "parcae worker: run r failed" in out.stderr
