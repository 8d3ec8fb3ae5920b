"""The storefront database as the SQL sink sees it: one engine, the writing connection and its transaction,
and what a database error means (a row the table refuses, a server that is away, or a problem to fix).

Every sink transaction starts by taking the connector's lock (bookkeeping.lock_connector), so `cdc quarantine
approve`, `cdc deadletter retry` and a second process of the same connector wait for it rather than interleave.
"""

from __future__ import annotations

import sqlalchemy as sa

from cdc.errors import HoldError, TerminalError, TransientError
from cdc.refusals import refusal_hint
from cdc.sinks.sql.bookkeeping import lock_connector

DIALECTS = ("postgresql", "mysql", "sqlite")


class Storefront:
    """The engine and the writing connection of one sink. `untouched`: the open transaction has written
    nothing yet (a lone merge may then go without a savepoint)."""

    def __init__(self, url: str, connector: str, bookkeeping_schema: str | None = None):
        self.connector = connector
        self.bookkeeping_schema = bookkeeping_schema
        self.url = _url(url)
        self.dialect = self.url.get_backend_name()
        self.engine: sa.Engine | None = None
        self.conn: sa.Connection | None = None
        self.untouched = False

    def open(self) -> None:
        self.engine = engine(self.url, self.bookkeeping_schema)

    def connect(self) -> sa.Connection:
        self.conn = self.engine.connect()
        return self.conn

    def tx(self) -> sa.Connection:
        """The writing connection inside a transaction that holds the connector's lock (begun when none is
        open)."""
        if not self.conn.in_transaction():
            self.conn.begin()
            lock_connector(self.conn, self.connector)
            self.untouched = True
        return self.conn

    def in_transaction(self) -> bool:
        return self.conn is not None and self.conn.in_transaction()

    def rollback(self) -> None:
        if self.conn is not None:
            try:
                self.conn.rollback()
            except Exception:  # noqa: BLE001 - the connection may be gone; reopening will tell
                pass

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                pass
            self.conn = None
        if self.engine is not None:
            self.engine.dispose()


def _url(text: str) -> sa.URL:
    url = sa.engine.make_url(text)
    dialect = url.get_backend_name()
    if dialect not in DIALECTS:
        raise TerminalError(
            f"sink.url: {dialect} is not supported; use postgresql+psycopg://, "
            "mysql+pymysql:// (MariaDB/MySQL) or sqlite:///"
        )
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername in ("mysql", "mariadb"):
        url = url.set(drivername=f"{url.drivername}+pymysql")
    return url


def engine(url: sa.URL | str, bookkeeping_schema: str | None = None) -> sa.Engine:
    """The storefront's engine. `bookkeeping_schema` (PostgreSQL, sink.bookkeeping_schema): put first on every
    connection's search path, so the bookkeeping tables are found (and made) there and the target table where
    it was."""
    url = _url(url) if isinstance(url, str) else url
    if url.get_backend_name() != "sqlite":
        # an unreachable storefront fails a connect in seconds (then retried), never hangs it. NullPool closes a
        # connection when it is given back, which ends its transaction: no rollback first (on a connection the
        # server dropped, that rollback failed and SQLAlchemy logged its traceback in the middle of an outage
        # the connector handles with one line per retry)
        eng = sa.create_engine(
            url, poolclass=sa.pool.NullPool, pool_reset_on_return=None, connect_args={"connect_timeout": 10}
        )
        if bookkeeping_schema and url.get_backend_name() == "postgresql":
            _search_path_first(eng, bookkeeping_schema)
        return eng
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 30})

    # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy emit BEGIN itself
    @sa.event.listens_for(eng, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")

    @sa.event.listens_for(eng, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return eng


def _search_path_first(eng: sa.Engine, schema: str) -> None:
    from psycopg import sql

    @sa.event.listens_for(eng, "connect")
    def _connect(dbapi_conn, _record) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(
                "SELECT set_config('search_path', %s || ', ' || current_setting('search_path'), false)",
                (sql.Identifier(schema).as_string(dbapi_conn),),
            )
        dbapi_conn.commit()


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# MySQL/MariaDB error codes: a row the table refuses (the rest of the batch can go on) ...
MYSQL_ROW_ERRORS = {1048, 1062, 1264, 1292, 1364, 1366, 1406, 1451, 1452, 1690, 3819, 4025}
# ... and a server that is away or busy (retry)
MYSQL_TRANSIENT = {1040, 1053, 1205, 1213, 2002, 2003, 2006, 2013, 2055}


def _code(err: BaseException) -> tuple[str, int | None]:
    orig = getattr(err, "orig", None) or err
    state = getattr(orig, "sqlstate", None) or ""
    args = getattr(orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    return state, code


def is_row_error(err: BaseException) -> bool:
    """Data exception or constraint violation caused by a row's values (SQLSTATE class 22/23, or MySQL codes)."""
    if isinstance(err, HoldError):
        return True
    state, code = _code(err)
    if state[:2] in ("22", "23"):
        return True
    if code in MYSQL_ROW_ERRORS:
        return True
    return isinstance(err, sa.exc.IntegrityError) and "sqlite" in type(getattr(err, "orig", err)).__module__


def classify(err: Exception) -> Exception:
    """A storefront error -> TransientError (retry: the server is away or busy) or TerminalError (stop and
    say what the database said)."""
    if isinstance(err, TerminalError | TransientError | HoldError):
        return err
    state, code = _code(err)
    first = first_line(getattr(err, "orig", None) or err)
    import psycopg

    orig = getattr(err, "orig", None) or err
    hint = (
        refusal_hint(str(orig)) if isinstance(err, sa.exc.OperationalError | sa.exc.InterfaceError) else None
    )
    if hint:
        text = " ".join(line.strip() for line in str(orig).strip().splitlines() if line.strip())
        return TerminalError(f"the storefront database refused the connection: {text} ({hint})")
    if (
        isinstance(err, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.DisconnectionError)
        and (state[:2] in ("", "08", "57", "53", "40") or code in MYSQL_TRANSIENT or "locked" in first)
        or isinstance(orig, psycopg.OperationalError)
        and state[:2] in ("", "08", "57", "53")
        or state[:2] in ("08", "40", "53")
        or state.startswith("57P")
        or code in MYSQL_TRANSIENT
    ):
        return TransientError(f"storefront database unavailable: {first}")
    label = state or (str(code) if code is not None else "?")
    return TerminalError(f"storefront database error [{label}]: {first}")
