"""The POS server misbehaves while the connector runs under load: restarted with a fast and with an immediate
(crash) shutdown, its walsender terminated; and the slot invalidated by max_slot_wal_keep_size while the
connector is stopped. The POS is a cluster of the test's own; the storefront is the session's."""

from __future__ import annotations

import time

import pytest

from cdc.config import load_config
from cdc.errors import TerminalError
from cdc.sources.pg_stream import WalStream
from tests.faults.faults import (
    WATCHED,
    CdcProcess,
    Monitor,
    SteadyWriter,
    Writer,
    check_end_state,
    fill,
    own_pos,
    wait_in_sync,
)
from tests.integration.helpers import wait_until
from tests.integration.support import pos_prices, price_config, slot_pids, store_prices
from tests.integration.support import run_cdc as cdc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_pos_server_restarted_under_load(env, tmp_path, mode):
    """pg_ctl stop -m fast (clients disconnected, a clean shutdown checkpoint) or -m immediate (a crash: the
    slot's state on disk may be older than what was confirmed, so the server sends transactions again that
    the storefront already has), twice each, while a writer commits through it."""
    cluster = own_pos(env)
    try:
        fill(env, nkeys=500)
        cfg = env.write_config(price_config())
        app = f"pos-cdc:{load_config(cfg).name}"
        writer = SteadyWriter(env.pos_dsn, total_changes=10**9, nkeys=2000, rate=600, watched=WATCHED)
        monitor = Monitor(env.store_dsn, WATCHED)
        proc = CdcProcess(cfg, tmp_path / "cdc.log")
        monitor.start()
        try:
            wait_until(lambda: proc.alive and slot_pids(env, app), timeout=30, what="streaming")
            writer.start()
            for _ in range(2):
                time.sleep(2.0)
                cluster.stop(mode)
                time.sleep(1.0)  # the POS is away: the connector retries with backoff
                proc.assert_alive("while the POS was down")
                cluster.start()
                wait_until(lambda: writer.reconnects and slot_pids(env, app), timeout=60, what="reconnect")
                proc.assert_alive("after the POS came back")
            time.sleep(2.0)
            writer.stop()
            writer.finish(timeout=30)
            took = wait_in_sync(env, [proc], timeout=90)
            rc, _ = proc.terminate(timeout=15)
            assert rc == 0, proc.tail()
        finally:
            proc.ensure_dead()
            writer.stop()
            monitor.stop()
        log = proc.log_path.read_text()
        print(
            f"{mode}: {writer.changes} changes, writer reconnected {writer.reconnects}x, in sync after {took:.1f}s"
        )
        assert "Traceback" not in log
        assert writer.changes > 2000
        check_end_state(env, monitor)
    finally:
        cluster.destroy()


def test_walsender_terminated_under_load(env, tmp_path):
    """pg_terminate_backend of the walsender (what a DBA or a failover tool does): the connector reconnects
    by itself, three times."""
    fill(env, nkeys=500)
    cfg = env.write_config(price_config())
    app = f"pos-cdc:{load_config(cfg).name}"
    writer = Writer(env.pos_dsn, total_changes=10**9, nkeys=2000, rate=800, watched=WATCHED, seed=3)
    monitor = Monitor(env.store_dsn, WATCHED)
    proc = CdcProcess(cfg, tmp_path / "cdc.log")
    monitor.start()
    terminated = []
    try:
        wait_until(lambda: proc.alive and slot_pids(env, app), timeout=30, what="streaming")
        writer.start()
        for _ in range(3):
            time.sleep(1.5)
            (pid,) = wait_until(lambda: slot_pids(env, app), timeout=30, what="a walsender")
            assert env.pg.execute(f"SELECT pg_terminate_backend({pid})") == [(True,)]
            terminated.append(pid)
            wait_until(
                lambda pid=pid: [p for p in slot_pids(env, app) if p != pid], timeout=30, what="reconnect"
            )
            proc.assert_alive()
        writer.stop()
        writer.finish(timeout=30)
        wait_in_sync(env, [proc], timeout=60)
        rc, _ = proc.terminate(timeout=15)
        assert rc == 0, proc.tail()
    finally:
        proc.ensure_dead()
        writer.stop()
        monitor.stop()
    assert len(set(terminated)) == 3
    check_end_state(env, monitor, writer.watched_value)


def test_slot_invalidated_while_stopped_refuses_to_start_and_says_how_to_recover(env, tmp_path):
    """max_slot_wal_keep_size lets the server remove WAL a stopped connector's slot still needs: the slot is
    invalidated (wal_status = lost) and its changes are gone. `cdc run` refuses to start, naming the recovery:
    `cdc run --resnapshot` copies the tables anew, and `cdc reconcile --repair` beside it removes the rows
    deleted on the POS meanwhile (a copy cannot see them); then the storefront is exactly the POS."""
    cluster = own_pos(env, settings={"max_slot_wal_keep_size": "'1MB'", "max_wal_size": "'64MB'"})
    try:
        fill(env, nkeys=500)
        cfg = env.write_config(price_config())
        name = load_config(cfg).name
        log = tmp_path / "cdc.log"
        monitor = Monitor(env.store_dsn, WATCHED)
        monitor.start()
        proc = CdcProcess(cfg, log)
        try:
            wait_in_sync(env, [proc], timeout=60)
            assert proc.terminate(timeout=15)[0] == 0
            # while it is stopped: changes (deletes too), and WAL past what the slot may keep
            env.pos("UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", WATCHED)
            env.pos("DELETE FROM item_price WHERE item_code IN (SELECT item_code FROM item_price LIMIT 20)"
                    " AND item_code <> %s", WATCHED)  # fmt: skip
            env.pos("UPDATE item_price SET price_fen = price_fen * 2 WHERE item_code LIKE 'K01%%'")
            for _ in range(4):
                env.pos("INSERT INTO item_price SELECT 'X' || g, g FROM generate_series(1, 2000) g")
                env.pos("DELETE FROM item_price WHERE item_code LIKE 'X%%'")
                cluster.execute("SELECT pg_switch_wal()")
            cluster.execute("CHECKPOINT")
            status = cluster.execute(
                f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'cdc_{name}'"
            )
            assert status == [("lost",)], status

            res = cdc("run", str(cfg))
            assert res.returncode == 1, res
            err = res.stderr.strip()
            print(err)
            lines = [line for line in err.splitlines() if "logger=cdc.hotpath" not in line]  # (the start's)
            assert len(lines) == 1 and "Traceback" not in err, err
            assert "lost" in err and f"`cdc run {cfg} --resnapshot`" in err, err
            assert f"`cdc reconcile {cfg} --repair`" in err and "docs/faults.md" in err, err
            # a connector that was streaming when its slot was lost says the same when it reconnects
            stream = WalStream(load_config(cfg), "pos").stream(0)
            with pytest.raises(TerminalError, match=r"has lost WAL it needed .*--resnapshot.*invalidated"):
                next(stream)

            # the recovery docs/faults.md gives: re-snapshot, then (while it runs) reconcile --repair
            proc = CdcProcess(cfg, log, "--resnapshot")
            wait_until(lambda: proc.alive and slot_pids(env, f"pos-cdc:{name}"), timeout=60, what="streaming")
            extra = set(store_prices(env)) - set(pos_prices(env))
            assert len(extra) == 20, "the copy cannot see the rows deleted while the slot was lost"
            env.pos("UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", WATCHED)
            res = cdc("reconcile", str(cfg), "--repair")
            assert res.returncode == 0, res.stdout + res.stderr
            assert "20 deleted" in res.stdout, res.stdout
            took = wait_in_sync(env, [proc], timeout=60)
            assert proc.terminate(timeout=15)[0] == 0
        finally:
            proc.ensure_dead()
            monitor.stop()
        print(f"re-snapshot in sync after {took:.1f}s")
        check_end_state(env, monitor)
    finally:
        cluster.destroy()
