"""`cdc reconcile CONFIG [--repair] [--json]` and the daily full comparison, on real databases: drift found
key by key on each storefront (held and filtered keys apart), repaired through the sink while the connector
runs without a row ever going back, the cases it cannot compare, and the run `cdc run` starts at a time of
day."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.request
from decimal import Decimal as D

import psycopg

from cdc.config import load_config
from cdc.localpg import free_port
from cdc.ops.reconcile import reconcile
from tests.integration.helpers import Running, wait_until
from tests.integration.pricing import cdc, held, prices, put, setup
from tests.integration.support import (
    POS_TABLE,
    STORE_TABLE,
    CdcProcess,
    Monitor,
    Writer,
    diff,
    in_sync,
    pos_prices,
    price_config,
    store_prices,
)


def run_reconcile(path, *args) -> tuple[int, dict]:
    out = cdc("reconcile", path, "--json", *args)
    assert out.returncode in (0, 1, 2), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_drift_on_each_storefront_is_found_and_repaired_through_the_sink(env, store):
    path = setup(env, store)
    put(env, "A", 1000, cost=500)
    put(env, "B", 500, cost=100)
    put(env, "C", 700, cost=100)
    put(env, "S", 900, channel="STORE")  # a shop's row: the pick filters it out
    with Running(path) as r:
        wait_until(lambda: len(prices(store)) == 3, running=r, what="snapshot")
        put(env, "C", 50, cost=100, by="bob")  # below cost: held, the storefront keeps 7.00
        wait_until(lambda: len(held(store)) == 1, running=r, what="C quarantined")
        code, found = run_reconcile(path)
        assert code == 0 and found["in_sync"], found
        assert found["counts"]["filtered"] == 1 and found["filtered"]["examples"] == ["S"]
        assert [h["key"] for h in found["held"]] == ["C"] and "below cost" in found["held"][0]["why"]

        store("UPDATE product_price SET price = 27 WHERE sku = 'A'")  # behind pos-cdc's back
        store("DELETE FROM product_price WHERE sku = 'B'")
        store("INSERT INTO product_price VALUES ('Z', 3)")
        code, found = run_reconcile(path)
        assert code == 1, found
        assert (found["missing"], found["extra"], found["different"]) == (["B"], ["Z"], ["A"])
        assert found["left"] == {"missing": 1, "extra": 1, "different": 1}
        example = next(e for e in found["examples"] if e["kind"] == "different")
        assert example["columns"] == ["price"] and D(example["pos"]["price"]) == D("10.00")
        assert D(str(example["storefront"]["price"])) == D("27")

        text = cdc("reconcile", path)
        assert text.returncode == 1 and "different: 1  A" in text.stdout and "drift left" in text.stdout

        code, fixed = run_reconcile(path, "--repair")
        assert code == 0, fixed
        assert fixed["repaired"] == {"upserted": 2, "deleted": 1, "refused": 0}
        assert prices(store) == {"A": D("10.00"), "B": D("5.00"), "C": D("7.00")}  # C stays held
        assert [h[1] for h in held(store)] == ["held"]
        code, again = run_reconcile(path)
        assert code == 0 and again["in_sync"], again

        history = store(
            "SELECT row_key, op, via FROM cdc_price_history WHERE via = 'repair' ORDER BY row_key, id"
        )
        assert history == [("A", "u", "repair"), ("B", "c", "repair"), ("Z", "d", "repair")]
        explained = json.loads(cdc("explain", path, "A", "--json").stdout)
        assert (
            explained["verdict"] == "in sync" and explained["storefront"]["last_applied"]["via"] == "repair"
        )

        put(env, "A", 1200, cost=500)  # the stream goes on after a repair
        wait_until(lambda: prices(store)["A"] == D("12.00"), running=r, what="A after the repair")


def test_a_repair_during_a_busy_stream_never_moves_a_row_back(env):
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    env.pos(
        "INSERT INTO item_price SELECT 'K' || lpad(i::text, 4, '0'), i * 10 FROM generate_series(0, 1999) i"
    )
    path = env.write_config(price_config())
    writer = Writer(env.pos_dsn, total_changes=6000, nkeys=2000, rate=1500, seed=7, watched_ratio=0.5)
    monitor = Monitor(env.store_dsn, "WATCHED", interval=0.005)
    with Running(path) as r:
        wait_until(lambda: in_sync(env), running=r, what="snapshot")
        monitor.start()
        writer.start()
        rounds = []
        while writer.is_alive():
            try:  # damage, including the watched key, which the stream keeps moving
                env.store(
                    "UPDATE product_price SET price = 0 WHERE sku = 'WATCHED' OR sku IN "
                    "(SELECT sku FROM product_price ORDER BY random() LIMIT 20)"
                )
            except psycopg.errors.DeadlockDetected:
                pass  # its random row order crossed the sink's key order: PostgreSQL chose the damage to abort
            report = reconcile(load_config(path), repair=True)
            assert report.exit_code in (0, 1), report.reason
            rounds.append(report)
        writer.finish()
        wait_until(lambda: in_sync(env), running=r, timeout=60, what="caught up")
    monitor.stop()
    assert len(rounds) >= 2
    assert sum(x.repaired["upserted"] for x in rounds) > 0
    # the damage itself (price 0) is a decrease made behind pos-cdc's back; nothing else may go down
    decreases = [(a, b) for a, b in monitor.decreases if b != 0]
    assert decreases == [], decreases
    assert monitor.values[-1] == D(writer.watched_value).scaleb(-2)
    assert pos_prices(env) == store_prices(env), diff(pos_prices(env), store_prices(env))


def test_the_cases_it_cannot_compare_say_why(env, tmp_path):
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    path = env.write_config(price_config())
    code, found = run_reconcile(path)
    assert code == 2 and "has not run yet" in found["reason"], found

    kafka_sourced = tmp_path / "from-kafka.yaml"
    kafka_sourced.write_text(
        "name: from_kafka\n"
        "source: {type: kafka, bootstrap_servers: '127.0.0.1:1', topics: [pos.public.item_price], group: g}\n"
        f"sink: {{type: sql, url: '{env.store_url}', table: product_price, key: [sku]}}\n"
    )
    out = cdc("reconcile", kafka_sourced)
    assert out.returncode == 2 and "reads Kafka topics, not the POS" in out.stderr, out.stderr

    env.pos("INSERT INTO item_price VALUES ('A', 100)")
    with Running(path) as r:
        wait_until(lambda: in_sync(env), running=r)
    env.pos("INSERT INTO item_price VALUES ('B', 200)")  # committed while the connector is stopped
    code, found = run_reconcile(path)
    assert code == 2 and "stopped with 1 POS change(s)" in found["reason"], found
    with Running(path) as r:
        wait_until(lambda: in_sync(env), running=r)
    code, found = run_reconcile(path)  # stopped, nothing pending: it compares
    assert code == 0 and "stopped at" in found["settled"], found

    env.store("DROP TABLE product_price")
    code, found = run_reconcile(path)
    assert code == 2 and "does not exist" in found["reason"], found


def test_the_daily_comparison_runs_inside_cdc_run_at_its_time_and_repairs(env, tmp_path):
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    env.pos("INSERT INTO item_price SELECT 'K' || i, i * 10 FROM generate_series(1, 500) i")
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=12)
    at = when.strftime("%H:%M:%S")
    port = free_port()
    path = env.write_config(
        price_config(sink_extra=", history: true")
        + f'reconcile: {{at: "{at}", timezone: UTC, repair: true}}\nmetrics: {{port: {port}}}\n'
    )
    proc = CdcProcess(path, tmp_path / "run.log")
    try:
        wait_until(lambda: in_sync(env), timeout=30, what="snapshot")
        env.store("UPDATE product_price SET price = 1 WHERE sku IN ('K1', 'K2')")
        env.store("DELETE FROM product_price WHERE sku = 'K3'")

        def metric(name: str) -> dict[str, float]:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return {
                m.group(1): float(m.group(2))
                for m in re.finditer(rf"^{name}(\{{[^}}]*\}}) (\S+)$", body, re.M)
            }

        assert all(v == 0 for v in metric("cdc_reconcile_last_run_timestamp_seconds").values())
        wait_until(
            lambda: any(v > 0 for v in metric("cdc_reconcile_last_run_timestamp_seconds").values()),
            timeout=60,
            what="the daily run",
        )
        proc.assert_alive()
        assert in_sync(env), diff(pos_prices(env), store_prices(env))
        drift = metric("cdc_reconcile_drift_rows")
        assert len(drift) == 3 and all(v == 0 for v in drift.values()), drift
        assert metric("cdc_reconcile_duration_seconds")
        log = proc.tail(200)
        assert f"next full comparison at {when.date().isoformat()}T{at}+00:00" in log, log
        assert "daily full comparison in" in log, log
    finally:
        proc.terminate()
    with psycopg.connect(env.store_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM cdc_price_history WHERE via = 'repair'").fetchone()[0] == 3


CHECKSUM_POS = """CREATE TABLE item_price (
  item_code text PRIMARY KEY, store_id int NOT NULL, price numeric(12,2) NOT NULL, updated_at timestamptz,
  note text)"""
CHECKSUM_STORE = """CREATE TABLE product_price (
  sku text PRIMARY KEY, store_id int, price numeric(12,2), updated_at timestamptz)"""
CHECKSUM_CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku}}
  - {type: drop, fields: [note]}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku]}
"""


def test_bucket_checksums_in_sql_find_exactly_the_drift_of_a_large_table(env):
    """Both ends PostgreSQL and the stages only project: the comparison runs as bucket checksums in SQL on
    both sides, and drills into the buckets that differ, with keys beyond ASCII."""
    from cdc.ops.chunks import bucket_of

    env.pos(CHECKSUM_POS)
    env.store(CHECKSUM_STORE)
    env.pos(
        "INSERT INTO item_price SELECT 'SKU' || lpad(i::text, 6, '0'), i % 50, (i % 9000) / 100.0 + 1,"
        " timestamptz '2026-11-01 08:00+08' + i * interval '1 second', 'n' FROM generate_series(1, 32000) i"
    )
    odd = ["价格-7", "Größe-ß", "café", "z\u00a0space", "emoji-🛒"]
    for i, k in enumerate(odd):
        env.pos("INSERT INTO item_price VALUES (%s, 1, %s, now(), 'x')", k, D("9.99") + i)
    for k in [*odd, "SKU000001", "SKU031999"]:
        for n in (7, 2000, 200_000):
            (b,) = env.pos("SELECT mod(('x' || substr(md5(%s), 1, 8))::bit(32)::bigint, %s)", k, n)[0]
            assert b == bucket_of(k, n), (k, n)

    path = env.write_config(CHECKSUM_CONFIG)
    total = 32000 + len(odd)
    with Running(path) as r:
        wait_until(
            lambda: env.store("SELECT count(*) FROM product_price")[0][0] == total,
            running=r,
            timeout=60,
            what="snapshot",
        )
        code, found = run_reconcile(path)
        assert code == 0 and found["in_sync"], found
        assert found["method"] == "checksum" and found["buckets"]["total"] >= 1000, found
        assert found["compared"] == {"pos_rows": total, "storefront_rows": total}, found

        env.store("UPDATE product_price SET price = price + 1 WHERE sku IN ('SKU000010', '价格-7')")
        env.store(
            "UPDATE product_price SET updated_at = updated_at + interval '1 ms' WHERE sku = 'SKU020000'"
        )
        env.store("UPDATE product_price SET store_id = NULL WHERE sku = 'café'")
        env.store("DELETE FROM product_price WHERE sku IN ('SKU000500', 'emoji-🛒')")
        env.store("INSERT INTO product_price VALUES ('SKU999999', 1, 5, now()), ('Zürich', 2, 6, NULL)")
        code, found = run_reconcile(path)
        assert code == 1, found
        assert found["method"] == "checksum" and 0 < found["buckets"]["differing"] <= 8, found
        assert sorted(found["different"]) == sorted(["SKU000010", "SKU020000", "café", "价格-7"]), found
        assert sorted(found["missing"]) == sorted(["SKU000500", "emoji-🛒"]), found
        assert sorted(found["extra"]) == sorted(["SKU999999", "Zürich"]), found
        columns = {e["key"]: e["columns"] for e in found["examples"] if e["kind"] == "different"}
        assert columns["SKU020000"] == ["updated_at"] and columns["café"] == ["store_id"], columns

        code, fixed = run_reconcile(path, "--repair")
        assert code == 0 and fixed["repaired"] == {"upserted": 6, "deleted": 2, "refused": 0}, fixed
        code, again = run_reconcile(path)
        assert code == 0 and again["in_sync"] and again["buckets"]["differing"] == 0, again
    pos = dict(env.pos("SELECT item_code, ROW(store_id, price, updated_at)::text FROM item_price"))
    store = dict(env.store("SELECT sku, ROW(store_id, price, updated_at)::text FROM product_price"))
    assert pos == store, diff(pos, store)
