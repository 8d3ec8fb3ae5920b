"""A designated store with a fallback store, end to end through real PostgreSQL: the example connector
connectors/per-store-online.yaml (warehouse 900, flagship 1), a connector with renames, a guard, a schedule and
history around the pick, the lookups against two source tables, the refusal to start when the source lacks a
column, and `cdc status` showing pending scheduled prices."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal as D

import pytest

from cdc.config import load_config
from cdc.errors import TerminalError
from cdc.events import DELETE, ChangeEvent
from cdc.fallback import wire_fallback
from cdc.stages import build_stages
from tests.integration.helpers import Running, wait_until
from tests.integration.pricing import POS_DDL, STORE_DDL, cdc, cdc_json, prices
from tests.integration.support import ROOT, Monitor

WAREHOUSE, FLAGSHIP = 900, 1


def put(env, sku: str, store: int, fen: int, channel: str = "ONLINE", table: str = "item_price", **extra):
    """Insert or update one POS price row (extra: updated_by, promo_price_fen, promo_from, promo_to)."""
    cols = ["item_code", "store_id", "channel", "price_fen", *extra]
    env.pos(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
        " ON CONFLICT (item_code, store_id, channel) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[3:]),
        sku,
        store,
        channel,
        fen,
        *extra.values(),
    )


def remove(env, sku: str, store: int, channel: str = "ONLINE"):
    env.pos(
        "DELETE FROM item_price WHERE item_code = %s AND store_id = %s AND channel = %s", sku, store, channel
    )


def example(env, monkeypatch):
    """The example connector file as a DBA copies it, pointed at this test's databases."""
    env.pos(POS_DDL)
    env.store(STORE_DDL["postgresql"])
    monkeypatch.setenv("POS_DSN", env.pos_dsn)
    monkeypatch.setenv("STORE_URL", env.store_url)
    text = (ROOT / "connectors" / "per-store-online.yaml").read_text()
    assert "fallback_store: 1" in text and "store: 900" in text
    return env.write_config(text.replace("name: pos-online-prices", "name: @NAME@"))


def gross(fen: int) -> D:
    """What the example makes of a net price in fen: yuan, plus 13 % VAT, 2 places, half up."""
    return (D(fen) / 100 * D("1.13")).quantize(D("0.01"))


def test_example_connector_falls_back_to_the_flagship(env, monkeypatch):
    path = example(env, monkeypatch)
    put(env, "A", FLAGSHIP, 1000)  # only the flagship lists A online
    put(env, "A", FLAGSHIP, 1100, channel="STORE")
    put(env, "B", WAREHOUSE, 2000)
    put(env, "B", FLAGSHIP, 1500)
    put(env, "C", WAREHOUSE, 500, channel="STORE")  # the warehouse's shop row does not speak for the web shop
    put(env, "C", FLAGSHIP, 700)
    put(env, "D", 5, 300)  # another store's only: never online
    put(env, "E", WAREHOUSE, 900)  # the warehouse's only
    with Running(path) as r:
        want = {"A": gross(1000), "B": gross(2000), "C": gross(700), "E": gross(900)}
        wait_until(lambda: prices(env.store) == want, running=r, what="snapshot with fallbacks")
        assert prices(env.store)["A"] == D("11.30")

        monitor = Monitor(env.store_dsn, "A")
        monitor.start()
        try:
            # the designated store's row appears: it wins
            put(env, "A", WAREHOUSE, 1200)
            wait_until(lambda: prices(env.store)["A"] == gross(1200), running=r, what="warehouse wins")
            # the fallback row changes while the designated one exists: the storefront keeps the designated price
            put(env, "A", FLAGSHIP, 1300)
            put(env, "B", FLAGSHIP, 1600)
            put(env, "Z", WAREHOUSE, 100)  # a marker: everything before it has been applied
            wait_until(lambda: "Z" in prices(env.store), running=r, what="marker")
            assert prices(env.store)["A"] == gross(1200) and prices(env.store)["B"] == gross(2000)
            # the designated row is deleted: the fallback row's (current) price comes back, atomically
            remove(env, "A", WAREHOUSE)
            wait_until(lambda: prices(env.store)["A"] == gross(1300), running=r, what="fallback comes back")
            # with no designated row, the fallback row's changes flow
            put(env, "A", FLAGSHIP, 1400)
            wait_until(lambda: prices(env.store)["A"] == gross(1400), running=r, what="fallback follows")
        finally:
            monitor.stop()
        assert monitor.vanished == 0, "A was missing from the storefront between the delete and the fallback"
        assert monitor.values[0] == gross(1000)

        # the designated row moves to another store: the fallback takes over
        env.pos("UPDATE item_price SET store_id = 5 WHERE item_code = 'B' AND store_id = 900")
        # the designated row appears, then goes offline (a channel change): the fallback takes over
        put(env, "C", WAREHOUSE, 800)
        env.pos(
            "UPDATE item_price SET channel = 'OFFLINE' WHERE item_code = 'C' AND store_id = 900 AND channel = 'ONLINE'"
        )
        # no fallback row: the delete stands
        remove(env, "E", WAREHOUSE)
        # the designated row deleted and the fallback row changed after it, in one transaction
        put(env, "F", WAREHOUSE, 5000)
        put(env, "F", FLAGSHIP, 4000)
        env.pos(
            "BEGIN; DELETE FROM item_price WHERE item_code = 'F' AND store_id = 900;"
            " UPDATE item_price SET price_fen = 4100 WHERE item_code = 'F' AND store_id = 1; COMMIT"
        )
        want = {"A": gross(1400), "B": gross(1600), "C": gross(700), "Z": gross(100), "F": gross(4100)}
        wait_until(lambda: prices(env.store) == want, running=r, what="moves, offline, no fallback, one txn")
        assert r.pipeline.metrics.held.labels(r.cfg.name, "dead_letter")._value.get() == 0

    # a restart reads nothing twice and changes nothing
    with Running(path) as r:
        remove(env, "B", FLAGSHIP)  # no designated row any more: the fallback's delete removes B
        wait_until(lambda: "B" not in prices(env.store), running=r, what="fallback delete")
    assert prices(env.store) == {"A": gross(1400), "C": gross(700), "Z": gross(100), "F": gross(4100)}


CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [@TABLES@], heartbeat_interval_s: 0}
transforms:
  - {type: rename, fields: {item_code: code, store_id: store}}
  - {type: pick, key: [code], store_field: store, store: 900, fallback_store: 1}
  - {type: schedule, field: price_fen, value: promo_price_fen, valid_from: promo_from, valid_to: promo_to}
  - {type: filter, where: "price_fen > 0"}
  - {type: rename, fields: {code: sku, price_fen: price}}
  - {type: money, field: price, divide_by: 100, scale: 2}
  - {type: guard, field: price, min: 0.01, max_change_pct: 90}
  - {type: drop, fields: [store, channel, cost_fen, promo_price_fen, promo_from, promo_to, updated_by]}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku], history: {changed_by: updated_by}}
"""


def setup(env, tables: str = "public.item_price"):
    env.pos(POS_DDL)
    env.store(STORE_DDL["postgresql"])
    return env.write_config(CONFIG.replace("@TABLES@", tables))


def test_fallback_through_renames_guard_schedule_and_history_and_status_shows_schedules(env):
    path = setup(env)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    put(env, "A", FLAGSHIP, 1000, updated_by="flagship")
    put(env, "P", FLAGSHIP, 500, promo_price_fen=400, promo_from=start, promo_to=start + dt.timedelta(days=1))
    put(env, "Q", WAREHOUSE, 700)
    put(env, "N", WAREHOUSE, 0)  # the designated row, filtered out after the pick: N is not on sale
    put(env, "N", FLAGSHIP, 300)
    info = cdc_json("status", path)
    assert info["scheduled_pending"] == 0 and info["next_scheduled_time"] is None
    with Running(path) as r:
        wait_until(lambda: prices(env.store) == {"A": D("10.00"), "P": D("5.00"), "Q": D("7.00")}, running=r)
        wait_until(lambda: env.store("SELECT count(*) FROM cdc_scheduled")[0][0] == 1, running=r)
        put(env, "A", WAREHOUSE, 1200, updated_by="warehouse")
        wait_until(lambda: prices(env.store)["A"] == D("12.00"), running=r, what="designated wins")
        put(env, "A", FLAGSHIP, 1100, updated_by="flagship")  # not chosen: the designated row exists
        put(env, "M", WAREHOUSE, 100)  # a marker: the flagship's change has been judged once M is there
        wait_until(lambda: "M" in prices(env.store), running=r, what="marker")
        assert prices(env.store)["A"] == D("12.00")
        remove(env, "A", WAREHOUSE)
        wait_until(lambda: prices(env.store)["A"] == D("11.00"), running=r, what="fallback after delete")
        # a designated row's delete that a stage after the pick drops still brings the fallback row
        assert "N" not in prices(env.store)
        remove(env, "N", WAREHOUSE)
        wait_until(
            lambda: prices(env.store).get("N") == D("3.00"), running=r, what="fallback of a dropped delete"
        )

        # cdc status (text and JSON) while running: the promotion's start is pending
        info = cdc_json("status", path)
        assert info["scheduled_pending"] == 1
        assert dt.datetime.fromisoformat(info["next_scheduled_time"]) == start
        text = cdc("status", path)
        assert (
            text.returncode == 0
            and "scheduled_pending" in text.stdout
            and "next_scheduled_time" in text.stdout
        )
        assert start.isoformat()[:16] in text.stdout

        # a second pending schedule, due earlier
        sooner = start - dt.timedelta(minutes=30)
        put(env, "Q", WAREHOUSE, 700, promo_price_fen=600, promo_from=sooner)
        wait_until(lambda: cdc_json("status", path)["scheduled_pending"] == 2, running=r)
    info = cdc_json("status", path)
    assert info["state"] == "stopped" and info["scheduled_pending"] == 2
    assert dt.datetime.fromisoformat(info["next_scheduled_time"]) == sooner

    history = env.store(
        "SELECT op, old_value, new_value, changed_by, via, commit_lsn, seq FROM cdc_price_history"
        " WHERE row_key = 'A' ORDER BY id"
    )
    got = [(op, o and json.loads(o), n and json.loads(n), by, via) for op, o, n, by, via, *_ in history]
    assert got == [
        ("c", None, {"price": "10.00"}, "flagship", "snapshot"),
        ("u", {"price": "10.00"}, {"price": "12.00"}, "warehouse", "stream"),
        ("d", {"price": "12.00"}, None, None, "stream"),
        ("c", None, {"price": "11.00"}, "flagship", "pick_fallback"),
    ]
    # the fallback row was applied at the delete's own position: the same source transaction and change
    assert history[2][5:] == history[3][5:]
    assert history[1][5] < history[2][5]


def test_lookups_ask_the_change_s_own_table(env):
    """Two captured tables: `exists` and the fallback re-read query the table the change comes from."""
    env.pos(POS_DDL)
    env.pos(POS_DDL.replace("item_price", "outlet_price"))
    env.store(STORE_DDL["postgresql"])
    path = env.write_config(CONFIG.replace("@TABLES@", "public.item_price, public.outlet_price"))
    cfg = load_config(path)
    stages = build_stages(cfg.transforms)
    fb = wire_fallback(stages, cfg)
    try:
        fb.check()
        put(env, "A", WAREHOUSE, 1200)
        put(env, "A", FLAGSHIP, 1000)
        put(env, "A", FLAGSHIP, 900, table="outlet_price")
        pick = stages[1]
        assert pick.exists({"code": "A"}, 900, "public.item_price") is True
        assert pick.exists({"code": "A"}, 900, "public.outlet_price") is False
        assert pick.exists({"code": "B"}, 900, "public.item_price") is False

        def delete(table: str) -> ChangeEvent:
            ev = ChangeEvent(DELETE, "public", table, {"code": "A", "store": 900}, None, 10, 20, 3, 1000, 77)
            ev.headers.update(
                pick_fallback_needed=True, pick_fallback_store=1, pick_fallback_key={"code": "A"}
            )
            return ev

        (row,) = fb.changes(delete("item_price"))
        assert (row.table, row.op, row.after["price_fen"], row.after["store_id"]) == (
            "item_price",
            "c",
            1000,
            1,
        )
        assert (row.lsn, row.commit_lsn, row.seq, row.ts_ms, row.txid) == (10, 20, 3, 1000, 77)
        assert (
            row.key_columns == ("item_code", "store_id", "channel") and row.headers["via"] == "pick_fallback"
        )
        (row,) = fb.changes(delete("outlet_price"))
        assert (row.table, row.after["price_fen"]) == ("outlet_price", 900)
        env.pos("DELETE FROM outlet_price")
        assert fb.changes(delete("outlet_price")) == []
    finally:
        fb.close()


def test_refuses_to_start_when_a_source_table_lacks_the_pick_s_columns(env):
    env.pos(POS_DDL)
    env.pos("CREATE TABLE promo_note (item_code text PRIMARY KEY, note text)")
    env.store(STORE_DDL["postgresql"])
    path = env.write_config(CONFIG.replace("@TABLES@", "public.item_price, public.promo_note"))
    r = Running(path)
    with pytest.raises(TerminalError, match="source table public.promo_note by column\\(s\\) store_id") as e:
        with r:
            wait_until(lambda: r.error is not None, what="the connector to stop")
    assert "pick#2" in str(e.value)
