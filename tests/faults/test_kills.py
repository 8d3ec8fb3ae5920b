"""SIGKILL at random points of a mixed workload (single- and multi-row transactions of inserts, updates and
deletes, now and then one of 100-300 rows): direct (POS PostgreSQL -> PostgreSQL storefront), and once over
Kafka with the sink connector killed. Nothing lost, never backwards, the storefront exactly the POS."""

from __future__ import annotations

import os
import random
import time

import pytest

from cdc.config import load_config
from tests.faults.faults import WATCHED, CdcProcess, Monitor, Writer, check_end_state, fill, wait_in_sync
from tests.integration.helpers import wait_until
from tests.integration.kafka_support import Hop
from tests.integration.support import POS_TABLE, STORE_TABLE, price_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

# The 50 kills: each run of `cdc run` needs ~1 s to start (interpreter, imports, connect) and a kill is
# worth something only once the connector streams, so the kills come 0.6-2.5 s after each start: ~85 s of the
# fault suite's ~8 minute budget on 2 cores. FAULT_KILLS=N runs another count.
KILLS = 50


def stored_position(env, name: str) -> str | None:
    try:
        rows = env.store("SELECT position FROM cdc_offsets WHERE connector = %s", name)
    except Exception:  # noqa: BLE001 - the bookkeeping tables are not there before the first run
        return None
    return rows[0][0] if rows else None


def test_sigkill_at_random_points_of_a_mixed_workload(env, tmp_path):
    kills = int(os.environ.get("FAULT_KILLS", KILLS))
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"seed {seed}")
    fill(env, nkeys=1000, seed=seed)
    cfg = env.write_config(price_config(sink_extra=", batch_size: 200"))
    name = load_config(cfg).name
    log = tmp_path / "cdc.log"
    writer = Writer(env.pos_dsn, total_changes=10**9, nkeys=2000, rate=800, watched=WATCHED, seed=seed)
    monitor = Monitor(env.store_dsn, WATCHED, interval=0.02)
    monitor.start()
    writer.start()
    progressed, proc, t0 = 0, None, time.monotonic()
    try:
        for i in range(kills):
            before = stored_position(env, name)
            proc = CdcProcess(cfg, log)
            time.sleep(rng.uniform(0.6, 2.5))
            proc.assert_alive(f"before kill #{i + 1}")
            writer.check()
            assert writer.is_alive()
            proc.kill()
            progressed += stored_position(env, name) != before
        kill_phase = time.monotonic() - t0
        writer.stop()
        writer.finish(timeout=30)
        proc = CdcProcess(cfg, log)  # the last run catches up
        caught_up = wait_in_sync(env, [proc], timeout=120)
        proc.wait_for("streaming from slot")  # in sync may be true before it even started: a SIGTERM then
        rc, took = proc.terminate(timeout=15)  # would find Python still importing, with no handler yet
        assert rc == 0, f"SIGTERM: exit code {rc} after {took:.1f}s\n{proc.tail()}"
    finally:
        if proc is not None:
            proc.ensure_dead()
        writer.stop()
        monitor.stop()
    print(
        f"{kills} kills in {kill_phase:.0f}s; {writer.changes} changes in {writer.txns} transactions; "
        f"{progressed} runs committed something; caught up {caught_up:.1f}s after the last start; "
        f"watched value seen {len(monitor.values)} times"
    )
    assert progressed >= kills // 2, "most runs should commit something before they are killed"
    assert len(monitor.values) >= kills, "the monitor should see the watched price move"
    check_end_state(env, monitor, writer.watched_value)


def assigned(proc: CdcProcess) -> bool:
    """Whether this run of the sink connector got its partitions (its log since it started says so)."""
    run = proc.log_path.read_text(errors="replace").rsplit("===== cdc run started", 1)[-1]
    return ".public.item_price:0@" in run


def test_kafka_sink_connector_killed_while_it_applies(env, kafka, tmp_path):
    """The POS connector streams to Kafka throughout; the sink connector is killed 3 times, each time at a
    random moment after its group gave it the partitions and it applied something. A killed member stays in
    the group until its session times out (6 s here, the broker's minimum; kafka-python's default is 10 s),
    which is what each restart waits for."""
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"seed {seed}")
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    env.pos(
        "INSERT INTO item_price SELECT 'K' || lpad(i::text, 4, '0'), i * 7 FROM generate_series(0, 499) i"
    )
    env.pos("INSERT INTO item_price VALUES (%s, 0)", WATCHED)
    hop = Hop(env, kafka)
    text = hop.k2s.read_text()
    quick = "client: kafka-python, options: {session_timeout_ms: 6000, heartbeat_interval_ms: 1000}}"
    hop.k2s.write_text(text.replace("client: kafka-python}", quick, 1))
    assert quick in hop.k2s.read_text()
    writer = Writer(env.pos_dsn, total_changes=10**9, nkeys=2000, rate=500, watched=WATCHED, seed=seed)
    monitor = Monitor(env.store_dsn, WATCHED, interval=0.02)
    p2k = CdcProcess(hop.p2k, tmp_path / "p2k.log")
    k2s = CdcProcess(hop.k2s, tmp_path / "k2s.log")
    monitor.start()
    writer.start()
    kills = 0
    try:
        for i in range(3):
            wait_until(lambda k2s=k2s: assigned(k2s) or not k2s.alive, timeout=60, what="partitions")
            k2s.assert_alive("joining the group")
            seen = len(monitor.values)
            wait_until(lambda seen=seen: len(monitor.values) > seen, timeout=30, what="applying")
            time.sleep(rng.uniform(0.1, 1.5))
            k2s.assert_alive(f"before kill #{i + 1}")
            p2k.assert_alive()
            k2s.kill()
            kills += 1
            k2s = CdcProcess(hop.k2s, tmp_path / "k2s.log")
        wait_until(lambda: assigned(k2s) or not k2s.alive, timeout=60, what="partitions")
        time.sleep(1)
        writer.stop()
        writer.finish(timeout=30)
        took = wait_in_sync(env, [p2k, k2s], timeout=120)
        for p in (k2s, p2k):
            rc, _ = p.terminate(timeout=15)
            assert rc == 0, p.tail()
    finally:
        for p in (k2s, p2k):
            p.ensure_dead()
        writer.stop()
        monitor.stop()
    print(
        f"{kills} kills of the sink connector; {writer.changes} changes; in sync {took:.1f}s after the writer"
    )
    check_end_state(env, monitor, writer.watched_value)
