"""The bad-input corpus (tests/bad_inputs/README.md): each file is a bad input, answered by one
clear `error:` line naming the problem and the fix, the expected exit code, and no traceback."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.fit_cli import fit_app

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
DEFAULT_COMMANDS = {
    "specs": "parcae-sweep plan {file}",
    "csv": "parcae-fit isoflop {file} --out {tmp}/fits",
    "stores": "parcae-sweep status --store {text}",
    "runspecs": "parcae-sweep train-one --spec {file}",
}
APPS = {"parcae-sweep": sweep_app, "parcae-fit": fit_app}


@dataclass(frozen=True)
class Case:
    path: Path
    expect: str
    command: str
    exit_code: int
    text: str


def _header(lines: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in lines:
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        key, sep, value = stripped.lstrip("#").strip().partition(":")
        if sep and key.strip() in ("expect", "command", "exit"):
            keys[key.strip()] = value.strip()
    return keys


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return []  # binary case: the expectation is in the sidecar


def load_case(path: Path) -> Case:
    sidecar = path.with_name(path.name + ".expect")
    lines = _read_lines(path)
    keys = _header(_read_lines(sidecar)) if sidecar.exists() else _header(lines)
    if "expect" not in keys:
        raise ValueError(f"{path}: no '# expect: …' line (in the file or in {sidecar.name})")
    group = path.relative_to(CORPUS).parts[0]
    command = keys.get("command") or DEFAULT_COMMANDS.get(group)
    if command is None:
        raise ValueError(f"{path}: no '# command: …' line and folder {group!r} has no default")
    body = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    return Case(path=path, expect=keys["expect"], command=command, exit_code=int(keys.get("exit", "1")),
                text=body[0].strip() if body else "")


def _cases() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*")
                  if p.is_file() and p.suffix != ".expect" and p.name != "README.md" and p.parent != CORPUS)


@pytest.mark.parametrize("path", _cases(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_bad_input_gets_one_clear_line(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = load_case(path)
    monkeypatch.chdir(tmp_path)  # a case that wrongly writes (a store, runs/) writes here, not in the repo
    argv = [a.format(file=str(case.path), text=case.text, tmp=str(tmp_path)) for a in shlex.split(case.command)]
    app = APPS[argv[0]]
    result = CliRunner().invoke(app, argv[1:])
    output = result.output
    assert "Traceback" not in output, f"{case.path.name}: traceback:\n{output[-2000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.path.name}: uncaught {type(result.exception).__name__}: {result.exception}")
    assert result.exit_code == case.exit_code, f"{case.path.name}: exit {result.exit_code}, output:\n{output}"
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    if case.exit_code == 2:  # usage errors come from Typer's own box, which names the option
        assert case.expect in output, f"{case.path.name}: {case.expect!r} not in:\n{output}"
        return
    assert len(errors) == 1, f"{case.path.name}: expected one 'error:' line, got:\n{output}"
    assert case.expect in errors[0], f"{case.path.name}: {case.expect!r} not in {errors[0]!r}"


def test_every_corpus_file_declares_its_expectation() -> None:
    assert _cases(), "the corpus is empty"
    for path in _cases():
        load_case(path)  # raises on a case without 'expect' or without a command
