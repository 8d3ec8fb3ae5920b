"""`cdc validate --check-source`: what only the POS and the storefront know, found before anything runs, and
nothing created on either side."""

from __future__ import annotations

import subprocess

from tests.integration.support import run_cdc

CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price}}
  - {type: filter, where: "channel == 'ONLINE'"}
  - {type: money, field: price, divide_by: 100, scale: 2}
  - {type: drop, fields: [channel]}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku]}
"""


def validate(path) -> subprocess.CompletedProcess:
    return run_cdc("validate", "--check-source", path, timeout=60)


def test_check_source_finds_what_only_the_databases_know_and_creates_nothing(env):
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint, channel text, note text)")
    env.store("CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2) NOT NULL, note text)")
    good = env.write_config(CONFIG)
    out = validate(good)
    assert out.returncode == 0, out.stderr
    assert "ok (" in out.stdout and "checked against the databases" in out.stdout, out.stdout

    def problems(body: str, fname: str) -> list[str]:
        out = validate(env.write_config(body, fname))
        assert out.returncode == 2, (out.stdout, out.stderr)
        return out.stderr.strip().splitlines()

    # a misspelt column in a where, named with the fields the row has at that stage
    (found,) = problems(CONFIG.replace("channel == ", "chanel == "), "where.yaml")
    assert "transforms[filter#2]: a row of public.item_price has no field 'chanel'" in found, found
    assert "channel, item_code, note, price, sku" not in found and "channel, note, price, sku" in found, found
    # a table the POS does not have
    (found,) = problems(CONFIG.replace("public.item_price]", "public.item_prices]"), "table.yaml")
    assert "source.tables: table public.item_prices does not exist in the POS database" in found, found
    # a type the storefront would refuse: the price left as text
    env.pos("ALTER TABLE item_price ADD COLUMN label text")
    body = CONFIG.replace("price_fen: price}", "label: price, price_fen: cents}").replace(
        "  - {type: money, field: price, divide_by: 100, scale: 2}\n", ""
    )
    found = problems(body.replace("[channel]", "[channel, cents]"), "type.yaml")
    assert any("product_price.price is NUMERIC" in p and "str values" in p for p in found), found
    # a storefront table that is not there
    (found,) = problems(CONFIG.replace("table: product_price", "table: product_prices"), "store.yaml")
    assert "sink.table: table product_prices does not exist in the storefront database" in found, found

    # nothing was created on either side
    assert env.pos("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")[0][0] == 0
    assert env.pos("SELECT count(*) FROM pg_publication")[0][0] == 0
    assert env.store("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'cdc%%'")[0][0] == 0
