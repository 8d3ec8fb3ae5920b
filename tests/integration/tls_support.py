"""A PostgreSQL cluster that takes TCP connections only over TLS and only with a password (cdc/localpg.py's
`tls`), its CA, and a connector role with a password: for the TLS and secret-leak tests."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import psycopg

from cdc.localpg import LocalPostgres
from cdc.localtls import make_tls

ROLE = "cdc_app"
# the password every test looks for in every output: it must never appear
PASSWORD = "Vq7-never-SHOWN-4kz"
_ids = itertools.count()


class SecurePg:
    def __init__(self, cluster: LocalPostgres, ca: str):
        self.cluster, self.ca = cluster, ca
        self.port = cluster.port

    def databases(self, name: str) -> tuple[str, str]:
        """A POS and a storefront database owned by ROLE, with item_price and product_price -> their names."""
        pos, store = f"pos_{name}", f"store_{name}"
        for db in (pos, store):
            self.cluster.execute(f'CREATE DATABASE "{db}" OWNER {ROLE}')
        self.run(pos, "CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint NOT NULL)")
        self.run(store, "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))")
        return pos, store

    def run(self, db: str, sql: str, *params):
        """SQL as ROLE, over the Unix socket (trusted): the tests' own set-up and checks."""
        with psycopg.connect(self.cluster.admin_dsn(db).replace("user=postgres", f"user={ROLE}")) as c:
            c.autocommit = True
            cur = c.execute(sql, params or None)
            return cur.fetchall() if cur.description else None

    def dsn(self, db: str, password: str = PASSWORD, ca: str | None = None, **extra) -> str:
        opts = {"sslmode": "verify-full", "sslrootcert": ca or self.ca, **extra}
        tail = " ".join(f"{k}={v}" for k, v in opts.items())
        return f"host=127.0.0.1 port={self.port} user={ROLE} password={password} dbname={db} {tail}"

    def url(self, db: str, password: str = PASSWORD, ca: str | None = None) -> str:
        return (
            f"postgresql+psycopg://{ROLE}:{password}@127.0.0.1:{self.port}/{db}"
            f"?sslmode=verify-full&sslrootcert={ca or self.ca}"
        )


@contextlib.contextmanager
def secure_cluster(base: Path):
    """The cluster (a SecurePg), with ROLE made; a test module's fixture wraps it."""
    tls = make_tls(base / "tls")
    (base / "tls").chmod(0o755)
    with LocalPostgres(tls=tls) as cluster:
        cluster.execute(f"CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{PASSWORD}'")
        yield SecurePg(cluster, str(tls.ca_cert))


def fresh_name() -> str:
    return f"s{next(_ids)}"
