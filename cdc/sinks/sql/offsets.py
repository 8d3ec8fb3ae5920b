"""Committing a sink transaction with the source positions it covers (cdc_offsets), and reading them back.

The positions are written in the same transaction as the rows: after a crash the storefront and its stored
positions agree, whatever the source confirmed. Positions are opaque text here (each source writes its own,
one row per partition: "wal" for PostgreSQL, one per topic partition for Kafka).

PostgreSQL: a small write (a few plain changes, the usual single-sale transaction) goes with its position and
the COMMIT as ONE simple query (PgMerge.commit_small); a larger one sends the position and the COMMIT in one
round trip.
"""

from __future__ import annotations

import sqlalchemy as sa

from cdc.events import UNCHANGED_TOAST
from cdc.sinks.sql.bookkeeping import LOCK_PARTITION, offsets_table, upsert, utcnow
from cdc.sinks.sql.pg_merge import PgMerge
from cdc.sinks.sql.storefront import Storefront, classify, is_row_error
from cdc.sinks.sql.writer import Writer


class Offsets:
    def __init__(self, store: Storefront, writer: Writer):
        self.store = store
        self.writer = writer
        self.connector = store.connector
        self._upsert: sa.Insert | None = None  # the cdc_offsets upsert, built once
        self._pg_sql: str | None = None  # ... and as psycopg's text

    def load(self) -> dict[str, str]:
        """The stored positions of this connector: partition -> position text."""
        return stored_positions(self.store.engine, self.connector)

    def forget(self) -> None:
        with self.store.engine.begin() as c:
            c.execute(sa.delete(offsets_table).where(offsets_table.c.connector == self.connector))

    def commit(self, positions: dict[str, str] | None) -> None:
        """Writes what is buffered, stores `positions` (partition -> text; None: no new position), and
        commits it all in one transaction."""
        try:
            self.writer.wait()
        except Exception as e:
            self._failed()
            raise classify(e) from e
        self.commit_taken(self.writer.take(), positions)

    def commit_taken(self, taken: tuple, positions: dict[str, str] | None) -> None:
        """commit() of what Writer.take() took from the buffer: on the caller's thread, or on the writer thread
        beside a caller that buffers the next batch meanwhile (SqlSink.commit_begin)."""
        writer, store = self.writer, self.store
        try:
            if not positions:
                writer.write_taken(taken)
                store.tx().commit()
                return
            if self._upsert is None:
                self._upsert = upsert(
                    store.dialect, offsets_table, ("connector", "partition"), ["position", "updated_at"]
                )
            now = utcnow()
            rows = [
                {"connector": self.connector, "partition": part, "position": text, "updated_at": now}
                for part, text in positions.items()
            ]
            if len(rows) == 1 and self._commit_small(taken, rows[0]):
                return
            writer.write_taken(taken)
            conn = store.tx()
            if store.dialect == "postgresql":  # the positions and the COMMIT in one round trip
                pg = conn.connection.driver_connection
                with pg.pipeline():
                    cur = pg.cursor()
                    cur.executemany(self._pg_upsert(conn), rows)
                    pg.commit()
            else:
                conn.execute(self._upsert, rows)
            conn.commit()  # (PostgreSQL: SQLAlchemy's side of it; the driver has nothing left to commit)
        except Exception as e:
            self._failed()
            raise classify(e) from e

    def _failed(self) -> None:
        if self.writer.merger is not None:
            self.writer.merger.forget_stage()

    def _commit_small(self, taken: tuple, offset: dict) -> bool:
        """PostgreSQL: a few plain changes (the usual single-sale transaction) are written and committed with
        their position in one round trip (PgMerge.commit_small). Anything else, or a refused row, goes the
        usual way; True when done."""
        writer, store = self.writer, self.store
        pending, held, truncate_first, encoded = taken
        if encoded is not None and encoded.form == "pg-values":
            return self._commit_encoded(taken, offset)
        if (
            store.dialect != "postgresql"
            or writer.target.table is None
            or not pending
            or encoded is not None
            or len(pending) > PgMerge.SMALL
            or held
            or truncate_first
            or writer.tracks_applied
            or store.in_transaction()
        ):
            return False
        items = list(pending.items())
        if writer.may_be_stale(items) or any(
            p.ev.toast and UNCHANGED_TOAST in p.row.values() for _, p in items
        ):
            return False
        conn = store.conn
        groups = writer.target.groups(items)
        return self._alone(
            lambda: writer.merger.commit_small(conn, groups, self._pg_upsert(conn), offset), len(items)
        )

    def _commit_encoded(self, taken: tuple, offset: dict) -> bool:
        """The fast path's short-run tuples (PgMerge.commit_encoded) committed with their position in one round
        trip, when nothing else is to be written (the usual way otherwise, or when a row is refused)."""
        writer, store = self.writer, self.store
        pending, held, truncate_first, encoded = taken
        if pending or held or truncate_first or writer.tracks_applied or store.in_transaction():
            return False
        conn = store.conn
        return self._alone(
            lambda: writer.merger.commit_encoded(conn, encoded, self._pg_upsert(conn), offset),
            len(encoded.lines),
        )

    def _alone(self, send, n: int) -> bool:
        """`send()`s a write of `n` changes committed with its position in one round trip; False (rolled back)
        when the storefront refused a row, which the usual way then finds."""
        try:
            send()
        except Exception as e:
            if is_row_error(e):
                return False
            raise
        self.writer.lookups.forget()
        self.writer.folder.appended += n
        return True

    def _pg_upsert(self, conn: sa.Connection) -> str:
        """The offset upsert as psycopg's SQL text (named parameters)."""
        if self._pg_sql is None:
            self._pg_sql = str(self._upsert.compile(dialect=conn.dialect))
        return self._pg_sql


def stored_positions(engine: sa.Engine, connector: str) -> dict[str, str]:
    """A connector's stored positions (partition -> position text), read on a connection of its own (a lane's
    from another lane's sink: cdc reconcile)."""
    t = offsets_table
    try:
        with engine.connect() as c:
            rows = c.execute(
                sa.select(t.c.partition, t.c.position).where(
                    t.c.connector == connector, t.c.partition != LOCK_PARTITION
                )
            )
            return dict(rows.all())
    except Exception as e:
        raise classify(e) from e
