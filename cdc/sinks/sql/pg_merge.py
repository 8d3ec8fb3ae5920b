"""How one group of buffered changes (same columns) is merged into a PostgreSQL storefront table.

Every merge strategy (this one, core_merge.py for SQLite, mysql_merge.py) skips changes older than the key's
recorded source position (never backwards; the caller has folded cdc_applied into cdc_row_state first; the
same change again, a duplicate or a replay, is applied again: it changes nothing, or repairs a row that was
changed behind pos-cdc's back),
applies upserts and deletes, and appends the new positions to cdc_applied (one JSON row per chunk, unindexed,
so recording costs a fraction of a per-key upsert), all inside the caller's open transaction.

PostgreSQL: COPY into a temp staging table (a small group: an INSERT, sent with the merge), then ONE statement
(data-modifying CTEs) does the rest on the server; per-row Python work is a tuple build and a COPY row. A
small write is committed with its position in one round trip (PgMerge.commit_small).
"""

from __future__ import annotations

import datetime as dt
import operator
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg import ClientCursor, pq, sql
from psycopg.adapt import Dumper

from cdc.sinks.sql.bookkeeping import PG_LOCK, key_text, via_of
from cdc.sinks.sql.buffer import UPSERT
from cdc.sinks.sql.pg_encoded import EncodedMerge
from cdc.sinks.sql.target import Target


class PgMerge(EncodedMerge):
    # rows: a group of up to this many is staged by an INSERT sent with its merge (no COPY: two round trips
    # less), and a write of up to this many is committed in one round trip (commit_small)
    SMALL = 64
    BIG = 1000  # rows: a staged group this large is truncated away rather than deleted (_empty_stage)

    def __init__(self, target: Target, connector: str, positions: str | None = None, shared: bool = False):
        self.target = target
        self.connector = connector  # whose lock a write takes
        self.positions = positions or connector  # whose recorded key positions it checks and records
        self.shared = shared  # other connectors (lanes) write the same keys: claim each key's position
        self._cache: dict[tuple, tuple[bytes, str, str, str]] = {}
        self.live = 0  # rows the staging table may hold (the last group staged)
        self.dead = 0  # rows deleted from it since it was last truncated
        self._copy_cur = self._param_cur = self._literal_cur = None  # made by prepare()

    def prepare(self, conn: sa.Connection) -> None:
        """The session's staging table (temp, so it lives and dies with this connection)."""
        pg = conn.connection.driver_connection
        pg.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS cdc_stage AS SELECT * FROM {} WITH NO DATA").format(
                self._tid()
            )
        )
        pg.execute(
            "ALTER TABLE cdc_stage ADD COLUMN IF NOT EXISTS __k text, ADD COLUMN IF NOT EXISTS __op char(1),"
            " ADD COLUMN IF NOT EXISTS __lsn bigint, ADD COLUMN IF NOT EXISTS __seq bigint,"
            " ADD COLUMN IF NOT EXISTS __ts bigint, ADD COLUMN IF NOT EXISTS __tx bigint,"
            " ADD COLUMN IF NOT EXISTS __via text"
        )
        pg.commit()
        self._copy_cur = pg.cursor()
        self._copy_cur.adapters.register_dumper(dt.datetime, _CopyDatetimeDumper)
        self._param_cur = _untyped(pg.cursor())
        self._literal_cur = _untyped(ClientCursor(pg))  # the same values, as untyped literals

    def forget_stage(self) -> None:
        """The transaction was rolled back: what the staging table holds is not known (a truncate of it may
        have been undone), so the next group truncates it."""
        self.live = self.BIG + 1

    def _empty_stage(self, staging: int) -> bytes | None:
        """The statement that empties the staging table before `staging` rows go in (None: it is empty). A
        truncate cuts its file, which now and then stalls the storefront's filesystem for ~100 ms, so it is
        kept for after a large group and for when deleted rows pile up; else DELETE (the table is not
        emptied at commit, ON COMMIT DELETE ROWS being a truncate at every commit)."""
        live, self.live = self.live, staging
        if not live:
            return None
        if live > self.BIG or self.dead + live > 20 * self.BIG:
            self.dead = 0
            return b"TRUNCATE cdc_stage"
        self.dead += live
        return b"DELETE FROM cdc_stage"

    def _tid(self) -> sql.Identifier:
        t = self.target.table
        return sql.Identifier(t.schema, t.name) if t.schema else sql.Identifier(t.name)

    def merge(self, conn: sa.Connection, items: list, cols: list[str], check_stale: bool = True) -> None:
        """Stages the group's rows, then one statement merges them. A small group goes as the parameters of
        an INSERT sent with the merge in one round trip (a pipeline); a larger one by COPY."""
        pg = conn.connection.driver_connection
        copy, head, row, statement = self._statements(pg, tuple(cols), check_stale)
        empty = self._empty_stage(len(items))
        rows = self._stage_rows(items, cols)
        params = {"c": self.positions}
        if len(items) <= self.SMALL:
            cur = self._param_cur
            with pg.pipeline():
                if empty:
                    cur.execute(empty)
                cur.executemany(head + row, rows)
                cur.execute(statement, params)
            return
        cur = self._copy_cur
        if empty:
            cur.execute(empty)
        with cur.copy(copy) as cp:
            write_row = cp.write_row
            for row in rows:
                write_row(row)
        cur.execute(statement, params)

    def _conflict(self, cols: tuple[str, ...]) -> sql.Composable:
        """ON CONFLICT's action: the row's columns but the key take the new values (a soft-deleted row comes
        back)."""
        ident, S = sql.Identifier, sql.SQL
        keys, soft = self.target.key_cols, self.target.soft_delete_column
        sets = [S("{0} = EXCLUDED.{0}").format(ident(c)) for c in cols if c not in keys]
        if soft and soft not in cols:
            sets.append(S("{} = NULL").format(ident(soft)))
        return S("DO UPDATE SET {}").format(S(", ").join(sets)) if sets else S("DO NOTHING")

    def commit_small(
        self, conn: sa.Connection, groups: list[tuple[list[str], list]], store: str, offset: dict
    ) -> None:
        """A small write and its commit as ONE simple query: BEGIN; the connector's lock; for each column
        group its rows into the staging table and the merge; the source position; COMMIT. One round trip and
        one statement for the driver, where the usual way takes seven: what keeps a connector close behind
        a POS committing thousands of single-row sales a second. The values go as untyped literals, which
        the columns' types parse as they parse COPY text. If the storefront refuses anything, the server has
        rolled it all back and the error is raised: the caller then takes the usual way, which finds and
        holds the refused rows."""
        pg = conn.connection.driver_connection
        lit = self._literal_cur.mogrify
        name = self.connector
        parts = ["BEGIN", lit(PG_LOCK, (name,))]
        for cols, items in groups:
            _, head, row, statement = self._statements(pg, tuple(cols), False)
            empty = self._empty_stage(len(items))
            if empty:
                parts.append(empty.decode())
            parts.append(head + ", ".join(_literal_row(vals, lit) for vals in self._stage_rows(items, cols)))
            parts.append(lit(statement, {"c": self.positions}))
        parts += [lit(store, offset), "COMMIT"]
        self.send_alone(pg, ";\n".join(parts).encode())

    def send_alone(self, pg, query: bytes) -> None:
        """`query`, a whole transaction from its BEGIN to its COMMIT, as one simple query (one round trip). If
        the server refuses any of it, it has rolled it all back, and the error is raised."""
        pg.autocommit = True  # the BEGIN is the query's, in the same round trip
        try:
            pg.execute(query)
        except BaseException:
            self.forget_stage()
            if pg.info.transaction_status == pq.TransactionStatus.INERROR:
                try:
                    pg.execute(b"ROLLBACK")
                except Exception:  # noqa: BLE001 - the connection is gone; the caller's error says so
                    pass
            raise
        finally:
            pg.autocommit = False

    def _stage_rows(self, items: list, cols: list[str]):
        """The staging table's rows: the group's columns, then the key text and the change's position."""
        key_cols = self.target.key_cols
        get = _getter(cols)
        for key, p in items:
            row, ev = p.row, p.ev
            if p.op == UPSERT:
                vals = get(row)
            else:
                vals = tuple([row.get(c) if c in key_cols else None for c in cols])
            yield vals + (key_text(key), p.op, ev.commit_lsn, ev.seq, ev.ts_ms, ev.txid, via_of(ev))

    def _statements(self, pg, cols: tuple[str, ...], check_stale: bool) -> tuple[bytes, str, str, str]:
        """For these columns: the COPY into the staging table (bytes, as sent), the head and the row of an
        INSERT into it, and the merge statement."""
        key = (cols, check_stale)
        if key not in self._cache:
            names = [*cols, "__k", "__op", "__lsn", "__seq", "__ts", "__tx", "__via"]
            stage_cols = sql.SQL(", ").join(map(sql.Identifier, names))
            copy = sql.SQL("COPY cdc_stage ({}) FROM STDIN").format(stage_cols)
            head = sql.SQL("INSERT INTO cdc_stage ({}) VALUES ").format(stage_cols)
            self._cache[key] = (
                copy.as_bytes(pg),
                head.as_string(pg),
                "(" + ", ".join(["%s"] * len(names)) + ")",
                self._statement(cols, check_stale).as_string(pg),
            )
        return self._cache[key]

    def _statement(self, cols: tuple[str, ...], check_stale: bool) -> sql.Composed:
        ident, S = sql.Identifier, sql.SQL
        tid, keys = self._tid(), self.target.key_cols
        soft = self.target.soft_delete_column
        conflict = self._conflict(cols)
        match = S(" AND ").join(S("t.{0} = s.{0}").format(ident(k)) for k in keys)
        # the rows to apply: all that were staged, or (checking) those not older than their key's recorded
        # position (the same change again is applied again: idempotent, and a repair of a row changed by hand);
        # a CTE is materialized for its readers, so there is one only when there is something to filter.
        # Shared (lanes): each key's position is claimed in cdc_row_state itself, row-locked (CLAIM).
        if self.shared:
            fresh, src = S(CLAIM), S("fresh")
        elif check_stale:
            fresh, src = (
                S(
                    "WITH fresh AS (SELECT st.* FROM cdc_stage st LEFT JOIN cdc_row_state rs"
                    " ON rs.connector = %(c)s AND rs.row_key = st.__k"
                    " WHERE rs.row_key IS NULL OR (rs.commit_lsn, rs.seq) <= (st.__lsn, st.__seq)),"
                ),
                S("fresh"),
            )
        else:
            fresh, src = S("WITH"), S("cdc_stage")
        if soft:
            remove = S(
                "UPDATE {} AS t SET {} = to_timestamp(s.__ts / 1000.0) FROM {} s WHERE s.__op = 'd' AND {}"
            ).format(tid, ident(soft), src, match)
        else:
            remove = S("DELETE FROM {} AS t USING {} s WHERE s.__op = 'd' AND {}").format(tid, src, match)
        record = (
            S("SELECT count(*) FROM {src}")  # recorded by the claim
            if self.shared
            else S(
                "INSERT INTO cdc_applied (connector, size, entries)"
                " SELECT %(c)s, count(*), json_agg(json_build_array(__k, __lsn, __seq, __ts, __tx, __op, __via))::text"
                " FROM {src} s HAVING count(*) > 0"
            )
        ).format(src=src)
        stmt = S(
            "{fresh} up AS (INSERT INTO {tid} AS t ({cols}) SELECT {cols} FROM {src} s WHERE s.__op = 'u'"
            " ON CONFLICT ({keys}) {conflict}),"
            " rm AS ({remove}) {record}"
        ).format(
            record=record,
            fresh=fresh,
            src=src,
            tid=tid,
            cols=S(", ").join(map(ident, cols)),
            keys=S(", ").join(map(ident, keys)),
            conflict=conflict,
            remove=remove,
        )
        return stmt


# Shared positions (sink.position_group, lanes): each staged change claims its key's row of cdc_row_state, in key
# order, where it is newer than the recorded position (at the same position an upsert wins over a delete: a
# publication's row filter turns an UPDATE that leaves it into a DELETE with the same position as the INSERT
# another lane's publication gets). ON CONFLICT waits for another lane's uncommitted claim of the key and then
# judges against what it committed, so two lanes never both think they are newest. Only the winners are applied.
CLAIM = (
    "WITH claim AS (INSERT INTO cdc_row_state AS rs"
    " (connector, row_key, commit_lsn, seq, ts_ms, txid, op, via, applied_at)"
    " SELECT %(c)s, __k, __lsn, __seq, __ts, __tx, __op, __via, now() FROM cdc_stage ORDER BY __k"
    " ON CONFLICT (connector, row_key) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, seq = EXCLUDED.seq,"
    " ts_ms = EXCLUDED.ts_ms, txid = EXCLUDED.txid, op = EXCLUDED.op, via = EXCLUDED.via,"
    " applied_at = EXCLUDED.applied_at"
    " WHERE (rs.commit_lsn, rs.seq) < (EXCLUDED.commit_lsn, EXCLUDED.seq)"
    " OR ((rs.commit_lsn, rs.seq) = (EXCLUDED.commit_lsn, EXCLUDED.seq) AND (EXCLUDED.op = 'u' OR rs.op = 'd'))"
    " RETURNING row_key),"
    " fresh AS (SELECT st.* FROM cdc_stage st JOIN claim ON claim.row_key = st.__k),"
)


def _literal_row(values: tuple, mogrify) -> str:
    """A staging row as untyped literals, as _Untyped sends them (psycopg's mogrify, for a type not listed,
    costs ~25 µs a row)."""
    out = []
    for v in values:
        t = type(v)
        if v is None:
            out.append("NULL")
        elif t is str:
            v = v.replace("'", "''")
            out.append("E'" + v.replace("\\", "\\\\") + "'" if "\\" in v else "'" + v + "'")
        elif t in _PLAIN_TEXT:
            out.append("'" + str(v) + "'")  # their text has no quote or backslash
        elif t is bytes:
            out.append("E'\\\\x" + v.hex() + "'")
        else:
            out.append(mogrify("%s", (v,)))
    return "(" + ", ".join(out) + ")"


_STR_TYPES = (int, Decimal, float, bool, dt.date, dt.time, UUID)  # sent as str(value), untyped
_PLAIN_TEXT = frozenset((*_STR_TYPES, dt.datetime))  # ... and datetimes (_CopyDatetimeDumper: str() too)


def _untyped(cur):
    """`cur`, sending values as untyped text (see _Untyped)."""
    for cls in _STR_TYPES:
        cur.adapters.register_dumper(cls, _Untyped)
    cur.adapters.register_dumper(dt.datetime, _CopyDatetimeDumper)
    cur.adapters.register_dumper(bytes, _UntypedBytes)
    return cur


class _Untyped(Dumper):
    """A parameter as untyped text (OID 0), which the column's type parses as it parses COPY text: a typed
    numeric parameter would be rounded into an integer column by an assignment cast, where COPY refuses it."""

    oid = 0

    def dump(self, obj: Any) -> bytes:
        return str(obj).encode()


class _UntypedBytes(Dumper):
    oid = 0

    def dump(self, obj: bytes) -> bytes:
        return b"\\x" + obj.hex().encode()


class _CopyDatetimeDumper(Dumper):
    """A datetime as COPY text (str(), as psycopg's own), remembering the last one: psycopg's dumper decides
    per value between timestamp and timestamptz, which costs more than the rest of the row, and a bulk
    change gives thousands of rows the same timestamp. (COPY text carries no types: the column's type
    parses the text, with or without an offset, as it would psycopg's; so does a staging INSERT's untyped
    parameter.)"""

    oid = 0

    def __init__(self, cls: type, context: Any = None):
        super().__init__(cls, context)
        self._last: dt.datetime | None = None
        self._text = b""

    def dump(self, obj: dt.datetime) -> bytes:
        last = self._last
        if obj is last or (last is not None and obj == last and obj.tzinfo is last.tzinfo):
            return self._text
        self._last, self._text = obj, str(obj).encode()
        return self._text


def _getter(cols: list[str]):
    """row -> tuple of the values of `cols` (None for a missing one), in one C call for the common case."""
    if len(cols) == 1:
        c = cols[0]
        return lambda row: (row.get(c),)
    pick = operator.itemgetter(*cols)

    def get(row: dict) -> tuple:
        try:
            return pick(row)
        except KeyError:
            return tuple([row.get(c) for c in cols])

    return get
