"""Every notebook runs top to bottom, headlessly, against a store from a small real sweep."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient


NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
KERNEL = "parcae-test"


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory) -> str:
    """A kernelspec for this interpreter (the venv's under `make test`), found first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root) + (os.pathsep + old if old else "")
    yield KERNEL
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def run_notebook(path: Path, params: dict, cwd: Path, kernel: str) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [1], f"{path.name}: the parameters cell must be the first code cell, tagged 'parameters'"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has committed outputs"
    inject = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(2, nbformat.v4.new_code_cell("# injected parameters\n" + inject))
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_isoflop_curves", "02_power_laws", "03_frontier", "04_test_time", "05_stability"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, sweep_store, kernel_name, tmp_path):
    params = {"STORE_URL": sweep_store["url"], "SWEEP": sweep_store["sweep"], "OUT_DIR": str(tmp_path / "fig")}
    if path.stem == "05_stability":
        params["ABLATION_SWEEPS"] = sweep_store["ablation"]
    else:
        params["N_BOOTSTRAP"] = 20
    nb = run_notebook(path, params, tmp_path, kernel_name)  # raises CellExecutionError on any failing cell
    pngs = sorted((tmp_path / "fig").rglob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 and p.with_suffix(".pdf").is_file() for p in pngs)
    shown = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert shown >= 1, "the notebook displays no figure"
    if path.stem == "05_stability":
        assert (tmp_path / "fig" / "stability_injection_ablation.png").is_file(), "ablation section was skipped"


def test_failing_cell_fails(sweep_store, kernel_name, tmp_path):
    """A notebook pointed at a sweep that is not in the store must raise, not pass silently."""
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError):
        run_notebook(NOTEBOOKS[0], {"STORE_URL": sweep_store["url"], "SWEEP": "no-such-sweep"}, tmp_path, kernel_name)
