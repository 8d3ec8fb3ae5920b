"""Fixtures of the unit tests."""

from __future__ import annotations

import time

import pytest

from cdc.pipeline import Pipeline


@pytest.fixture
def no_backoff(monkeypatch):
    """Pipeline._sleep without the wait (2 ms, so the retry clock moves); returns the delays asked for."""
    delays: list[float] = []

    def fake_sleep(self, seconds: float) -> None:
        delays.append(seconds)
        time.sleep(0.002)

    monkeypatch.setattr(Pipeline, "_sleep", fake_sleep)
    return delays
