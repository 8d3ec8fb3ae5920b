"""Helpers for end-to-end tests: run a connector in a thread, wait for a condition."""

from __future__ import annotations

import threading
import time

from cdc.config import load_config
from cdc.lanes import lane_of
from cdc.pipeline import Pipeline


class Running:
    def __init__(self, config_path, lane: str | None = None, **kw):
        self.cfg = load_config(config_path)
        if lane is not None:  # one lane of source.lanes, as `cdc run CONFIG --lane NAME`
            self.cfg = lane_of(self.cfg, lane)
        self.pipeline = Pipeline(self.cfg, **kw)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as e:  # noqa: BLE001 - surfaced by stop()/check()
            self.error = e

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.pipeline.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "pipeline did not stop within 60 s"
        self.check()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(predicate, timeout: float = 30, what: str = "condition", running: Running | None = None):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if running is not None:
            running.check()
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")
