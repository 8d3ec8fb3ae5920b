"""How one group of buffered changes is merged into a SQLite storefront table (and the base of the
MariaDB/MySQL strategy), through SQLAlchemy Core: read the recorded positions of the group's keys, drop stale
changes in Python, then executemany the dialect's upsert, the deletes and the cdc_applied insert (pg_merge.py
says what every strategy does).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cdc.errors import HoldError, TerminalError
from cdc.sinks.sql.bookkeeping import (
    applied_table,
    claim,
    key_text,
    pack_entries,
    row_state_table,
    upsert,
    via_of,
)
from cdc.sinks.sql.buffer import UPSERT
from cdc.sinks.sql.target import Target


class CoreMerge:
    """MariaDB/MySQL and SQLite through SQLAlchemy Core."""

    LOOKUP_CHUNK = 500

    def __init__(self, target: Target, connector: str, positions: str | None = None, shared: bool = False):
        self.target = target
        self.connector = connector
        self.positions = positions or connector  # whose recorded key positions it checks and records
        self.shared = shared  # other connectors (lanes) write the same keys: claim each key's position
        self.dialect = target.dialect
        self._adapters = self._column_adapters()
        self._cache: dict[tuple, tuple] = {}

    def prepare(self, conn: sa.Connection) -> None:
        pass

    def forget_stage(self) -> None:
        pass

    def _column_adapters(self) -> dict[str, Any]:
        """SQLite has no exact decimal type: Decimals go to TEXT columns as exact strings, to INTEGER columns
        only when whole, to NUMERIC ones (`decimal(10,2)`, `numeric`: what Django and Rails declare) as exact
        text that SQLite keeps exactly up to 15 significant digits (`_numeric_text`); a REAL column would round
        every one through a float, so it is refused."""
        if self.dialect != "sqlite" or self.target.table is None:
            return {}
        adapters = {}
        for col in self.target.table.columns:
            affinity = _sqlite_affinity(str(col.type))
            adapters[col.name] = affinity
        return adapters

    def _adapt(self, col: str, value: Any) -> Any:
        if type(value) is not Decimal:
            return value
        affinity = self._adapters.get(col)
        if affinity == "INTEGER":
            if value != value.to_integral_value():
                raise HoldError(
                    f"{col} = {value} is not a whole number and {col} is an INTEGER column", rule="sink.type"
                )
            return int(value)
        if affinity == "NUMERIC":
            return _numeric_text(col, value)
        if affinity == "REAL":
            raise TerminalError(
                f"sink.table: column {col} of {self.target.name} has {affinity} affinity in SQLite, which "
                f"stores decimals as floating point; declare it TEXT (exact decimal strings) or INTEGER (minor units)"
            )
        return str(value)

    def _statements(self, cols: tuple[str, ...]) -> tuple:
        if cols in self._cache:
            return self._cache[cols]
        target = self.target.table
        keys = self.target.key_cols
        update = [c for c in cols if c not in keys]
        soft = self.target.soft_delete_column
        constants = {soft: None} if soft and soft not in cols else {}  # a re-inserted row is visible again
        ups = upsert(self.dialect, target, keys, update, constants)
        where = sa.and_(*(target.c[k] == sa.bindparam(f"k_{k}") for k in keys))
        if soft:
            remove = target.update().where(where).values({soft: sa.bindparam("k__deleted_at")})
        else:
            remove = target.delete().where(where)
        self._cache[cols] = (ups, remove)
        return self._cache[cols]

    def merge(self, conn: sa.Connection, items: list, cols: list[str], check_stale: bool = True) -> None:
        rs = row_state_table
        texts = [key_text(k) for k, _ in items]
        if self.shared:
            won = claim(
                conn, self.positions, [_entry(kt, p) for (_, p), kt in zip(items, texts, strict=True)]
            )
            self._execute(
                conn, cols, [(k, p, kt) for (k, p), kt in zip(items, texts, strict=True) if kt in won]
            )
            return
        seen: dict[str, tuple[int, int]] = {}
        for i in range(0, len(texts) if check_stale else 0, self.LOOKUP_CHUNK):
            chunk = texts[i : i + self.LOOKUP_CHUNK]
            for k, lsn, seq in conn.execute(
                sa.select(rs.c.row_key, rs.c.commit_lsn, rs.c.seq).where(
                    rs.c.connector == self.positions, rs.c.row_key.in_(chunk)
                )
            ):
                seen[k] = (lsn, seq)
        fresh = [
            (key, p, kt)
            for (key, p), kt in zip(items, texts, strict=True)
            if not seen or seen.get(kt, (-1, -1)) <= (p.ev.commit_lsn, p.ev.seq)  # else older than the row
        ]
        self._execute(conn, cols, fresh)

    def _execute(self, conn: sa.Connection, cols: list[str], fresh: list) -> None:
        adapt = self._adapt
        ups, dels, states = [], [], []
        for key, p, kt in fresh:
            ev = p.ev
            if p.op == UPSERT:
                ups.append({c: adapt(c, p.row.get(c)) for c in cols})
            else:
                d = {f"k_{k}": adapt(k, v) for k, v in zip(self.target.key_cols, key, strict=True)}
                d["k__deleted_at"] = ms_to_dt(ev.ts_ms)
                dels.append(d)
            states.append(_entry(kt, p))
        ups_stmt, remove_stmt = self._statements(tuple(cols))
        if ups:
            conn.execute(ups_stmt, ups)
        if dels:
            conn.execute(remove_stmt, dels)
        if states and not self.shared:  # shared: claim() recorded them
            conn.execute(
                applied_table.insert(),
                {"connector": self.positions, "size": len(states), "entries": pack_entries(states)},
            )


def _entry(kt: str, p) -> tuple:
    """A change's recorded position entry (bookkeeping.APPLIED_COLUMNS)."""
    ev = p.ev
    return (kt, ev.commit_lsn, ev.seq, ev.ts_ms, ev.txid, p.op, via_of(ev))


def ms_to_dt(ms: int):
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


SQLITE_EXACT_DIGITS = 15  # a NUMERIC column turns decimal text into a float that keeps 15 significant digits


def _numeric_text(col: str, value: Decimal) -> str:
    """A Decimal for a SQLite NUMERIC column, written as its exact text. SQLite stores a whole number as an
    INTEGER (exact within 64 bits) and other decimal text as a REAL, which gives back the same decimal when it
    has at most 15 significant digits; a value it would round is held with the reason, never rounded."""
    if not value.is_finite():
        raise HoldError(f"{col} = {value} is not a number SQLite can store", rule="sink.type")
    if value == value.to_integral_value() and abs(value) < 2**63:
        return str(value)
    digits = len(value.normalize().as_tuple().digits)
    if digits > SQLITE_EXACT_DIGITS:
        raise HoldError(
            f"{col} = {value} has {digits} significant digits; SQLite's NUMERIC column {col} keeps "
            f"{SQLITE_EXACT_DIGITS} exactly and would round it (declare {col} TEXT to keep every digit)",
            rule="sink.type",
        )
    return str(value)


def _sqlite_affinity(declared: str) -> str:
    """SQLite's column affinity rules (https://sqlite.org/datatype3.html, 3.1)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"
