"""The storefront table the SQL sink writes: found and checked at start (or made from the first row, for a
demo), and what follows from its columns — which columns a change writes, which must have a value, and the
stored rows for a set of keys. pos-cdc never alters this table.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cdc.config import SqlSink as SqlSinkConfig
from cdc.errors import TerminalError
from cdc.events import UNCHANGED_TOAST
from cdc.sinks.sql.bookkeeping import key_text
from cdc.sinks.sql.buffer import UPSERT

log = logging.getLogger("cdc.sink.sql")

LOOKUP_CHUNK = 500  # keys per statement when reading stored rows


class Target:
    """The storefront table (`table` is None until a `create_table` demo's first row makes it)."""

    def __init__(self, scfg: SqlSinkConfig, connector: str, dialect: str):
        self.scfg = scfg
        self.name = scfg.table
        self.connector = connector
        self.dialect = dialect
        self.key_cols = tuple(scfg.key)
        self.soft_delete_column = scfg.soft_delete_column if scfg.delete == "soft" else None
        self.table: sa.Table | None = None
        self._complete: set[tuple[str, ...]] = set()  # column sets found to satisfy the NOT NULLs
        self._warned: set[str] = set()

    @property
    def c(self):
        return self.table.c

    def reflect(self, engine: sa.Engine) -> None:
        schema, _, name = self.name.rpartition(".")
        insp = sa.inspect(engine)
        if not insp.has_table(name, schema=schema or None):
            if self.scfg.create_table:
                return  # created from the first batch
            raise TerminalError(
                f"sink.table: table {self.name} does not exist in the storefront database "
                "(create it, or set create_table: true for a demo)"
            )
        table = sa.Table(name, sa.MetaData(), autoload_with=engine, schema=schema or None)
        if engine.dialect.name == "sqlite":
            for col in table.columns:
                if isinstance(col.type, sa.Numeric) and not isinstance(col.type, sa.Float):
                    col.type = SqliteDecimal()
        self._check(table, insp)
        self.table = table

    def _check(self, table: sa.Table, insp) -> None:
        cols = set(table.c.keys())
        missing = [k for k in self.key_cols if k not in cols]
        if missing:
            raise TerminalError(f"sink.key: storefront table {self.name} has no column {', '.join(missing)}")
        if self.soft_delete_column and self.soft_delete_column not in cols:
            raise TerminalError(
                f"sink.soft_delete_column: {self.name} has no column {self.soft_delete_column} for soft deletes"
            )
        uniques = [tuple(table.primary_key.columns.keys())]
        uniques += [tuple(u["column_names"]) for u in insp.get_unique_constraints(table.name, table.schema)]
        uniques += [
            tuple(i["column_names"]) for i in insp.get_indexes(table.name, table.schema) if i["unique"]
        ]
        if not any(set(u) == set(self.key_cols) for u in uniques):
            raise TerminalError(
                f"sink.key: {self.name} has no primary key or unique index on "
                f"({', '.join(self.key_cols)}); upserts need one: "
                f"CREATE UNIQUE INDEX ON {self.name} ({', '.join(self.key_cols)})"
            )

    def create(self, engine: sa.Engine, row: dict[str, Any]) -> None:
        """Makes the missing table from a row's columns and value types (`create_table: true`)."""
        schema, _, name = self.name.rpartition(".")
        cols = [
            sa.Column(c, _sa_type(v, self.dialect), primary_key=c in self.key_cols) for c, v in row.items()
        ]
        if self.soft_delete_column and self.soft_delete_column not in row:
            cols.append(sa.Column(self.soft_delete_column, sa.DateTime(timezone=True)))
        table = sa.Table(name, sa.MetaData(), *cols, schema=schema or None)
        with engine.begin() as c:
            table.create(c, checkfirst=True)
        self.table = table
        log.info("%s: created target table %s", self.connector, self.name)

    # --- the columns a write carries ------------------------------------------------------------------

    def required(self) -> list[str]:
        """The storefront columns that must have a value: NOT NULL, no default, not generated."""
        return [
            c.name
            for c in self.table.c
            if not c.nullable
            and c.server_default is None
            and not (c.primary_key and c.autoincrement is True)
            and c.computed is None
            and c.identity is None
        ]

    def _check_complete(self, present: tuple[str, ...]) -> None:
        """A storefront column that must have a value (NOT NULL, no default) and that the changes do not carry
        makes every insert fail: a terminal error naming it, rather than a dead letter for every row."""
        missing = [c for c in self.required() if c not in present]
        if missing:
            raise TerminalError(
                f"sink.table: {self.name} requires {', '.join(missing)} (NOT NULL without a default), "
                f"which the changes do not carry (they have {', '.join(present)}): give the column(s) a default, "
                "or set them with a transform (rename or set)"
            )
        self._complete.add(present)

    def columns(self, present: tuple[str, ...]) -> list[str]:
        """The target's columns among those a change carries (schema drift: extra ones are ignored)."""
        target_cols = self.table.c.keys()
        extra = set(present) - set(target_cols)
        if extra - self._warned:
            self._warned |= extra
            log.warning(
                "%s: columns %s are not in %s and are ignored",
                self.connector,
                ", ".join(sorted(extra)),
                self.name,
            )
        return [c for c in target_cols if c in present or c in self.key_cols]

    def write_columns(self, present: tuple[str, ...]) -> list[str]:
        """The columns a row carrying `present` writes (as groups() gives them), checked like groups() checks
        them (the fast path's plans, cdc/fast/plan.py)."""
        if present not in self._complete:
            self._check_complete(present)
        return self.columns(present)

    def groups(self, items: list) -> list[tuple[list[str], list]]:
        """The changes that write the same columns, one statement each: [(the target's columns, changes)].
        An update's unchanged TOAST values are left out (the sink keeps its value); a set of columns that
        leaves a required storefront column empty stops the connector (_check_complete)."""
        groups: dict[tuple, list] = {}
        last_keys, last_group = None, None  # most rows have the columns of the row before
        for item in items:
            p = item[1]
            if p.op == UPSERT:
                row = p.row
                if p.ev.toast and UNCHANGED_TOAST in row.values():
                    cols = tuple(c for c in row if row[c] is not UNCHANGED_TOAST)
                elif row.keys() == last_keys:
                    last_group.append(item)
                    continue
                else:
                    cols = tuple(row)
                    if cols not in self._complete:
                        self._check_complete(cols)
                    last_keys, last_group = row.keys(), groups.setdefault(cols, [])
                    last_group.append(item)
                    continue
            else:
                cols = self.key_cols
            groups.setdefault(cols, []).append(item)
        return [(self.columns(cols), group) for cols, group in groups.items()]

    # --- stored rows ----------------------------------------------------------------------------------

    def stored_rows(self, conn: sa.Connection, keys: list[tuple], cols: list[str], visible: bool = False):
        """The storefront's rows for `keys` (key columns and `cols`, as mappings), a few hundred keys a
        statement; `visible`: not soft-deleted."""
        t, kc = self.table, self.key_cols
        columns = [t.c[c] for c in dict.fromkeys([*kc, *cols])]
        strs = [isinstance(t.c[k].type, sa.String) for k in kc]
        for i in range(0, len(keys), LOOKUP_CHUNK):
            chunk = [
                tuple(str(v) if s and not isinstance(v, str) else v for v, s in zip(k, strs, strict=True))
                for k in keys[i : i + LOOKUP_CHUNK]
            ]
            if len(kc) == 1:
                where = t.c[kc[0]].in_([k[0] for k in chunk])
            else:
                where = sa.tuple_(*(t.c[k] for k in kc)).in_(chunk)
            q = sa.select(*columns).where(where)
            if visible and self.soft_delete_column:
                q = q.where(t.c[self.soft_delete_column].is_(None))
            for r in conn.execute(q):
                yield r._mapping

    def fill_unsent(self, conn: sa.Connection, items: list) -> None:
        """Updates that did not resend a TOASTed value of a required column: PostgreSQL, MariaDB and SQLite
        check NOT NULL on the row an upsert proposes even when it ends in an update, so such a row takes the
        stored value (read in this transaction). A row the storefront does not have keeps the gap, and the
        database's refusal dead-letters it: it cannot be inserted without the value."""
        todo = [
            (k, p) for k, p in items if p.ev.toast and p.op == UPSERT and UNCHANGED_TOAST in p.row.values()
        ]
        required = self.required() if todo else ()
        cols = [c for c in required if any(p.row.get(c) is UNCHANGED_TOAST for _, p in todo)]
        if not cols:
            return
        todo = [(k, p) for k, p in todo if any(p.row.get(c) is UNCHANGED_TOAST for c in cols)]
        kc = self.key_cols
        stored = {
            key_text(tuple(r[k] for k in kc)): r for r in self.stored_rows(conn, [k for k, _ in todo], cols)
        }
        for key, p in todo:
            r = stored.get(key_text(key))
            if r is not None:
                p.row = {c: (r[c] if v is UNCHANGED_TOAST and c in cols else v) for c, v in p.row.items()}


def _sa_type(value: Any, dialect: str) -> sa.types.TypeEngine:
    import datetime as dt
    import decimal
    import uuid

    if isinstance(value, decimal.Decimal):
        return (
            sa.Text() if dialect == "sqlite" else sa.Numeric(38, 10) if dialect == "mysql" else sa.Numeric()
        )
    return {
        bool: sa.Boolean(),
        int: sa.BigInteger(),
        float: sa.Float(),
        dt.datetime: sa.DateTime(timezone=True),
        dt.date: sa.Date(),
        dt.time: sa.Time(),
        bytes: sa.LargeBinary(),
        uuid.UUID: sa.Uuid(),
    }.get(type(value), sa.String(255) if dialect == "mysql" else sa.Text())


class SqliteDecimal(sa.TypeDecorator):
    """A SQLite NUMERIC column (`decimal(10,2)`) read back as the decimal it was written as: SQLite hands a
    REAL back as a float, which SQLAlchemy's Numeric would widen to ten places of binary noise
    (123456789012.3450012207); the float's shortest repr is the decimal text SQLite kept (at most 15
    significant digits, see core_merge._numeric_text). Written values pass through as exact text."""

    impl = sa.Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(sa.Numeric(asdecimal=False))

    def process_result_value(self, value, dialect):
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return Decimal(value)
        return value
