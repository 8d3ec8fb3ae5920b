"""Shared by the price-rule tests: the POS price table (per store and channel, with a promotion window and the
cashier who changed it), the storefront table per dialect, and a connector with pick, schedule, money, guard
and history."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

POS_DDL = """
CREATE TABLE item_price (
    item_code       text   NOT NULL,
    store_id        int    NOT NULL,
    channel         text   NOT NULL,
    price_fen       bigint NOT NULL,
    promo_price_fen bigint,
    promo_from      timestamptz,
    promo_to        timestamptz,
    cost_fen        bigint,
    updated_by      text,
    PRIMARY KEY (item_code, store_id, channel)
)
"""

STORE_DDL = {
    "postgresql": "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price numeric(12,2) NOT NULL)",
    "mariadb": "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price decimal(12,2) NOT NULL)",
    "sqlite": "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price text NOT NULL)",
}

CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price], heartbeat_interval_s: 0}
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price, cost_fen: cost}}
  - {type: pick, key: [sku], where: "channel == 'ONLINE'"}
  - {type: schedule, field: price, value: promo_price_fen, valid_from: promo_from, valid_to: promo_to}
  - {type: money, field: price, divide_by: 100, scale: 2}
  - {type: money, field: cost, divide_by: 100, scale: 2}
  - {type: guard, field: price, min: 0.01, max_change_pct: 50, not_below: cost}
  - {type: drop, fields: [store_id, channel, cost, promo_price_fen, promo_from, promo_to, updated_by]}
sink:
  type: sql
  url: "@STORE@"
  table: product_price
  key: [sku]
  batch_size: @BATCH@
  history: {changed_by: updated_by}
"""

GUARD = "guard#6"


def setup(env, store=None, batch: int = 20000):
    """POS and storefront tables, and the connector file (storefront: `store`, else env's PostgreSQL)."""
    env.pos(POS_DDL)
    if store is None:
        env.store(STORE_DDL["postgresql"])
        url = env.store_url
    else:
        store(STORE_DDL[store.kind])
        url = store.url
    return env.write_config(CONFIG.replace("@STORE@", url).replace("@BATCH@", str(batch)))


def put(
    env, sku: str, fen: int, by: str = "alice", cost: int | None = None, channel: str = "ONLINE", **promo
):
    """Insert or update the row of `sku` for `channel` (ONLINE: store 0, the one the storefront gets; else
    store 1, a shop whose rows never reach it); promo: promo_fen, start, end."""
    env.pos(
        "INSERT INTO item_price (item_code, store_id, channel, price_fen, cost_fen, updated_by,"
        " promo_price_fen, promo_from, promo_to) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (item_code, store_id, channel) DO UPDATE SET price_fen = EXCLUDED.price_fen,"
        " cost_fen = EXCLUDED.cost_fen, updated_by = EXCLUDED.updated_by,"
        " promo_price_fen = EXCLUDED.promo_price_fen, promo_from = EXCLUDED.promo_from,"
        " promo_to = EXCLUDED.promo_to",
        sku,
        0 if channel == "ONLINE" else 1,
        channel,
        fen,
        cost,
        by,
        promo.get("promo_fen"),
        promo.get("start"),
        promo.get("end"),
    )


def prices(run) -> dict[str, Decimal]:
    """The storefront's prices (run: env.store or a `store` fixture)."""
    return {sku: Decimal(str(p)) for sku, p in run("SELECT sku, price FROM product_price")}


def price_text(run, sku: str) -> str:
    """The price exactly as the storefront stores it (SQLite: the text; others: the decimal's text)."""
    return str(run(f"SELECT price FROM product_price WHERE sku = '{sku}'")[0][0])


def held(run, kind: str = "quarantine"):
    return run(
        f"SELECT id, status, row_key, rule, reason, resolved_by FROM cdc_held WHERE kind = '{kind}' ORDER BY id"
    )


def cdc(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def cdc_json(*args):
    out = cdc(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
