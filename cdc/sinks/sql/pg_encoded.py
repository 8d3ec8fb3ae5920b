"""The fast path's rows (cdc/fast/, buffer.Encoded) merged into a PostgreSQL storefront: part of PgMerge.

The lines are COPY'd into the session's staging table in one write. Lines that carry their positions are
merged by PgMerge's own statement (checked, or claimed, like any group); lean lines (the storefront columns
alone, above every recorded position) by an upsert that stores the cdc_applied entries the encoder made, or,
when every change came from an insert at the source, first by a COPY straight into the storefront table (no
staging, no upsert: a third of their cost) under a savepoint, which a key the storefront has already turns
back into the upsert.

Short runs (the single sale) come as VALUES tuples instead ("pg-values", lean): upserted straight into the
storefront table by one INSERT … ON CONFLICT (every key once), their entries inserted beside; when nothing else
is to be written, with the connector's lock, the source position and the COMMIT in one simple query
(commit_encoded), one round trip where staging takes five.
"""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from cdc.sinks.sql.bookkeeping import PG_LOCK


class EncodedMerge:
    """Mixed into PgMerge, whose staging table, statements and cursors it uses (_empty_stage, _statements,
    _copy_cur, _literal_cur, _tid, _conflict, send_alone, connector, positions, target)."""

    PLAIN_BACKOFF = 20  # groups that skip the direct COPY after one found a key there (_try_direct)
    _plain_skip = 0  # groups still to skip it
    plain_tries = plain_misses = 0

    def merge_encoded(self, conn: sa.Connection, encoded: Any, check_stale: bool) -> None:
        """The fast path's rows (buffer.Encoded: COPY lines of the staging table, cdc/fast/encode.py) staged in
        one COPY write, then merged: by merge()'s statement when the lines carry their positions, else (lean
        lines: the storefront columns only) by an upsert that stores the entries the encoder made."""
        pg = conn.connection.driver_connection
        cols, n = tuple(encoded.cols), len(encoded.lines)
        cur = self._copy_cur
        if encoded.form == "pg-values":
            upsert, record = self._values_statements(pg, encoded)
            with pg.pipeline():
                cur.execute(upsert)
                cur.execute(record, self._entries_params(encoded))
            return
        if encoded.entries is not None and encoded.inserts_only and self._try_direct(pg, cur, encoded):
            return
        empty = self._empty_stage(n)
        if empty:
            cur.execute(empty)
        if encoded.entries is None:
            copy, _, _, statement = self._statements(pg, cols, check_stale)
            params: dict = {"c": self.positions}
        else:
            copy, statement, _, _ = self._lean_statements(pg, cols)
            params = self._entries_params(encoded)
        with cur.copy(copy) as cp:
            cp.write(b"".join(encoded.lines.values()))
        cur.execute(statement, params)

    def commit_encoded(self, conn: sa.Connection, encoded: Any, store: str, offset: dict) -> None:
        """Short runs' VALUES tuples (lean, "pg-values") and their commit as ONE simple query: BEGIN; the
        connector's lock; the upsert of the tuples into the storefront table; their cdc_applied entries; the
        source position; COMMIT (as commit_small, one round trip where the usual way takes several). If the
        storefront refuses anything, the server has rolled it all back and the error is raised."""
        pg = conn.connection.driver_connection
        lit = self._literal_cur.mogrify
        upsert, record = self._values_statements(pg, encoded)
        parts = (
            b"BEGIN",
            lit(PG_LOCK, (self.connector,)).encode(),
            upsert,
            lit(record, self._entries_params(encoded)).encode(),
            lit(store, offset).encode(),
            b"COMMIT",
        )
        self.send_alone(pg, b";\n".join(parts))

    def _values_statements(self, pg, encoded: Any) -> tuple[bytes, str]:
        """The upsert of short runs' VALUES tuples straight into the storefront table (every key once: the
        newest change per key), and the insert of their cdc_applied entries (`_entries_params`)."""
        cols = tuple(encoded.cols)
        key = (cols, "values")
        if key not in self._cache:
            ident, S = sql.Identifier, sql.SQL
            head = S("INSERT INTO {tid} AS t ({cols}) VALUES ").format(
                tid=self._tid(), cols=S(", ").join(map(ident, cols))
            )
            tail = S(" ON CONFLICT ({keys}) {conflict}").format(
                keys=S(", ").join(map(ident, self.target.key_cols)), conflict=self._conflict(cols)
            )
            _, _, _, record = self._lean_statements(pg, cols)
            self._cache[key] = (head.as_bytes(pg), tail.as_bytes(pg), record)
        head, tail, record = self._cache[key]
        return head + b",".join(encoded.lines.values()) + tail, record

    def _entries_params(self, encoded: Any) -> dict:
        entries = b"[" + b",".join(encoded.entries.values()) + b"]"
        return {"c": self.positions, "n": len(encoded.lines), "e": entries.decode("ascii")}

    def _try_direct(self, pg, cur, encoded: Any) -> bool:
        """Rows that came from inserts at the source are most likely new to the storefront too: their lean
        lines (the storefront columns, as COPY text the staging table, of the same column types, would parse)
        go straight into the storefront table by COPY, and their entries into cdc_applied; no staging and no
        upsert (3.4 against ~1.4 µs a row of storefront time). Tried under a savepoint: a key that exists
        after all (a unique violation) rolls it back, the staging and the upsert go instead, and the next
        PLAIN_BACKOFF groups skip the try. True when it was done."""
        if self._plain_skip:
            self._plain_skip -= 1
            return False
        _, _, direct, record = self._lean_statements(pg, tuple(encoded.cols))
        self.plain_tries += 1
        cur.execute(b"SAVEPOINT cdc_plain")
        try:
            with cur.copy(direct) as cp:
                cp.write(b"".join(encoded.lines.values()))
        except psycopg.errors.UniqueViolation:
            cur.execute(b"ROLLBACK TO SAVEPOINT cdc_plain")
            self.plain_misses += 1
            self._plain_skip = self.PLAIN_BACKOFF
            return False

        cur.execute(record, self._entries_params(encoded))
        cur.execute(b"RELEASE SAVEPOINT cdc_plain")
        return True

    def _lean_statements(self, pg, cols: tuple[str, ...]) -> tuple[bytes, str, bytes, str]:
        """For lean lines of these columns: the COPY of the columns alone into the staging table, the upsert
        that stores the positions given as cdc_applied entries (every staged row is applied: lean lines are
        above every recorded position, and not shared), and for _try_direct the COPY into the storefront
        table and the insert of the entries alone."""
        key = (cols, "lean")
        if key not in self._cache:
            ident, S = sql.Identifier, sql.SQL
            copy = S("COPY cdc_stage ({}) FROM STDIN").format(S(", ").join(map(ident, cols)))
            stmt = S(
                "WITH up AS (INSERT INTO {tid} AS t ({cols}) SELECT {cols} FROM cdc_stage s"
                " ON CONFLICT ({keys}) {conflict})"
                " INSERT INTO cdc_applied (connector, size, entries) VALUES (%(c)s, %(n)s, %(e)s)"
            ).format(
                tid=self._tid(),
                cols=S(", ").join(map(ident, cols)),
                keys=S(", ").join(map(ident, self.target.key_cols)),
                conflict=self._conflict(cols),
            )
            direct = S("COPY {tid} ({cols}) FROM STDIN").format(
                tid=self._tid(), cols=S(", ").join(map(ident, cols))
            )
            record = S("INSERT INTO cdc_applied (connector, size, entries) VALUES (%(c)s, %(n)s, %(e)s)")
            self._cache[key] = (
                copy.as_bytes(pg),
                stmt.as_string(pg),
                direct.as_bytes(pg),
                record.as_string(pg),
            )
        return self._cache[key]
