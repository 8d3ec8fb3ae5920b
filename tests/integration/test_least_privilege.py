"""Least privilege and clean set-up: the pipeline runs as the two roles `cdc setup-source` / `cdc setup-sink`
made (snapshot, streaming, a held change, status and explain), `cdc run` names each GRANT missing before it
makes anything, a first run that fails on the storefront leaves no slot behind, and `cdc drop` removes what
pos-cdc made (refused while the connector runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

from tests.integration.helpers import Running, wait_until
from tests.integration.support import POS_TABLE, ROOT, STORE_TABLE

CONFIG = """
name: @NAME@
source: {{type: postgres, dsn: "{dsn}", tables: [public.item_price]}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
  - {{type: guard, field: price, min: 0.01}}
sink: {{type: sql, url: "{url}", table: {table}, key: [sku]{sink_extra}}}
"""


def cdc(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def as_role(env, role_src: str | None = None, role_sink: str | None = None) -> tuple[str, str]:
    """(POS DSN, storefront URL) of env's databases, as the given roles (default: the superuser)."""
    dsn = env.pos_dsn if role_src is None else env.pos_dsn.replace("user=postgres", f"user={role_src}")
    url = env.store_url if role_sink is None else env.store_url.replace("//postgres@", f"//{role_sink}@")
    return dsn, url


def config(env, fname: str = "connector.yaml", table: str = "product_price", sink_extra: str = "", **roles):
    dsn, url = as_role(env, **roles)
    return env.write_config(CONFIG.format(dsn=dsn, url=url, table=table, sink_extra=sink_extra), fname)


def slots(env) -> list[tuple]:
    return env.pg.execute(
        f"SELECT slot_name, active FROM pg_replication_slots WHERE database = '{env.pos_db}' ORDER BY 1"
    )


def cdc_tables(env, schema: str | None = None) -> list[str]:
    where = f"table_schema = '{schema}'" if schema else "true"
    return [
        t
        for (t,) in env.store(
            f"SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'cdc%%' AND {where} ORDER BY 1"
        )
    ]


def prices(env) -> dict:
    return dict(env.store("SELECT sku, price FROM product_price"))


def test_a_first_run_that_fails_on_the_storefront_leaves_no_slot(env):
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    path = config(env, table="no_such_table")
    out = cdc("run", path)
    assert out.returncode == 1
    assert "sink.table: table no_such_table does not exist in the storefront database" in out.stderr
    assert slots(env) == []
    assert env.pos("SELECT pubname FROM pg_publication") == []


def test_a_first_run_that_fails_on_a_column_the_storefront_refuses_leaves_no_slot(env):
    """The storefront requires a column the changes do not carry: found at the first write, after the slot was
    made; the run had committed nothing, so the slot (and the publication it made) go with it."""
    env.pos(POS_TABLE)
    env.pos("INSERT INTO item_price VALUES ('A', 100)")
    env.store(
        "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2), category text NOT NULL)"
    )
    out = cdc("run", config(env))
    assert out.returncode == 1
    assert "requires category (NOT NULL without a default)" in out.stderr, out.stderr
    assert slots(env) == []
    assert env.pos("SELECT pubname FROM pg_publication") == []
    # once it has committed, a failure keeps the slot: the stored position needs it
    env.store("ALTER TABLE product_price ALTER COLUMN category SET DEFAULT 'x'")
    with Running(config(env)) as r:
        wait_until(lambda: prices(env) == {"A": Decimal("1.00")}, running=r)
    env.store("ALTER TABLE product_price ALTER COLUMN category DROP DEFAULT")
    env.pos("INSERT INTO item_price VALUES ('B', 200)")
    out = cdc("run", config(env))
    assert out.returncode == 1 and "requires category" in out.stderr
    assert slots(env) == [(f"cdc_{env.name}", False)]
