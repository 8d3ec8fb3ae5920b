"""The daily full comparison inside `cdc run`: `reconcile: {at: "03:00", timezone: Asia/Shanghai, repair: true}`
runs `cdc reconcile` (cdc/ops/reconcile.py) at that time every day, on a thread beside the stream and on
connections of its own, and exports what it found: `cdc_reconcile_drift_rows{kind}` (the drift left after the
run: found and not repaired), `cdc_reconcile_last_run_timestamp_seconds` and `cdc_reconcile_duration_seconds`.
A run that cannot compare is logged as an error and leaves the last-run time alone, so the "no run for 26 h"
alert fires.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from zoneinfo import ZoneInfo

from cdc.config import ConnectorConfig
from cdc.metrics import Metrics

log = logging.getLogger("cdc.reconcile")

KINDS = ("missing", "extra", "different")


def next_run(at: str, timezone: str, now: dt.datetime) -> dt.datetime:
    """The next moment the wall clock in `timezone` shows `at` (HH:MM or HH:MM:SS), after `now` (aware)."""
    parts = [int(p) for p in at.split(":")]
    hour, minute, second = (parts + [0])[:3]
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    when = local.replace(hour=hour, minute=minute, second=second, microsecond=0)
    if when <= local:
        when = (local + dt.timedelta(days=1)).replace(hour=hour, minute=minute, second=second, microsecond=0)
    return when


class DailyReconcile:
    def __init__(self, cfg: ConnectorConfig, metrics: Metrics):
        self.cfg = cfg
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for kind in KINDS:  # every series exists from the start
            metrics.reconcile_drift.labels(cfg.name, kind)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"{self.cfg.name}-reconcile")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        rc = self.cfg.reconcile
        while not self._stop.is_set():
            when = next_run(rc.at, rc.timezone, dt.datetime.now(dt.UTC))
            log.info("%s: next full comparison at %s", self.cfg.name, when.isoformat())
            while not self._stop.is_set():
                left = (when - dt.datetime.now(dt.UTC)).total_seconds()
                if left <= 0:
                    break
                self._stop.wait(min(left, 60.0))
            if self._stop.is_set():
                return
            self.run_once()

    def run_once(self) -> None:
        from cdc.ops.reconcile import reconcile

        name, m = self.cfg.name, self.metrics
        t0 = time.monotonic()
        try:
            report = reconcile(self.cfg, repair=self.cfg.reconcile.repair)
        except Exception as e:  # noqa: BLE001 - a failed run is reported; the stream goes on
            log.error("%s: the daily full comparison failed: %s", name, e)
            return
        took = time.monotonic() - t0
        if report.exit_code == 2:
            log.error("%s: the daily full comparison could not compare: %s", name, report.reason)
            return
        left = report.left_by_kind()
        for kind in KINDS:
            m.reconcile_drift.labels(name, kind).set(left[kind])
        m.reconcile_last_run.labels(name).set(time.time())
        m.reconcile_duration.labels(name).set(took)
        log.info(
            "%s: daily full comparison in %.1f s: %s",
            name,
            took,
            ", ".join(f"{k} {v}" for k, v in left.items())
            + (" left" if any(left.values()) else " (in sync)"),
        )
