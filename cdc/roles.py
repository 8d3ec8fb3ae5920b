"""A guard's `who.lookup`, wired to the POS database: the roles of a POS user, read from the POS's own user
table (cdc/stages/permissions.py explains the rules that use them).

`PosRoles` reads on a connection of its own (autocommit, so a role granted in the POS is seen at the next
read), `SELECT value::text FROM table WHERE key::text = %s`: one row per role; no row (or only null roles)
means an unknown user. What it read is kept `cache_s` seconds per user, so a burst of one cashier's changes
costs one read. `check()` (at start) reads nothing but makes sure the table and columns are there and
readable, so a typo stops the connector with what to fix rather than holding every change. A failed read
raises TransientError when the POS is away (the pipeline retries) and TerminalError otherwise.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from cdc.config import ConnectorConfig
from cdc.errors import TerminalError
from cdc.sources.pg_conn import classify
from cdc.sources.postgres import PostgresSource
from cdc.stages import GuardStage, Stage
from cdc.stages.permissions import RoleLookupConfig

STATEMENT_TIMEOUT_MS = 30_000  # a lookup that hangs must not hang the connector


def wire_roles(stages: list[Stage], cfg: ConnectorConfig) -> PosRoles | None:
    """Gives every guard with `who.lookup` its roles reader (one POS connection for all); None when no guard
    needs one."""
    guards = [
        s
        for s in stages
        if isinstance(s, GuardStage) and s.permissions is not None and s.config.who.lookup is not None  # type: ignore[union-attr]
    ]
    if not guards:
        return None
    if cfg.source.type != "postgres":
        raise TerminalError(
            f"transforms: {guards[0].name}: who.lookup reads the POS, which {cfg.name} does not read: give "
            "the roles in who.roles, or put the guard in the connector that reads the POS"
        )
    reader = PosRoles(cfg)
    for g in guards:
        g.permissions.roles_of = reader.for_lookup(g.config.who.lookup)  # type: ignore[union-attr]
    return reader


class PosRoles:
    def __init__(self, cfg: ConnectorConfig):
        self.cfg = cfg
        self._source = PostgresSource(cfg)
        self._conn: psycopg.Connection | None = None
        self._lookups: list[RoleLookupConfig] = []
        self._cache: dict[tuple[str, str, str, str], tuple[float, list[str] | None]] = {}

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._source.connect(autocommit=True, application_name=f"pos-cdc:{self.cfg.name}:roles")
            try:
                conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            except psycopg.Error as e:
                conn.close()
                raise classify(e) from e
            self._conn = conn
        return conn

    @staticmethod
    def _query(lk: RoleLookupConfig, where: str) -> sql.Composed:
        schema, name = lk.table.split(".", 1)
        return sql.SQL("SELECT {value}::text FROM {table} WHERE {cond}").format(
            value=sql.Identifier(lk.value),
            table=sql.Identifier(schema, name),
            cond=sql.SQL(where).format(sql.Identifier(lk.key)),
        )

    def _fetch(self, query: sql.Composed, params: tuple, lk: RoleLookupConfig) -> list[tuple]:
        try:
            return self._connection().execute(query, params).fetchall()
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as e:
            self.close()
            raise TerminalError(
                f"who.lookup: {e.diag.message_primary} (the roles are read as SELECT {lk.value} FROM {lk.table} "
                f"WHERE {lk.key} = <user>: name the POS's user table and its columns)"
            ) from e
        except psycopg.errors.InsufficientPrivilege as e:
            self.close()
            raise TerminalError(
                f"who.lookup: {e.diag.message_primary}: the connector's POS role needs SELECT on {lk.table}"
            ) from e
        except psycopg.Error as e:
            self.close()
            raise classify(e) from e

    def check(self) -> None:
        """Every lookup's table and columns are there and readable (TerminalError saying what to fix)."""
        for lk in self._lookups:
            self._fetch(self._query(lk, "false AND {} IS NULL"), (), lk)

    def for_lookup(self, lk: RoleLookupConfig):
        self._lookups.append(lk)
        query = self._query(lk, "{}::text = %s")
        ident = (lk.table, lk.key, lk.value)

        def roles_of(user: str) -> list[str] | None:
            now = time.monotonic()
            hit = self._cache.get((*ident, user))
            if hit is not None and now - hit[0] < lk.cache_s:
                return hit[1]
            roles = sorted({r for (r,) in self._fetch(query, (user,), lk) if r}) or None
            self._cache[(*ident, user)] = (now, roles)
            return roles

        return roles_of

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
