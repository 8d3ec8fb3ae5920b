"""Encryption in transit, for real on loopback: a PostgreSQL POS and storefront that accept only TLS
(`sslmode=verify-full` against a CA the test makes; the replication connection too), and a Kafka broker with
SSL and SASL_SSL/SCRAM-SHA-512 listeners. A wrong CA or a wrong password is refused with a clear error at once,
not retried."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cdc.localtls import make_tls
from tests.integration.helpers import wait_until
from tests.integration.support import ROOT, CdcProcess
from tests.integration.tls_support import ROLE, fresh_name, secure_cluster

CONFIG = """
name: {name}
source: {{type: postgres, dsn: "{dsn}", tables: [public.item_price]}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
sink: {{type: sql, url: "{url}", table: product_price, key: [sku]}}
"""


@pytest.fixture(scope="module")
def secure_pg(tmp_path_factory):
    with secure_cluster(tmp_path_factory.mktemp("secure-pg")) as cluster:
        yield cluster


def run_to_exit(config, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "cdc.cli", "run", str(config), "--retry-for", "120"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    return res, time.monotonic() - t0


def test_postgres_source_and_sink_over_verify_full_tls(secure_pg, tmp_path):
    name = fresh_name()
    pos, store = secure_pg.databases(name)
    secure_pg.run(pos, "INSERT INTO item_price VALUES ('A', 100), ('B', 250)")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(name=name, dsn=secure_pg.dsn(pos), url=secure_pg.url(store)))
    proc = CdcProcess(config, tmp_path / "run.log")
    try:
        prices = lambda: dict(secure_pg.run(store, "SELECT sku, price::text FROM product_price"))  # noqa: E731
        wait_until(lambda: prices() == {"A": "1.00", "B": "2.50"}, 60, "the snapshot over TLS")
        secure_pg.run(pos, "UPDATE item_price SET price_fen = 199 WHERE item_code = 'A'")
        secure_pg.run(pos, "INSERT INTO item_price VALUES ('C', 5)")
        wait_until(
            lambda: prices() == {"A": "1.99", "B": "2.50", "C": "0.05"}, 60, "streamed changes over TLS"
        )
        # every connection of the connector's role — the walsender streaming the slot included — is TLS
        conns = secure_pg.cluster.execute(
            "SELECT a.backend_type, a.datname, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            f"WHERE a.usename = '{ROLE}'"
        )
        assert {(kind, db) for kind, db, _ in conns} >= {("walsender", pos), ("client backend", store)}, conns
        assert all(ssl for _, _, ssl in conns), conns
        proc.assert_alive()
    finally:
        rc, _ = proc.terminate(30)
    assert rc == 0, proc.tail()


def test_a_wrong_ca_or_no_tls_is_refused_at_once_with_what_to_fix(secure_pg, tmp_path):
    name = fresh_name()
    pos, store = secure_pg.databases(name)
    other_ca = str(make_tls(tmp_path / "other-ca", "not the server's").ca_cert)
    cases = [
        (
            secure_pg.dsn(pos, ca=other_ca),
            secure_pg.url(store),
            "the POS database refused the connection",
            "certificate verify failed",
        ),
        (
            secure_pg.dsn(pos),
            secure_pg.url(store, ca=other_ca),
            "the storefront database refused the connection",
            "certificate verify failed",
        ),
        (
            secure_pg.dsn(pos, sslmode="disable"),
            secure_pg.url(store),
            "the POS database refused the connection",
            "no pg_hba.conf entry",
        ),
    ]
    for i, (dsn, url, who, why) in enumerate(cases):
        config = tmp_path / f"c{i}.yaml"
        config.write_text(CONFIG.format(name=f"{name}_{i}", dsn=dsn, url=url))
        res, took = run_to_exit(config)
        assert res.returncode == 1, res.stderr
        error = res.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: {who}: "), res.stderr
        assert why in error, error
        hint = "sslrootcert" if why.startswith("certificate") else "hostssl"
        assert hint in error, error
        assert took < 30, f"refused after {took:.0f} s: retried instead of stopping ({res.stderr[-2000:]})"
