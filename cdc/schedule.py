"""Scheduled prices: when a promotion starts or ends, the storefront gets the row's price for that moment.

The `schedule` stage (cdc/stages/schedule.py) computes a row's price for now and, when its window starts or
ends later, marks the change with the next boundary and a copy of the change as it reached the stage. Here:

* `record` (called by the sink in the transaction that applies changes): an applied change for a key replaces
  whatever was scheduled for that key — its entry in `cdc_scheduled` is deleted — and a change that carries a
  boundary gets the key's new entry: (due time, the change's source position, the stage, the copy). One entry
  per key at most, so "a newer change cancels the older schedule" is a primary key.
* `apply_due` (called by the pipeline while nothing is buffered: on its idle tick and after a checkpoint)
  takes the entries that are due, in one sink transaction. For each, under a lock on the key's row state:
  if the row state's position is still the entry's position, no newer source change has been applied for
  the key, so the copy is run through the stages again from the schedule stage (now = the wall clock) and
  written with the never-backwards check off (the same source change, whose position the row state already
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

from cdc.errors import HoldError
from cdc.sinks.bookkeeping import row_state_table, scheduled_table
from cdc.sinks.dialects import UPSERT
from cdc.stages import apply_stages
from cdc.stored import dump_event, load_event

log = logging.getLogger("cdc.schedule")

CHUNK = 500


def record(sink, conn: sa.Connection, applied: list, now) -> None:
    t = scheduled_table
    cancel = [kt for kt, p in applied if kt in sink.scheduled_keys or "schedule" in p.ev.headers]
    for i in range(0, len(cancel), CHUNK):
        conn.execute(t.delete().where(t.c.connector == sink.name, t.c.row_key.in_(cancel[i : i + CHUNK])))
    sink.scheduled_keys.difference_update(cancel)
    rows = []
    for kt, p in applied:
        s = p.ev.headers.get("schedule") if p.op == UPSERT else None
        if s:
            rows.append(
                {
                    "connector": sink.name,
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
        sink.scheduled_keys.update(r["row_key"] for r in rows)
        first = min(r["due_ms"] for r in rows)
        sink.next_due_ms = first if sink.next_due_ms is None else min(sink.next_due_ms, first)


def apply_due(sink, stages: list, limit: int = 1000) -> list[str]:
    """Applies the entries due now in one sink transaction; returns the kinds of the changes a stage held."""
    from cdc.sinks.sql import _classify

    t, rs = scheduled_table, row_state_table
    names = [s.name for s in stages]
    held: list[str] = []
    try:
        conn = sink._tx()
        sink._fold(conn)  # the keys' positions below are read from cdc_row_state
        due = conn.execute(
            sa.select(t)
            .where(t.c.connector == sink.name, t.c.due_ms <= int(time.time() * 1000))
            .order_by(t.c.due_ms)
            .limit(limit)
        ).all()
        for r in due:
            taken = conn.execute(
                t.delete().where(
                    t.c.connector == sink.name,
                    t.c.row_key == r.row_key,
                    t.c.commit_lsn == r.commit_lsn,
                    t.c.seq == r.seq,
                    t.c.due_ms == r.due_ms,
                )
            ).rowcount
            sink.scheduled_keys.discard(r.row_key)
            if not taken:  # applied by another process meanwhile (an approval's catch-up), or replaced
                continue
            state = conn.execute(
                sa.select(rs.c.commit_lsn, rs.c.seq)
                .where(rs.c.connector == sink.name, rs.c.row_key == r.row_key)
                .with_for_update()
            ).first()
            if state is None or (state.commit_lsn, state.seq) != (r.commit_lsn, r.seq):
                log.info(
                    "%s: scheduled %s for %s dropped: a newer change owns the key",
                    sink.name,
                    r.what,
                    r.row_key,
                )
                continue
            if r.stage not in names:
                log.warning(
                    "%s: scheduled %s for %s dropped: stage %s is no longer in the transforms",
                    sink.name,
                    r.what,
                    r.row_key,
                    r.stage,
                )
                continue
            ev = load_event(r.event)
            ev.headers["via"] = "schedule"
            try:
                out = apply_stages(stages[names.index(r.stage) :], ev)
                if out is not None:
                    sink.add(out)
            except HoldError as e:
                kind = getattr(e, "kind", "dead_letter")
                sink.hold(ev, e, kind)
                held.append(kind)
                log.warning("%s: scheduled %s for %s held (%s): %s", sink.name, r.what, r.row_key, kind, e)
                continue
            log.info("%s: scheduled price %s for %s applied", sink.name, r.what, r.row_key)
    except Exception as e:
        raise _classify(e) from e
    sink.write(fresh=True)
    sink.commit(None)
    sink.refresh_next_due()
    return held
