"""What `cdc reconcile` (cdc/ops/reconcile.py) does with the keys its comparison found, in batches, each in a
sink transaction that holds the connector's lock (the connector waits for it, as for an approval):

1. the recorded key positions are folded (cdc_applied into cdc_row_state) and read: a key whose position is
   past the snapshot point X was changed by the stream after the snapshot, so the snapshot says nothing about
   it (`moved`, not drift); a key with a held change awaiting a decision (quarantine, dead letter) is `held`;
   a key with a promotion boundary pending (the schedule stage marked it, or cdc_scheduled has an entry) is
   `scheduled`; the rest is drift: missing, extra or different;
2. with --repair, the drift goes through the normal sink path at positions (X, 1), (X, 2), ... in key order:
   the POS row after the stages as an upsert (missing, different), a delete for an extra key. The sink's own
   never-backwards check (fold, then skip a change older than the key's recorded position) is on, so nothing
   the stream moved past X is overwritten even if it moved after step 1; and since the connector's stored
   position is at or past X (the run settled first), every change the stream applies later is newer than X
   and wins. Each repair reaches the price history with via 'repair'. The transaction commits no source
   position. A row the storefront refuses is dead-lettered by the sink as any change would be, and stays
   drift.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from cdc.events import DELETE, ChangeEvent
from cdc.sinks.sql import SqlSink
from cdc.sinks.sql.bookkeeping import held_table, row_state_table, scheduled_table

BATCH = 1000  # keys per sink transaction (the connector waits while one holds its lock)
LOOKUP = 500  # keys per IN list


@dataclass
class Candidate:
    """A key the comparison found out of step: `out` is the POS row after the stages (missing, different),
    `stored` the storefront row (extra, different)."""

    key: str
    kind: str  # missing | extra | different
    out: ChangeEvent | None = None
    stored: dict[str, Any] | None = None
    scheduled: bool = False  # the schedule stage marked a boundary pending
    columns: list[str] = field(default_factory=list)  # the differing columns


class Resolver:
    """Sorts the candidates out under the connector's lock and (repair) applies the drift through `sink`."""

    def __init__(
        self, sink: SqlSink, report: Any, point: int, ts_ms: int, repair: bool, where: tuple[str, str]
    ):
        self.sink = sink
        self.report = report
        self.point = point
        self.ts_ms = ts_ms
        self.repair = repair
        self.schema, self.table = where  # the source table a repair's delete is said to come from
        self.connectors = [
            sink.name
        ]  # whose held and scheduled entries count (every lane's: see reconcile.py)
        self.seq = 0
        self.batch: list[Candidate] = []

    def add(self, c: Candidate) -> None:
        self.batch.append(c)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        t0 = time.monotonic()
        try:
            self._flush(batch)
        finally:
            self.report.phases["resolve_s"] += time.monotonic() - t0

    def _flush(self, batch: list[Candidate]) -> None:
        sink, report = self.sink, self.report
        conn = sink.begin()  # the connector's lock, for the rest of this transaction
        try:
            sink.writer.fold(conn)
            keys = [c.key for c in batch]
            positions = self._positions(conn, keys)
            held = self._held(conn, keys)
            scheduled = self._scheduled(conn, keys)
            fixes: list[Candidate] = []
            for c in batch:
                pos = positions.get(c.key)
                if pos is not None and pos[0] > self.point:
                    report.moved.append(c.key)
                elif c.key in held:
                    report.held.append(
                        {"key": c.key, "why": f"a {held[c.key].replace('_', ' ')} awaits a decision"}
                    )
                elif c.scheduled or c.key in scheduled:
                    report.scheduled.append(c.key)
                else:
                    report.found(c)
                    if self.repair:
                        fixes.append(c)
            if fixes:
                self._apply(conn, fixes)
            else:
                conn.commit()  # the fold
        except BaseException:
            sink.rollback()
            raise

    def _apply(self, conn: sa.Connection, fixes: list[Candidate]) -> None:
        sink, report = self.sink, self.report
        first = self.seq + 1
        for c in fixes:
            self.seq += 1
            if c.kind == "extra":
                key_cols = sink.key_cols
                ev = ChangeEvent(
                    DELETE,
                    self.schema,
                    self.table,
                    {k: c.stored[k] for k in key_cols},
                    None,
                    self.point,
                    self.point,
                    self.seq,
                    self.ts_ms,
                    key_columns=key_cols,
                    headers={"via": "repair"},
                    toast=False,
                )
            else:
                ev = c.out
                ev.lsn = ev.commit_lsn = self.point
                ev.seq = self.seq
                ev.ts_ms = self.ts_ms
                ev.headers["via"] = "repair"
            sink.add(ev)
        sink.write()
        refused = set()
        if sink.refused_in_transaction():
            h = held_table
            refused = set(
                conn.scalars(
                    sa.select(h.c.row_key).where(
                        h.c.connector == sink.name,
                        h.c.kind == "dead_letter",
                        h.c.commit_lsn == self.point,
                        h.c.seq.between(first, self.seq),
                    )
                )
            )
        sink.commit(None)
        for c in fixes:
            if c.key in refused:
                report.repaired["refused"] += 1
                report.refused.append(c.key)
            else:
                report.repaired["deleted" if c.kind == "extra" else "upserted"] += 1

    # --- bookkeeping reads ------------------------------------------------------------------------------

    def _in_chunks(self, conn: sa.Connection, query, column, keys: list[str]):
        for i in range(0, len(keys), LOOKUP):
            yield from conn.execute(query.where(column.in_(keys[i : i + LOOKUP])))

    def _positions(self, conn: sa.Connection, keys: list[str]) -> dict[str, tuple[int, int]]:
        rs = row_state_table
        q = sa.select(rs.c.row_key, rs.c.commit_lsn, rs.c.seq).where(rs.c.connector == self.sink.positions)
        return {k: (lsn, seq) for k, lsn, seq in self._in_chunks(conn, q, rs.c.row_key, keys)}

    def _held(self, conn: sa.Connection, keys: list[str]) -> dict[str, str]:
        h = held_table
        q = sa.select(h.c.row_key, h.c.kind).where(h.c.connector.in_(self.connectors), h.c.status == "held")
        return dict(self._in_chunks(conn, q, h.c.row_key, keys))

    def _scheduled(self, conn: sa.Connection, keys: list[str]) -> set[str]:
        s = scheduled_table
        q = sa.select(s.c.row_key).where(s.c.connector.in_(self.connectors))
        return {k for (k,) in self._in_chunks(conn, q, s.c.row_key, keys)}
