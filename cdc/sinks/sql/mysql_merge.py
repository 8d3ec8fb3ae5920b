"""How one group of buffered changes is merged into a MariaDB/MySQL storefront table: CoreMerge's rules,
sent as multi-row INSERT … ON DUPLICATE KEY UPDATE texts built here (what a DBA's own bulk load does).

The fast path's rows (cdc/fast/encode_mysql.py) are that statement's VALUES tuples already, each key's
cdc_applied entry beside it: `merge_encoded` only joins them into the same statements.
"""

from __future__ import annotations

import math
import queue
import re
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator
from decimal import Decimal
from itertools import accumulate
from typing import Any

import sqlalchemy as sa

from cdc.errors import HoldError
from cdc.sinks.sql.bookkeeping import pack_entries
from cdc.sinks.sql.buffer import UPSERT
from cdc.sinks.sql.core_merge import CoreMerge, _entry, ms_to_dt


class MySqlMerge(CoreMerge):
    """MariaDB/MySQL: the same statements, sent as multi-row INSERT … ON DUPLICATE KEY UPDATE texts of
    ROWS_PER_STATEMENT rows, values escaped by the driver (pymysql) — what a DBA's own bulk load does. Going
    through SQLAlchemy's executemany costs ~5x more per row in parameter handling."""

    ROWS_PER_STATEMENT = 1000
    # the fast path's statements: up to this much SQL each, the upserts' VALUES tuples as the cdc_applied rows'
    # entries (a quarter of MySQL 5.7's max_allowed_packet, 4 MB; MariaDB's is 16 MB)
    STATEMENT_BYTES = 1 << 20
    # called as a write's first statement goes to the server (Writer.write_async waits for it)
    sending: Callable[[], None] | None = None

    def _execute(self, conn: sa.Connection, cols: list[str], fresh: list) -> None:
        dbapi = conn.connection.driver_connection
        cur = dbapi.cursor()
        esc = _mysql_escaper(dbapi)
        keys = self.target.key_cols
        up_head, up_tail = self._upsert(cols)
        st_head = f"INSERT INTO cdc_applied (connector, size, entries) VALUES ({esc(self.positions)}, "
        dels = []
        with _Pipelined(
            cur, self.sending
        ) as send:  # the server works on one statement while the next is built
            for i in range(0, len(fresh), self.ROWS_PER_STATEMENT):
                ups, states = [], []
                for key, p, kt in fresh[i : i + self.ROWS_PER_STATEMENT]:
                    ev, row = p.ev, p.row
                    if p.op == UPSERT:
                        try:
                            ups.append("(" + ",".join(map(esc, map(row.get, cols))) + ")")
                        except NotFinite:
                            raise _not_storable(row, cols) from None
                    else:
                        d = {f"k_{k}": v for k, v in zip(keys, key, strict=True)}
                        d["k__deleted_at"] = ms_to_dt(ev.ts_ms)
                        dels.append(d)
                    states.append(_entry(kt, p))
                if ups:
                    send(up_head + ",".join(ups) + up_tail)
                if not self.shared:  # shared: claim() recorded them
                    send(f"{st_head}{len(states)}, {_mysql_text(pack_entries(states))})")
        if dels:
            conn.execute(self._statements(tuple(cols))[1], dels)

    def merge_encoded(self, conn: sa.Connection, encoded: Any, check_stale: bool) -> None:
        """The fast path's rows (buffer.Encoded: key -> VALUES tuple, key -> cdc_applied entry; lean, above
        every recorded position) as _execute's upserts, then their entries as cdc_applied rows; each
        statement up to STATEMENT_BYTES of tuples or entries rather than ROWS_PER_STATEMENT rows: the server's
        work per row is the same (its own time for a 200k-row reprice, from its slow log: 0.89-0.92 s in
        1000-, 5000- or 20000-row statements), and every statement is a round trip the server waits through,
        for as long as the writer waits for the GIL once the reply is in."""
        if check_stale or self.shared or encoded.entries is None:
            raise AssertionError("MariaDB fast-path rows are lean: above every recorded position, not shared")
        cur = conn.connection.driver_connection.cursor()
        up_head, up_tail = (t.encode() for t in self._upsert(list(encoded.cols)))
        head = b"INSERT INTO cdc_applied (connector, size, entries) VALUES (%s, " % _bytes_literal(
            self.positions.encode()
        )
        with _Pipelined(cur, self.sending) as send:
            for part in _parts(list(encoded.lines.values()), self.STATEMENT_BYTES):
                send(up_head + b",".join(part) + up_tail)
            for part in _parts(list(encoded.entries.values()), self.STATEMENT_BYTES):
                send(b"%s%d, %s)" % (head, len(part), _bytes_literal(b"[" + b",".join(part) + b"]")))

    def _upsert(self, cols: list[str]) -> tuple[str, str]:
        """The head and the tail of the multi-row upsert of these columns (the VALUES tuples go between)."""
        q = self._quote
        keys, soft = self.target.key_cols, self.target.soft_delete_column
        update = [f"{q(c)} = VALUES({q(c)})" for c in cols if c not in keys]
        if soft and soft not in cols:
            update.append(f"{q(soft)} = NULL")
        up_head = f"INSERT INTO {self._table()} ({', '.join(map(q, cols))}) VALUES "
        return up_head, " ON DUPLICATE KEY UPDATE " + (", ".join(update) or f"{q(keys[0])} = {q(keys[0])}")

    @staticmethod
    def _quote(name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def _table(self) -> str:
        t = self.target.table
        return f"{self._quote(t.schema)}.{self._quote(t.name)}" if t.schema else self._quote(t.name)


class _Pipelined:
    """Runs statements, in order, on a worker thread, so building the next one (Python) overlaps the server
    executing this one (the worker waits on the socket without the GIL). Leaving the block waits for all of
    them and re-raises the first error; statements after a failed one are not run. `sending`: called as the
    first statement goes."""

    def __init__(self, cursor, sending: Callable[[], None] | None = None):
        self.cursor = cursor
        self.sending = sending
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        self.worker = threading.Thread(target=self._run, daemon=True, name="sink-writer")

    def _run(self) -> None:
        sending = self.sending
        while (statement := self.queue.get()) is not None:
            if sending is not None:
                sending()
                sending = None
            if not self.errors:
                try:
                    self.cursor.execute(statement)
                except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
                    self.errors.append(e)

    def __enter__(self):
        self.worker.start()
        return self.queue.put

    def __exit__(self, *exc) -> None:
        self.queue.put(None)
        self.worker.join()
        if self.errors and exc[0] is None:
            raise self.errors[0]


class NotFinite(ValueError):
    """A NaN or infinite number, which MariaDB/MySQL cannot store (pymysql would send NaN as a name, or fail)."""


def _not_storable(row: dict, cols: list[str]) -> HoldError:
    """The refusal of a row with a NaN or infinite number: a row error, dead-lettered by the writer's bisection
    while the rest of the write goes on."""
    for c in cols:
        v = row.get(c)
        if (type(v) is Decimal and not v.is_finite()) or (type(v) is float and not math.isfinite(v)):
            return HoldError(f"{c} is {v}, which MariaDB/MySQL cannot store (it has no NaN or infinity)")
    return HoldError("a NaN or infinite number, which MariaDB/MySQL cannot store")


def _mysql_escaper(dbapi):
    """pymysql's own escaping, with the common types (str, int, finite Decimal, None) dispatched directly, and
    strings with nothing to escape (most) passed without pymysql's per-character translation."""
    from pymysql.constants import SERVER_STATUS
    from pymysql.converters import escape_string

    escape = dbapi.escape  # (literal() is its deprecated alias)
    special = re.compile(r"[\0\n\r\x1a'\"\\]")  # what escape_string changes
    if dbapi.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        special = re.compile("'")

        def escape_string(s: str) -> str:
            return s.replace("'", "''")

    plain = special.search

    def esc(v: Any) -> str:
        t = type(v)
        if t is str:
            return "'" + (escape_string(v) if plain(v) else v) + "'"
        if t is int or (t is Decimal and v.is_finite()):
            return str(v)
        if v is None:
            return "NULL"
        if t is Decimal or (t is float and not math.isfinite(v)):  # (a finite Decimal went above)
            raise NotFinite(v)
        return escape(v)

    return esc


def fast_form(dbapi) -> tuple[str | None, str | None]:
    """The form of the fast path's rows for this pymysql connection (cdc/fast/plan.py), or (None, why not):
    its literals are UTF-8 bytes escaped for the session's sql_mode, as _mysql_escaper escapes a str."""
    from pymysql.constants import SERVER_STATUS

    if dbapi.encoding != "utf8":
        return None, f"the storefront connection's character set is {dbapi.charset}, not utf8mb4"
    if dbapi.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        return "mysql-nbe", None
    return "mysql", None


def _parts(items: list[bytes], budget: int) -> Iterator[list[bytes]]:
    """`items` in order, in runs of up to `budget` bytes (at least one item each)."""
    ends = list(accumulate(map(len, items)))
    start, before = 0, 0
    while start < len(items):
        stop = max(start + 1, bisect_right(ends, before + budget, start))
        yield items[start:stop]
        start, before = stop, ends[stop - 1]


def _bytes_literal(text: bytes) -> bytes:
    """UTF-8 text as a MySQL string literal: as it is when it has no quote or backslash (the same literal
    with or without NO_BACKSLASH_ESCAPES), else hex (as _mysql_text)."""
    if b"'" in text or b"\\" in text:
        return b"CONVERT(X'%s' USING utf8mb4)" % text.hex().encode()
    return b"'" + text + b"'"


def _mysql_text(text: str) -> str:
    """A long text (cdc_applied's JSON) as a MySQL literal: hex, which costs far less to make than escaping."""
    return f"CONVERT(X'{text.encode().hex()}' USING utf8mb4)"
