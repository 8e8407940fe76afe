"""Shared fixtures."""
from __future__ import annotations

import pytest

from nfbound.ops import checks


@pytest.fixture
def format_value_calls(monkeypatch) -> list[str]:
    """The argument names that ``checks.format_value`` is called with (a spy that still
    checks): clear it before the call under test."""
    seen: list[str] = []
    real = checks.format_value

    def spy(name, x, fmt):
        seen.append(name)
        return real(name, x, fmt)
    monkeypatch.setattr(checks, "format_value", spy)
    return seen
