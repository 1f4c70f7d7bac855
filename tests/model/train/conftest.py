"""Every training test runs on one torch thread (tests/conftest.py `one_torch_thread`)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Applies the shared fixture to every test in this folder."""
