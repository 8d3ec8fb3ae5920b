"""`cdc explain CONFIG KEY`: why the storefront holds what it holds for one key, ending with a one-line verdict.

It gathers, whether or not the connector runs: the POS rows behind the key (found by the source columns the
storefront key comes from, renames undone: cdc/stages/lineage.py) and each one run through the stages with
what every stage did (cdc/ops/trace.py); the storefront row and the last change applied to it (POS position,
POS commit time, applied time, how it came); quarantine and dead-letter entries of the key, decided ones too;
a pending scheduled price; whether the tables are in the publication; whether the connector runs and how far
behind. The verdict is the first that holds, in this order: cannot tell (exit 2), held, rejected, no such key,
a table missing from the publication, filtered out, in sync (exit 0), not applied yet / connector not running,
changed behind pos-cdc's back (exit 1).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from cdc.config import ConnectorConfig
from cdc.errors import CdcError
from cdc.events import READ, ChangeEvent, Position
from cdc.lanes import lane_connectors, lane_filters
from cdc.ops.held import aware, list_held
from cdc.ops.trace import trace_row
from cdc.sinks.sql.bookkeeping import KEY_SEP, applied_entries, row_state_table, scheduled_table
from cdc.stages import build_stages
from cdc.stages.lineage import Untraceable, source_column


def explain(cfg: ConnectorConfig, key: str) -> dict:
    """The report (JSON-ready) with `verdict` and `exit_code` (0 in sync, 1 out of sync, 2 cannot tell)."""
    if cfg.sink.type != "sql":
        return _done(
            {"connector": cfg.name, "key": key},
            f"{cfg.name} writes to Kafka, not to a storefront: explain the key with the connector that reads "
            "its topics and writes the storefront",
            2,
        )
    from cdc.sinks.sql import SqlSink

    out: dict[str, Any] = {"connector": cfg.name, "key": key}
    values = key.split(",") if len(cfg.sink.key) > 1 else [key]
    if len(values) != len(cfg.sink.key):
        return _done(
            out, f"the key has {len(cfg.sink.key)} columns ({', '.join(cfg.sink.key)}): give KEY as a,b", 2
        )
    row_key = KEY_SEP.join(values)
    stages = build_stages(cfg.transforms)
    sink = SqlSink(cfg)
    try:
        sink.open()
    except CdcError as e:
        return _done(out, f"cannot read the storefront: {e}", 2)
    fallback = roles = None
    try:
        # the stages run unwired to the storefront: a guard's max_change_pct would compare the POS row with
        # the row being explained (drift would read as a held change); held entries tell what it did
        out["storefront"] = _storefront(sink, values, row_key)
        lanes = lane_connectors(cfg)
        out["held"] = [h for lane in lanes for h in _held(lane, row_key)]
        out["scheduled"] = _scheduled(sink, row_key, [c.name for c in lanes])
        if cfg.source.type == "postgres":
            fallback = _wire_fallback(stages, cfg, out)
            roles = _wire_roles(stages, cfg, out)
            out["pos"] = _pos_side(cfg, stages, dict(zip(cfg.sink.key, values, strict=True)), sink)
        if len(lanes) > 1:  # the connector is the lane of the POS row (the last lane's when there is none)
            lane = next((r["lane"] for r in out["pos"].get("rows", []) if r.get("lane")), lanes[-1].name)
            cfg = next(c for c in lanes if c.name == lane)
            out["connector"] = cfg.name
        out["connector_state"] = _connector(cfg)
        if cfg.source.type != "postgres":
            out["pos"] = {
                "error": f"{cfg.name} reads Kafka ({cfg.source.topic_pattern or ', '.join(cfg.source.topics)}): "
                "the POS is not reachable from it; the storefront side and the held entries say what it applied"
            }
    finally:
        if fallback is not None:
            fallback.close()
        if roles is not None:
            roles.close()
        sink.rollback()
        sink.close()
    verdict, code = _verdict(cfg, out)
    return _done(out, verdict, code)


def _done(out: dict, verdict: str, code: int) -> dict:
    out["verdict"], out["exit_code"] = verdict, code
    return out


# --- the storefront side ----------------------------------------------------------------------------------


def _storefront(sink, values: list[str], row_key: str) -> dict:
    t = sink.target
    if t.table is None:
        return {"row": None, "table_missing": True, "last_applied": None}
    typed = tuple(_typed(t.c[k], v) for k, v in zip(t.key_cols, values, strict=True))
    with sink.store.engine.connect() as c:
        rows = list(t.stored_rows(c, [typed], list(t.c.keys())))
        last = _last_applied(c, sink.positions, row_key)
    row = dict(rows[0]) if rows else None
    soft = t.soft_delete_column
    deleted = bool(row and soft and row.get(soft) is not None)
    return {"row": _plain(row), "deleted": deleted, "last_applied": last}


def _typed(col: sa.Column, text: str) -> Any:
    try:
        kind = col.type.python_type
    except NotImplementedError:
        return text
    try:
        return kind(text) if kind in (int, Decimal, float) else text
    except (ValueError, InvalidOperation):
        return text


def _last_applied(c: sa.Connection, connector: str, row_key: str) -> dict | None:
    """The newest of the key's row state and its entries not folded yet (read only: nothing is folded)."""
    rs, log = row_state_table, applied_entries(c.dialect.name, connector)
    found = [
        dict(r._mapping)
        for r in c.execute(
            sa.select(rs.c.commit_lsn, rs.c.seq, rs.c.ts_ms, rs.c.op, rs.c.via, rs.c.applied_at).where(
                rs.c.connector == connector, rs.c.row_key == row_key
            )
        )
    ]
    found += [
        {**dict(r._mapping), "applied_at": None}
        for r in c.execute(
            sa.select(log.c.commit_lsn, log.c.seq, log.c.ts_ms, log.c.op, log.c.via).where(
                log.c.row_key == row_key
            )
        )
    ]
    if not found:
        return None
    last = max(found, key=lambda r: (r["commit_lsn"], r["seq"]))
    return {
        "position": str(Position(last["commit_lsn"], last["seq"])),
        "commit_time": _ms(last["ts_ms"]),
        "applied_at": aware(last["applied_at"]).isoformat() if last["applied_at"] else "(not folded yet)",
        "op": {"u": "upsert", "d": "delete"}.get(last["op"], last["op"]),
        "via": last["via"] or "stream",
        "commit_lsn": last["commit_lsn"],
        "seq": last["seq"],
    }


def _held(cfg: ConnectorConfig, row_key: str) -> list[dict]:
    keep = ("id", "kind", "status", "rule", "reason", "position", "held_at", "resolved_by", "resolved_at")
    return [
        {k: r.get(k) for k in keep} | {"commit_lsn": r["commit_lsn"], "seq": r["seq"]}
        for r in list_held(cfg, None, status=None, key=row_key)
    ]


def _scheduled(sink, row_key: str, connectors: list[str]) -> dict | None:
    t = scheduled_table
    with sink.store.engine.connect() as c:
        r = c.execute(
            sa.select(t.c.due_ms, t.c.what, t.c.stage).where(
                t.c.connector.in_(connectors), t.c.row_key == row_key
            )
        ).first()
    return None if r is None else {"what": r.what, "due": _ms(r.due_ms), "stage": r.stage}


def _connector(cfg: ConnectorConfig) -> dict:
    from cdc.ops.status import gather

    info = gather(cfg)
    keep = (
        "state",
        "lag_seconds",
        "last_commit_time",
        "source_lag_bytes",
        "slot_active",
        "group_members",
        "kafka_lag_records",
        "source_error",
        "sink_error",
    )
    return {k: info.get(k) for k in keep if k in info}


# --- the POS side -------------------------------------------------------------------------------------------


def _wire_roles(stages: list, cfg: ConnectorConfig, out: dict):
    from cdc.roles import wire_roles

    try:
        return wire_roles(stages, cfg)
    except CdcError as e:
        out["roles_error"] = str(e)
        return None


def _wire_fallback(stages: list, cfg: ConnectorConfig, out: dict):
    from cdc.fallback import wire_fallback

    try:
        return wire_fallback(stages, cfg)
    except CdcError as e:
        out["fallback_error"] = str(e)
        return None


def _pos_side(cfg: ConnectorConfig, stages: list, key: dict[str, str], sink) -> dict:
    """The POS rows behind the key, each through the stages; tables missing from the publication."""
    import psycopg

    from cdc.sources.pg_snapshot import COLUMNS_QUERY, as_text, table_columns, table_regclass, typed_row
    from cdc.sources.postgres import PostgresSource

    try:
        src = {k: source_column(cfg.transforms, k, "key column", "cdc explain") for k in key}
    except Untraceable as e:
        return {"error": f"cannot look the key up in the POS: {e}", "rows": []}
    source = PostgresSource(cfg)
    rows: list[dict] = []
    lanes = cfg.source.lanes
    # with lanes, each row's lane, by the lanes' own row filters (cdc/lanes.py: exactly one holds)
    lane_of_row = psycopg.sql.SQL(
        ", CASE " + "".join(f"WHEN {f} THEN '{n}' " for n, f in lane_filters(lanes)) + "END" if lanes else ""
    )
    publications = [c.publication for c in lane_connectors(cfg)]
    try:
        with source.connect(autocommit=True) as conn:
            published = set(cfg.source.tables)
            for pub in publications:  # a table must be in every lane's publication
                published &= {
                    t
                    for (t,) in conn.execute(
                        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                        (pub,),
                    )
                }
            db = conn.info.dbname
            for table in cfg.source.tables:
                schema, name = table.split(".", 1)
                names, convs, keys, types = table_columns(
                    conn.execute(COLUMNS_QUERY, (table_regclass(schema, name),)).fetchall()
                )
                if not set(src.values()) <= set(names):
                    continue
                q = psycopg.sql.SQL("SELECT {}{} FROM {} WHERE {}").format(
                    as_text(names),
                    lane_of_row,
                    psycopg.sql.Identifier(schema, name),
                    psycopg.sql.SQL(" AND ").join(
                        psycopg.sql.SQL("{}::text = %s").format(psycopg.sql.Identifier(c))
                        for c in src.values()
                    ),
                )
                for rec in conn.execute(q, list(key.values())):
                    lane = rec[-1] if lanes else None
                    row = typed_row(names, convs, rec[: len(names)])
                    ev = ChangeEvent(
                        READ,
                        schema,
                        name,
                        None,
                        row,
                        0,
                        0,
                        0,
                        0,
                        None,
                        "false",
                        db,
                        cfg.name,
                        keys,
                        toast=False,
                        types=types,
                    )
                    steps, result = trace_row(stages, ev)
                    result.pop("event", None)
                    rows.append({"table": table, "row": _plain(row), "stages": steps, "result": result})
                    if lane:
                        rows[-1]["lane"] = f"{cfg.name}.{lane}"
    except CdcError as e:
        return {"error": f"cannot reach the POS: {e}", "rows": rows}
    except psycopg.Error as e:
        return {"error": f"cannot read the POS: {str(e).strip().splitlines()[0]}", "rows": rows}
    finally:
        source.close()
    missing = sorted(set(cfg.source.tables) - published)
    return {
        "rows": rows,
        "not_in_publication": missing,
        "publication": ", ".join(publications),
        "source_columns": src,
    }


# --- the verdict ----------------------------------------------------------------------------------------------


def _verdict(cfg: ConnectorConfig, out: dict) -> tuple[str, int]:
    pos, store = out.get("pos", {}), out.get("storefront", {})
    state = out.get("connector_state", {})
    last = store.get("last_applied")
    held = [h for h in out.get("held", []) if h["status"] == "held"]
    newer = lambda h: last is None or (h["commit_lsn"], h["seq"]) >= (last["commit_lsn"], last["seq"])  # noqa: E731
    for h in held:
        if newer(h):
            since = _hhmm(h["held_at"])
            return f"held: {h['reason']} ({h['kind'].replace('_', ' ')} {h['id']}, since {since})", 1
    decided = [h for h in out.get("held", []) if h["status"] in ("rejected", "dropped") and newer(h)]
    if decided:
        h = decided[-1]
        return (
            f"{h['status']} by {h['resolved_by']} at {_hhmm(h['resolved_at'])} ({h['kind'].replace('_', ' ')} {h['id']})",
            1,
        )
    if "error" in pos and not pos.get("rows"):
        return pos["error"], 2
    rows = pos.get("rows", [])
    if pos.get("not_in_publication"):
        missing = pos["not_in_publication"]
        return f"table {', '.join(missing)} is not in publication {pos['publication']}", 1
    shown = store.get("row") if not store.get("deleted") else None
    made = [r["result"] for r in rows if r["result"]["outcome"] == "row" and r["result"]["op"] != "d"]
    held_now = [r["result"] for r in rows if r["result"]["outcome"] == "held"]
    filtered = [r["result"] for r in rows if r["result"]["outcome"] == "filtered"]
    if held_now and not made:
        h = held_now[0]
        return f"would be held now by {h['stage']}: {h['reason']}", 1
    if not rows:
        if shown is None:
            return "no such key in the POS (nor in the storefront)", 0
        return _behind_or_drift(state, "no such key in the POS, but the storefront still shows it", 1)
    if not made:
        why = (
            f"filtered out by {filtered[0]['stage']} ({filtered[0]['why']})"
            if filtered
            else "deleted by the stages"
        )
        if shown is None:
            return why, 0
        return _behind_or_drift(state, f"{why}, but the storefront still shows it", 1)
    expected = made[-1]["row"]
    if shown is not None and _same(expected, shown):
        return "in sync", 0
    cols = [k for k in expected if shown is None or (k in shown and _canon(expected[k]) != _canon(shown[k]))]
    cols = [k for k in cols if k not in cfg.sink.key] or cols
    there = "no row" if shown is None else ", ".join(f"{k} {shown[k]}" for k in cols[:3])
    return _behind_or_drift(
        state,
        f"storefront changed behind pos-cdc's back: {there} there, "
        f"{', '.join(f'{k} {expected[k]}' for k in cols[:3])} from the POS "
        f"(run cdc reconcile {cfg.path or 'CONFIG'} --repair)",
        1,
    )


def _behind_or_drift(state: dict, drift: str, code: int) -> tuple[str, int]:
    """Out of sync: the connector is behind or not running (not applied yet), or the row drifted."""
    if state.get("state") in ("stopped", "not_started", "unreachable"):
        since = state.get("last_commit_time")
        waiting = state.get("source_lag_bytes") or state.get("kafka_lag_records")
        what = f"; {_bytes(waiting)} of WAL waiting" if state.get("source_lag_bytes") else ""
        if state.get("kafka_lag_records"):
            what = f"; {waiting} records waiting"
        return f"connector not running since {_hhmm(since) if since else 'it was set up'}{what}", 1
    lag = state.get("lag_seconds")
    if lag:
        return f"not applied yet: the connector is {lag:.1f} s behind", 1
    return drift, code


def _same(expected: dict, shown: dict) -> bool:
    return all(_canon(v) == _canon(shown.get(k)) for k, v in expected.items() if k in shown)


def _canon(v: Any) -> Any:
    if v is None:
        return None
    try:
        return Decimal(str(v)).normalize()
    except (InvalidOperation, ValueError):
        pass
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()
    if isinstance(v, str):
        try:
            t = dt.datetime.fromisoformat(v)
            return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()
        except ValueError:
            return v
    return str(v)


def _plain(row: dict | None) -> dict | None:
    return None if row is None else json.loads(json.dumps(row, default=str))


def _ms(ms: int | None) -> str | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _hhmm(t: Any) -> str:
    if t is None:
        return "?"
    when = t if isinstance(t, dt.datetime) else dt.datetime.fromisoformat(str(t))
    return aware(when).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
