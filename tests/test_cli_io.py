"""The habits of people who run sweeps, through both CLIs: one store found the same way by every
command (--store, $PARCAE_STORE, ./parcae.sqlite or a parent's), --format table|json|csv, export
to CSV/Parquet and back into parcae-fit, a CSV from another tool with a column mapping, every fit
saved in the store and listed, --version, and cancel asking before it stops every sweep."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.db import STORE_ENV, Store, default_url
from parcae_scaling.fit_cli import fit_app

runner = CliRunner()
LOOPED = "parcae-tiny-48[seq_len=32]"


def _sweep(*args: str, input: str | None = None):  # noqa: ANN202
    return runner.invoke(sweep_app, list(args), input=input)


def _fit(*args: str):  # noqa: ANN202
    return runner.invoke(fit_app, list(args))


def _error_line(result) -> str:  # noqa: ANN001
    """The one `error:` line of a failed command (no traceback)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def project(sweep_store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding a copy of the session's finished sweep as ./parcae.sqlite, as the
    current directory, with no $PARCAE_STORE."""
    path = Path(sweep_store["url"].removeprefix("sqlite:///"))
    shutil.copy(path, tmp_path / "parcae.sqlite")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV, raising=False)
    with Store.open("sqlite:///parcae.sqlite"):  # migrate the copy once, as a write command would
        pass
    return tmp_path


# ---- one store, found the same way everywhere ----------------------------------------------------

def test_default_store_is_the_env_then_here_then_the_nearest_parent(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert default_url(deep) == "sqlite:///parcae.sqlite"  # none anywhere: here (launch creates it)
    (tmp_path / "parcae.sqlite").write_bytes(b"")
    assert default_url(deep) == f"sqlite:///{tmp_path.resolve() / 'parcae.sqlite'}"
    (deep / "parcae.sqlite").write_bytes(b"")
    assert default_url(deep) == "sqlite:///parcae.sqlite"  # the nearest one wins
    monkeypatch.setenv(STORE_ENV, "postgresql://u@h/db")
    assert default_url(deep) == "postgresql://u@h/db"


def test_status_export_and_fit_find_the_store_with_no_flags(project: Path, sweep_store: dict) -> None:
    sweep = sweep_store["sweep"]
    out = _sweep("status", sweep)
    assert out.exit_code == 0 and "succeeded" in out.output, out.output
    (project / "notebooks").mkdir()
    import os

    os.chdir(project / "notebooks")  # a notebook's folder: the store one level up
    assert _sweep("status", sweep).exit_code == 0
    os.chdir(project)
    out = _sweep("export", sweep, "--to", "runs.csv")
    assert out.exit_code == 0 and "runs.csv: 12 rows" in out.output, out.output
    out = _fit("isoflop", "--sweep", sweep, "--model", LOOPED, "--bootstrap", "20", "--out", "fits")
    assert out.exit_code == 0 and "stored as fit" in out.output, out.output


def test_reading_commands_never_create_a_store_and_say_how_to_point_at_one(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV, raising=False)
    for result in (_sweep("status"), _sweep("export", "x", "--to", "r.csv"), _fit("isoflop"), _fit("list")):
        line = _error_line(result)
        assert "no store at parcae.sqlite" in line and "$PARCAE_STORE" in line
    assert not (tmp_path / "parcae.sqlite").exists()


def test_parcae_store_env_is_used_by_both_apps(sweep_store: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "elsewhere.sqlite"
    shutil.copy(Path(sweep_store["url"].removeprefix("sqlite:///")), store)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORE_ENV, f"sqlite:///{store}")
    with Store.open(f"sqlite:///{store}"):
        pass
    assert _sweep("status", sweep_store["sweep"]).exit_code == 0
    out = _fit("isoflop", "--sweep", sweep_store["sweep"], "--model", LOOPED, "--bootstrap", "10", "--out", "f")
    assert out.exit_code == 0 and f"in sqlite:///{store}" in out.output, out.output


def test_a_missing_sweep_is_an_error_not_an_empty_table(project: Path) -> None:
    assert "sweep 'nosuch' is not recorded" in _error_line(_sweep("status", "nosuch"))
    assert "'nosuch'" in _error_line(_sweep("export", "nosuch", "--to", "r.csv"))


def test_fit_without_sweep_in_a_store_of_several_lists_them(project: Path, sweep_store: dict) -> None:
    line = _error_line(_fit("isoflop", "--out", "f"))
    assert "choose one with --sweep NAME" in line and sweep_store["sweep"] in line


# ---- --format ------------------------------------------------------------------------------------

def test_plan_json_and_csv_hold_every_run_with_exact_numbers() -> None:
    from parcae_scaling.sweeps import load_spec, plan

    p = plan(load_spec("default"))
    rows = json.loads(_sweep("plan", "default", "--format", "json").output)
    assert [r["run_id"] for r in rows] == [r.run_id for r in p.runs]
    assert [r["tokens"] for r in rows] == [r.tokens for r in p.runs]
    table = pd.read_csv(StringIO(_sweep("plan", "default", "--format", "csv").output))
    assert list(table["steps"]) == [r.steps for r in p.runs] and set(table["sweep"]) == {p.sweep}


def test_status_json_and_csv_are_the_status_table(project: Path, sweep_store: dict) -> None:
    out = _sweep("status", sweep_store["sweep"], "--format", "json")
    rows = json.loads(out.output)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"succeeded"}
    assert all(isinstance(r["last_loss"], float) and r["heartbeat"][:4].isdigit() for r in rows)
    table = pd.read_csv(StringIO(_sweep("status", sweep_store["sweep"], "--format", "csv").output))
    assert sorted(table["run_id"]) == sorted(r["run_id"] for r in rows)
    out = _sweep("status", "--watch", "2", "--format", "json")
    assert out.exit_code == 2 and "--watch" in out.output


def test_configs_and_flops_as_json() -> None:
    from parcae_scaling.model import get_config
    from parcae_scaling.model.flops import flops_per_token, tokens_for_budget

    rows = json.loads(_sweep("configs", "--contains", "tiny-48", "--format", "json").output)
    assert {r["name"] for r in rows} >= {"parcae-tiny-48", "transformer-tiny-48"}
    rows = json.loads(_sweep("flops", "parcae-tiny-48", "--budget-flops", "1e12", "--format", "json").output)
    exact = next(r for r in rows if r["flop_convention"] == "exact")
    assert exact["flops_per_token"] == flops_per_token(get_config("parcae-tiny-48"), convention="exact")
    assert exact["tokens"] == tokens_for_budget(1e12, exact["flops_per_token"])


def test_a_wrong_format_is_a_usage_error_naming_the_choices() -> None:
    out = _sweep("plan", "default", "--format", "xml")
    assert out.exit_code == 2 and "table" in out.output and "csv" in out.output


# ---- export, and back into parcae-fit -------------------------------------------------------------

def test_export_csv_round_trips_into_the_same_isoflop_fit(project: Path, sweep_store: dict) -> None:
    sweep = sweep_store["sweep"]
    out = _sweep("export", sweep, "--to", "runs.csv", "--metrics")
    assert out.exit_code == 0, out.output
    runs = pd.read_csv("runs.csv")
    evals = pd.read_csv("runs.evals.csv")
    metrics = pd.read_csv("runs.metrics.csv")
    with Store.open("sqlite:///parcae.sqlite", upgrade=False) as st:
        assert sorted(runs["run_id"]) == sorted(st.runs(sweep)["run_id"])
        finals = st.final_losses(sweep).set_index("run_id")["eval_loss"]
        assert len(metrics) == len(st.metric_history(sweep=sweep))
    assert runs.set_index("run_id")["loss"].sort_index().tolist() == finals.sort_index().tolist()
    assert set(evals["recurrence"]) == {1, 2, 3, 4, 6, 8} and {"provenance_torch", "provenance_host"} <= set(runs)
    for args, folder in (((("runs.csv",)), "from_csv"), (("--sweep", sweep), "from_store")):
        out = _fit("isoflop", *args, "--model", LOOPED, "--bootstrap", "20", "--out", folder)
        assert out.exit_code == 0, out.output
    a, b = (json.loads((project / f / "isoflop.json").read_text()) for f in ("from_csv", "from_store"))
    assert [o["x_star"] for o in a["optima"]] == [o["x_star"] for o in b["optima"]]


def test_export_parquet_and_its_refusals(project: Path, sweep_store: dict) -> None:
    sweep = sweep_store["sweep"]
    assert _sweep("export", sweep, "--to", "runs.parquet").exit_code == 0
    assert len(pd.read_parquet("runs.parquet")) == 12 and len(pd.read_parquet("runs.evals.parquet")) > 12
    assert "--force" in _error_line(_sweep("export", sweep, "--to", "runs.parquet"))
    assert _sweep("export", sweep, "--to", "runs.parquet", "--force").exit_code == 0
    assert ".csv or .parquet" in _error_line(_sweep("export", sweep, "--to", "runs.xlsx"))
    assert "does not exist" in _error_line(_sweep("export", sweep, "--to", "no/such/runs.csv"))


# ---- a CSV from another tool ----------------------------------------------------------------------

def _external_csv(path: Path) -> Path:
    """A Chinchilla-style table in another tool's names, without a budget column: L = E + A/N^a + B/D^b."""
    rows = []
    for n in (1e7, 3e7, 1e8, 3e8):
        for d in (2e8, 6e8, 2e9, 6e9):
            rows.append({"N": n, "D": d, "L": 1.7 + 400 / n ** 0.34 + 410 / d ** 0.28, "name": f"n{n:g}-d{d:g}"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_external_csv_with_a_column_mapping_and_a_derived_budget(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV, raising=False)
    csv = _external_csv(tmp_path / "other.csv")
    out = _fit("parametric", str(csv), "--columns", "params=N,tokens=D,loss=L,run_id=name", "--law", "chinchilla",
               "--bootstrap", "10", "--out", "fits")
    assert out.exit_code == 0, out.output
    fit = json.loads((tmp_path / "fits" / "fit_chinchilla.json").read_text())["fit"]
    assert fit["params"]["E"] == pytest.approx(1.7, abs=0.05) and fit["n_points"] == 16
    assert "fit not stored: no store at sqlite:///parcae.sqlite" in out.output
    assert "the file does not have" in _error_line(_fit("parametric", str(csv), "--columns", "loss=nosuch"))
    assert "OURS=THEIRS" in _error_line(_fit("parametric", str(csv), "--columns", "loss"))
    line = _error_line(_fit("parametric", str(csv)))  # unmapped: the file's names are not the toolkit's
    assert "has no column(s) ['budget_flops', 'mu_rec', 'tokens', 'params', 'loss']" in line and "--columns" in line


def test_columns_are_refused_for_a_store(project: Path, sweep_store: dict) -> None:
    line = _error_line(_fit("isoflop", "--sweep", sweep_store["sweep"], "--columns", "loss=L"))
    assert "--columns maps a CSV's columns" in line


# ---- fits saved and listed -------------------------------------------------------------------------

def test_every_fit_is_saved_in_the_store_and_listed(project: Path, sweep_store: dict) -> None:
    sweep = sweep_store["sweep"]
    with Store.open("sqlite:///parcae.sqlite", upgrade=False) as st:
        before = len(st.fits())
    for command in ("isoflop", "parametric", "test-time"):
        out = _fit(command, "--sweep", sweep, "--model", LOOPED, "--out", "fits",
                   *(("--bootstrap", "10") if command != "test-time" else ()))
        assert out.exit_code == 0 and "stored as fit" in out.output, out.output
    csv = _external_csv(project / "other.csv")  # a CSV's fit goes to the store found, with its path
    out = _fit("parametric", str(csv), "--columns", "params=N,tokens=D,loss=L", "--law", "chinchilla",
               "--bootstrap", "0", "--out", "fits2")
    assert out.exit_code == 0 and "stored as fit" in out.output, out.output
    rows = json.loads(_fit("list", "--format", "json").output)
    assert len(rows) == before + 4
    kinds = [r["kind"] for r in rows[:4]]
    assert kinds == ["chinchilla", "test_time", "parcae", "isoflop"]  # newest first
    assert rows[0]["selection"]["csv"] == str(csv) and rows[1]["sweep"] == sweep
    only = json.loads(_fit("list", "--kind", "isoflop", "--format", "json").output)
    assert {r["kind"] for r in only} == {"isoflop"}
    assert "isoflop" in _fit("list").output


# ---- conventions ----------------------------------------------------------------------------------

def test_version_on_both_apps() -> None:
    from parcae_scaling import __version__

    for app in (sweep_app, fit_app):
        out = runner.invoke(app, ["--version"])
        assert out.exit_code == 0 and out.output.strip() == f"parcae-scaling {__version__}"


@pytest.fixture
def live_store(tmp_path: Path) -> str:
    """A store with one recorded, never-dispatched sweep (its runs are live: planned)."""
    from parcae_scaling.sweeps import load_spec, plan, record_plan

    url = f"sqlite:///{tmp_path / 'live.sqlite'}"
    with Store.open(url) as st:
        record_plan(st, plan(load_spec("default")))
    return url


def test_unscoped_cancel_asks_first_and_yes_skips_the_question(live_store: str) -> None:
    out = _sweep("cancel", "--all", "--store", live_store, input="n\n")
    assert out.exit_code == 1 and "cancel 16 live run(s) (16 in default)" in out.output
    with Store.open(live_store, upgrade=False) as st:
        assert set(st.runs()["status"]) == {"planned"}
    out = _sweep("cancel", "--all", "--store", live_store, input="y\n")
    assert out.exit_code == 0 and "cancelled 16 run(s)" in out.output
    assert "no live runs to cancel" in _sweep("cancel", "--all", "--store", live_store).output


def test_cancel_all_with_yes_does_not_ask(live_store: str) -> None:
    out = _sweep("cancel", "--all", "--yes", "--store", live_store)
    assert out.exit_code == 0 and "cancelled 16 run(s)" in out.output and "?" not in out.output


def test_ray_backend_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from parcae_scaling.sweeps.backend import get_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install 'parcae-scaling\[ray\]'"):
        get_backend("ray")


def test_help_names_commands_and_columns_not_source_files() -> None:
    import re

    from typer.main import get_command

    for app in (sweep_app, fit_app):
        group = get_command(app)
        for name in group.commands:
            text = runner.invoke(app, [name, "--help"], terminal_width=300).output
            own = re.findall(r"\b(?:model|sweeps|scaling|db|kernels|train)/[\w/]*\.py\b", text)
            assert not own, (name, own)  # the package's own files; a user's law file may be named
