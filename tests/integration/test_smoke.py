from decimal import Decimal

from tests.integration.helpers import Running, wait_until

CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price}}
  - {type: money, field: price, divide_by: 100, scale: 2}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku]}
"""


def test_smoke(env):
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint)")
    env.pos("INSERT INTO item_price VALUES ('A', 100), ('B', 250)")
    env.store("CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))")
    with Running(env.write_config(CONFIG)) as r:
        wait_until(lambda: env.store("SELECT count(*) FROM product_price")[0][0] == 2, running=r)
        env.pos("UPDATE item_price SET price_fen = 199 WHERE item_code = 'A'")
        env.pos("DELETE FROM item_price WHERE item_code = 'B'")
        env.pos("INSERT INTO item_price VALUES ('C', 5)")
        wait_until(
            lambda: (
                sorted(env.store("SELECT sku, price FROM product_price"))
                == [("A", Decimal("1.99")), ("C", Decimal("0.05"))]
            ),
            running=r,
            what="stream applied",
        )
