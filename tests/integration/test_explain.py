"""`cdc explain CONFIG KEY`: each verdict produced by a real scenario on real databases, with the sections that
lead to it (POS rows through the stages, storefront row and last change, held entries, connector)."""

from __future__ import annotations

import json
from decimal import Decimal as D

from tests.integration.helpers import Running, wait_until
from tests.integration.pricing import GUARD, cdc, held, prices, put, setup


def explain(path, key: str) -> tuple[int, dict]:
    out = cdc("explain", path, key, "--json")
    assert out.returncode in (0, 1, 2), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_verdicts_while_the_connector_runs(env):
    path = setup(env)
    put(env, "A", 1000, cost=500)
    put(env, "B", 500, cost=100)
    put(env, "S", 700, channel="STORE")  # a shop's own row: the pick keeps only ONLINE rows
    with Running(path) as r:
        wait_until(lambda: prices(env.store) == {"A": D("10.00"), "B": D("5.00")}, running=r, what="snapshot")
        code, info = explain(path, "A")
        assert (code, info["verdict"]) == (0, "in sync"), info
        (row,) = info["pos"]["rows"]
        assert row["table"] == "public.item_price" and row["row"]["item_code"] == "A"
        did = {s["stage"]: s["did"] for s in row["stages"]}
        assert "renamed item_code to sku" in did["rename#1"] and "price: 1000 -> '10.00'" in did["money#4"]
        assert row["result"]["row"] == {"sku": "A", "price": "10.00"}
        last = info["storefront"]["last_applied"]
        assert last["via"] == "snapshot" and last["position"].count("/") == 1 and "#" in last["position"]

        code, info = explain(path, "S")
        assert code == 0 and info["verdict"].startswith("filtered out by pick#2"), info
        assert "channel == 'ONLINE'" in info["verdict"] and "channel = 'STORE'" in info["verdict"]

        code, info = explain(path, "NOPE")
        assert (code, info["verdict"]) == (0, "no such key in the POS (nor in the storefront)")

        put(env, "A", 100, cost=500, by="bob")  # below cost: quarantined
        wait_until(lambda: len(held(env.store)) == 1, running=r, what="A quarantined")
        code, info = explain(path, "A")
        assert code == 1 and info["verdict"].startswith("held: price 1.00 is below cost 5.00 (quarantine "), (
            info
        )
        entry = held(env.store)[0][0]
        assert f"quarantine {entry}, since " in info["verdict"]
        assert [h["status"] for h in info["held"]] == ["held"]

        assert cdc("quarantine", path, "reject", str(entry), "--by", "ana").returncode == 0
        code, info = explain(path, "A")
        assert code == 1 and info["verdict"].startswith("rejected by ana at "), info
        assert info["verdict"].endswith(f"(quarantine {entry})")

        put(env, "A", 1100, cost=500)  # a newer good price: in sync again, the rejection is history
        wait_until(lambda: prices(env.store)["A"] == D("11.00"), running=r)
        code, info = explain(path, "A")
        assert (code, info["verdict"]) == (0, "in sync"), info
        assert [h["status"] for h in info["held"]] == ["rejected"]

        env.store("UPDATE product_price SET price = 27.00 WHERE sku = 'B'")  # behind pos-cdc's back
        code, info = explain(path, "B")
        assert code == 1 and info["verdict"] == (
            "storefront changed behind pos-cdc's back: price 27.00 there, price 5.00 from the POS "
            f"(run cdc reconcile {path} --repair)"
        ), info
        assert info["connector_state"]["state"] == "running"
    # stopped: a change waits in the slot
    put(env, "B", 900, cost=100)
    code, info = explain(path, "B")
    assert code == 1 and info["verdict"].startswith("connector not running since "), info
    assert "of WAL waiting" in info["verdict"]


def test_a_table_missing_from_the_publication_and_a_guard_that_would_hold(env):
    path = setup(env)
    env.pos("CREATE TABLE other (id int PRIMARY KEY)")
    name = path.read_text().split("name: ", 1)[1].split("\n", 1)[0]
    env.pos(f"CREATE PUBLICATION cdc_{name.lower()} FOR TABLE other")  # a DBA's, without item_price
    put(env, "A", 1000, cost=500)
    code, info = explain(path, "A")
    assert (
        code == 1 and info["verdict"] == f"table public.item_price is not in publication cdc_{name.lower()}"
    )
    env.pos(f"ALTER PUBLICATION cdc_{name.lower()} ADD TABLE item_price")
    put(env, "A", 1, cost=500)  # the connector never ran: the guard would hold it now
    code, info = explain(path, "A")
    assert (
        code == 1
        and info["verdict"] == f"would be held now by {GUARD}:not_below: price 0.01 is below cost 5.00"
    ), info
    text = cdc("explain", path, "A")
    assert text.returncode == 1 and "verdict: would be held now" in text.stdout
    assert "renamed item_code to sku" in text.stdout


def test_not_applied_yet_while_the_storefront_is_locked(env):
    """The connector runs but cannot write (a lock held on the storefront table) while the POS moves on."""
    import psycopg

    path = setup(env)
    put(env, "A", 1000, cost=500)
    env.pos("INSERT INTO item_price SELECT 'F' || i, 0, 'ONLINE', 100, 50 FROM generate_series(1, 20000) i")
    with Running(path) as r:
        wait_until(lambda: len(prices(env.store)) == 20001, running=r, what="snapshot", timeout=60)
        with psycopg.connect(env.store_dsn) as blocker:
            blocker.execute("LOCK TABLE product_price IN SHARE MODE")  # writes wait, reads do not
            env.pos("UPDATE item_price SET price_fen = price_fen + 1")  # megabytes of WAL waiting
            put(env, "A", 1100, cost=500)
            wait_until(lambda: explain(path, "A")[1]["verdict"].startswith("not applied yet"), timeout=60)
            code, info = explain(path, "A")
            assert code == 1 and " s behind" in info["verdict"], info
            blocker.rollback()
        wait_until(lambda: prices(env.store)["A"] == D("11.00"), running=r, timeout=60)
    assert explain(path, "A")[0] == 0
