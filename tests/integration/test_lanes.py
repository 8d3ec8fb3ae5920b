"""Priority lanes over Kafka, on the session's real broker and a real POS: a `route` stage in the POS connector
sends each change to its lane's topic, a sink connector per lane applies it, and a row that moves between lanes
mid-stream ends at its newest price without ever going back (the never-backwards check on the POS position)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from tests.integration.helpers import Running, wait_until
from tests.integration.support import Monitor, diff, pos_prices, store_prices

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

P2K = """
name: @NAME@-p2k
source: {{type: postgres, dsn: "@POS@", tables: [public.item_price]}}
transforms:
  - {{type: route, rules: [{{when: "category == 'promo'", lane: priority}}], default: bulk}}
sink: {{type: kafka, bootstrap_servers: "{kafka}", topic_prefix: {prefix}, partitions: 2{extra}}}
"""

K2S = """
name: @NAME@-{lane}
source: {{type: kafka, bootstrap_servers: "{kafka}", topics: [{topic}], group: @NAME@-{lane}}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
  - {{type: drop, fields: [category]}}
sink: {{type: sql, url: "@STORE@", table: product_price, key: [sku], position_group: @NAME@-lanes}}
"""


def test_a_row_moving_between_lanes_ends_right_and_never_goes_back(env, kafka):
    env.pos(
        "CREATE TABLE item_price (item_code text PRIMARY KEY, category text NOT NULL, price_fen bigint NOT NULL)"
    )
    env.store("CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))")
    env.pos(
        "INSERT INTO item_price SELECT 'K' || lpad(i::text, 5, '0'), CASE WHEN i % 10 = 0 THEN 'promo'"
        " ELSE 'regular' END, i FROM generate_series(1, 5000) i"
    )
    env.pos("INSERT INTO item_price VALUES ('WATCHED', 'regular', 100)")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    base = f"{prefix}.public.item_price"
    p2k = env.write_config(P2K.format(kafka=kafka.bootstrap, prefix=prefix, extra=""), "p2k.yaml")
    fast = env.write_config(
        K2S.format(kafka=kafka.bootstrap, lane="priority", topic=f"{base}.priority"), "fast.yaml"
    )
    bulk = env.write_config(K2S.format(kafka=kafka.bootstrap, lane="bulk", topic=f"{base}.bulk"), "bulk.yaml")
    monitor = Monitor(env.store_dsn, "WATCHED", interval=0.005)
    with Running(p2k) as source, Running(fast) as f:
        with Running(bulk):
            wait_until(
                lambda: pos_prices(env) == store_prices(env), timeout=90, running=source, what="snapshot"
            )
        monitor.start()
        # the bulk lane is stopped (far behind, as in a mass reprice) while the changes below are made
        env.pos(
            "UPDATE item_price SET price_fen = price_fen + 1 WHERE category = 'regular'"
        )  # a bulk reprice
        for i in range(1, 41):  # the watched row changes lane at every step, its price always up
            category = "promo" if i % 2 else "regular"
            env.pos(
                "UPDATE item_price SET price_fen = %s, category = %s WHERE item_code = 'WATCHED'",
                100 + i * 10,
                category,
            )
        env.pos(
            "UPDATE item_price SET category = 'promo', price_fen = price_fen + 5 WHERE item_code = 'K00007'"
        )
        env.pos("DELETE FROM item_price WHERE item_code IN ('K00010', 'K00011')")  # one of each lane
        # the fast lane is through while the bulk lane has not started: the watched row shows its last
        # promotion price, and the bulk lane's older changes of it must not take it back when they arrive
        wait_until(
            lambda: store_prices(env).get("WATCHED") == Decimal("4.90"), running=f, what="the fast lane"
        )
        with Running(bulk) as b:
            wait_until(
                lambda: pos_prices(env) == store_prices(env),
                timeout=120,
                running=b,
                what="both lanes applied",
            )
        f.check()
    monitor.stop()
    assert pos_prices(env) == store_prices(env), diff(pos_prices(env), store_prices(env))
    assert monitor.decreases == [], monitor.decreases
    assert monitor.values[-1] == Decimal("5.00")
    topics = _topics(kafka, prefix)
    assert {f"{base}.priority", f"{base}.bulk"} <= topics and base not in topics, topics


def _topics(kafka, prefix: str) -> set[str]:
    with kafka.admin() as admin:
        return {t for t in admin.list_topics() if t.startswith(prefix)}
