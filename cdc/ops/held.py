"""Held changes (cdc_held): list them, apply one (quarantine approve / dead-letter retry), or drop one.

Applying goes through the sink with the change's ORIGINAL source position: if a newer change for the key has
been applied since (the key's row state, read under a lock, is past that position), nothing changes and the
entry is marked superseded. A change held at the position the row state already has (a scheduled price the
guard held, whose source change was applied with its base price) is applied over it. The change is rebuilt with
its value types (`typed_event`, cdc/stored.py), so Decimals and times reach the later stages and the storefront
exactly. Every resolution records who and when; an applied one also reaches price history as
approve:<who>#<entry> or retry:<who>#<entry>, a rejected one as op x, reject:<who>#<entry>. A guard with
`approvers` lets only them approve or reject what it held.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from dataclasses import dataclass

import sqlalchemy as sa

from cdc.config import ConnectorConfig
from cdc.errors import CdcError
from cdc.events import ChangeEvent, Position
from cdc.lanes import lane_connectors
from cdc.roles import wire_roles
from cdc.sinks.sql import SqlSink
from cdc.sinks.sql.bookkeeping import held_table, utcnow
from cdc.sinks.sql.storefront import Storefront
from cdc.stages import apply_stages, build_stages
from cdc.stored import load_event


def who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def list_held(
    cfg: ConnectorConfig, kind: str | None, status: str | None = "held", key: str | None = None
) -> list[dict]:
    """Held entries of `kind` (None: both kinds) in `status` (None: decided ones too), of one key or all;
    each with its position as PostgreSQL spells it (`position`: 0/16B3748#3) and aware times. A config with
    lanes: every lane's entries."""
    lanes = lane_connectors(cfg)
    if len(lanes) > 1:
        return sorted(
            (r for lane in lanes for r in list_held(lane, kind, status, key)), key=lambda r: r["id"]
        )
    if cfg.sink.type == "kafka":
        from cdc.sinks.kafka import read_held

        return [r for r in read_held(cfg) if kind is None or r["kind"] == kind]
    sink = SqlSink(cfg)
    sink.open()
    try:
        h = held_table
        q = sa.select(h).where(h.c.connector == cfg.name)
        if kind:
            q = q.where(h.c.kind == kind)
        if status:
            q = q.where(h.c.status == status)
        if key is not None:
            q = q.where(h.c.row_key == key)
        with sink.store.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(q.order_by(held_table.c.id))]
    finally:
        sink.close()
    for r in rows:
        r["details"] = json.loads(r["details"]) if r["details"] else {}
        r["event"] = json.loads(r["event"])
        r["position"] = str(Position(r["commit_lsn"] or 0, r["seq"] or 0))
        for t in ("held_at", "resolved_at"):
            if r.get(t) is not None:
                r[t] = aware(r[t])
    return rows


def aware(t: dt.datetime) -> dt.datetime:
    """A stored time with its zone (SQLite and MariaDB give naive UTC back)."""
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class Outcome:
    status: str  # applied | superseded | rejected | dropped
    message: str


def event_from_held(row) -> ChangeEvent:
    if getattr(row, "typed_event", None):
        return load_event(row.typed_event)
    env = json.loads(row.event)  # held before value types were kept: Decimals come back as strings
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
    """apply=True: approve (quarantine) / retry (dead letter); False: reject / drop. A config with lanes: by
    the lane that held the entry."""
    lanes = lane_connectors(cfg)
    if len(lanes) > 1 and cfg.sink.type == "sql":
        store = Storefront(cfg.sink.url, cfg.name, cfg.sink.bookkeeping_schema)
        store.open()
        try:
            with store.engine.connect() as c:  # the lane that held the entry
                owner = c.scalar(sa.select(held_table.c.connector).where(held_table.c.id == held_id))
        finally:
            store.close()
        lane = next((c for c in lanes if c.name == owner), None)
        if lane is None:
            raise CdcError(f"no {kind.replace('_', ' ')} entry {held_id} for the lanes of {cfg.name}")
        return resolve(lane, held_id, kind, apply, by)
    if cfg.sink.type == "kafka":
        raise CdcError(
            f"{cfg.name} writes to Kafka: what it held is kept in topic {cfg.sink.held_topic} to read "
            f"(`cdc {kind.replace('_', '')} {cfg.path or 'CONFIG'} list`); fix the cause (usually a stage's "
            "config) and the next change of the row goes through, or put the stage in the connector that "
            "writes the storefront, where held changes can be approved and retried"
        )
    by = by or who()
    sink = SqlSink(cfg)
    sink.open()
    try:
        conn = sink.begin()
        row = conn.execute(
            sa.select(held_table)
            .where(held_table.c.id == held_id, held_table.c.connector == cfg.name, held_table.c.kind == kind)
            .with_for_update()  # two approvals of one entry: the second sees the first's resolution
        ).first()
        if row is None:
            raise CdcError(f"no {kind.replace('_', ' ')} entry {held_id} for connector {cfg.name}")
        if row.status == "superseded" and apply:
            return Outcome(
                "superseded",
                f"a newer change for {row.row_key} was applied ({row.resolved_by} at {row.resolved_at}); "
                "nothing changed",
            )
        if row.status != "held":
            raise CdcError(
                f"entry {held_id} is already {row.status} (by {row.resolved_by} at {row.resolved_at})"
            )
        if kind == "quarantine":
            check_approver(cfg, row, by, "approve" if apply else "reject")
        if not apply:
            outcome = Outcome("rejected" if kind == "quarantine" else "dropped", "nothing was applied")
            if kind == "quarantine" and sink.history is not None and row.row_key is not None:
                via = f"reject:{by}#{row.id}"
                sink.history.refused(conn, row.row_key, event_from_held(row), via, utcnow())
        else:
            outcome = _apply(cfg, sink, conn, row, kind, by)
        conn.execute(
            held_table.update()
            .where(held_table.c.id == held_id)
            .values(status=outcome.status, resolved_by=by, resolved_at=utcnow())
        )
        conn.commit()
        if outcome.status == "applied" and sink.schedules.is_due():
            # the change carried a promotion boundary that has passed since it was held: apply it now rather
            # than leave the price until the connector's next look at its schedule
            sink.wire(build_stages(cfg.transforms))
            sink.apply_due()
            outcome.message += "; its promotion window has moved on since, so the price as of now was applied"
        return outcome
    finally:
        sink.rollback()
        sink.close()


def check_approver(cfg: ConnectorConfig, row, by: str, verb: str) -> None:
    """Refuses (CdcError) a decision on quarantine entry `row` by someone not among the approvers of the guard
    that held it."""
    stage_name = (row.rule or "").split(":")[0]
    for i, t in enumerate(cfg.transforms, start=1):
        if f"{t.type}#{i}" == stage_name and t.type == "guard" and t.approvers and by not in t.approvers:
            raise CdcError(
                f"{by} may not {verb} entry {row.id}: it was held by {row.rule}, whose approvers are "
                f"{', '.join(t.approvers)} (give --by one of them; transforms[{i - 1}].approvers in {cfg.path} "
                "lists them)"
            )


def _apply(cfg: ConnectorConfig, sink: SqlSink, conn: sa.Connection, row, kind: str, by: str) -> Outcome:
    ev = event_from_held(row)
    ev.headers["via"] = f"{'approve' if kind == 'quarantine' else 'retry'}:{by}#{row.id}"
    again = False  # held at the position the key already has: a scheduled price of an applied change
    if row.row_key is not None:
        # the connector waits meanwhile (sink.begin holds its lock): positions are final
        state = sink.key_position(conn, row.row_key)
        if state is not None and state > (row.commit_lsn, row.seq):
            return Outcome(
                "superseded",
                f"a newer change for {row.row_key} has been applied since; nothing changed",
            )
        again = state == (row.commit_lsn, row.seq)
    # a change held by a stage has been through the stages before it; run the ones after it (an approval
    # overrides the holding rule itself; a retry runs it again, after the DBA fixed what it complained of)
    stage_name = (row.rule or "").split(":")[0]
    stages = build_stages(cfg.transforms)
    sink.wire(stages)
    names = [s.name for s in stages]
    if stage_name in names:
        at = names.index(stage_name)
        rest = stages[at + (1 if kind == "quarantine" else 0) :]
        roles = wire_roles(rest, cfg) if cfg.source.type == "postgres" else None
        try:
            ev = apply_stages(rest, ev)
        finally:
            if roles is not None:
                roles.close()
        if ev is None:
            return Outcome("superseded", "the stages now filter this change out; nothing applied")
    sink.add(ev)
    sink.write(fresh=again)
    if sink.refused_in_transaction():  # refused again (the new dead letter is rolled back with the rest)
        raise CdcError(f"the storefront still refuses entry {row.id}; see `cdc deadletter {cfg.path} list`")
    return Outcome("applied", f"applied to {cfg.sink.table} at its original position")
