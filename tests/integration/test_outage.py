"""The storefront database stopped for 10 s under load: the connector retries with backoff, loses nothing,
does not exit, and catches up when the database returns."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from cdc.localmariadb import LocalMariaDB
from cdc.localpg import LocalPostgres
from tests.integration.helpers import Running, wait_until

CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price}}
  - {type: money, field: price, divide_by: 100, scale: 2}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku]}
"""


@pytest.fixture(params=["postgresql", "mariadb"])
def own_store(request):
    """A storefront server of its own, so stopping it harms no other test."""
    if request.param == "postgresql":
        server = LocalPostgres().start()
        server.create_database("shop")
        url = server.url("shop")
        ddl = "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))"
        server.execute(ddl, dbname="shop")

        def query(sql):
            return server.execute(sql, dbname="shop")
    else:
        server = LocalMariaDB().start()
        url = server.create_database("shop")
        server.execute(
            "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price decimal(12,2))", "shop"
        )

        def query(sql):
            return server.execute(sql, "shop")

    yield server, url, query
    server.destroy()


def test_storefront_down_for_10s_under_load(env, own_store):
    server, url, query = own_store
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint)")
    env.pos("INSERT INTO item_price SELECT 'K' || g, 100 FROM generate_series(1, 200) g")
    path = env.write_config(CONFIG.replace("@STORE@", url))
    stop = threading.Event()
    written = [0]

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            env.pos("UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", f"K{i % 200 + 1}")
            written[0] += 1
            time.sleep(0.005)

    def synced():
        want = {k: Decimal(p) / 100 for k, p in env.pos("SELECT item_code, price_fen FROM item_price")}
        have = {k: Decimal(str(p)) for k, p in query("SELECT sku, price FROM product_price")}
        return want == have

    with Running(path) as r:
        wait_until(lambda: query("SELECT count(*) FROM product_price")[0][0] == 200, running=r)
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(2)
        server.stop()
        time.sleep(10)
        assert r.thread.is_alive() and r.error is None, "the connector must wait for the storefront, not exit"
        up = r.pipeline.metrics.up.labels(r.cfg.name)._value.get()
        assert up == 0, "cdc_connector_up must show the outage"
        server.start()
        time.sleep(2)
        stop.set()
        t.join()
        wait_until(synced, timeout=90, running=r, what="catch-up after the outage")
        assert written[0] > 500
