"""PostgreSQL source: publication, slot, consistent initial snapshot, and the pgoutput stream.

The stream is read on a libpq replication connection (psycopg's `pq` layer, COPY BOTH). The source yields:
- `ChangeEvent` for every row change (snapshot rows are op 'r');
- `TxnEnd` after the last change of each source transaction (where a sink transaction may end);
- `Idle` whenever no more data is waiting on the socket (a good moment to flush a batch).
It never confirms anything by itself: the pipeline calls `confirm(lsn)` after the sink commit, and the
source reports that LSN to the server as flushed in its standby status updates.
"""

from __future__ import annotations

import logging
import select
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql

from cdc.config import ConnectorConfig
from cdc.errors import TerminalError, TransientError
from cdc.events import CREATE, DELETE, READ, TRUNCATE, UPDATE, ChangeEvent, lsn_to_str, str_to_lsn
from cdc.progress import Progress
from cdc.sources import pgoutput as po

log = logging.getLogger("cdc.source.postgres")

SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch
HDR_W = struct.Struct("!QQQ")  # XLogData: start, end, send time
HDR_K = struct.Struct("!QQB")  # keepalive: wal end, send time, reply requested
STATUS = struct.Struct("!cQQQQB")  # standby status update


@dataclass(slots=True)
class TxnEnd:
    commit_lsn: int
    end_lsn: int  # what to confirm to the server once this transaction is durable downstream
    ts_ms: int
    snapshot: bool = False


@dataclass(slots=True)
class Idle:
    wal_end: int  # the server's WAL position as of its last message


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_US


def classify(err: Exception) -> Exception:
    """psycopg errors -> TransientError (retry) or TerminalError (stop and say what to fix)."""
    sqlstate = getattr(err, "sqlstate", None) or ""
    if isinstance(err, psycopg.OperationalError) and sqlstate[:2] in ("", "08", "57", "53"):
        return TransientError(f"POS database unavailable: {str(err).strip().splitlines()[0]}")
    if sqlstate == "42501":
        return TerminalError(
            f"permission denied on the POS database: {str(err).strip().splitlines()[0]} "
            "(the connector's role needs REPLICATION and SELECT on the captured tables)"
        )
    return TerminalError(f"POS database error [{sqlstate or '?'}]: {str(err).strip().splitlines()[0]}")


class PostgresSource:
    def __init__(self, cfg: ConnectorConfig):
        self.cfg = cfg
        self.scfg = cfg.source
        self.decoder = po.Decoder()
        self._repl: pq.PGconn | None = None
        self.confirmed = 0  # flushed LSN we report to the server
        self.wal_end = 0  # server's WAL end from the latest message
        self._received_end = 0  # end LSN of the last complete transaction received
        self._in_txn = False
        self._last_status = 0.0
        self.db = ""
        self._side: psycopg.Connection | None = None
        self._heartbeat_off = False

    # --- plain SQL connection -------------------------------------------------------------------------

    def connect(self, **kw) -> psycopg.Connection:
        try:
            return psycopg.connect(self.scfg.dsn, options=SESSION_OPTIONS, connect_timeout=10, **kw)
        except psycopg.Error as e:
            raise classify(e) from e

    def prepare(self) -> None:
        """Checks wal_level and tables; creates the publication and the slot when missing."""
        try:
            with self.connect(autocommit=True) as conn:
                self._prepare(conn)
        except psycopg.Error as e:
            raise classify(e) from e

    def _prepare(self, conn: psycopg.Connection) -> None:
        self.db = conn.info.dbname
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]
        if wal_level != "logical":
            raise TerminalError(
                f"the POS server has wal_level={wal_level}; set wal_level=logical in "
                "postgresql.conf and restart PostgreSQL"
            )
        for table in self.scfg.tables:
            schema, name = table.split(".", 1)
            row = conn.execute(
                "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname=%s AND c.relname=%s",
                (schema, name),
            ).fetchone()
            if row is None:
                raise TerminalError(f"source.tables: table {table} does not exist in the POS database")
            if row[0] == "n" or (row[0] == "d" and not row[1]):
                raise TerminalError(
                    f"table {table} has no primary key and no replica identity: updates and "
                    f"deletes cannot be captured; add a primary key or "
                    f"ALTER TABLE {table} REPLICA IDENTITY FULL"
                )
        pub = self.cfg.publication
        have = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname=%s", (pub,)
        ).fetchall()
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname=%s", (pub,)).fetchone()
        if not exists:
            ids = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in self.scfg.tables)
            try:
                conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(pub), ids))
            except psycopg.errors.InsufficientPrivilege as e:
                raise TerminalError(
                    f"cannot create publication {pub}: {e.diag.message_primary}; ask the DBA "
                    f"to run: CREATE PUBLICATION {pub} FOR TABLE {', '.join(self.scfg.tables)}"
                ) from e
            log.info("created publication %s", pub)
        else:
            missing = sorted(set(self.scfg.tables) - {t for (t,) in have})
            if missing:
                raise TerminalError(
                    f"publication {pub} does not include {', '.join(missing)}; run: "
                    f"ALTER PUBLICATION {pub} ADD TABLE {', '.join(missing)}"
                )
        slot = conn.execute(
            "SELECT plugin, database, wal_status FROM pg_replication_slots WHERE slot_name=%s",
            (self.cfg.slot,),
        ).fetchone()
        if slot is None:
            self._replication_command(
                f"CREATE_REPLICATION_SLOT {quote_ident(self.cfg.slot)} LOGICAL pgoutput NOEXPORT_SNAPSHOT"
            )
            log.info("created replication slot %s", self.cfg.slot)
        else:
            plugin, database, wal_status = slot
            if plugin != "pgoutput" or database != self.db:
                raise TerminalError(
                    f"replication slot {self.cfg.slot} uses plugin {plugin} on database "
                    f"{database}; pos-cdc needs a pgoutput slot on {self.db} (name another slot)"
                )
            if wal_status == "lost":
                raise TerminalError(
                    f"replication slot {self.cfg.slot} has lost WAL it needed (wal_status=lost, e.g. "
                    f"max_slot_wal_keep_size or a failover): changes were missed. Re-snapshot: "
                    f"`cdc run {self.cfg.path or 'CONFIG'} --resnapshot` drops the slot and copies the tables anew"
                )

    def slot_stats(self) -> dict | None:
        """The slot as the server sees it: lag and retained WAL in bytes, active, wal_status."""
        try:
            row = (
                self._side_conn()
                .execute(
                    "SELECT pg_current_wal_lsn() - confirmed_flush_lsn, pg_current_wal_lsn() - restart_lsn, active,"
                    " wal_status, confirmed_flush_lsn::text, pg_current_wal_lsn()::text"
                    " FROM pg_replication_slots WHERE slot_name = %s",
                    (self.cfg.slot,),
                )
                .fetchone()
            )
        except psycopg.Error as e:
            raise classify(e) from e
        if row is None:
            return None
        keys = (
            "lag_bytes",
            "retained_wal_bytes",
            "active",
            "wal_status",
            "confirmed_flush_lsn",
            "current_lsn",
        )
        return dict(zip(keys, row, strict=True))

    def heartbeat(self) -> None:
        """Writes a small WAL record in the POS database; it reaches us as a transaction with no rows, whose
        confirmation moves the slot past the WAL other databases wrote meanwhile."""
        if self._heartbeat_off:
            return
        query = (
            self.scfg.heartbeat_query
            or "SELECT pg_logical_emit_message(true, 'pos-cdc-heartbeat', now()::text)"
        )
        try:
            self._side_conn().execute(query)
        except psycopg.errors.InsufficientPrivilege as e:
            self._heartbeat_off = True
            log.warning(
                "%s: heartbeat disabled: %s (grant EXECUTE on pg_logical_emit_message, or set "
                "source.heartbeat_query to an UPDATE of a heartbeat table in the publication)",
                self.cfg.name,
                e.diag.message_primary,
            )
        except psycopg.Error as e:
            raise classify(e) from e

    def _side_conn(self) -> psycopg.Connection:
        """A plain autocommit connection for heartbeats and slot statistics (opened on first use)."""
        if self._side is None or self._side.closed:
            self._side = self.connect(autocommit=True)
        return self._side

    def drop_slot(self) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name=%s AND NOT active",
                (self.cfg.slot,),
            )

    # --- replication connection -----------------------------------------------------------------------

    def _open_replication(self) -> pq.PGconn:
        params = psycopg.conninfo.conninfo_to_dict(self.scfg.dsn)
        params.update(
            replication="database",
            options=SESSION_OPTIONS,
            connect_timeout=10,
            application_name=f"pos-cdc:{self.cfg.name}",
        )
        conn = pq.PGconn.connect(psycopg.conninfo.make_conninfo(**params).encode())
        if conn.status != pq.ConnStatus.OK:
            msg = conn.error_message.decode(errors="replace").strip()
            conn.finish()
            if "permission" in msg or "must be superuser or replication role" in msg:
                raise TerminalError(f"cannot open a replication connection: {msg}")
            raise TransientError(f"cannot open a replication connection to the POS: {msg}")
        return conn

    def _replication_command(self, command: str, conn: pq.PGconn | None = None) -> list[tuple]:
        own = conn is None
        conn = conn or self._open_replication()
        try:
            res = conn.exec_(command.encode())
            if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
                msg = (res.error_message or conn.error_message).decode(errors="replace").strip()
                raise TerminalError(f"{command.split()[0]} failed on the POS: {msg}")
            return [
                tuple((res.get_value(r, c) or b"").decode() for c in range(res.nfields))
                for r in range(res.ntuples)
            ]
        finally:
            if own:
                conn.finish()

    # --- snapshot -------------------------------------------------------------------------------------

    def snapshot(self) -> Iterator[ChangeEvent | TxnEnd]:
        """Copies the captured tables as of a consistent point X, then ends with TxnEnd(X).

        A temporary slot exports a snapshot whose consistent point X splits history exactly: transactions
        committed before X are in the snapshot, later ones are streamed from X by the permanent slot (created
        earlier, so it still holds them). No gap, no duplicate, whether or not a DBA made the slot.
        """
        holder = self._open_replication()
        try:
            tmp = f"{self.cfg.slot}_snap_{int(time.time())}"[:63]
            row = self._replication_command(
                f"CREATE_REPLICATION_SLOT {quote_ident(tmp)} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                holder,
            )[0]
            point, snap_name = str_to_lsn(row[1]), row[2]
            log.info("snapshot at %s of %s", row[1], ", ".join(self.scfg.tables))
            ts_ms = int(time.time() * 1000)
            with self.connect() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snap_name)))
                seq = 0
                for table in self.scfg.tables:
                    for ev in self._copy_table(conn, table, point, ts_ms, seq):
                        seq = ev.seq
                        yield ev
                conn.rollback()
            yield TxnEnd(point, point, ts_ms, snapshot=True)
        except psycopg.Error as e:
            raise classify(e) from e
        finally:
            holder.finish()

    def _copy_table(self, conn: psycopg.Connection, table: str, point: int, ts_ms: int, seq: int):
        schema, name = table.split(".", 1)
        names, convs, keys = table_columns(
            conn.execute(COLUMNS_QUERY, (table_regclass(schema, name),)).fetchall()
        )
        query = sql.SQL("SELECT {} FROM {}").format(as_text(names), sql.Identifier(schema, name))
        estimate = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (table,)
        ).fetchone()
        progress = Progress(f"{self.cfg.name}: snapshot of {table}", max(estimate[0], 0) or None, log)
        with conn.cursor(name=f"cdc_snap_{name}") as cur:
            cur.itersize = 5000
            cur.execute(query)
            for rec in cur:
                seq += 1
                progress.advance()
                after = typed_row(names, convs, rec)
                yield ChangeEvent(
                    READ,
                    schema,
                    name,
                    None,
                    after,
                    point,
                    point,
                    seq,
                    ts_ms,
                    None,
                    "true",
                    self.db,
                    self.cfg.name,
                    keys,
                    toast=False,
                )
        progress.close()

    # --- streaming ------------------------------------------------------------------------------------

    def stream(self, start_lsn: int, skip_through: int = 0) -> Iterator[ChangeEvent | TxnEnd | Idle]:
        """Streams changes of transactions committed after `start_lsn`. Transactions whose commit LSN is at or
        below `skip_through` (already applied downstream) are skipped."""
        self.confirmed = max(self.confirmed, start_lsn)
        conn = self._open_replication()
        self._repl = conn
        pubs = quote_literal(self.cfg.publication)
        cmd = (
            f"START_REPLICATION SLOT {quote_ident(self.cfg.slot)} LOGICAL {lsn_to_str(start_lsn)} "
            f"(proto_version '1', publication_names {pubs}, messages 'true')"
        )
        conn.send_query(cmd.encode())
        res = conn.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            msg = ((res.error_message if res else b"") or conn.error_message).decode(errors="replace").strip()
            conn.finish()
            if "does not exist" in msg or "is active" in msg or "wal_status" in msg or "removed" in msg:
                raise TerminalError(f"cannot stream from slot {self.cfg.slot}: {msg}")
            raise TransientError(f"cannot start replication: {msg}")
        conn.nonblocking = 1
        log.info("streaming from slot %s at %s", self.cfg.slot, lsn_to_str(start_lsn))
        try:
            yield from self._read_loop(conn, skip_through)
        finally:
            self._repl = None
            conn.finish()

    def _read_loop(self, conn: pq.PGconn, skip_through: int):
        decode = self.decoder.decode
        db, name = self.db, self.cfg.name
        interval = self.scfg.status_interval_s
        skipping = False
        commit_lsn = ts_ms = xid = seq = 0
        sock = conn.socket
        while True:
            n, data = conn.get_copy_data(1)
            if n == 0:  # nothing buffered: read what has arrived (non-blocking), so batches stay large
                conn.consume_input()
                n, data = conn.get_copy_data(1)
            if n == 0:
                # really nothing waiting: tell the pipeline (it may commit), send status if due, then wait
                yield Idle(self.wal_end)
                self._maybe_status(conn, interval)
                r, _, _ = select.select([sock], [], [], min(interval, 1.0))
                if r:
                    conn.consume_input()
                continue
            if n == -1:
                conn.get_result()
                raise TransientError("the POS ended replication (walsender stopped); reconnecting")
            if n < 0:
                raise TransientError(
                    f"replication connection lost: {conn.error_message.decode(errors='replace').strip()}"
                )
            kind = data[0]
            if kind == 0x6B:  # 'k' keepalive
                wal_end, _, reply = HDR_K.unpack_from(data, 1)
                self.wal_end = max(self.wal_end, wal_end)
                if not self._in_txn and self.confirmed >= self._received_end:
                    # everything received is durable downstream: the idle WAL in between is ours to confirm
                    self.confirmed = max(self.confirmed, wal_end)
                if reply:
                    self._send_status(conn)
                continue
            if kind != 0x77:  # 'w'
                continue
            lsn, wal_end, _ = HDR_W.unpack_from(data, 1)
            if wal_end > self.wal_end:
                self.wal_end = wal_end
            msg = decode(data[25:])
            t = type(msg)
            if t is po.Insert:
                if skipping:
                    continue
                seq += 1
                rel = msg.relation
                yield ChangeEvent(
                    CREATE,
                    rel.schema,
                    rel.name,
                    None,
                    msg.new,
                    lsn,
                    commit_lsn,
                    seq,
                    ts_ms,
                    xid,
                    "false",
                    db,
                    name,
                    rel.key_columns,
                    toast=False,
                )
            elif t is po.Update:
                if skipping:
                    continue
                seq += 1
                rel = msg.relation
                yield ChangeEvent(
                    UPDATE,
                    rel.schema,
                    rel.name,
                    msg.old,
                    msg.new,
                    lsn,
                    commit_lsn,
                    seq,
                    ts_ms,
                    xid,
                    "false",
                    db,
                    name,
                    rel.key_columns,
                    toast=msg.toasted,
                )
            elif t is po.Delete:
                if skipping:
                    continue
                seq += 1
                rel = msg.relation
                yield ChangeEvent(
                    DELETE,
                    rel.schema,
                    rel.name,
                    msg.old,
                    None,
                    lsn,
                    commit_lsn,
                    seq,
                    ts_ms,
                    xid,
                    "false",
                    db,
                    name,
                    rel.key_columns,
                )
            elif t is po.Begin:
                self._in_txn = True
                commit_lsn, xid, seq = msg.final_lsn, msg.xid, 0
                ts_ms = po.pg_epoch_us_to_unix_ms(msg.commit_ts_us)
                skipping = commit_lsn <= skip_through
            elif t is po.Commit:
                self._in_txn = False
                self._received_end = msg.end_lsn
                if skipping:
                    self.confirmed = max(self.confirmed, msg.end_lsn)
                else:
                    yield TxnEnd(msg.commit_lsn, msg.end_lsn, ts_ms)
            elif t is po.Truncate:
                if skipping:
                    continue
                for rel in msg.relations:
                    seq += 1
                    yield ChangeEvent(
                        TRUNCATE,
                        rel.schema,
                        rel.name,
                        None,
                        None,
                        lsn,
                        commit_lsn,
                        seq,
                        ts_ms,
                        xid,
                        "false",
                        db,
                        name,
                        rel.key_columns,
                    )
            # Relation, Type, Origin and logical messages need nothing more here

    def confirm(self, end_lsn: int) -> None:
        """Called by the pipeline after the sink committed everything up to `end_lsn`."""
        if end_lsn > self.confirmed:
            self.confirmed = end_lsn
        if self._repl is not None and time.monotonic() - self._last_status > 1.0:
            self._send_status(self._repl)

    def _maybe_status(self, conn: pq.PGconn, interval: float) -> None:
        if time.monotonic() - self._last_status >= min(interval, 1.0):
            self._send_status(conn)

    def _send_status(self, conn: pq.PGconn) -> None:
        lsn = self.confirmed
        msg = STATUS.pack(b"r", lsn, lsn, lsn, now_pg_us(), 0)
        if conn.put_copy_data(msg) != 1 or conn.flush() < 0:
            raise TransientError(
                f"replication connection lost: {conn.error_message.decode(errors='replace').strip()}"
            )
        self._last_status = time.monotonic()

    def close(self) -> None:
        if self._side is not None:
            self._side.close()
            self._side = None
        if self._repl is not None:
            self._repl.finish()
            self._repl = None


# A source table's columns in order: name, type OID, whether it is part of the primary key (table_columns).
COLUMNS_QUERY = (
    "SELECT a.attname, a.atttypid, coalesce(a.attnum = ANY(i.indkey), false)"
    " FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary"
    " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)


def table_regclass(schema: str, name: str) -> str:
    """COLUMNS_QUERY's parameter for a table."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def table_columns(rows: list[tuple]) -> tuple[list[str], list[po.Converter], tuple[str, ...]]:
    """COLUMNS_QUERY's rows -> (column names, their text converters, the primary key columns)."""
    return [r[0] for r in rows], [po.converter_for(r[1]) for r in rows], tuple(r[0] for r in rows if r[2])


def as_text(names: list[str]) -> sql.Composed:
    """The select list that reads the columns as text, as the stream sends them (see typed_row)."""
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names)


def typed_row(names: list[str], converters: list, record: tuple) -> dict[str, Any]:
    """A row read with as_text() -> {column: value} with the same Python types as the stream's."""
    return {n: (None if v is None else f(v)) for n, f, v in zip(names, converters, record, strict=True)}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
