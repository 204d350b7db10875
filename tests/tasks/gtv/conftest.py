"""The GTV tests run against the real networks when present, else against small stand-ins."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("gtv_standins", Path(__file__).with_name("standins.py"))
standins = importlib.util.module_from_spec(_SPEC)  # type: ignore[arg-type]
sys.modules.setdefault("gtv_standins", standins)
_SPEC.loader.exec_module(standins)  # type: ignore[union-attr]


@pytest.fixture(autouse=True)
def _networks(monkeypatch):
    return standins.install(monkeypatch)
