"""The loop: read -> stages -> sink -> checkpoint, and nothing else.

The pipeline knows the Source and Sink protocols (cdc/sources/base.py, cdc/sinks/base.py), never a concrete
source or sink: registries keyed by the config's `type` build them. Positions are opaque to it: the
checkpointer (cdc/checkpoint.py) is the only place they are committed (sink commit with the positions, then
confirm to the source). A batch holds whole source transactions (a huge one is written in pieces but
committed once). A batch's commit may run beside the reading of the next one (Checkpointer.begin), one at a
time: the next begins once it ended, and it is confirmed only then. Everything the loop knows at start comes
from the stored position, so a crash at any point replays from there.

Changes go through the stages into the sink (cdc/stages/runner.py); a change a stage holds goes to the sink's
held list with its kind and is committed with the batch. While idle, with nothing buffered, the source and
the sink get a tick (a heartbeat; scheduled prices).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from cdc import hotpath
from cdc.checkpoint import Checkpointer
from cdc.config import ConnectorConfig
from cdc.errors import CdcError, TerminalError, TransientError
from cdc.events import Abandon, ChangeBatch, ChangeEvent, Idle, TxnEnd, Unreadable
from cdc.fast import fast_path
from cdc.metrics import Metrics
from cdc.sinks.base import Sink, build_sink
from cdc.sources.base import Source, build_source
from cdc.stages import build_stages
from cdc.stages.runner import StageRunner

log = logging.getLogger("cdc.pipeline")

STATS_INTERVAL_S = 2.0  # how often the source's gauges (slot lag, retained WAL) are read
# changes buffered from a bulk transaction's runs (the fast path's batches) that are sent at once when the
# sink's writer is idle, rather than batch_size at a time: the storefront merges while the rest is read, and the
# write left after the transaction's end is small (what came during the last one)
EAGER_WRITE = 2000
# seconds: how soon a source that is idle while a commit runs beside the reading looks again (see Idle.wake_s)
IDLE_POLL_S = 0.002


class Pipeline:
    def __init__(
        self,
        cfg: ConnectorConfig,
        metrics: Metrics | None = None,
        retry_for_s: float = 900.0,
        make_source: Callable[[ConnectorConfig, Metrics], Source] = build_source,
        make_sink: Callable[[ConnectorConfig, Metrics], Sink] = build_sink,
    ):
        self.cfg = cfg
        self.make_source = make_source  # the registries; tests and benchmarks bring their own
        self.make_sink = make_sink
        self.metrics = metrics or Metrics()
        self.stages = build_stages(cfg.transforms)
        self.retry_for_s = retry_for_s
        self.stopping = False
        self._progressed = False
        self._done = threading.Event()
        self._caught_up = False
        self._lag_base_ms = time.time() * 1000
        self.source: Source | None = None
        self.sink: Sink | None = None
        self.checkpoint: Checkpointer | None = None
        self.runner: StageRunner | None = None
        m, name = self.metrics, cfg.name
        self._m_up = m.up.labels(name)
        self._m_batch = m.sink_batch.labels(name)
        self._m_latency = m.end_to_end_latency.labels(name)
        self._m_lag = m.end_to_end_lag.labels(name)
        self._m_last_commit = m.last_commit.labels(name)
        # both series exist from the start, so increase() sees the first
        self._m_held = {kind: m.held.labels(name, kind) for kind in ("dead_letter", "quarantine")}
        history = cfg.sink.history if cfg.sink.type == "sql" else None
        self.changed_by = history.changed_by if history else None
        m.source_lag_bytes.labels(name), m.retained_wal_bytes.labels(name)
        m.hot_path.labels(name, hotpath.path()).set(1)  # compiled, mixed or pure (cdc/hotpath.py)
        self._counts: dict[tuple[str, str, str], int] = {}  # changes read, not yet in cdc_events_total
        # the batch whose commit runs beside the reading, and when it began (Checkpointer.begin)
        self._running: tuple[TxnEnd, float] | None = None
        self._overlap = False  # the sink overlapped the last commit: the next begins as soon as it ended
        self._began = 0.0  # when the last commit began (sink.min_commit_interval_ms counts from it)

    def stop(self) -> None:
        self.stopping = True

    def reset(self) -> None:
        """For a re-snapshot: forget the source's progress (the slot; a Kafka group's offsets), then the stored
        positions."""
        source = self.make_source(self.cfg, self.metrics)
        try:
            source.reset()
        finally:
            source.close()
        sink = self.make_sink(self.cfg, self.metrics)
        sink.open()
        try:
            sink.forget_offsets()
        finally:
            sink.close()
        log.info("%s: positions forgotten; the next start reads the source anew", self.cfg.name)

    # --- supervision ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Runs until stop(); transient failures reconnect with exponential backoff and jitter, for up to
        `retry_for_s` seconds without progress; terminal errors propagate."""
        delay, failing_since, attempt = 0.5, None, 0
        gauges = threading.Thread(target=self._gauges_loop, daemon=True, name=f"{self.cfg.name}-gauges")
        gauges.start()
        try:
            while not self.stopping:
                try:
                    self._session()
                    return
                except TransientError as e:
                    if self._progressed:  # the failed session got somewhere: a new window, the shortest delay
                        delay, failing_since, attempt = 0.5, None, 0
                    now = time.monotonic()
                    failing_since = failing_since or now
                    attempt += 1
                    if now - failing_since > self.retry_for_s:
                        raise TransientError(
                            f"{e} (gave up after {attempt} attempts in {now - failing_since:.0f}s; "
                            f"`cdc run --retry-for SECONDS` sets how long to keep trying, now {self.retry_for_s:.0f})"
                        ) from e
                    wait = delay * (0.5 + random.random())  # jitter: connectors retrying together spread out
                    gives_up = time.strftime(
                        "%H:%M:%S", time.localtime(time.time() + self.retry_for_s - (now - failing_since))
                    )
                    log.warning(
                        "%s: %s; attempt %d failed, next in %.1fs (gives up at %s without progress, --retry-for %.0fs)",
                        self.cfg.name,
                        e,
                        attempt,
                        wait,
                        gives_up,
                        self.retry_for_s,
                    )
                    self._m_up.set(0)
                    self.metrics.healthy.clear()
                    self._teardown()
                    self._sleep(wait)
                    delay = min(delay * 2, 30.0)
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
        self.source = source = self.make_source(self.cfg, self.metrics)
        source.check()  # the privileges, before anything is made on either side
        self.sink = sink = self.make_sink(self.cfg, self.metrics)
        sink.open()  # (checks its own privileges, then makes its bookkeeping)
        sink.wire(self.stages)
        source.prepare()  # publication, slot: only once the sink has what it needs
        fast = fast_path(self.cfg, self.stages, source, sink)  # None: every change the reference way
        self.runner = StageRunner(self.stages, sink, source.wire(self.stages), fast)
        self.checkpoint = Checkpointer(source, sink, self.cfg.name)
        self._running, self._overlap = None, False
        self._m_up.set(1)
        self.metrics.healthy.set()
        sink.start_folding()
        resume = self.checkpoint.resume()
        try:
            self._consume(source.read(resume, self.checkpoint.stored))
        except TerminalError:
            if resume is None and self.checkpoint.last is None:  # a first run that never committed: a slot
                source.undo_prepare()  # kept would hold the POS's WAL for a connector that cannot start
            raise

    def _consume(self, items) -> None:
        sink, runner, changed_by = self.sink, self.runner, self.changed_by
        batch_size = self.cfg.sink.batch_size
        max_wait = self.cfg.sink.batch_max_ms / 1000
        gap = getattr(self.cfg.sink, "min_commit_interval_ms", 0) / 1000  # (a SQL sink's)
        last_end: TxnEnd | None = None  # newest transaction fully buffered, not yet committed
        in_txn = False
        first_at = 0.0
        n_buffered = 0
        for item in items:
            t = type(item)
            if t is ChangeEvent or t is ChangeBatch:
                if not in_txn:
                    in_txn = True
                    first_at = first_at or time.monotonic()
                    if self._caught_up:  # behind again, since this change's commit
                        self._caught_up, self._lag_base_ms = False, item.ts_ms
                        sink.caught_up = False
                if t is ChangeBatch:  # a run of a table's changes (only with a fast path: no changed_by)
                    self._count_batch(item)
                    n_buffered += len(item)
                    runner.push_batch(item)
                else:
                    self._count(item)
                    if changed_by is not None:  # read before the transforms, which may drop the column
                        item.headers["changed_by"] = item.after.get(changed_by) if item.after else None
                    n_buffered += 1
                    runner.push(item)
                if (
                    n_buffered >= batch_size
                    or (t is ChangeBatch and n_buffered >= EAGER_WRITE and sink.writer_idle())
                ):  # bound memory, or keep an idle storefront busy: send rows now, commit at a transaction end
                    runner.flush()
                    sink.write_async()
                    n_buffered = 0
                    self._flush_counts()
                if self.stopping:
                    log.info(
                        "%s: stop requested inside a transaction; abandoning the open batch", self.cfg.name
                    )
                    self._finish()  # (the commit running is of whole transactions before it)
                    sink.rollback()
                    return
                continue
            if t is Unreadable:  # held as a dead letter, in the batch it came in
                in_txn, first_at = True, first_at or time.monotonic()
                sink.hold(item.ev, item.error, "dead_letter")
                n_buffered += 1
                continue
            runner.flush()
            if t is TxnEnd:
                in_txn = False
                last_end = item
                first_at = first_at or time.monotonic()  # (a transaction with no changes waits like any)
                # a commit overlapping the reading begins as soon as the one before it ended (group commit: what
                # arrives meanwhile goes in the next); else the batch fills for up to batch_max_ms
                now = time.monotonic()
                if (
                    item.snapshot
                    or now - first_at >= max_wait
                    or n_buffered >= batch_size
                    or (self._overlap and now - self._began >= gap and self._finish(block=False))
                ):
                    self._checkpoint(last_end)
                    last_end, first_at, n_buffered = None, 0.0, 0
                    self._due()
            elif t is Idle:
                if not in_txn and last_end is None and not self._finish(block=False):
                    # a commit runs, and nothing waits for it: read on (what comes goes in the next commit),
                    # and look again soon for its end (confirmed, and the Idle's work, then)
                    item.wake_s = IDLE_POLL_S
                    if self.stopping:
                        break
                    continue
                if not in_txn:  # nothing to read now: the commit running ends (and is confirmed) first
                    self._finish()
                if last_end is not None and not in_txn:
                    wait = self._began + gap - time.monotonic()
                    if wait > 0:  # under load: min_commit_interval_ms since the last began (nothing to read)
                        time.sleep(wait)
                    self._checkpoint(last_end)
                    last_end, first_at, n_buffered = None, 0.0, 0
                elif not in_txn:
                    self._caught_up = sink.caught_up = True
                    self._m_lag.set(0)
                if not in_txn:
                    if item.position is not None:  # everything before it is durable: confirm it too
                        self.checkpoint.confirm(item.position)
                    self.source.tick()
                    self._due()
                if self.stopping and not in_txn:
                    break  # (the commit begun at this Idle ends, and is confirmed, below)
            elif t is Abandon:  # the source no longer stands behind the open batch
                self._finish()
                sink.rollback()
                self._counts.clear()  # (its changes are read again, and counted then)
                last_end, in_txn, first_at, n_buffered = None, False, 0.0, 0
                log.info(
                    "%s: the open batch was abandoned (%s); reading it again", self.cfg.name, "rebalance"
                )
        runner.flush()
        if last_end is not None and not in_txn:  # a source that ended inside a transaction: never half of it
            self._checkpoint(last_end)
        self._finish()

    def _checkpoint(self, end: TxnEnd) -> None:
        """Sink commit (rows + position, one transaction), then confirm to the source (the checkpointer): begun
        beside the reading when the sink can (confirmed by _finish), else now."""
        self._finish()
        self._began = t0 = time.monotonic()
        self._overlap = self.checkpoint.begin(end.position)
        if self._overlap:
            self._running = (end, t0)
        else:
            self._committed(end, t0)

    def _finish(self, block: bool = True) -> bool:
        """The commit running beside the reading, once it ended: confirmed, and counted; False while it runs
        (block=False). True also when none runs."""
        if self._running is None:
            return True
        if not self.checkpoint.finish(block):
            return False
        (end, t0), self._running = self._running, None
        self._committed(end, t0)
        return True

    def _committed(self, end: TxnEnd, t0: float) -> None:
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

    def _due(self) -> None:
        """The sink's timed work (scheduled prices), only with nothing buffered in it."""
        self.sink.tick()
        self._count_held()

    def _count_held(self) -> None:
        for kind, n in self.sink.drain_held().items():
            self._m_held[kind].inc(n)

    # --- metrics --------------------------------------------------------------------------------------

    def _gauges_loop(self) -> None:
        """On a timer, whatever the stream is doing (busy, stalled, retrying): lag seconds, and the source's
        gauges as its server sees them (on a connection of its own)."""
        probe = self.make_source(self.cfg, self.metrics)
        try:
            while True:
                self._m_lag.set(0.0 if self._caught_up else max(0.0, time.time() - self._lag_base_ms / 1000))
                try:
                    self.refresh_source_gauges(probe)
                except CdcError as e:
                    log.debug("%s: source statistics unavailable: %s", self.cfg.name, e)
                    probe.close()
                if self._done.wait(STATS_INTERVAL_S):
                    return
        finally:
            probe.close()

    def refresh_source_gauges(self, probe: Source | None = None) -> None:
        (probe or self.source).observe(self.metrics)

    def _count(self, ev: ChangeEvent) -> None:
        """Counts a change read from the source; the metric is updated by _flush_counts (per batch: a
        prometheus counter per change costs more than the rest of the bookkeeping)."""
        key = (ev.schema, ev.table, ev.op)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1

    def _count_batch(self, batch: ChangeBatch) -> None:
        counts, schema, table = self._counts, batch.schema, batch.table
        for op, n in (("c", batch.inserts), ("u", len(batch) - batch.inserts)):
            if n:
                key = (schema, table, op)
                counts[key] = counts.get(key, 0) + n

    def _flush_counts(self) -> None:
        for (schema, table, op), n in self._counts.items():
            self.metrics.events.labels(self.cfg.name, f"{schema}.{table}", op).inc(n)
        self._counts.clear()
        runner = self.runner
        if runner is not None and runner.filtered:
            for stage, n in runner.filtered.items():
                self.metrics.filtered.labels(self.cfg.name, stage).inc(n)
            runner.filtered.clear()
