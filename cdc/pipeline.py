"""The loop: read -> stages -> sink -> checkpoint.

This is the ONLY place positions are committed, always in this order:
  1. the sink commits the batch's rows and the source position in one transaction;
  2. then the source is told to confirm that position to the server.
A batch holds whole source transactions (a huge one is written in pieces but committed once). Everything the
loop knows at start comes from the sink's stored position: a crash at any point replays from there.

A change a stage holds (a guard's quarantine, or a dead letter) goes to the sink's held list with its kind and
is committed with the batch; the position moves on past it. Between batches, with nothing buffered, the loop
applies the scheduled prices that fell due (cdc/schedule.py), in a sink transaction of their own that moves
no position.

A `pick` with a fallback store asks the POS about other rows (cdc/fallback.py): when the pick marks a delete of
the designated store's row, the fallback store's row for the key is read from the source right after the
delete is buffered and buffered as an upsert with the delete's position, in the same sink transaction.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time

from cdc.config import ConnectorConfig
from cdc.errors import CdcError, HoldError, TransientError
from cdc.events import ChangeEvent
from cdc.fallback import PickFallback, wire_fallback
from cdc.metrics import Metrics
from cdc.sinks.sql import SqlSink
from cdc.sources.postgres import Idle, PostgresSource, TxnEnd
from cdc.stages import GuardStage, Stage, apply_stages, build_stages

log = logging.getLogger("cdc.pipeline")

STATS_INTERVAL_S = 2.0  # how often the slot's lag and retained WAL are read while idle
LOOKAHEAD = 500  # changes staged together when a guard compares with the storefront (one read for all)


class Pipeline:
    def __init__(self, cfg: ConnectorConfig, metrics: Metrics | None = None, retry_for_s: float = 900.0):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.stages = build_stages(cfg.transforms)
        self.retry_for_s = retry_for_s
        self.stopping = False
        self._progressed = False
        self._done = threading.Event()
        self._caught_up = False
        self._lag_base_ms = time.time() * 1000
        self._last_heartbeat = 0.0
        self.source: PostgresSource | None = None
        self.sink: SqlSink | None = None
        self.fallback: PickFallback | None = None  # a pick's fallback store: its lookups of the source
        m, name = self.metrics, cfg.name
        self._m_up = m.up.labels(name)
        self._m_batch = m.sink_batch.labels(name)
        self._m_latency = m.end_to_end_latency.labels(name)
        self._m_lag = m.end_to_end_lag.labels(name)
        self._m_last_commit = m.last_commit.labels(name)
        # both series exist from the start, so increase() sees the first
        self._m_held = {kind: m.held.labels(name, kind) for kind in ("dead_letter", "quarantine")}
        history = cfg.sink.history
        self.changed_by = history.changed_by if history else None
        # a guard that compares with the storefront: the stages before it run ahead on a run of changes, so
        # the storefront values it asks for are read in one statement rather than one per change
        self._ahead = next(
            (
                i
                for i, s in enumerate(self.stages)
                if isinstance(s, GuardStage) and s.config.max_change_pct is not None
            ),
            None,
        )
        m.source_lag_bytes.labels(name), m.retained_wal_bytes.labels(name)
        self._counts: dict[tuple[str, str, str], int] = {}  # changes read, not yet in cdc_events_total

    def stop(self) -> None:
        self.stopping = True

    def reset(self) -> None:
        """For a re-snapshot: forget the stored positions and drop the slot (prepare() makes a new one)."""
        sink = SqlSink(self.cfg)
        sink.open()
        try:
            sink.forget_offsets()
        finally:
            sink.close()
        PostgresSource(self.cfg).drop_slot()
        log.info(
            "%s: positions forgotten and slot dropped; the next start takes a new snapshot", self.cfg.name
        )

    # --- supervision ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Runs until stop(); transient failures reconnect with exponential backoff and jitter, for up to
        `retry_for_s` seconds without progress; terminal errors propagate."""
        delay, failing_since = 0.5, None
        gauges = threading.Thread(target=self._gauges_loop, daemon=True, name=f"{self.cfg.name}-gauges")
        gauges.start()
        try:
            while not self.stopping:
                try:
                    self._session()
                    return
                except TransientError as e:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > self.retry_for_s:
                        raise TransientError(f"{e} (gave up after {self.retry_for_s:.0f}s of retries)") from e
                    log.warning("%s: %s; retrying in %.1fs", self.cfg.name, e, delay)
                    self._m_up.set(0)
                    self.metrics.healthy.clear()
                    self._teardown()
                    self._sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 30.0)
                    if self._progressed:
                        delay, failing_since = 0.5, None
        finally:
            self._done.set()
            self._teardown()
            self._m_up.set(0)
            self.metrics.healthy.clear()
            gauges.join(5)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))

    def _teardown(self) -> None:
        self._flush_counts()
        if self.fallback is not None:
            self.fallback.close()
            self.fallback = None
        if self.sink is not None:
            self.sink.rollback()
            self.sink.close()
            self.sink = None
        if self.source is not None:
            self.source.close()
            self.source = None

    # --- one connected session ------------------------------------------------------------------------

    def _session(self) -> None:
        self._progressed = False
        self.sink = sink = SqlSink(self.cfg)
        sink.open()
        sink.wire(self.stages)
        self.source = source = PostgresSource(self.cfg)
        source.prepare()
        self.fallback = wire_fallback(self.stages, self.cfg)
        if self.fallback is not None:
            self.fallback.check()
        self._m_up.set(1)
        self.metrics.healthy.set()
        sink.start_folding()
        pos = self._load_position()
        if pos is None and self.cfg.source.snapshot == "initial":
            self._consume(source.snapshot())
            if self.stopping:
                return
            pos = self._load_position()
        start = pos["end_lsn"] if pos else 0
        self._consume(source.stream(start, skip_through=pos["commit_lsn"] if pos else 0))

    def _consume(self, items) -> None:
        sink, stages, changed_by, ahead = self.sink, self.stages, self.changed_by, self._ahead is not None
        run: list[ChangeEvent] = []  # changes waiting for _apply_run (with a looking-up guard)
        batch_size = self.cfg.sink.batch_size
        max_wait = self.cfg.sink.batch_max_ms / 1000
        last_end: TxnEnd | None = None  # newest transaction fully buffered, not yet committed
        in_txn = False
        first_at = 0.0
        n_buffered = 0
        for item in items:
            if type(item) is ChangeEvent:
                if not in_txn:
                    in_txn = True
                    first_at = first_at or time.monotonic()
                    if self._caught_up:  # behind again, since this change's commit
                        self._caught_up, self._lag_base_ms = False, item.ts_ms
                        sink.caught_up = False
                self._count(item)
                if changed_by is not None:  # read before the transforms, which may drop the column
                    item.headers["changed_by"] = item.after.get(changed_by) if item.after else None
                n_buffered += 1
                if ahead:
                    run.append(item)
                    if len(run) < LOOKAHEAD and n_buffered < batch_size and not self.stopping:
                        continue
                    self._apply_run(run)
                else:
                    self._apply(item, stages)
                if n_buffered >= batch_size:  # bound memory: send rows now, commit at a transaction end
                    sink.write_async()
                    n_buffered = 0
                    self._flush_counts()
                if self.stopping:
                    log.info(
                        "%s: stop requested inside a transaction; abandoning the open batch", self.cfg.name
                    )
                    sink.rollback()
                    return
                continue
            if run:
                self._apply_run(run)
            if type(item) is TxnEnd:
                in_txn = False
                last_end = item
                if item.snapshot or time.monotonic() - first_at >= max_wait or n_buffered >= batch_size:
                    self._checkpoint(last_end)
                    last_end, first_at, n_buffered = None, 0.0, 0
                    self._due()
            elif type(item) is Idle:
                if last_end is not None and not in_txn:
                    self._checkpoint(last_end)
                    last_end, first_at, n_buffered = None, 0.0, 0
                elif not in_txn:
                    self._caught_up = self.sink.caught_up = True
                    self._m_lag.set(0)
                if not in_txn:
                    self._tick()
                if self.stopping and not in_txn:
                    return
        if run:
            self._apply_run(run)
        if last_end is not None:
            self._checkpoint(last_end)

    def _apply(self, ev: ChangeEvent, stages: list[Stage]) -> None:
        """Runs `stages` on `ev` and buffers the result in the sink, or holds `ev` with its kind."""
        try:
            out = apply_stages(stages, ev)
            if out is not None:
                self.sink.add(out)
        except HoldError as e:
            self._hold(ev, e)
            return
        if self.fallback is not None and (out or ev).headers.get("pick_fallback_needed"):
            self._refill(out or ev)

    def _refill(self, ev: ChangeEvent) -> None:
        """After the delete of the designated store's row (`ev`, just buffered, or dropped by a stage after the
        pick): the fallback store's row for the key, read from the source now, through the stages (the pick
        only re-keys it), buffered with the delete's position so it lands in the same sink transaction."""
        fallback = self.fallback
        for row in fallback.changes(ev):
            self._apply(row, fallback.stages)

    def _hold(self, ev: ChangeEvent, e: HoldError) -> None:
        kind = getattr(e, "kind", "dead_letter")  # a guard's GuardViolation says which
        self.sink.hold(ev, e, kind)

    def _apply_run(self, run: list[ChangeEvent]) -> None:
        """A run of changes with a guard that compares with the storefront: the stages before the guard on all
        of them, one read of the values it will compare with, then the rest of the stages, change by change
        in order (a change still sees the ones before it, buffered in the sink)."""
        pre, post = self.stages[: self._ahead], self.stages[self._ahead :]
        staged: list[tuple[ChangeEvent, ChangeEvent | None]] = []
        for item in run:
            try:
                ev = apply_stages(pre, item)
            except HoldError as e:
                self._hold(item, e)
                continue
            if ev is not None or (self.fallback is not None and item.headers.get("pick_fallback_needed")):
                staged.append((item, ev))  # None: a delete dropped after the pick that asks for the fallback
        run.clear()
        self.sink.prefetch(
            post[0].field, [ev.after for _, ev in staged if ev is not None and ev.after is not None]
        )
        for item, ev in staged:
            if ev is None:
                self._refill(item)
            else:
                self._apply(ev, post)

    def _tick(self) -> None:
        """While idle: heartbeat so the slot advances past WAL that other databases write; scheduled prices."""
        now = time.monotonic()
        interval = self.cfg.source.heartbeat_interval_s
        if interval and now - self._last_heartbeat >= interval:
            self._last_heartbeat = now
            self.source.heartbeat()
        self._due()

    def _due(self) -> None:
        """Applies the scheduled prices that are due (only called with nothing buffered in the sink)."""
        self.sink.tick()
        self._count_held()

    def _count_held(self) -> None:
        for kind, n in self.sink.drain_held().items():
            self._m_held[kind].inc(n)

    def _load_position(self) -> dict | None:
        text = self.sink.load_offsets().get("wal")
        pos = json.loads(text) if text else None
        self.sink.set_floor(pos["commit_lsn"] if pos else 0)
        return pos

    def _gauges_loop(self) -> None:
        """On a timer, whatever the stream is doing (busy, stalled, retrying): lag seconds, and the slot's
        lag and retained WAL as the POS server sees them (on a connection of its own)."""
        probe = PostgresSource(self.cfg)
        try:
            while True:
                self._m_lag.set(0.0 if self._caught_up else max(0.0, time.time() - self._lag_base_ms / 1000))
                try:
                    self.refresh_source_gauges(probe)
                except CdcError as e:
                    log.debug("%s: slot statistics unavailable: %s", self.cfg.name, e)
                    probe.close()
                if self._done.wait(STATS_INTERVAL_S):
                    return
        finally:
            probe.close()

    def refresh_source_gauges(self, probe: PostgresSource | None = None) -> None:
        stats = (probe or self.source).slot_stats()
        if stats is not None:
            self.metrics.source_lag_bytes.labels(self.cfg.name).set(max(0, stats["lag_bytes"] or 0))
            self.metrics.retained_wal_bytes.labels(self.cfg.name).set(
                max(0, stats["retained_wal_bytes"] or 0)
            )

    def _checkpoint(self, end: TxnEnd) -> None:
        """Sink commit (rows + position, one transaction), then confirm to the source. Nothing else commits a
        position (scheduled prices commit their own sink transactions, without one)."""
        t0 = time.monotonic()
        position = {"commit_lsn": end.commit_lsn, "end_lsn": end.end_lsn}
        if end.snapshot:
            position["snapshot"] = "done"
        self.sink.commit({"wal": json.dumps(position)}, floor=end.commit_lsn)
        self.source.confirm(end.end_lsn)
        self._progressed = True
        self._flush_counts()
        self._count_held()
        now = time.time()
        self._m_batch.observe(time.monotonic() - t0)
        self._m_last_commit.set(now)
        if not end.snapshot:
            lag = max(0.0, now - end.ts_ms / 1000)
            self._m_latency.observe(lag)
            self._m_lag.set(lag)
            self._lag_base_ms = end.ts_ms

    def _count(self, ev: ChangeEvent) -> None:
        """Counts a change read from the source; the metric is updated by _flush_counts (per batch: a
        prometheus counter per change costs more than the rest of the bookkeeping)."""
        key = (ev.schema, ev.table, ev.op)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1

    def _flush_counts(self) -> None:
        for (schema, table, op), n in self._counts.items():
            self.metrics.events.labels(self.cfg.name, f"{schema}.{table}", op).inc(n)
        self._counts.clear()
