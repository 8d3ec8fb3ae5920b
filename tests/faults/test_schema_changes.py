"""The POS table's schema changes while the connector streams: a column added, dropped, renamed; a table added
to the publication. Each either flows correctly or stops the connector with a message that says what to do —
never a wrong row in the storefront."""

from __future__ import annotations

import time

import pytest

from cdc.config import load_config
from tests.faults.faults import WATCHED, Monitor, Writer, check_end_state, fill
from tests.faults.test_pos_server import cdc
from tests.integration.helpers import Running, wait_until
from tests.integration.support import diff, fen, held_rows, in_sync, pos_prices, price_config, store_prices

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def synced(env, r: Running, timeout: float = 60) -> None:
    try:
        wait_until(lambda: in_sync(env), timeout=timeout, what="storefront == POS", running=r)
    except AssertionError as e:
        raise AssertionError(f"{e}: {diff(pos_prices(env), store_prices(env))}") from None


def under_load(env, seed: int) -> tuple[Writer, Monitor]:
    writer = Writer(env.pos_dsn, total_changes=10**9, nkeys=2000, rate=400, watched=WATCHED, seed=seed)
    monitor = Monitor(env.store_dsn, WATCHED)
    monitor.start()
    writer.start()
    return writer, monitor


def test_column_added_and_dropped_mid_stream_flow(env):
    fill(env, nkeys=500)
    cfg = env.write_config(price_config())
    with Running(cfg) as r:
        synced(env, r)
        writer, monitor = under_load(env, seed=21)
        try:
            time.sleep(1)
            env.pos("ALTER TABLE item_price ADD COLUMN note text DEFAULT 'new'")
            time.sleep(1)
            env.pos("UPDATE item_price SET note = 'x', price_fen = price_fen + 1 WHERE item_code < 'K0100'")
            time.sleep(1)
            env.pos("ALTER TABLE item_price DROP COLUMN note")
            time.sleep(1)
            writer.stop()
            writer.finish(timeout=30)
            synced(env, r)
        finally:
            writer.stop()
            monitor.stop()
    check_end_state(env, monitor, writer.watched_value)


def test_price_column_renamed_mid_stream_is_held_then_recovered(env):
    """price_fen renamed to price_cents: the config's rename stage no longer finds price_fen, so the money stage
    finds no price: each change is dead-lettered with that reason, the storefront keeps its rows (none written
    without its price). The recovery docs/faults.md gives: rename in the config, restart, drop the dead
    letters (they cannot be retried) and `cdc reconcile --repair`; then the storefront is exactly the POS."""
    fill(env, nkeys=200)
    cfg = env.write_config(price_config())
    with Running(cfg) as r:
        synced(env, r)
        before = store_prices(env)
        env.pos("ALTER TABLE item_price RENAME COLUMN price_fen TO price_cents")
        env.pos("UPDATE item_price SET price_cents = price_cents + 7 WHERE item_code = %s", WATCHED)
        env.pos("UPDATE item_price SET price_cents = 1 WHERE item_code IN ('K0000', 'K0010')")
        wait_until(lambda: len(held_rows(env)) == 3, running=r, what="3 dead letters")
        time.sleep(1)
    held = held_rows(env)
    assert {(kind, key, reason) for kind, _, key, _, _, reason in held} == {
        ("dead_letter", k, "price is missing from the row") for k in (WATCHED, "K0000", "K0010")
    }, held
    assert store_prices(env) == before, "no row may change after the rename"

    fixed = cfg.read_text().replace("price_fen: price", "price_cents: price")
    cfg.write_text(fixed)
    env.pos("UPDATE item_price SET price_cents = price_cents + 1 WHERE item_code = %s", WATCHED)
    with Running(cfg) as r:
        wait_until(lambda: store_prices(env)[WATCHED] == renamed(env)[WATCHED], running=r, what="flowing")
        # a dead letter keeps the change as it reached the stage that refused it (renamed already, without a
        # price): retrying it cannot help, so it is dropped and the rows are repaired from the POS
        ids = [i for (i,) in env.store("SELECT id FROM cdc_held WHERE status = 'held' ORDER BY id")]
        assert len(ids) == 3
        for i in ids:
            res = cdc("deadletter", str(cfg), "drop", str(i), "--by", "test")
            assert res.returncode == 0, res.stderr
        res = cdc("reconcile", str(cfg), "--repair")
        assert res.returncode == 0 and "2 upserted" in res.stdout, res.stdout + res.stderr
        wait_until(lambda: store_prices(env) == renamed(env), running=r, what="storefront == POS")
    assert store_prices(env) == renamed(env), diff(renamed(env), store_prices(env))


def renamed(env) -> dict:
    return {code: fen(p) for code, p in env.pos("SELECT item_code, price_cents FROM item_price")}


def test_table_added_to_the_publication_mid_stream(env, caplog):
    """A DBA adds another table to the connector's publication: its rows are not the storefront table's, and
    were written into it (K0000 got other_price's price, ZZZ appeared). Now a table not in source.tables is
    skipped, said once in the log with what to do."""
    fill(env, nkeys=200)
    cfg = env.write_config(price_config())
    pub = load_config(cfg).publication
    env.pos("CREATE TABLE other_price (item_code text PRIMARY KEY, price_fen bigint NOT NULL)")
    with Running(cfg) as r:
        synced(env, r)
        env.pos(f"ALTER PUBLICATION {pub} ADD TABLE other_price")
        env.pos("INSERT INTO other_price VALUES ('K0000', 1), ('ZZZ', 2)")
        env.pos("UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", "WATCHED")
        time.sleep(3)
        r.check()
        synced(env, r)
    assert "ZZZ" not in store_prices(env)
    said = [m.getMessage() for m in caplog.records if "public.other_price" in m.getMessage()]
    assert len(said) == 1 and "not in source.tables: skipped" in said[0], said
