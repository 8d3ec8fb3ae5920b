"""Held changes (cdc_held): list them, apply one (quarantine approve / dead-letter retry), or drop one.

Applying goes through the sink with the change's ORIGINAL source position, so the never-backwards guard
decides: if a newer change for the key has been applied since, nothing changes and the entry is marked
superseded. Every resolution records who and when.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass

import sqlalchemy as sa

from cdc.config import ConnectorConfig
from cdc.errors import CdcError
from cdc.events import ChangeEvent
from cdc.sinks.bookkeeping import held_table, row_state_table, utcnow
from cdc.sinks.sql import SqlSink
from cdc.stages import apply_stages, build_stages


def who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def list_held(cfg: ConnectorConfig, kind: str, status: str | None = "held") -> list[dict]:
    sink = SqlSink(cfg)
    sink.open()
    try:
        q = sa.select(held_table).where(held_table.c.connector == cfg.name, held_table.c.kind == kind)
        if status:
            q = q.where(held_table.c.status == status)
        with sink.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(q.order_by(held_table.c.id))]
    finally:
        sink.close()
    for r in rows:
        r["details"] = json.loads(r["details"]) if r["details"] else {}
        r["event"] = json.loads(r["event"])
    return rows


@dataclass
class Outcome:
    status: str  # applied | superseded | rejected | dropped
    message: str


def event_from_held(row) -> ChangeEvent:
    env = json.loads(row.event)
    src = env["source"]
    return ChangeEvent(
        env["op"],
        src.get("schema", ""),
        src.get("table", ""),
        env.get("before"),
        env.get("after"),
        src.get("lsn") or row.commit_lsn,
        row.commit_lsn,
        row.seq,
        env.get("ts_ms") or src.get("ts_ms") or 0,
        src.get("txId"),
        "false",
        src.get("db", ""),
        src.get("name", ""),
    )


def resolve(cfg: ConnectorConfig, held_id: int, kind: str, apply: bool, by: str | None = None) -> Outcome:
    """apply=True: approve (quarantine) / retry (dead letter); False: reject / drop."""
    by = by or who()
    sink = SqlSink(cfg)
    sink.open()
    try:
        conn = sink._tx()
        row = conn.execute(
            sa.select(held_table).where(
                held_table.c.id == held_id, held_table.c.connector == cfg.name, held_table.c.kind == kind
            )
        ).first()
        if row is None:
            raise CdcError(f"no {kind.replace('_', ' ')} entry {held_id} for connector {cfg.name}")
        if row.status != "held":
            raise CdcError(
                f"entry {held_id} is already {row.status} (by {row.resolved_by} at {row.resolved_at})"
            )
        if not apply:
            outcome = Outcome("rejected" if kind == "quarantine" else "dropped", "nothing was applied")
        else:
            outcome = _apply(cfg, sink, conn, row, kind)
        conn.execute(
            held_table.update()
            .where(held_table.c.id == held_id)
            .values(status=outcome.status, resolved_by=by, resolved_at=utcnow())
        )
        conn.commit()
        return outcome
    finally:
        sink.rollback()
        sink.close()


def _apply(cfg: ConnectorConfig, sink: SqlSink, conn: sa.Connection, row, kind: str) -> Outcome:
    ev = event_from_held(row)
    # a change held by a stage has been through the stages before it; run the ones after it (an approval
    # overrides the holding rule itself; a retry runs it again, after the DBA fixed what it complained of)
    stage_name = (row.rule or "").split(":")[0]
    stages = build_stages(cfg.transforms)
    names = [s.name for s in stages]
    if stage_name in names:
        at = names.index(stage_name)
        ev = apply_stages(stages[at + (1 if kind == "quarantine" else 0) :], ev)
        if ev is None:
            return Outcome("superseded", "the stages now filter this change out; nothing applied")
    if row.row_key is not None:
        state = conn.execute(
            sa.select(row_state_table.c.commit_lsn, row_state_table.c.seq).where(
                row_state_table.c.connector == cfg.name, row_state_table.c.row_key == row.row_key
            )
        ).first()
        if state is not None and (state.commit_lsn, state.seq) >= (row.commit_lsn, row.seq):
            return Outcome(
                "superseded",
                f"a newer change for {row.row_key} has been applied since; nothing changed",
            )
    sink.add(ev)
    sink.write()
    if sink.dead_lettered:  # refused again (the new dead letter is rolled back with the rest)
        raise CdcError(f"the storefront still refuses entry {row.id}; see `cdc deadletter {cfg.path} list`")
    return Outcome("applied", f"applied to {cfg.sink.table} at its original position")
