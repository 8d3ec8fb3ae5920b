"""Encryption in transit, for real on loopback: a PostgreSQL POS and storefront that accept only TLS
(`sslmode=verify-full` against a CA the test makes; the replication connection too), and a Kafka broker with
SSL and SASL_SSL/SCRAM-SHA-512 listeners. A wrong CA or a wrong password is refused with a clear error at once,
not retried."""

from __future__ import annotations

import json
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


# --- Kafka: SSL and SASL_SSL/SCRAM-SHA-512 ---------------------------------------------------------------

SCRAM_USER, SCRAM_PASSWORD = "pos-cdc", "Hn4-scram-SECRET-2vd"

P2K = """
name: {name}-p2k
source: {{type: postgres, dsn: "{dsn}", tables: [public.item_price]}}
sink:
  type: kafka
  client: {p2k_client}
  bootstrap_servers: "{bootstrap}"
  topic_prefix: {prefix}
  partitions: 2
  security_protocol: SASL_SSL
  ssl_cafile: {ca}
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: {user}
  sasl_password: ${{file:kafka_password}}
"""

K2S = """
name: {name}-k2s
source:
  type: kafka
  client: {k2s_client}
  bootstrap_servers: "{bootstrap}"
  topics: [{prefix}.public.item_price]
  group: {name}-g
  security_protocol: SASL_SSL
  ssl_cafile: {ca}
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: {user}
  sasl_password: ${{file:kafka_password}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
sink: {{type: sql, url: "{url}", table: product_price, key: [sku]}}
"""


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory):
    """One broker for the Kafka TLS tests: PLAINTEXT (its own), SSL and SASL_SSL with one SCRAM user."""
    from cdc.localkafka import LocalKafka

    base = tmp_path_factory.mktemp("tls-kafka")
    tls = make_tls(base / "tls")
    with LocalKafka(tls=tls, scram_users={SCRAM_USER: SCRAM_PASSWORD}) as broker:
        broker.ca = str(tls.ca_cert)
        yield broker


def kafka_hop(env, broker, tmp_path, password: str, p2k_client: str, k2s_client: str, ca: str | None = None):
    (tmp_path / "kafka_password").write_text(password + "\n")
    fields = dict(
        name=env.name,
        dsn=env.pos_dsn,
        url=env.store_url,
        bootstrap=broker.sasl_bootstrap,
        prefix=f"tls{env.name}",
        ca=ca or broker.ca,
        user=SCRAM_USER,
        p2k_client=p2k_client,
        k2s_client=k2s_client,
    )
    p2k, k2s = tmp_path / "p2k.yaml", tmp_path / "k2s.yaml"
    p2k.write_text(P2K.format(**fields))
    k2s.write_text(K2S.format(**fields))
    return p2k, k2s


@pytest.mark.parametrize(
    "p2k_client, k2s_client", [("kafka-python", "confluent-kafka"), ("confluent-kafka", "kafka-python")]
)
def test_pos_to_kafka_to_storefront_over_sasl_ssl_scram(env, tls_kafka, tmp_path, p2k_client, k2s_client):
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint NOT NULL)")
    env.store("CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))")
    env.pos("INSERT INTO item_price SELECT 'K' || i, i * 10 FROM generate_series(1, 50) i")
    p2k, k2s = kafka_hop(env, tls_kafka, tmp_path, SCRAM_PASSWORD, p2k_client, k2s_client)
    procs = [CdcProcess(p2k, tmp_path / "p2k.log"), CdcProcess(k2s, tmp_path / "k2s.log")]
    try:
        expected = {f"K{i}": f"{i * 10 / 100:.2f}" for i in range(1, 51)}
        stored = lambda: {k: str(v) for k, v in env.store("SELECT sku, price FROM product_price")}  # noqa: E731
        wait_until(lambda: stored() == expected, 120, "the snapshot through Kafka over SASL_SSL")
        env.pos("UPDATE item_price SET price_fen = 999 WHERE item_code = 'K7'")
        env.pos("DELETE FROM item_price WHERE item_code = 'K8'")
        expected["K7"] = "9.99"
        del expected["K8"]
        wait_until(lambda: stored() == expected, 120, "streamed changes through Kafka over SASL_SSL")
        for p in procs:
            p.assert_alive()
        # the operator's view over SASL_SSL too: the sink connector's group and lag, the source's position
        for config in (k2s, p2k):
            res = subprocess.run(
                [sys.executable, "-m", "cdc.cli", "status", str(config), "--json"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
            assert res.returncode == 0, res.stderr
            info = json.loads(res.stdout)
            assert info["position"] and not info.get("sink_error"), info
            assert SCRAM_PASSWORD not in res.stdout + res.stderr
    finally:
        codes = [p.terminate(30)[0] for p in procs]
    assert codes == [0, 0], "\n".join(p.tail() for p in procs)
    for p in procs:
        assert SCRAM_PASSWORD not in p.log_path.read_text()


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_kafka_wrong_password_or_wrong_ca_is_refused_at_once(env, tls_kafka, tmp_path, client):
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint NOT NULL)")
    env.store("CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))")
    wrong_pw = "Wq1-not-the-SCRAM-pw"
    other_ca = str(make_tls(tmp_path / "other-ca", "not the broker's").ca_cert)
    cases = [
        (wrong_pw, None, "SASL SCRAM-SHA-512 authentication of user 'pos-cdc' failed", "sasl_password"),
        (SCRAM_PASSWORD, other_ca, "TLS certificate verify failed", "ssl_cafile"),
    ]
    for password, ca, why, hint in cases:
        p2k, k2s = kafka_hop(env, tls_kafka, tmp_path, password, client, client, ca=ca)
        for config in (p2k, k2s):
            res, took = run_to_exit(config)
            assert res.returncode == 1, res.stderr
            error = res.stderr.strip().splitlines()[-1]
            assert error.startswith(f"error: Kafka at {tls_kafka.sasl_bootstrap} refused pos-cdc: {why}"), (
                error
            )
            assert hint in error, error
            assert took < 30, f"refused after {took:.0f} s: retried instead of stopping"
            assert password not in res.stdout + res.stderr
