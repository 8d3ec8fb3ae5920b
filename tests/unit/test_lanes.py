"""Direct-mode priority lanes as configured: each row in exactly one lane, one connector per lane, the SQL a
DBA runs, and the config errors that say what to fix."""

from __future__ import annotations

import itertools

import pytest
from typer.testing import CliRunner

from cdc.cli import app
from cdc.config import Lane, load_config
from cdc.errors import ConfigError
from cdc.lanes import lane_connectors, lane_filters, lane_of, publication_sql

CONFIG = """\
name: pos-prices
source:
  type: postgres
  dsn: postgresql://pos/pos
  tables: [public.item_price]
  lanes:
{lanes}
sink: {{type: sql, url: "sqlite:///x.db", table: product_price, key: [sku]}}
"""
LANES = """\
    - {name: priority, where: "category = 'promo'"}
    - {name: fresh, where: "category = 'FRESH' OR price_fen < 100"}
    - {name: bulk}
"""


def write(tmp_path, lanes: str = LANES):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(lanes=lanes))
    return path


def truth(where: str, row: dict) -> bool:
    """A generated filter evaluated in Python, SQL's three-valued logic included (NULL is not TRUE)."""
    cat, price = row["category"], row["price_fen"]
    env = {
        "(category = 'promo') IS TRUE": cat is not None and cat == "promo",
        "(category = 'FRESH' OR price_fen < 100) IS TRUE": (cat is not None and cat == "FRESH")
        or (price is not None and price < 100),
    }
    expr = where
    for text, value in env.items():
        expr = expr.replace(text, str(value))
    return eval(expr.replace("NOT", "not").replace("AND", "and").replace("OR", "or"))  # noqa: S307


def test_every_row_is_in_exactly_one_lane_nulls_included():
    lanes = [Lane(name="priority", where="category = 'promo'"),
             Lane(name="fresh", where="category = 'FRESH' OR price_fen < 100"), Lane(name="bulk")]  # fmt: skip
    filters = lane_filters(lanes)
    assert [n for n, _ in filters] == ["priority", "fresh", "bulk"]
    assert filters[0][1] == "(category = 'promo') IS TRUE"
    assert (
        filters[2][1]
        == "NOT ((category = 'promo') IS TRUE OR (category = 'FRESH' OR price_fen < 100) IS TRUE)"
    )
    for cat, price in itertools.product(["promo", "FRESH", "regular", None], [50, 500, None]):
        row = {"category": cat, "price_fen": price}
        assert sum(truth(w, row) for _, w in filters) == 1, row


def test_a_config_with_lanes_runs_a_connector_per_lane_sharing_key_positions(tmp_path):
    cfg = load_config(write(tmp_path))
    lanes = lane_connectors(cfg)
    assert [c.name for c in lanes] == ["pos-prices.priority", "pos-prices.fresh", "pos-prices.bulk"]
    assert [c.slot for c in lanes] == [
        "cdc_pos_prices_priority",
        "cdc_pos_prices_fresh",
        "cdc_pos_prices_bulk",
    ]
    assert {c.sink.position_group for c in lanes} == {"pos-prices"}
    assert all(c.source.row_filter and not c.source.lanes for c in lanes)
    assert lane_of(cfg, "bulk") == lanes[2]
    with pytest.raises(ValueError, match="no lane 'promo' \\(its lanes: priority, fresh, bulk\\)"):
        lane_of(cfg, "promo")


def test_the_dba_gets_the_publications_with_their_row_filters(tmp_path):
    sql = publication_sql(load_config(write(tmp_path)))
    assert sql[0] == "ALTER TABLE public.item_price REPLICA IDENTITY FULL;"
    assert sql[1] == (
        "CREATE PUBLICATION cdc_pos_prices_priority FOR TABLE public.item_price WHERE ((category = 'promo') IS TRUE);"
    )
    assert len(sql) == 4 and sql[3].startswith(
        "CREATE PUBLICATION cdc_pos_prices_bulk FOR TABLE public.item_price WHERE (NOT ("
    )
    out = CliRunner().invoke(app, ["setup-source", str(write(tmp_path)), "--role", "pos_cdc"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "CREATE ROLE pos_cdc WITH LOGIN REPLICATION;" in lines
    assert "GRANT SELECT ON public.item_price TO pos_cdc;" in lines
    assert lines[-len(sql) :] == sql  # the role and its grants, then the publications
    out = CliRunner().invoke(app, ["setup-source", str(write(tmp_path))])
    assert out.exit_code == 2 and "names no user: give the role with --role NAME" in out.output
    out = CliRunner().invoke(app, ["validate", str(write(tmp_path))])
    assert (
        out.exit_code == 0 and "lane pos-prices.fresh (slot cdc_pos_prices_fresh): rows where" in out.output
    )


@pytest.mark.parametrize(
    "lanes, message",
    [
        ("    - {name: bulk}\n", "give two or more"),
        ("    - {name: a, where: x > 1}\n    - {name: a}\n", "names must differ"),
        ("    - {name: a}\n    - {name: b, where: x > 1}\n", "every lane but the last needs `where`"),
        ("    - {name: a, where: x > 1}\n    - {name: b, where: x > 2}\n", "the last has none"),
        ("    - {name: Promo!, where: x > 1}\n    - {name: b}\n", "String should match pattern"),
    ],
)
def test_lane_mistakes_are_reported_with_file_and_line(tmp_path, lanes, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, lanes))
    assert any(p.startswith(f"{tmp_path / 'c.yaml'}:") and message in p for p in e.value.problems), (
        e.value.problems
    )


def test_lanes_into_kafka_write_a_topic_per_lane(tmp_path):
    from cdc.events import ChangeEvent
    from cdc.sinks.envelope import EnvelopeEncoder

    path = tmp_path / "k.yaml"
    path.write_text(
        CONFIG.format(lanes=LANES).replace(
            'sink: {type: sql, url: "sqlite:///x.db", table: product_price, key: [sku]}',
            "sink: {type: kafka, bootstrap_servers: localhost:9092, topic_prefix: pos}",
        )
    )
    lanes = lane_connectors(load_config(path))
    assert [c.sink.lane for c in lanes] == ["priority", "fresh", "bulk"]
    enc = EnvelopeEncoder("c", "pos", lane=lanes[0].sink.lane, lane_topics={"bulk": "pos.bulk"})
    ev = ChangeEvent(
        "c", "public", "item_price", None, {"item_code": "A"}, 1, 2, 1, 0, 1, key_columns=("item_code",)
    )
    assert enc.records(ev)[0].topic == "pos.public.item_price.priority"
    ev.lane = "bulk"  # a route stage's lane comes first
    assert enc.records(ev)[0].topic == "pos.bulk"
