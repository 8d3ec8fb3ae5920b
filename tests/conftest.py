"""Real parts for the tests: a throwaway PostgreSQL cluster (Debian's binaries) for the whole session, and a
fresh POS database and storefront database per test; a MariaDB server and an Apache Kafka broker for the
session, started when a test first asks for them."""

from __future__ import annotations

import itertools
import os

import pytest

from cdc.localpg import LocalPostgres

_ids = itertools.count()


@pytest.fixture(scope="session")
def pg():
    with LocalPostgres() as cluster:
        yield cluster


class Env:
    """One test's POS and storefront databases, and a connector config file for them."""

    def __init__(self, pg: LocalPostgres, tmp_path, name: str):
        self.pg = pg
        self.name = name
        self.pos_db = f"pos_{name}"
        self.store_db = f"store_{name}"
        self.pos_dsn = pg.create_database(self.pos_db)
        self.store_dsn = pg.create_database(self.store_db)
        self.store_url = pg.url(self.store_db)
        self.tmp = tmp_path

    def pos(self, sql: str, *params):
        return _exec(self.pos_dsn, sql, params)

    def store(self, sql: str, *params):
        return _exec(self.store_dsn, sql, params)

    def write_config(self, body: str, fname: str = "connector.yaml"):
        path = self.tmp / fname
        path.write_text(
            body.replace("@POS@", self.pos_dsn)
            .replace("@STORE@", self.store_url)
            .replace("@NAME@", self.name)
        )
        return path


def _exec(dsn: str, sql: str, params):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(sql, params or None)
        return cur.fetchall() if cur.description else cur.rowcount


@pytest.fixture
def env(pg, tmp_path):
    e = Env(pg, tmp_path, f"t{os.getpid()}_{next(_ids)}")
    yield e
    # drop the test's slots so WAL is not retained for the rest of the session
    pg.execute(
        f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        f"WHERE database = '{e.pos_db}' AND NOT active"
    )


@pytest.fixture(scope="session")
def mariadb():
    from cdc.localmariadb import LocalMariaDB

    with LocalMariaDB() as server:
        yield server


@pytest.fixture(scope="session")
def kafka():
    """One Apache Kafka broker (KRaft, single node) for the session; tests use topics and group ids of their
    own. Never skipped: without the jars it fails with the TerminalError that says to run scripts/setup.sh."""
    from cdc.localkafka import LocalKafka

    with LocalKafka() as broker:
        yield broker


class Store:
    """A storefront database of one dialect: its SQLAlchemy URL, and plain SQL against it."""

    def __init__(self, kind: str, url: str, run):
        self.kind, self.url, self._run = kind, url, run

    def __call__(self, sql: str, *params):
        return self._run(sql, params)


def _sqlalchemy_runner(url: str):
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def run(sql: str, params):
        with engine.begin() as c:
            res = c.exec_driver_sql(sql, tuple(params) if params else ())
            return [tuple(r) for r in res] if res.returns_rows else res.rowcount

    return run


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def store(request, env, tmp_path):
    kind = request.param
    if kind == "postgresql":
        yield Store(kind, env.store_url, lambda sql, params: env.store(sql.replace("?", "%s"), *params))
        return
    if kind == "mariadb":
        server = request.getfixturevalue("mariadb")
        url = server.create_database(f"store_{env.name}")
    else:
        url = f"sqlite:///{tmp_path / 'store.db'}"
    run = _sqlalchemy_runner(url)
    yield Store(
        kind, url, lambda sql, params: run(sql.replace("%s", "?") if kind == "sqlite" else sql, params)
    )
