"""PostgreSQL source: publication, slot, consistent initial snapshot (pg_snapshot.py), and the pgoutput
stream (pg_stream.py).

It yields a `ChangeEvent` for every row change (snapshot rows are op 'r'), a `TxnEnd` after the last change of
each source transaction (where a sink transaction may end), and `Idle` whenever no more data is waiting (a
good moment to commit), with the WAL that keepalives and skipped (already applied) transactions let the
checkpointer confirm once what came before is durable. Its position is a `WalPosition` (commit LSN and end
LSN of a transaction), stored by the sink as the partition "wal". It never confirms anything by itself: the
checkpointer calls `confirm(position)` after the sink commit, and the stream reports that LSN to the server
as flushed in its standby status updates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from cdc.config import ConnectorConfig
from cdc.errors import CdcError, TerminalError
from cdc.events import ChangeEvent, Idle, TxnEnd
from cdc.lanes import publication_sql
from cdc.sources.pg_conn import (
    SESSION_OPTIONS,
    classify,
    open_replication,
    quote_ident,
    replication_command,
    slot_lost_message,
)
from cdc.sources.pg_lane_exits import LaneExits
from cdc.sources.pg_snapshot import COLUMNS_QUERY, snapshot, table_columns, table_regclass
from cdc.sources.pg_stream import WalPosition, WalStream

log = logging.getLogger("cdc.source.postgres")

PG_EPOCH = 946684800.0  # 2000-01-01 UTC, where PostgreSQL counts its timestamps from


class PostgresSource:
    def __init__(self, cfg: ConnectorConfig, metrics: Any = None):
        self.cfg = cfg
        self.scfg = cfg.source
        self.db = ""
        self.wal: WalStream | None = None  # the stream being read
        self.fallback = None  # a pick's fallback store (cdc/fallback.py), when the stages have one
        self.roles = None  # the roles reader of guards with who.lookup (cdc/roles.py)
        self._side: psycopg.Connection | None = None
        self._exits: LaneExits | None = None  # a lane's DELETEs of rows that moved to another lane
        self._heartbeat_off = False
        self._last_heartbeat = 0.0
        self._made: list[str] = []  # what prepare() made this session: "slot", "publication"
        self.batching = False  # the stream yields runs of inserts and updates as ChangeBatch (batch_changes)
        self.batch_min = 1  # ... of at least this many changes

    # --- plain SQL connection -------------------------------------------------------------------------

    def connect(self, **kw) -> psycopg.Connection:
        try:
            return psycopg.connect(self.scfg.dsn, options=SESSION_OPTIONS, connect_timeout=10, **kw)
        except psycopg.Error as e:
            raise classify(e) from e

    def primary_keys(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(schema, table) -> primary key columns of the captured tables (WalStream.key_columns)."""
        out = {}
        try:
            with self.connect(autocommit=True) as conn:
                for table in self.scfg.tables:
                    schema, name = table.split(".", 1)
                    _, _, pk, _ = table_columns(
                        conn.execute(COLUMNS_QUERY, (table_regclass(schema, name),)).fetchall()
                    )
                    if pk:
                        out[(schema, name)] = pk
        except psycopg.Error as e:
            raise classify(e) from e
        return out

    def check(self) -> None:
        """The privileges the connector's role needs on the POS (cdc/privileges.py), before anything is made."""
        from cdc.privileges import check_source

        try:
            with self.connect(autocommit=True) as conn:
                check_source(conn, self.cfg)
        except psycopg.Error as e:
            raise classify(e) from e

    def prepare(self) -> None:
        """Checks wal_level and tables; creates the publication and the slot when missing."""
        try:
            with self.connect(autocommit=True) as conn:
                self._prepare(conn)
        except psycopg.Error as e:
            raise classify(e) from e

    def _check_filtered(self, table: str, replident: str) -> None:
        """A row filter on UPDATEs and DELETEs may read only replica-identity columns, else PostgreSQL refuses
        the POS's own UPDATEs: the tables must have REPLICA IDENTITY FULL (checked before any publication)."""
        if replident != "f":
            raise TerminalError(
                f"table {table} needs REPLICA IDENTITY FULL for the lanes' row filters (with another replica "
                "identity, PostgreSQL would refuse the POS's own UPDATEs of it once a filtered publication "
                f"exists); ask the DBA to run: ALTER TABLE {table} REPLICA IDENTITY FULL"
            )

    def _check_publication_filter(self, pub: str, published: list[tuple]) -> None:
        """A publication made beforehand (by the DBA) must filter rows, or lanes would overlap. `published`:
        its (table, row filter) pairs."""
        for table, rowfilter in published:
            if table in self.scfg.tables and rowfilter is None:
                raise TerminalError(
                    f"publication {pub} publishes every row of {table}, but this connector takes only the rows "
                    f"where {self.scfg.row_filter}; ask the DBA to run: ALTER PUBLICATION {pub} SET TABLE "
                    + ", ".join(f"{t} WHERE ({self.scfg.row_filter})" for t in self.scfg.tables)
                )
            if table in self.scfg.tables:
                log.info(
                    "publication %s filters %s by %s (made beforehand; kept as it is)", pub, table, rowfilter
                )

    def _prepare(self, conn: psycopg.Connection) -> None:
        self.db = conn.info.dbname
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]
        if wal_level != "logical":
            raise TerminalError(
                f"the POS server has wal_level={wal_level}; set wal_level=logical in "
                "postgresql.conf and restart PostgreSQL"
            )
        if self.scfg.row_filter and conn.info.server_version < 150000:
            raise TerminalError(
                "source.row_filter (and lanes) need PostgreSQL 15 or later on the POS, for publication row filters"
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
            if self.scfg.row_filter:
                self._check_filtered(table, row[0])
        row_filter = self.scfg.row_filter
        pub = self.cfg.publication
        have = conn.execute(  # (table, its row filter: PostgreSQL 15+, which a row filter needs)
            "SELECT schemaname || '.' || tablename"
            + (", rowfilter" if row_filter else "")
            + " FROM pg_publication_tables WHERE pubname=%s",
            (pub,),
        ).fetchall()
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname=%s", (pub,)).fetchone()
        if not exists:
            where = sql.SQL(" WHERE ({})").format(sql.SQL(row_filter)) if row_filter else sql.SQL("")
            ids = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) + where for t in self.scfg.tables)
            try:
                conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(pub), ids))
            except psycopg.errors.InsufficientPrivilege as e:
                raise TerminalError(
                    f"cannot create publication {pub}: {e.diag.message_primary}; ask the DBA to run: "
                    + " ".join(publication_sql(self.cfg))
                ) from e
            except (psycopg.errors.SyntaxError, psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedColumn,
                    psycopg.errors.UndefinedFunction, psycopg.errors.DatatypeMismatch) as e:  # fmt: skip
                raise TerminalError(
                    f"source.row_filter: PostgreSQL refuses {row_filter!r} as the row filter of publication "
                    f"{pub}: {e.diag.message_primary} (a row filter takes the row's columns, built-in operators "
                    "and immutable functions)"
                ) from e
            self._made.append("publication")
            log.info("created publication %s%s", pub, f" WHERE ({row_filter})" if row_filter else "")
        else:
            if row_filter:
                self._check_publication_filter(pub, have)
            missing = sorted(set(self.scfg.tables) - {t[0] for t in have})
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
            conn = open_replication(self.scfg.dsn, self.cfg.name)
            try:
                replication_command(
                    conn,
                    f"CREATE_REPLICATION_SLOT {quote_ident(self.cfg.slot)} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                )
            finally:
                conn.finish()
            self._made.append("slot")
            log.info("created replication slot %s", self.cfg.slot)
        else:
            plugin, database, wal_status = slot
            if plugin != "pgoutput" or database != self.db:
                raise TerminalError(
                    f"replication slot {self.cfg.slot} uses plugin {plugin} on database "
                    f"{database}; pos-cdc needs a pgoutput slot on {self.db} (name another slot)"
                )
            if wal_status == "lost":
                raise TerminalError(slot_lost_message(self.cfg))

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

    def oldest_pending_commit(self, after: int, look: int = 10_000) -> float | None:
        """The commit time (epoch seconds) of the oldest transaction of the captured tables that the slot
        still holds past `after` (a stored commit LSN): how far behind a stopped connector is. Read from a
        temporary copy of the slot, so the slot itself is never taken; at most `look` messages are decoded.
        None: nothing of the captured tables is waiting."""
        conn = self._side_conn()
        copy = f"{self.cfg.slot[:40]}_st_{os.getpid()}"[:63]
        try:
            conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s, true)", (self.cfg.slot, copy))
            try:
                row = conn.execute(
                    "SELECT substr(data, 10, 8) FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s,"
                    " 'proto_version', '1', 'publication_names', %s) WHERE get_byte(data, 0) = 66"  # B
                    " AND ('x' || encode(substr(data, 2, 8), 'hex'))::bit(64)::bigint > %s LIMIT 1",
                    (copy, look, self.cfg.publication, after),
                ).fetchone()
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (copy,))
        except psycopg.Error as e:
            raise classify(e) from e
        if row is None:
            return None
        # Begin: 'B', final LSN (8 bytes), commit time (8 bytes: microseconds since 2000-01-01 UTC), xid
        return PG_EPOCH + int.from_bytes(row[0], "big", signed=True) / 1e6

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

    def undo_prepare(self) -> None:
        """Drops the slot (and publication) this session made, the stream closed first (cdc/pipeline.py calls
        it when a first run fails before its first commit, e.g. on a column the storefront refuses): the next
        run copies the tables anew. With `snapshot: never` the slot is kept: where it starts is where the
        stream starts, and a new one would start later."""
        from cdc.sources.pg_undo import remove_made

        made, self._made = self._made, []
        if made and self.scfg.snapshot != "initial":  # no snapshot to start again from: the slot's start
            log.info(
                "%s: keeping slot %s (snapshot: never; it marks where the stream starts)",
                self.cfg.name,
                self.cfg.slot,
            )
            return
        if made:
            self.close()
            remove_made(self.connect, self.cfg, made)

    def reset(self) -> None:
        self.drop_slot()

    def observe(self, metrics) -> None:
        stats = self.slot_stats()
        if stats is not None:
            name = self.cfg.name
            metrics.source_lag_bytes.labels(name).set(max(0, stats["lag_bytes"] or 0))
            metrics.retained_wal_bytes.labels(name).set(max(0, stats["retained_wal_bytes"] or 0))

    def wire(self, stages: list):
        """A pick with a fallback store reads the POS (cdc/fallback.py), and so does a guard's who.lookup
        (cdc/roles.py): their lookups, checked now."""
        from cdc.fallback import wire_fallback
        from cdc.roles import wire_roles

        self.roles = wire_roles(stages, self.cfg)
        if self.roles is not None:
            self.roles.check()
        self.fallback = wire_fallback(stages, self.cfg)
        if self.fallback is not None:
            self.fallback.check()
        return self.fallback

    def batch_changes(self, min_run: int = 1) -> bool:
        """Asked by a fast path (cdc/fast/): the stream yields each run of a table's inserts and updates in a
        transaction as one ChangeBatch, in pgoutput's form (a run shorter than `min_run` as its ChangeEvents).
        Not for a lane, whose rows leaving it are turned into deletes change by change (pg_lane_exits.py).
        Returns whether it will."""
        self.batching, self.batch_min = not self.scfg.row_filter, min_run
        return self.batching

    def commits_overlap(self) -> bool:
        return True  # the slot moves only by what the checkpointer confirms, whenever it does

    def tick(self) -> None:
        """While idle: a heartbeat now and then, so the slot advances past WAL that other databases write."""
        interval = self.scfg.heartbeat_interval_s
        now = time.monotonic()
        if interval and now - self._last_heartbeat >= interval:
            self._last_heartbeat = now
            self.heartbeat()

    # --- positions and reading ------------------------------------------------------------------------

    def load_position(self, stored: dict[str, str]) -> WalPosition | None:
        text = stored.get("wal")
        if not text:
            return None
        pos = json.loads(text)
        return WalPosition(pos["commit_lsn"], pos["end_lsn"], pos.get("snapshot") == "done")

    def dump_position(self, position: WalPosition) -> dict[str, str]:
        pos: dict[str, Any] = {"commit_lsn": position.commit_lsn, "end_lsn": position.end_lsn}
        if position.snapshot:
            pos["snapshot"] = "done"
        return {"wal": json.dumps(pos)}

    def floor(self, position: WalPosition | None) -> int:
        """A change at or before `position` belongs to a transaction committed at or before its commit LSN."""
        return position.commit_lsn if position is not None else 0

    def read(self, resume: WalPosition | None, reload=None) -> Iterator[ChangeEvent | TxnEnd | Idle]:
        """The snapshot first when nothing is stored (snapshot: initial), then the stream from the stored
        position; transactions at or below it (already applied) are skipped."""
        if resume is None and self.scfg.snapshot == "initial":
            end = None
            for item in snapshot(self):
                yield item
                if type(item) is TxnEnd:
                    end = item.position
            resume = end
        self.wal = WalStream(self.cfg, self.db)
        self.wal.batching, self.wal.batch_min = self.batching, self.batch_min
        self.wal.primary_keys = self.primary_keys()
        start = resume.end_lsn if resume else 0
        stream = self.wal.stream(start, skip_through=resume.commit_lsn if resume else 0)
        if self.scfg.row_filter:  # a lane: rows leaving it are not deleted (pg_lane_exits.py)
            self._exits = LaneExits(self.connect, self.cfg.name)
            stream = self._exits.filter(stream)
        try:
            yield from stream
        except psycopg.Error as e:  # the lane's POS lookups
            raise classify(e) from e

    def confirm(self, position: WalPosition) -> None:
        if self.wal is not None:
            self.wal.confirm(position.end_lsn)

    def close(self) -> None:
        if self._exits is not None:
            self._exits.close()
            self._exits = None
        if self.fallback is not None:
            try:
                self.fallback.close()
            except CdcError:
                pass
            self.fallback = None
        if self.roles is not None:
            self.roles.close()
            self.roles = None
        if self._side is not None:
            self._side.close()
            self._side = None
        if self.wal is not None:
            self.wal.close()
            self.wal = None
