"""Crashes, stops and lost replication connections under load: nothing lost, never backwards, exact end state."""

from __future__ import annotations

import random
import time

import pytest

from cdc.config import load_config
from tests.integration.helpers import Running, wait_until
from tests.integration.support import (
    CdcProcess,
    Monitor,
    Writer,
    diff,
    fen,
    fill,
    held_rows,
    in_sync,
    pos_prices,
    price_config,
    slot_pids,
    store_prices,
)

pytestmark = pytest.mark.slow

WATCHED = "WATCHED"


def stored_position(env, name: str) -> str | None:
    try:
        rows = env.store("SELECT position FROM cdc_offsets WHERE connector = %s", name)
    except Exception:  # noqa: BLE001 - bookkeeping tables not created yet
        return None
    return rows[0][0] if rows else None


def wait_synced_process(env, proc: CdcProcess, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc.assert_alive("while catching up")
        if in_sync(env):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"storefront != POS after {timeout}s: {diff(pos_prices(env), store_prices(env))}\n"
        f"connector log:\n{proc.tail()}"
    )


def check_final_state(env, writer: Writer, monitor: Monitor) -> None:
    pos = pos_prices(env)
    store = store_prices(env)
    assert store == pos, diff(pos, store)
    assert pos[WATCHED] == fen(writer.watched_value)
    assert store[WATCHED] == fen(writer.watched_value)
    assert monitor.decreases == [], f"the watched price went backwards: {monitor.decreases[:10]}"
    assert monitor.vanished == 0, "the watched row disappeared from the storefront"
    assert held_rows(env) == []


def test_sigkill_20_times_during_50k_changes(env, tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"seed {seed}")
    fill(env, nkeys=1000, seed=seed)
    cfg = env.write_config(price_config(sink_extra=", batch_size: 200"))
    name = load_config(cfg).name
    log = tmp_path / "cdc.log"
    writer = Writer(env.pos_dsn, total_changes=50_000, nkeys=2000, rate=1100, watched=WATCHED, seed=seed)
    monitor = Monitor(env.store_dsn, WATCHED, interval=0.02)
    monitor.start()
    writer.start()
    time.sleep(0.5)
    kills_during_load = 0
    progressed = 0
    proc = None
    t0 = time.monotonic()
    try:
        for i in range(20):
            before = stored_position(env, name)
            proc = CdcProcess(cfg, log)
            time.sleep(rng.uniform(0.3, 3.0))
            proc.assert_alive(f"before kill #{i + 1}")
            writer.check()
            kills_during_load += writer.is_alive()
            proc.kill()
            progressed += stored_position(env, name) != before
        kill_phase = time.monotonic() - t0
        proc = CdcProcess(cfg, log)  # the last run: it catches up
        writer.finish(timeout=240)
        wait_synced_process(env, proc, timeout=180)
        rc, took = proc.terminate(timeout=15)
        assert rc == 0, f"SIGTERM: exit code {rc} after {took:.1f}s\n{proc.tail()}"
    finally:
        if proc is not None:
            proc.ensure_dead()
        writer.stop()
        monitor.stop()
    print(
        f"{writer.changes} changes in {writer.txns} transactions; kill phase {kill_phase:.0f}s; "
        f"{progressed} runs committed something; watched value seen {len(monitor.values)} times"
    )
    assert writer.changes >= 50_000
    assert kills_during_load == 20, "every kill should land while the writer is still writing"
    assert progressed >= 5, "most runs should get to commit something before they are killed"
    assert len(monitor.values) >= 20, "the monitor should see the watched price move while it runs"
    check_final_state(env, writer, monitor)


def test_walsender_terminated_during_load_reconnects_by_itself(env):
    fill(env, nkeys=500)
    cfg = env.write_config(price_config())
    app = f"pos-cdc:{load_config(cfg).name}"
    writer = Writer(env.pos_dsn, total_changes=12_000, nkeys=2000, rate=1000, watched=WATCHED, seed=5)
    monitor = Monitor(env.store_dsn, WATCHED)
    monitor.start()
    terminated: list[int] = []
    with Running(cfg) as r:
        try:
            wait_until(lambda: slot_pids(env, app), timeout=30, what="streaming", running=r)
            writer.start()
            for _ in range(4):
                time.sleep(1.5)
                pid = wait_until(lambda: slot_pids(env, app), timeout=30, what="walsender", running=r)[0]
                killed = env.pg.execute(
                    f"SELECT pid, pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = '{app}'"
                )
                assert killed == [(pid, True)]
                terminated.append(pid)
                # it comes back by itself, on a new walsender
                wait_until(
                    lambda pid=pid: [p for p in slot_pids(env, app) if p != pid],
                    timeout=30,
                    what="reconnect after pg_terminate_backend",
                    running=r,
                )
            assert writer.is_alive(), "the terminations should happen during the load"
            writer.finish(timeout=120)
            try:
                wait_until(lambda: in_sync(env), timeout=90, what="storefront == POS", running=r)
            except AssertionError as e:
                raise AssertionError(f"{e}: {diff(pos_prices(env), store_prices(env))}") from None
        finally:
            writer.stop()
            monitor.stop()
    assert len(terminated) == 4
    check_final_state(env, writer, monitor)


def test_sigterm_exits_0_quickly_and_a_restart_resumes(env, tmp_path):
    fill(env, nkeys=500)
    cfg = env.write_config(price_config())
    app = f"pos-cdc:{load_config(cfg).name}"
    log = tmp_path / "cdc.log"
    writer = Writer(env.pos_dsn, total_changes=8_000, nkeys=2000, rate=1000, watched=WATCHED, seed=9)
    monitor = Monitor(env.store_dsn, WATCHED)
    monitor.start()
    proc = CdcProcess(cfg, log)
    try:
        end = time.monotonic() + 30
        while not slot_pids(env, app) and time.monotonic() < end:
            proc.assert_alive("before streaming")
            time.sleep(0.05)
        writer.start()
        time.sleep(2.5)
        # SIGTERM in the middle of the load
        assert writer.is_alive()
        rc, took = proc.terminate(timeout=10)
        assert rc == 0 and took < 5, f"exit code {rc} after {took:.1f}s\n{proc.tail()}"
        assert slot_pids(env, app) == [] or wait_until(lambda: slot_pids(env, app) == [], timeout=10)
        assert "Traceback" not in log.read_text()
        time.sleep(1.0)  # the POS goes on while it is stopped
        proc = CdcProcess(cfg, log)
        writer.finish(timeout=120)
        wait_synced_process(env, proc, timeout=90)
        time.sleep(0.5)
        # SIGTERM when idle
        rc, took = proc.terminate(timeout=10)
        assert rc == 0 and took < 5, f"exit code {rc} after {took:.1f}s\n{proc.tail()}"
        # and a restart finds nothing to do and breaks nothing
        env.pos("UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", WATCHED)
        writer.watched_value += 1
        proc = CdcProcess(cfg, log)
        wait_synced_process(env, proc, timeout=60)
        rc, took = proc.terminate(timeout=10)
        assert rc == 0 and took < 5, f"exit code {rc} after {took:.1f}s\n{proc.tail()}"
    finally:
        proc.ensure_dead()
        writer.stop()
        monitor.stop()
    assert "Traceback" not in log.read_text()
    check_final_state(env, writer, monitor)
