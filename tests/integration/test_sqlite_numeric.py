"""A SQLite storefront made by Django or Rails: prices in `decimal(10,2)` columns (NUMERIC affinity). Values
SQLite keeps exactly are written; one it would round is held with the reason while the rest flows."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal

from tests.integration.helpers import Running, wait_until
from tests.integration.support import run_cdc

CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku}}
sink: {type: sql, url: "sqlite:///@DB@", table: product_price, key: [sku]}
"""


def test_a_decimal_column_keeps_every_price_sqlite_can_keep_and_holds_the_one_it_would_round(env, tmp_path):
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as c:  # what Django's DecimalField makes
        c.execute('CREATE TABLE product_price ("sku" varchar(64) PRIMARY KEY, "price" decimal(10, 2))')
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price numeric)")
    env.pos("INSERT INTO item_price VALUES ('A', 9.99), ('B', 10.50), ('C', 12)")
    path = env.write_config(CONFIG.replace("@DB@", str(db)))

    def stored() -> dict:
        with sqlite3.connect(db) as c:
            return {k: (v, type(v).__name__) for k, v in c.execute("SELECT sku, price FROM product_price")}

    with Running(path) as r:
        wait_until(lambda: len(stored()) == 3, running=r, what="snapshot")
        env.pos("UPDATE item_price SET price = 0.07 WHERE item_code = 'A'")
        env.pos("INSERT INTO item_price VALUES ('LONG', 1234567890.1234567)")  # 17 significant digits
        env.pos("INSERT INTO item_price VALUES ('D', 123456789012.345)")  # 15: kept exactly
        wait_until(lambda: "D" in stored(), running=r, what="the change after the held one")
        held = r.pipeline.metrics.held.labels(r.cfg.name, "dead_letter")._value.get()
    got = stored()
    assert "LONG" not in got and held == 1
    # SQLite gives back the same decimal: whole numbers as INTEGER, the others as REAL of <= 15 digits
    assert {k: Decimal(repr(v)) for k, (v, _) in got.items()} == {
        "A": Decimal("0.07"),
        "B": Decimal("10.5"),
        "C": Decimal("12"),
        "D": Decimal("123456789012.345"),
    }
    with sqlite3.connect(db) as c:
        ((reason, event),) = c.execute("SELECT reason, event FROM cdc_held WHERE row_key = 'LONG'")
    assert "17 significant digits" in reason and "declare price TEXT" in reason, reason
    assert json.loads(event)["after"]["price"] == "1234567890.1234567"
    out = run_cdc("reconcile", path, "--json")
    report = json.loads(out.stdout)
    # SQLite's REAL 10.5 and the POS's 10.50 are the same price; the held row is reported apart, as held
    assert report["counts"] | {"held": 0} == dict.fromkeys(report["counts"], 0), report["different"]
    assert [h["key"] for h in report["held"]] == ["LONG"], report
    assert out.returncode == 0, out.stderr
