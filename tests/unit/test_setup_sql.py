"""The SQL `cdc setup-source` / `cdc setup-sink` print: identifiers quoted where they must be, the role's
privileges and nothing more, per storefront dialect."""

from __future__ import annotations

from cdc.config import load_config
from cdc.ops.setup import bookkeeping_ddl, dsn_user, sink_statements, source_statements
from cdc.privileges import Missing, pg_name
from cdc.sinks.sql.bookkeeping import meta

CONFIG = """
name: shop-prices
source: {{type: postgres, dsn: "host=pos user=pos_cdc dbname=pos", tables: [public.item_price, Sales.Order]}}
sink: {{type: sql, url: "{url}", table: {table}, key: [sku]{extra}}}
"""


def cfg(tmp_path, url="postgresql+psycopg://pos_store@store/shop", table="product_price", extra=""):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG.format(url=url, table=table, extra=extra))
    return load_config(p)


def test_names_are_quoted_only_where_they_must_be():
    assert pg_name("public", "item_price") == "public.item_price"
    assert pg_name("Sales", "Order") == '"Sales"."Order"'
    assert pg_name("user") == '"user"'  # a reserved word
    assert pg_name('a"b') == '"a""b"'


def test_the_pos_role_gets_replication_and_select_on_the_captured_tables_only(tmp_path):
    c = cfg(tmp_path)
    assert dsn_user(c.source.dsn) == ("pos_cdc", "pos")
    assert source_statements(c, "pos_cdc", "pos") == [
        "CREATE ROLE pos_cdc WITH LOGIN REPLICATION;",
        "GRANT CONNECT ON DATABASE pos TO pos_cdc;",
        "GRANT USAGE ON SCHEMA public TO pos_cdc;",
        'GRANT USAGE ON SCHEMA "Sales" TO pos_cdc;',
        'GRANT SELECT ON public.item_price, "Sales"."Order" TO pos_cdc;',
        'CREATE PUBLICATION cdc_shop_prices FOR TABLE public.item_price, "Sales"."Order";',
    ]
    assert source_statements(c, "Odd Role", None)[0] == 'CREATE ROLE "Odd Role" WITH LOGIN REPLICATION;'


def test_the_postgresql_storefront_role_gets_dml_and_its_bookkeeping_in_a_schema_of_its_own(tmp_path):
    c = cfg(tmp_path, extra=", bookkeeping_schema: cdc, delete: soft, truncate: ignore")
    sql = sink_statements(c, "pos_store", "%")
    assert sql[:6] == [
        "CREATE ROLE pos_store WITH LOGIN;",
        "GRANT CONNECT, TEMPORARY ON DATABASE shop TO pos_store;",
        "GRANT USAGE ON SCHEMA public TO pos_store;",
        "GRANT SELECT, INSERT, UPDATE ON public.product_price TO pos_store;",  # soft deletes: no DELETE
        "CREATE SCHEMA IF NOT EXISTS cdc;",
        "GRANT USAGE ON SCHEMA cdc TO pos_store;",
    ]
    creates = [s for s in sql if s.startswith("CREATE TABLE IF NOT EXISTS cdc.")]
    assert len(creates) == len(meta.tables)
    assert "CREATE INDEX IF NOT EXISTS ix_cdc_held_connector ON cdc.cdc_held (connector);" in sql
    assert sql[-2] == (
        "GRANT SELECT, INSERT, UPDATE, DELETE ON cdc.cdc_offsets, cdc.cdc_row_state, cdc.cdc_applied, "
        "cdc.cdc_held, cdc.cdc_scheduled, cdc.cdc_price_history TO pos_store;"
    )
    assert sql[-1] == (
        "GRANT USAGE ON SEQUENCE cdc.cdc_applied_id_seq, cdc.cdc_held_id_seq, cdc.cdc_price_history_id_seq "
        "TO pos_store;"
    )
    assert not any("GRANT" in s and "public.cdc_" in s for s in sql)


def test_mariadb_gets_grants_on_the_databases_tables_and_sqlite_nothing(tmp_path):
    c = cfg(tmp_path, url="mysql+pymysql://pos_store@store/shop")
    sql = sink_statements(c, "pos_store", "10.0.%")
    assert sql[0] == "CREATE USER IF NOT EXISTS 'pos_store'@'10.0.%';"
    assert sql[1] == "GRANT SELECT, INSERT, UPDATE, DELETE ON shop.product_price TO 'pos_store'@'10.0.%';"
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON shop.cdc_offsets TO 'pos_store'@'10.0.%';" in sql
    assert sink_statements(c, "o'brien", "%")[0] == "CREATE USER IF NOT EXISTS 'o''brien'@'%';"
    lite = sink_statements(cfg(tmp_path, url="sqlite:///shop.db"), "", "%")
    assert len(lite) == 1 and lite[0].startswith("-- SQLite: nothing to grant")


def test_the_bookkeeping_ddl_keeps_the_index_names_a_first_run_gives():
    from sqlalchemy.dialects import postgresql

    ddl = bookkeeping_ddl(postgresql.dialect(), "cdc")
    assert not any(line != line.rstrip() for s in ddl for line in s.splitlines())
    assert any("ix_cdc_price_history_key ON cdc.cdc_price_history" in s for s in ddl)


def test_a_missing_privilege_is_named_with_its_grant():
    import pytest

    from cdc.errors import TerminalError

    m = Missing("pos_cdc", "POS")
    m.raise_if_any("hint")  # nothing missing: no error
    m.add("SELECT on public.item_price", "GRANT SELECT ON public.item_price TO pos_cdc")
    with pytest.raises(TerminalError) as e:
        m.raise_if_any("all of it at once: cdc setup-source c.yaml --role pos_cdc")
    assert str(e.value).startswith(
        "the role pos_cdc lacks SELECT on public.item_price: GRANT SELECT ON public.item_price TO pos_cdc (on the POS;"
    )


def test_bookkeeping_schema_is_refused_where_the_storefront_has_no_schemas(tmp_path):
    import pytest

    from cdc.errors import ConfigError

    assert cfg(tmp_path, extra=", bookkeeping_schema: cdc").sink.bookkeeping_schema == "cdc"
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, url="mysql+pymysql://u@h/shop", extra=", bookkeeping_schema: cdc")
    (problem,) = e.value.problems
    assert problem.endswith(
        "c.yaml:4: sink.bookkeeping_schema: Value error, only a PostgreSQL storefront has schemas; on MariaDB "
        "and SQLite the bookkeeping tables live in the storefront database (leave bookkeeping_schema out)"
    )
