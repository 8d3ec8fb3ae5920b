"""Guardrails end to end, through real PostgreSQL (and every storefront dialect where cheap): a fat-fingered
price is quarantined while everything else flows and the slot advances; approve publishes it exactly, reject
does not, a newer good price supersedes it; price history says who changed what; bad stage configs are
reported as `FILE:LINE: field: message`."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from contextlib import contextmanager
from decimal import Decimal as D

import psycopg
import pytest

from cdc.ops.held import resolve
from tests.integration.helpers import Running, wait_until
from tests.integration.pricing import GUARD, cdc, cdc_json, held, price_text, prices, put, setup


def quarantined(r: Running) -> float:
    return r.pipeline.metrics.held.labels(r.cfg.name, "quarantine")._value.get()


def slot_confirmed_past(env, r: Running, lsn: str) -> bool:
    rows = env.pos(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
        lsn,
        r.cfg.slot,
    )
    return bool(rows and rows[0][0])


def test_fat_finger_is_quarantined_while_the_rest_flows_then_approved(env):
    path = setup(env)
    put(env, "A", 1000)
    put(env, "B", 500)
    put(env, "A", 1, channel="STORE")  # a shop's own price never reaches the storefront, so it is not judged
    with Running(path) as r:
        wait_until(lambda: prices(env.store) == {"A": D("10.00"), "B": D("5.00")}, running=r, what="snapshot")
        put(env, "A", 10, by="bob")  # 10.00 -> 0.10: a 99 % drop
        put(env, "B", 600, by="carol")
        (lsn,) = env.pos("SELECT pg_current_wal_lsn()::text")[0]
        wait_until(lambda: prices(env.store)["B"] == D("6.00"), running=r, what="B flows")
        wait_until(lambda: len(held(env.store)) == 1, running=r, what="A quarantined")
        assert prices(env.store)["A"] == D("10.00")
        assert quarantined(r) == 1
        assert r.pipeline.metrics.held.labels(r.cfg.name, "dead_letter")._value.get() == 0
        wait_until(lambda: slot_confirmed_past(env, r, lsn), running=r, what="the slot advances past it")

        (entry,) = cdc_json("quarantine", path, "list")
        assert entry["row_key"] == "A" and entry["status"] == "held" and entry["kind"] == "quarantine"
        assert entry["rule"] == f"{GUARD}:max_change_pct"
        assert entry["reason"] == "price 0.10 is 99.0% below the storefront's 10.00 (max_change_pct 50)"
        assert entry["details"]["current"] == "10.00" and entry["details"]["value"] == "0.10"
        assert entry["event"]["after"]["price"] == "0.10" and entry["event"]["after"]["updated_by"] == "bob"
        text = cdc("quarantine", path, "list").stdout  # read by a person in an 80-column pipe: nothing cut
        assert f"rule {GUARD}:max_change_pct: {entry['reason']}" in text, text
        assert f"at {entry['position']}" in text and "+00:00" in text, text

        out = cdc("quarantine", path, "approve", entry["id"], "--by", "dba-anna")
        assert out.returncode == 0, out.stderr
        assert f"entry {entry['id']}: applied" in out.stdout
        assert price_text(env.store, "A") == "0.10"
        ((status, by, at),) = env.store("SELECT status, resolved_by, resolved_at FROM cdc_held")
        assert (status, by) == ("applied", "dba-anna") and at is not None
        # the connector goes on from the approved price: 0.12 is within 50 % of 0.10
        put(env, "A", 12, by="bob")
        wait_until(lambda: prices(env.store)["A"] == D("0.12"), running=r, what="next change after approval")
        assert quarantined(r) == 1
    out = cdc("quarantine", path, "reject", entry["id"])
    assert out.returncode == 1 and "already applied (by dba-anna" in out.stderr

    history = env.store(
        "SELECT op, old_value, new_value, changed_by, via FROM cdc_price_history WHERE row_key = 'A' ORDER BY id"
    )
    assert [
        (op, json.loads(o) if o else None, json.loads(n), who, via) for op, o, n, who, via in history
    ] == [
        ("c", None, {"price": "10.00"}, "alice", "snapshot"),
        ("u", {"price": "10.00"}, {"price": "0.10"}, "bob", f"approve:dba-anna#{entry['id']}"),
        ("u", {"price": "0.10"}, {"price": "0.12"}, "bob", "stream"),
    ]


def test_reject_keeps_the_storefront_price(env):
    path = setup(env)
    put(env, "A", 1000)
    with Running(path) as r:
        wait_until(lambda: prices(env.store) == {"A": D("10.00")}, running=r)
        put(env, "A", 100000, by="bob")  # 10.00 -> 1000.00
        wait_until(lambda: len(held(env.store)) == 1, running=r)
        (entry_id, *_), *_ = held(env.store)
    out = cdc("quarantine", path, "reject", entry_id, "--by", "dba-li")
    assert out.returncode == 0, out.stderr
    assert "rejected" in out.stdout
    assert prices(env.store) == {"A": D("10.00")}
    assert held(env.store)[0][1] == "rejected" and held(env.store)[0][5] == "dba-li"
    assert cdc_json("quarantine", path, "list") == []
    out = cdc("quarantine", path, "approve", entry_id)
    assert out.returncode == 1 and "already rejected" in out.stderr
    assert prices(env.store) == {"A": D("10.00")}


def approving_changes_nothing(env, path, expected: list[tuple[str, str]], superseded_by: str) -> None:
    """The held entries' (key, status) are `expected`, the superseded ones say by what, and approving the
    first (superseded) one changes nothing."""
    entries = held(env.store)
    assert [(key, status) for _, status, key, *_ in entries] == expected
    assert all(e[5].startswith(f"pos-cdc: {superseded_by} ") for e in entries if e[1] == "superseded")
    out = cdc("quarantine", path, "approve", entries[0][0])
    assert out.returncode == 0, out.stderr
    assert "superseded" in out.stdout and "nothing changed" in out.stdout


@contextmanager
def running_with_a_held_price(env):
    """A and B at 10.00 in the storefront, then A's fat-fingered 0.10 held; yields (config path, Running)."""
    path = setup(env)
    put(env, "A", 1000)
    put(env, "B", 1000)
    with Running(path) as r:
        wait_until(lambda: len(prices(env.store)) == 2, running=r)
        put(env, "A", 10, by="bob")  # held
        wait_until(lambda: len(held(env.store)) == 1, running=r)
        yield path, r


def test_newer_good_price_supersedes_a_held_one(env):
    with running_with_a_held_price(env) as (path, r):
        put(env, "A", 900, by="carol")  # good: applied, and the held 0.10 is superseded
        wait_until(lambda: prices(env.store)["A"] == D("9.00"), running=r)
        # in one source transaction: a bad price then a good one (superseded in the same sink transaction),
        # and for B a good one then a bad one (the bad one is newer: it stays held)
        env.pos(
            "BEGIN;"
            " UPDATE item_price SET price_fen = 5 WHERE item_code = 'A' AND channel = 'ONLINE';"
            " UPDATE item_price SET price_fen = 950 WHERE item_code = 'A' AND channel = 'ONLINE';"
            " UPDATE item_price SET price_fen = 1100 WHERE item_code = 'B' AND channel = 'ONLINE';"
            " UPDATE item_price SET price_fen = 1 WHERE item_code = 'B' AND channel = 'ONLINE';"
            "COMMIT"
        )
        wait_until(lambda: len(held(env.store)) == 3, running=r)
        wait_until(lambda: prices(env.store) == {"A": D("9.50"), "B": D("11.00")}, running=r)
    approving_changes_nothing(
        env, path, [("A", "superseded"), ("A", "superseded"), ("B", "held")], "newer change"
    )
    assert prices(env.store) == {"A": D("9.50"), "B": D("11.00")}
    assert [e["row_key"] for e in cdc_json("quarantine", path, "list")] == ["B"]


def test_a_source_truncate_supersedes_the_changes_held_before_it(env):
    """TRUNCATE empties the storefront table: a price held before it (in an earlier transaction, or earlier in
    the truncating one) must not come back when approved; one held after it stays held."""
    with running_with_a_held_price(env) as (path, r):
        env.pos(
            "BEGIN; UPDATE item_price SET price_fen = 1 WHERE item_code = 'B'; TRUNCATE item_price; COMMIT"
        )
        put(env, "C", 1000)
        put(env, "C", 1)  # held, after the truncate
        wait_until(lambda: len(held(env.store)) == 3, running=r)
        wait_until(lambda: prices(env.store) == {"C": D("10.00")}, running=r)
    approving_changes_nothing(
        env, path, [("A", "superseded"), ("B", "superseded"), ("C", "held")], "source TRUNCATE at"
    )
    assert prices(env.store) == {"C": D("10.00")}


@pytest.mark.parametrize("batch", [1, 20000])
def test_guard_compares_with_changes_of_the_same_batch(env, batch):
    """A transaction that raises a price in steps of less than 50 % each passes, whether the earlier steps are
    still buffered (batch 20000) or already written in the open sink transaction (batch 1)."""
    path = setup(env, batch=batch)
    put(env, "A", 1000)
    with Running(path) as r:
        wait_until(lambda: prices(env.store) == {"A": D("10.00")}, running=r)
        env.pos(
            "BEGIN;"
            " UPDATE item_price SET price_fen = 1400 WHERE item_code = 'A';"
            " UPDATE item_price SET price_fen = 1900 WHERE item_code = 'A';"
            " INSERT INTO item_price (item_code, store_id, channel, price_fen) VALUES ('N', 0, 'ONLINE', 100);"
            " UPDATE item_price SET price_fen = 140 WHERE item_code = 'N';"
            " UPDATE item_price SET price_fen = 1 WHERE item_code = 'N';"  # 1.40 -> 0.01: held
            "COMMIT"
        )
        wait_until(lambda: prices(env.store) == {"A": D("19.00"), "N": D("1.40")}, running=r)
        wait_until(lambda: len(held(env.store)) == 1, running=r)
        assert held(env.store)[0][2:4] == ("N", f"{GUARD}:max_change_pct")


def test_guard_rules_on_every_storefront(env, store):
    path = setup(env, store)
    put(env, "A", 1000, cost=300)
    put(env, "B", 500)
    with Running(path) as r:
        wait_until(lambda: len(prices(store)) == 2, running=r)
        put(env, "A", 250, cost=300, by="bob")  # 2.50 < cost 3.00 (and within 50 %... no: 75 % drop)
        put(env, "B", 249, by="bob")  # 5.00 -> 2.49: 50.2 % drop
        put(env, "C", 0)  # new SKU at 0.00: below min 0.01
        put(env, "D", 777)  # new SKU: nothing to compare with
        wait_until(lambda: len(held(store)) == 3, running=r, what="three held")
        wait_until(lambda: "D" in prices(store), running=r)
        rules = {key: rule.split(":")[1] for _, _, key, rule, _, _ in held(store)}
        assert rules == {"A": "not_below", "B": "max_change_pct", "C": "min"}
        assert prices(store) == {"A": D("10.00"), "B": D("5.00"), "D": D("7.77")}
    ids = {key: i for i, _, key, *_ in held(store)}
    assert resolve(r.cfg, ids["B"], "quarantine", apply=True, by="dba").status == "applied"
    assert resolve(r.cfg, ids["A"], "quarantine", apply=True, by="dba").status == "applied"
    assert resolve(r.cfg, ids["C"], "quarantine", apply=False, by="dba").status == "rejected"
    # exactly the change's Decimal on every dialect (SQLite keeps the text), not a float or a JSON string
    assert price_text(store, "B") == "2.49" and price_text(store, "A") == "2.50"
    assert prices(store) == {"A": D("2.50"), "B": D("2.49"), "D": D("7.77")}
    # the rejection is in the history too: not applied (x), the refused price, who and which entry
    assert store(
        "SELECT op, old_value, new_value, changed_by, via FROM cdc_price_history WHERE row_key = 'C'"
    ) == [("x", None, '{"price": "0.00"}', "alice", f"reject:dba#{ids['C']}")]
    with Running(path) as r:  # a newer good price supersedes a held one, on this dialect too
        put(env, "D", 1, by="bob")
        wait_until(lambda: len(held(store)) == 4, running=r)
        put(env, "D", 800, by="carol")
        wait_until(lambda: prices(store)["D"] == D("8.00"), running=r)
        wait_until(lambda: held(store)[-1][1] == "superseded", running=r)
    by = dict(store("SELECT new_value, changed_by FROM cdc_price_history WHERE row_key = 'D'"))
    assert by == {'{"price": "7.77"}': "alice", '{"price": "8.00"}': "carol"}


def test_price_history_says_who_changed_what(env):
    path = setup(env)
    put(env, "A", 1000, by="alice")
    with Running(path) as r:
        wait_until(lambda: prices(env.store) == {"A": D("10.00")}, running=r)
        with psycopg.connect(env.pos_dsn) as c:
            c.execute("UPDATE item_price SET price_fen = 1100, updated_by = 'bob' WHERE item_code = 'A'")
            (txid,) = c.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        env.pos("UPDATE item_price SET updated_by = 'carol' WHERE item_code = 'A'")  # same price: no entry
        put(env, "A", 100, channel="STORE", by="dave")  # a shop's row: not the storefront's business
        env.pos(
            "INSERT INTO item_price (item_code, store_id, channel, price_fen) VALUES ('Z', 0, 'ONLINE', 5)"
        )
        env.pos(  # two changes of one key in one transaction: two entries, each with its own author
            "BEGIN; UPDATE item_price SET price_fen = 6, updated_by = 'erin' WHERE item_code = 'Z';"
            " UPDATE item_price SET price_fen = 7, updated_by = 'fay' WHERE item_code = 'Z'; COMMIT"
        )
        env.pos("DELETE FROM item_price WHERE item_code = 'A' AND channel = 'ONLINE'")
        wait_until(lambda: prices(env.store) == {"Z": D("0.07")}, running=r)
    rows = env.store(
        "SELECT row_key, op, old_value, new_value, changed_by, via, txid, commit_lsn, commit_time"
        " FROM cdc_price_history ORDER BY id"
    )
    got = [(k, op, o and json.loads(o), n and json.loads(n), by, via) for k, op, o, n, by, via, *_ in rows]
    assert got == [
        ("A", "c", None, {"price": "10.00"}, "alice", "snapshot"),
        ("A", "u", {"price": "10.00"}, {"price": "11.00"}, "bob", "stream"),
        ("Z", "c", None, {"price": "0.05"}, None, "stream"),
        ("Z", "u", {"price": "0.05"}, {"price": "0.06"}, "erin", "stream"),
        ("Z", "u", {"price": "0.06"}, {"price": "0.07"}, "fay", "stream"),
        ("A", "d", {"price": "11.00"}, None, None, "stream"),
    ]
    assert rows[1][6] == txid and rows[3][6] == rows[4][6]  # the POS transaction ids
    assert rows[1][7] < rows[2][7] < rows[3][7] == rows[4][7] < rows[5][7]  # commit LSNs in source order
    now = dt.datetime.now(dt.UTC)
    assert all(now - dt.timedelta(minutes=2) < row[8] <= now for row in rows)


BAD_STAGES = """\
name: pos-prices
source: {type: postgres, dsn: "host=pos", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku}}
  - {type: schedule, field: price, value: price, valid_from: promo_from, valid_to: promo_to}
  - type: schedule
    field: price
    value: promo_price
    valid_from: promo_from
    valid_to: promo_to
    timezone: Mars/Olympus_Mons
  - {type: guard, field: price}
  - {type: guard, field: price, max_change_pct: -5}
  - {type: guard, min: 1}
  - {type: pick, key: [sku], where: "channel == 'ONLINE'", store_field: store_id, store: 3}
  - {type: tax, field: price, direction: add, rate: 13, scale: 2}
  - {type: schedule, field: price, value: promo, valid_from: a}
sink:
  type: sql
  url: "sqlite:///x.db"
  table: product_price
  key: [sku]
  history: {changed_by: updated_by, fields: []}
"""


def test_invalid_stage_configs_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(BAD_STAGES))
    out = cdc("validate", path)
    assert out.returncode == 2, out.stdout
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    got = {}
    for line in lines:
        file, lineno, field, message = line.split(":", 3)
        assert file == str(path)
        got[int(lineno), field.strip()] = message.strip()
    expected = {
        (5, "transforms[schedule#2]"): "four different columns",
        (11, "transforms[schedule#3].timezone"): "unknown time zone 'Mars/Olympus_Mons'",
        (12, "transforms[guard#4]"): "guard needs at least one rule",
        (13, "transforms[guard#5].max_change_pct"): "max_change_pct must be 0 or more",
        (14, "transforms[guard#6]"): "need(s) field",
        (15, "transforms[pick#7]"): "either where",
        (16, "transforms[tax#8].rate"): "did you mean 0.13?",
        (17, "transforms[schedule#9].valid_to"): "Field required",
        (23, "sink.history.fields"): "at least 1 item",
    }
    assert set(got) == set(expected), lines
    for where, text in expected.items():
        assert text in got[where], (where, got[where])
