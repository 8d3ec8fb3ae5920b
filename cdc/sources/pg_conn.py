"""Plain connections to the POS for the PostgreSQL source: a replication connection (psycopg's `pq` layer),
replication commands, how a psycopg error is classified (retry or stop), quoting, and what a connector whose
slot lost WAL says. Used by the stream (pg_stream.py), the snapshot, the source's set-up and the reconcile
tool's POS side."""

from __future__ import annotations

import psycopg
from psycopg import pq

from cdc.errors import TerminalError, TransientError
from cdc.refusals import refusal_hint

SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3"


def classify(err: Exception) -> Exception:
    """psycopg errors -> TransientError (retry) or TerminalError (stop and say what to fix)."""
    sqlstate = getattr(err, "sqlstate", None) or ""
    hint = refusal_hint(str(err)) if isinstance(err, psycopg.OperationalError) else None
    if hint:
        return TerminalError(f"the POS database refused the connection: {_message(err)} ({hint})")
    if isinstance(err, psycopg.OperationalError) and sqlstate[:2] in ("", "08", "57", "53"):
        return TransientError(f"POS database unavailable: {str(err).strip().splitlines()[0]}")
    if sqlstate == "42501":
        return TerminalError(
            f"permission denied on the POS database: {str(err).strip().splitlines()[0]} "
            "(the connector's role needs REPLICATION and SELECT on the captured tables)"
        )
    return TerminalError(f"POS database error [{sqlstate or '?'}]: {str(err).strip().splitlines()[0]}")


def _message(err: Exception) -> str:
    """A connection error's text in one line (libpq gives the server's reason on a line of its own)."""
    return " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())


def open_replication(dsn: str, connector: str) -> pq.PGconn:
    """A replication connection (replication=database) to the POS."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(
        replication="database",
        options=SESSION_OPTIONS,
        connect_timeout=10,
        application_name=f"pos-cdc:{connector}",
    )
    conn = pq.PGconn.connect(psycopg.conninfo.make_conninfo(**params).encode())
    if conn.status != pq.ConnStatus.OK:
        msg = conn.error_message.decode(errors="replace").strip()
        conn.finish()
        hint = refusal_hint(msg)
        if hint:
            raise TerminalError(f"the POS database refused the replication connection: {msg} ({hint})")
        if "permission" in msg or "must be superuser or replication role" in msg:
            raise TerminalError(f"cannot open a replication connection: {msg}")
        raise TransientError(f"cannot open a replication connection to the POS: {msg}")
    return conn


def replication_command(conn: pq.PGconn, command: str) -> list[tuple]:
    """Runs a replication command (CREATE_REPLICATION_SLOT ...) on `conn`; its rows as text tuples."""
    res = conn.exec_(command.encode())
    if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        msg = (res.error_message or conn.error_message).decode(errors="replace").strip()
        raise TerminalError(f"{command.split()[0]} failed on the POS: {msg}")
    return [
        tuple((res.get_value(r, c) or b"").decode() for c in range(res.nfields)) for r in range(res.ntuples)
    ]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def slot_lost_message(cfg) -> str:
    """What a connector whose slot lost WAL says: what happened and the recovery (docs/faults.md)."""
    path = cfg.path or "CONFIG"
    return (
        f"replication slot {cfg.slot} has lost WAL it needed (wal_status=lost, e.g. max_slot_wal_keep_size or "
        f"a failover): changes were missed. Recover: `cdc run {path} --resnapshot` (drops the slot, copies the "
        f"tables anew and streams on), then, while it runs, `cdc reconcile {path} --repair` (removes the rows "
        f"deleted on the POS meanwhile, which a copy cannot see); see docs/faults.md"
    )
