"""Fixtures for the kernel tests: Triton kernels run on CPU through the interpreter.

How TRITON_INTERPRET=1 behaves in triton 3.9 (found by trial):
- `@triton.jit` reads it when a function is *defined*: that is when `import triton`
  defines triton's own jit'd library (`tl.zeros`, ...) and when our kernel modules are
  imported. Set it before either; setting it later leaves compiled-mode JITFunctions
  that fail on CPU ("Cannot call @triton.jit'd outside of the scope of a kernel").
- It must still be set when kernels run (triton imports parts of itself lazily and
  checks it again).
So this conftest sets it when pytest collects tests/kernels (before any test module
that might import triton) and leaves it set for the session; the fixture re-imports our
kernel modules if something imported them compiled, and fails loudly if triton itself
was imported too early (then run `TRITON_INTERPRET=1 python -m pytest tests/kernels`).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import SimpleNamespace

import pytest
import torch

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

KERNEL_MODULES = ("parcae_scaling.kernels.triton_linear_ce", "parcae_scaling.kernels.triton_injection")


@pytest.fixture(scope="session")
def triton_interpreted() -> SimpleNamespace:
    """The Triton kernel modules, defined in interpreter mode so they accept CPU tensors."""
    os.environ["TRITON_INTERPRET"] = "1"
    triton = pytest.importorskip("triton", reason="triton not installed: pip install 'parcae-scaling[triton]'")
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton.language.standard.zeros, InterpretedFunction):
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set; run "
                    "`TRITON_INTERPRET=1 python -m pytest tests/kernels`")
    modules = []
    for name in KERNEL_MODULES:
        module = sys.modules.get(name)
        if module is None:
            module = importlib.import_module(name)
        elif not module.kernels_interpreted():
            module = importlib.reload(module)
        modules.append(module)
    assert all(m.kernels_interpreted() for m in modules)
    return SimpleNamespace(linear_ce=modules[0], injection=modules[1])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
