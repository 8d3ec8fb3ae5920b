"""Scheduled prices: when a promotion starts or ends, the storefront gets the row's price for that moment.

The `schedule` stage (cdc/stages/schedule.py) computes a row's price for now and, when its window starts or
ends later, marks the change with the next boundary and a copy of the change as it reached the stage. Here:

* `Schedules.record` (called by the writer in the transaction that applies changes): an applied change for a
  key replaces whatever was scheduled for that key — its entry in `cdc_scheduled` is deleted — and a change
  that carries a boundary gets the key's new entry: (due time, the change's source position, the stage, the copy). One entry
  per key at most, so "a newer change cancels the older schedule" is a primary key.
* `Schedules.take_due` (called by the sink's idle tick, `SqlSink.tick`, while nothing is buffered) takes the
  entries that are due, in one sink transaction. For each, under a lock on the key's row state: if the row
  state's position is still the entry's position, no newer source change has been applied for the key, so
  the sink runs the copy through the stages again from the schedule stage (now = the wall clock) and writes
  it with the never-backwards check off (the same source change, whose position the row state already
  records, is applied again as of now; the row state keeps that position). That run schedules the next
  boundary (the end, after the start). If the row state has moved on, a newer change owns the key and the
  entry is dropped. A later guard that holds the scheduled price holds it like any change (quarantine), at
  the same position, and an approval applies it while no newer change has come.

Entries live in the sink database and are committed with the changes they come from, so they survive
restarts: after a stop, the first tick applies what fell due meanwhile (a window that opened and closed
while stopped leaves the base price). Slot positions are not involved: nothing is read from the source again.
"""

from __future__ import annotations

import logging
import math
import time

import sqlalchemy as sa

from cdc.events import ChangeEvent
from cdc.sinks.sql.bookkeeping import row_state_table, scheduled_table
from cdc.sinks.sql.buffer import UPSERT
from cdc.stored import dump_event, load_event

log = logging.getLogger("cdc.schedule")

CHUNK = 500


class Schedules:
    """cdc_scheduled of one connector. `active`: the transforms have a schedule stage; `keys`: the keys with
    an entry; `next_due_ms`: the earliest due time (None: nothing scheduled), kept up to date by this
    connector's own writes and re-read now and then (an approval elsewhere may add one)."""

    def __init__(self, connector: str, active: bool, positions: str | None = None):
        self.connector = connector
        self.positions = positions or connector  # whose recorded key positions (sink.position_group)
        self.active = active
        self.keys: set[str] = set()
        self.next_due_ms: int | None = None

    @property
    def tracking(self) -> bool:
        """Whether applied changes must be recorded here (a schedule stage, or entries left by one)."""
        return self.active or bool(self.keys)

    def load(self, conn: sa.Connection) -> None:
        t = scheduled_table
        self.keys = set(conn.scalars(sa.select(t.c.row_key).where(t.c.connector == self.connector)))
        self.refresh(conn)

    def refresh(self, conn: sa.Connection) -> None:
        t = scheduled_table
        self.next_due_ms = conn.scalar(
            sa.select(sa.func.min(t.c.due_ms)).where(t.c.connector == self.connector)
        )

    def is_due(self) -> bool:
        return self.next_due_ms is not None and time.time() * 1000 >= self.next_due_ms

    def forget(self) -> None:
        """A source TRUNCATE emptied cdc_scheduled (in the writer's transaction)."""
        self.keys.clear()

    def record(self, conn: sa.Connection, applied: list, now) -> None:
        t = scheduled_table
        cancel = [kt for kt, p in applied if kt in self.keys or "schedule" in p.ev.headers]
        for i in range(0, len(cancel), CHUNK):
            conn.execute(
                t.delete().where(t.c.connector == self.connector, t.c.row_key.in_(cancel[i : i + CHUNK]))
            )
        self.keys.difference_update(cancel)
        rows = []
        for kt, p in applied:
            s = p.ev.headers.get("schedule") if p.op == UPSERT else None
            if s:
                rows.append(
                    {
                        "connector": self.connector,
                        "row_key": kt,
                        "due_ms": math.ceil(s["at"].timestamp() * 1000),
                        "what": s["what"],
                        "commit_lsn": p.ev.commit_lsn,
                        "seq": p.ev.seq,
                        "stage": s["stage"],
                        "event": dump_event(s["event"]),
                        "created_at": now,
                    }
                )
        if rows:
            conn.execute(t.insert(), rows)
            self.keys.update(r["row_key"] for r in rows)
            first = min(r["due_ms"] for r in rows)
            self.next_due_ms = first if self.next_due_ms is None else min(self.next_due_ms, first)

    def take_due(self, conn: sa.Connection, stage_names: list[str], limit: int = 1000):
        """Yields (entry, the change to run from its stage) for each entry due now that still owns its key,
        taking the entries out of cdc_scheduled (inside the caller's transaction, whose cdc_row_state has
        been folded)."""
        t, rs = scheduled_table, row_state_table
        due = conn.execute(
            sa.select(t)
            .where(t.c.connector == self.connector, t.c.due_ms <= int(time.time() * 1000))
            .order_by(t.c.due_ms)
            .limit(limit)
        ).all()
        for r in due:
            taken = conn.execute(
                t.delete().where(
                    t.c.connector == self.connector,
                    t.c.row_key == r.row_key,
                    t.c.commit_lsn == r.commit_lsn,
                    t.c.seq == r.seq,
                    t.c.due_ms == r.due_ms,
                )
            ).rowcount
            self.keys.discard(r.row_key)
            if not taken:  # applied by another process meanwhile (an approval's catch-up), or replaced
                continue
            state = conn.execute(
                sa.select(rs.c.commit_lsn, rs.c.seq)
                .where(rs.c.connector == self.positions, rs.c.row_key == r.row_key)
                .with_for_update()
            ).first()
            if state is None or (state.commit_lsn, state.seq) != (r.commit_lsn, r.seq):
                log.info(
                    "%s: scheduled %s for %s dropped: a newer change owns the key",
                    self.connector,
                    r.what,
                    r.row_key,
                )
                continue
            if r.stage not in stage_names:
                log.warning(
                    "%s: scheduled %s for %s dropped: stage %s is no longer in the transforms",
                    self.connector,
                    r.what,
                    r.row_key,
                    r.stage,
                )
                continue
            ev: ChangeEvent = load_event(r.event)
            ev.headers["via"] = "schedule"
            yield r, ev
