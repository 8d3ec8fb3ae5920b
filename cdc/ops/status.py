"""`cdc status`: what a connector is doing, read from its source (the POS slot, or the Kafka group and its
partitions) and its sink's bookkeeping (the storefront's tables, or the Kafka offsets topic).

Works whether or not the connector runs: nothing here talks to the running process.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import sqlalchemy as sa

from cdc import hotpath
from cdc.config import ConnectorConfig
from cdc.errors import CdcError
from cdc.events import lsn_to_str
from cdc.sinks.sql.bookkeeping import (
    LOCK_PARTITION,
    applied_entries,
    held_table,
    offsets_table,
    positions_of,
    row_state_table,
    scheduled_table,
)
from cdc.sinks.sql.storefront import engine as store_engine


def _fast_path(cfg: ConnectorConfig) -> str:
    """Whether runs of inserts and updates take the fast path (cdc/fast/), by the config and this process's
    environment (CDC_FAST_PATH)."""
    from cdc.fast import why_not
    from cdc.stages import build_stages

    why = why_not(cfg, build_stages(cfg.transforms))
    return "on for runs of inserts and updates" if why is None else f"off: {why}"


def gather(cfg: ConnectorConfig) -> dict:
    # the hot path of this install, as this process finds it; the running connector's own is in its log's
    # "hot path:" line and cdc_hot_path_info (they differ when one of the two has CDC_PURE_PYTHON set, or after a reinstall)
    out: dict = {"connector": cfg.name, "hot_path_installed": hotpath.summary(), "fast_path": _fast_path(cfg)}
    if cfg.source.type == "postgres":
        out.update(slot=cfg.slot, publication=cfg.publication)
        out.update(_sink_side(cfg) if cfg.sink.type == "sql" else _kafka_sink_side(cfg))
        from cdc.sources.postgres import PostgresSource

        src = PostgresSource(cfg)  # one POS connection for the slot and, when stopped, what waits in it
        try:
            out.update(_source_side(src))
            out["state"] = _state(out)
            if out["state"] == "stopped" and out.get("position"):
                # stopped: the lag is the age of the oldest change still waiting, however few bytes it takes
                out["lag_seconds"] = _stopped_lag(src, out["position"])
                return out
        finally:
            src.close()
        caught_up = out.get("source_lag_bytes") is not None and out["source_lag_bytes"] <= CAUGHT_UP_BYTES
    else:
        from cdc.ops.kafka_status import kafka_source_side

        out.update(_sink_side(cfg))
        out.update(kafka_source_side(cfg, out.get("position")))
        if out.get("sink_error"):
            out["state"] = "unreachable"
        caught_up = out.get("kafka_lag_records") == 0
    last = out.get("last_commit_time")
    if caught_up or last is None:
        out["lag_seconds"] = 0.0 if caught_up else None
    else:
        out["lag_seconds"] = round(time.time() - dt.datetime.fromisoformat(last).timestamp(), 3)
    return out


# the slot's confirmed position trails the server by the heartbeat's own records when idle
CAUGHT_UP_BYTES = 1024 * 1024


def _sink_side(cfg: ConnectorConfig) -> dict:
    try:
        engine = store_engine(cfg.sink.url, cfg.sink.bookkeeping_schema)
        with engine.connect() as c:
            insp = sa.inspect(c)
            if not insp.has_table("cdc_offsets"):
                return {
                    "position": None,
                    "sink_error": None,
                    "held": {},
                    "last_commit_time": None,
                    "scheduled_pending": 0,
                    "next_scheduled_time": None,
                }
            rows = c.execute(
                sa.select(
                    offsets_table.c.partition, offsets_table.c.position, offsets_table.c.updated_at
                ).where(offsets_table.c.connector == cfg.name, offsets_table.c.partition != LOCK_PARTITION)
            ).all()
            applied = _applied(c, positions_of(cfg))
            held = c.execute(
                sa.select(held_table.c.kind, held_table.c.status, sa.func.count())
                .where(held_table.c.connector == cfg.name)
                .group_by(held_table.c.kind, held_table.c.status)
            ).all()
            scheduled = _scheduled(c, cfg.name) if insp.has_table("cdc_scheduled") else (0, None)
        engine.dispose()
    except sa.exc.SQLAlchemyError as e:
        return {"sink_error": str(getattr(e, "orig", e)).strip().splitlines()[0]}
    last = max((r.updated_at for r in rows), default=None)
    return {
        "position": _position({r.partition: r.position for r in rows}),
        "last_commit_time": last.astimezone(dt.UTC).isoformat() if last else None,
        "last_applied_change_time": dt.datetime.fromtimestamp(applied[0] / 1000, dt.UTC).isoformat()
        if applied and applied[0]
        else None,
        "rows_tracked": applied[1] if applied else 0,
        "held": {f"{kind}:{status}": n for kind, status, n in held},
        "scheduled_pending": scheduled[0],
        "next_scheduled_time": dt.datetime.fromtimestamp(scheduled[1] / 1000, dt.UTC).isoformat()
        if scheduled[1] is not None
        else None,
        "sink_error": None,
    }


def _position(stored: dict[str, str]) -> dict | None:
    """The stored positions as a person reads them: LSNs for PostgreSQL, topic:partition -> offset for Kafka."""
    if not stored:
        return None
    if "wal" in stored:
        pos = json.loads(stored["wal"])
        return {
            "commit_lsn": lsn_to_str(pos["commit_lsn"]),
            "end_lsn": lsn_to_str(pos["end_lsn"]),
            "snapshot": pos.get("snapshot"),
        }
    from cdc.sources.kafka import stored_offsets

    return {f"{t}:{p}": o for (t, p), o in sorted(stored_offsets(stored).items())}


def _stopped_lag(src, position: dict) -> float | None:
    from cdc.events import str_to_lsn

    try:
        oldest = src.oldest_pending_commit(str_to_lsn(position["commit_lsn"]))
    except CdcError:
        return None
    return 0.0 if oldest is None else round(max(0.0, time.time() - oldest), 3)


def _kafka_sink_side(cfg: ConnectorConfig) -> dict:
    """A PostgreSQL -> Kafka connector: its position is in the Kafka offsets topic."""
    from cdc.sinks.kafka import KafkaSink

    sink = KafkaSink(cfg)
    try:
        stored = sink.load_offsets()
    except CdcError as e:
        return {"sink_error": str(e)}
    return {"position": _position(stored), "last_commit_time": sink.last_commit_time, "sink_error": None}


def _scheduled(c: sa.Connection, connector: str) -> tuple:
    """(scheduled prices pending in cdc_scheduled, the earliest one's due time in ms since the epoch); one
    entry per key: its next promotion start or end (cdc/schedule.py)."""
    t = scheduled_table
    n, first = c.execute(
        sa.select(sa.func.count(), sa.func.min(t.c.due_ms)).where(t.c.connector == connector)
    ).first()
    return n or 0, first


def _applied(c: sa.Connection, connector: str) -> tuple:
    """(newest applied change's source ts_ms, keys tracked), over cdc_row_state and the not yet folded
    cdc_applied entries (status reads; it does not fold)."""
    rs, log = row_state_table, applied_entries(c.dialect.name, connector)
    keys = sa.union(sa.select(rs.c.row_key).where(rs.c.connector == connector), sa.select(log.c.row_key))
    newest = (
        c.scalar(sa.select(sa.func.max(rs.c.ts_ms)).where(rs.c.connector == connector)),
        c.scalar(sa.select(sa.func.max(log.c.ts_ms))),
    )
    count = c.scalar(sa.select(sa.func.count()).select_from(keys.subquery()))
    return max((n for n in newest if n is not None), default=None), count


def _source_side(src) -> dict:
    try:
        stats = src.slot_stats()
    except CdcError as e:
        return {"source_error": str(e)}
    if stats is None:
        return {"slot_exists": False, "source_error": None}
    return {
        "slot_exists": True,
        "slot_active": stats["active"],
        "wal_status": stats["wal_status"],
        "confirmed_flush_lsn": stats["confirmed_flush_lsn"],
        "server_lsn": stats["current_lsn"],
        "source_lag_bytes": int(stats["lag_bytes"] or 0),
        "retained_wal_bytes": int(stats["retained_wal_bytes"] or 0),
        "source_error": None,
    }


def _state(s: dict) -> str:
    if s.get("source_error") or s.get("sink_error"):
        return "unreachable"
    if s.get("wal_status") == "lost":
        return "slot_lost"
    if not s.get("slot_exists"):
        return "not_started"
    if s.get("position") and s["position"].get("snapshot") is None and not s.get("last_commit_time"):
        return "snapshotting"
    return "running" if s.get("slot_active") else "stopped"
