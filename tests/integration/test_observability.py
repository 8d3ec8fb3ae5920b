"""Heartbeats keep the slot moving while the captured tables are idle; `cdc status` reads slot and bookkeeping;
the metrics endpoint serves the contract's names; `cdc run` says at start whether its hot modules run compiled."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

from cdc import hotpath
from cdc.localpg import free_port
from cdc.metrics import Metrics
from tests.integration.helpers import Running, wait_until
from tests.integration.support import CdcProcess

CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price], heartbeat_interval_s: 1}
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price}}
  - {type: money, field: price, divide_by: 100, scale: 2}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku]}
"""


def setup_tables(env):
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint)")
    env.pos("INSERT INTO item_price VALUES ('A', 100)")
    env.store("CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))")


def retained(env, slot):
    rows = env.pos(
        "SELECT pg_current_wal_lsn() - restart_lsn, pg_current_wal_lsn() - confirmed_flush_lsn "
        "FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )
    return rows[0]


def test_idle_slot_advances_while_other_database_writes_wal(env, pg):
    setup_tables(env)
    other = f"other_{env.name}"
    pg.create_database(other)
    with Running(env.write_config(CONFIG)) as r:
        wait_until(lambda: env.store("SELECT count(*) FROM product_price")[0][0] == 1, running=r)
        slot = r.cfg.slot
        # ~200 MB of WAL in another database on the same server; the captured table stays idle
        for _ in range(4):
            pg.execute(
                "CREATE TABLE IF NOT EXISTS junk (g int, pad text); "
                "INSERT INTO junk SELECT g, repeat(md5(g::text), 15) FROM generate_series(1, 100000) g",
                dbname=other,
            )
        written = pg.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0]
        assert written > 200 * 1024 * 1024
        bound = 32 * 1024 * 1024
        wait_until(
            lambda: retained(env, slot)[1] < bound,
            timeout=30,
            what="confirmed position to follow the server",
            running=r,
        )
        # restart_lsn moves when the server logs a running-xacts record (bgwriter, ~15 s) past the confirmation
        pg.execute("CHECKPOINT")
        wait_until(
            lambda: retained(env, slot)[0] < bound, timeout=60, what="retained WAL under 32 MB", running=r
        )
        r.pipeline.refresh_source_gauges()
        gauge = r.pipeline.metrics.retained_wal_bytes.labels(r.cfg.name)._value.get()
        assert 0 <= gauge < bound


def cdc(*args):
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_status_running_and_stopped(env):
    setup_tables(env)
    path = env.write_config(CONFIG)
    out = cdc("status", str(path), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "not_started"
    with Running(path) as r:
        wait_until(lambda: env.store("SELECT count(*) FROM product_price")[0][0] == 1, running=r)
        env.pos("UPDATE item_price SET price_fen = 150")
        wait_until(lambda: env.store("SELECT price FROM product_price")[0][0] == 1.5, running=r)
        out = cdc("status", str(path), "--json")
        info = json.loads(out.stdout)
        assert info["state"] == "running", info
        assert info["position"]["end_lsn"]
        assert info["slot_active"] is True
        assert info["source_lag_bytes"] >= 0 and info["retained_wal_bytes"] >= 0
        assert info["last_commit_time"] and info["last_applied_change_time"]
        assert info["hot_path_installed"] == hotpath.summary()
    info = json.loads(cdc("status", str(path), "--json").stdout)
    assert info["state"] == "stopped"
    assert info["lag_seconds"] == 0.0
    # stopped with a change waiting (as after a kill -9): the lag is that change's age, however few bytes
    env.pos("UPDATE item_price SET price_fen = 160")
    time.sleep(2)
    info = json.loads(cdc("status", str(path), "--json").stdout)
    assert info["state"] == "stopped"
    assert 2 <= info["lag_seconds"] < 30, info
    text = cdc("status", str(path))
    assert text.returncode == 0 and "stopped" in text.stdout
    # read by a person: the position as LSNs, empty values as "-", never raw JSON or None
    assert "commit_lsn " in text.stdout and "{" not in text.stdout and "None" not in text.stdout


def test_metrics_endpoint_serves_contract_names(env):
    setup_tables(env)
    metrics = Metrics()
    port = free_port()
    server = metrics.serve(port)
    try:
        with Running(env.write_config(CONFIG), metrics=metrics) as r:
            wait_until(lambda: env.store("SELECT count(*) FROM product_price")[0][0] == 1, running=r)
            env.pos("UPDATE item_price SET price_fen = 150")
            wait_until(lambda: env.store("SELECT price FROM product_price")[0][0] == 1.5, running=r)
            health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            assert health.status == 200
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for name in (
            "cdc_source_lag_bytes",
            "cdc_replication_slot_retained_wal_bytes",
            "cdc_end_to_end_lag_seconds",
            "cdc_end_to_end_latency_seconds_bucket",
            "cdc_events_total",
            "cdc_sink_batch_seconds_bucket",
            "cdc_connector_up",
            "cdc_last_commit_timestamp_seconds",
            "cdc_hot_path_info",
        ):
            assert f'{name}{{connector="{r.cfg.name}"' in body or f"{name}{{" in body, name
        assert f'cdc_events_total{{connector="{r.cfg.name}",op="u",table="public.item_price"}} 1.0' in body
        assert f'cdc_hot_path_info{{connector="{r.cfg.name}",path="{hotpath.path()}"}} 1.0' in body
    finally:
        server.shutdown()


def test_cdc_run_logs_which_hot_path_runs(env, tmp_path):
    """One line at start: the compiled modules (and Cython's version), or pure Python and why."""
    setup_tables(env)
    proc = CdcProcess(env.write_config(CONFIG), tmp_path / "run.log")
    try:
        proc.wait_for(f"level=INFO thread=MainThread logger=cdc.hotpath hot path: {hotpath.summary()}\n")
        wait_until(lambda: env.store("SELECT count(*) FROM product_price")[0][0] == 1)
    finally:
        rc, _ = proc.terminate(30)
    assert rc == 0, proc.tail()
