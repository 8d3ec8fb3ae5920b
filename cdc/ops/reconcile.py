"""`cdc reconcile CONFIG [--repair] [--json]`: the full comparison of the POS and the storefront, key by key,
in storefront terms, and its repair.

    report = reconcile(cfg, repair=False)     # -> ReconcileReport; report.exit_code 0 / 1 / 2

1. **A consistent POS snapshot** at point X (a temporary logical slot exports it, as the initial snapshot
   does), read as the stream reads rows (cdc/ops/reconcile_sides.py).
2. **Settle**: the storefront must hold everything the POS committed before X, or every difference from
   replication lag would look like drift (and a repair at X could be undone by a lagging stream, which does
   not check changes above its stored position). So the run waits (up to `settle_timeout_s`) until the
   connector's stored position is at or past X, sending a heartbeat message on the POS so an idle stream
   commits one; when the connector is not running, a temporary copy of its slot tells whether changes
   before X are still unapplied (none: settled; some: exit 2, start the connector first).
3. **Compare** both sides streamed in the bytewise order of the storefront key's text (cdc/ops/chunks.py),
   never a whole table in Python. The POS rows go through the connector's stages (apply_stages; a HoldError
   is `held`, None is `filtered`; several POS rows of one key are judged together, as a pick with a fallback
   store needs), and are compared with the storefront's visible row on the columns the sink writes (the
   stages' output columns the table has), type-tolerantly (chunks.same_value). When both ends are PostgreSQL
   and the stages only rename and drop, both databases compute per bucket of the key's hash a row count
   and a checksum in SQL (cdc/ops/reconcile_checksum.py), and only the rows that differ are compared (`method`
   'checksum'); otherwise every row is compared as it streams by (`method` 'rows'). The POS side is ordered
   by the source columns the storefront key comes from (renames undone, cdc/stages/lineage.py); a key that
   a stage computes cannot be ordered so, and the run stops with exit 2 saying so.
4. **Sort out and repair** the keys found, in batches under the connector's lock
   (cdc/ops/reconcile_repair.py): changed by the stream since X (`moved`), held, scheduled, or drift; with
   `repair`, the drift through the normal sink path at (X, seq) with the never-backwards check on, recorded in
   the price history as 'repair'.

Exit codes: 0 in sync (or all drift repaired), 1 drift found and left, 2 cannot compare (`reason` says why).
Only a PostgreSQL source can be compared with its POS, and only a SQL storefront.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Callable, Iterator

from cdc.config import ConnectorConfig
from cdc.errors import CdcError
from cdc.events import lsn_to_str
from cdc.lanes import lane_connectors
from cdc.ops.chunks import OrderError, merge_sorted
from cdc.ops.reconcile_checksum import PgStore, checksum_plan, compare_by_checksums, pg_store_types
from cdc.ops.reconcile_judge import Judge
from cdc.ops.reconcile_repair import Resolver
from cdc.ops.reconcile_report import EXIT_CANNOT, EXIT_DRIFT, EXIT_IN_SYNC, KINDS, ReconcileReport
from cdc.ops.reconcile_sides import PosSnapshot, StoreReader
from cdc.progress import Progress
from cdc.roles import wire_roles
from cdc.sinks.sql import SqlSink
from cdc.sinks.sql.offsets import stored_positions
from cdc.stages import build_stages
from cdc.stages.lineage import Untraceable, source_column

__all__ = ["EXIT_CANNOT", "EXIT_DRIFT", "EXIT_IN_SYNC", "KINDS", "ReconcileReport", "reconcile"]

log = logging.getLogger("cdc.reconcile")

SETTLE_TIMEOUT_S = 60.0
REJOIN_GRACE_S = 5.0  # a running connector releases its slot between retries (after a storefront deadlock,
# say) for up to its backoff; an inactive slot is taken for a stopped connector only after this long
PROGRESS_EVERY = 5000  # rows between progress updates


def reconcile(
    cfg: ConnectorConfig,
    repair: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    examples: int = 10,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
) -> ReconcileReport:
    """Compares every POS row (after the stages) with the storefront, key by key; with `repair`, fixes the
    drift through the sink. `progress(rows_done, rows_estimated)` is called as POS rows are compared (None: a
    bar on a terminal, log lines otherwise). Errors that stop the comparison become exit 2 with the reason."""
    report = ReconcileReport(cfg.name, repair=repair, examples=examples)
    t0 = time.monotonic()
    try:
        why = _unsupported(cfg)
        if why:
            return report.cannot(why)
        _Run(cfg, report, repair, progress, settle_timeout_s).run()
        report.finish()
    except (CdcError, OrderError) as e:
        report.cannot(str(e))
    finally:
        report.duration_s = time.monotonic() - t0
    return report


def _unsupported(cfg: ConnectorConfig) -> str | None:
    if cfg.source.type != "postgres":
        return (
            f"{cfg.name} reads Kafka topics, not the POS: reconcile compares a PostgreSQL source's tables with "
            "the storefront; run it with the config of the connector that reads the POS (direct mode)"
        )
    if cfg.sink.type != "sql":
        return (
            f"{cfg.name} writes to Kafka, not to a storefront database: there is no storefront table to compare "
            "with"
        )
    return None


class _Run:
    def __init__(self, cfg, report: ReconcileReport, repair: bool, progress, settle_timeout_s: float):
        self.cfg = cfg
        self.report = report
        self.repair = repair
        self.progress_cb = progress
        self.settle_timeout_s = settle_timeout_s
        self.stages = build_stages(cfg.transforms)
        self._store_seen = 0

    def run(self) -> None:
        cfg, report = self.cfg, self.report
        try:
            key_src = [
                source_column(cfg.transforms, k, "storefront key column", "reconcile") for k in cfg.sink.key
            ]
        except Untraceable as e:
            report.cannot(
                f"{e}. Reconcile reads the POS in the order of the storefront key, so the key must be source "
                "columns (renamed at most)"
            )
            return
        # a config with lanes: every lane's connector must have settled; the repairs go through the first
        # lane's sink, whose key positions all lanes share (position_group)
        self.lanes = lane_connectors(cfg)
        sink = SqlSink(self.lanes[0])
        sink.open()
        pos = reader = roles = None
        try:
            if sink.target.table is None:
                report.cannot(
                    f"the storefront table {cfg.sink.table} does not exist (the connector never wrote it)"
                )
                return
            pos = PosSnapshot(cfg, key_src)
            pos.open()
            roles = wire_roles(self.stages, cfg)  # a guard's who.lookup: the roles as the POS has them now
            report.snapshot_position = lsn_to_str(pos.point)
            t0 = time.monotonic()
            why = None
            for lane in self.lanes:
                why = why or self._settle(pos, sink, lane)
            report.phases["settle_s"] = time.monotonic() - t0
            if why:
                report.cannot(why)
                return
            reader = StoreReader(sink.target, sink.store.url)
            self.sink, self.pos, self.reader = sink, pos, reader
            self.target_cols = set(reader.columns)
            first = pos.tables[0]
            self.resolver = Resolver(
                sink, report, pos.point, pos.ts_ms, self.repair, (first.schema, first.name)
            )
            self.resolver.connectors = [c.name for c in self.lanes]
            self.judge = Judge(self, pos)
            plan = self._plan()
            total = sum(t.estimate for t in pos.tables) or None
            self.progress = _progress(self.progress_cb, f"{cfg.name}: reconcile", total)
            t0 = time.monotonic()
            try:
                if plan is not None:
                    report.method = "checksum"
                    compare_by_checksums(self, plan)
                else:
                    report.method = "rows"
                    self._rows()
                self.resolver.flush()
            finally:
                self.progress.close()
                report.phases["compare_s"] = time.monotonic() - t0
        finally:
            if roles is not None:
                roles.close()
            if reader is not None:
                reader.close()
            if pos is not None:
                pos.close()
            sink.rollback()
            sink.close()

    # --- settle -------------------------------------------------------------------------------------------

    def _settle(self, pos: PosSnapshot, sink: SqlSink, lane) -> str | None:
        """None once the storefront holds everything the POS committed before the snapshot point, else why
        not. `lane`: the connector to settle (the config's, or one of its lanes)."""
        point, name = pos.point, lane.name
        deadline = time.monotonic() + self.settle_timeout_s
        nudged = False
        inactive_since = None  # when the slot was first seen idle with changes left to apply
        while True:
            stored = _stored_lsn(sink, name)
            if stored is not None and stored >= point:
                self.report.settled = (
                    f"the connector's stored position {lsn_to_str(stored)} is past the snapshot"
                )
                return None
            slot = pos.slot_state(lane)
            if stored is None:
                if slot is None:
                    return f"{name} has not run yet (no stored position, no slot {lane.slot}): run it first"
                return f"{name} has not finished its initial snapshot (no stored position yet): let it finish"
            if slot is None:
                return (
                    f"the replication slot {lane.slot} is gone, so what {name} has not applied cannot be known; "
                    f"`cdc run {self.cfg.path or 'CONFIG'} --resnapshot` copies the tables anew"
                )
            active, _ = slot
            if active:
                inactive_since = None
            elif inactive_since is None or time.monotonic() - inactive_since >= min(
                REJOIN_GRACE_S, self.settle_timeout_s
            ):
                pending = pos.pending(stored, lane)
                if pending == 0:
                    self.report.settled = f"{name} is stopped at {lsn_to_str(stored)} with no change before the snapshot left to apply"
                    return None
                if inactive_since is None:
                    inactive_since = time.monotonic()
                else:
                    return (
                        f"{name} is stopped with {pending} POS change(s) before the snapshot point not yet "
                        f"applied (its slot stayed idle for {REJOIN_GRACE_S:.0f}s), which would look like drift: "
                        "start it, and reconcile once `cdc status` shows it caught up"
                    )
            if time.monotonic() >= deadline:
                return (
                    f"{name} has not applied the POS changes up to the snapshot point {lsn_to_str(point)} within "
                    f"{self.settle_timeout_s:.0f}s (its stored position is {lsn_to_str(stored)}): it is far behind or "
                    "stuck; see `cdc status`, and reconcile once it has caught up"
                )
            if not nudged:
                nudged = pos.heartbeat()  # an idle stream then commits a position past the point
            time.sleep(0.1)

    # --- the two ways of comparing -------------------------------------------------------------------------

    def _plan(self):
        pos, target = self.pos, self.sink.target
        if len(pos.tables) != 1 or target.dialect != "postgresql":
            return None
        store = PgStore(self.reader.engine)
        try:
            plan, why = checksum_plan(
                self.stages, pos.tables[0], target, pg_store_types(store.conn, target.table)
            )
        finally:
            store.close()
        if plan is None:
            log.debug("%s: reconcile: row by row: %s", self.cfg.name, why)
        return plan

    def _rows(self) -> None:
        """Every row of both sides, compared as they stream by."""
        pos, report = self.pos, self.report
        streams = [((k, (t, rec)) for k, rec in pos.rows(t)) for t in pos.tables]
        source = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda item: item[0])
        judge = self.judge
        store = self._count_store(self.reader.rows())
        for key, group, stored in merge_sorted(self._count_source(source), store):
            judge(key, group, stored)
        report.storefront_rows = self._store_seen

    def _count_source(self, items: Iterator) -> Iterator:
        n, step, report, progress = 0, PROGRESS_EVERY, self.report, self.progress
        for item in items:
            n += 1
            if n % step == 0:
                report.source_rows = n
                progress.advance(step)
            yield item
        report.source_rows = n
        progress.advance(n % step)

    def _count_store(self, items: Iterator) -> Iterator:
        for item in items:
            self._store_seen += 1
            yield item


def _stored_lsn(sink: SqlSink, connector: str) -> int | None:
    text = stored_positions(sink.store.engine, connector).get("wal")
    return json.loads(text)["commit_lsn"] if text else None


class _Callback:
    def __init__(self, fn: Callable[[int, int | None], None], total: int | None):
        self.fn, self.total, self.done = fn, total, 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.fn(self.done, self.total)

    def close(self) -> None:
        pass


def _progress(cb, what: str, total: int | None):
    return _Callback(cb, total) if cb is not None else Progress(what, total, log)
