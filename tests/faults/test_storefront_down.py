"""The storefront database down for 30 s under load (longer than several retry backoffs: 0.5, 1, 2, 4, 8 s
with jitter): the connector retries, does not exit, loses nothing, and catches up when it returns. The backoff
in progress when the storefront returns runs out first: here the first change after it came back was applied
1-24 s later (the wait of the retry then pending, 16 s * jitter 0.5-1.5 at the sixth attempt)."""

from __future__ import annotations

import re
import time

import pytest

from tests.faults.faults import (
    WATCHED,
    CdcProcess,
    SteadyMonitor,
    Writer,
    check_end_state,
    fill,
    own_store,
    wait_in_sync,
)
from tests.integration.support import price_config, store_prices

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DOWN_S = 30


def test_storefront_down_30s_under_load(env, tmp_path):
    cluster = own_store(env)
    try:
        fill(env, nkeys=500)
        cfg = env.write_config(price_config())
        writer = Writer(env.pos_dsn, total_changes=10**9, nkeys=2000, rate=500, watched=WATCHED, seed=11)
        monitor = SteadyMonitor(env.store_dsn, WATCHED)
        proc = CdcProcess(cfg, tmp_path / "cdc.log")
        monitor.start()
        try:
            wait_in_sync(env, [proc], timeout=60)
            writer.start()
            time.sleep(2)
            cluster.stop("fast")
            changes_before = writer.changes
            time.sleep(DOWN_S)
            proc.assert_alive(f"after {DOWN_S}s without the storefront: it must wait for it, not exit")
            during = writer.changes - changes_before
            cluster.start()
            back = time.monotonic()
            seen = len(monitor.values)
            while len(monitor.values) == seen and time.monotonic() - back < 60:
                time.sleep(0.05)
            resumed = time.monotonic() - back
            time.sleep(2)
            writer.stop()
            writer.finish(timeout=30)
            wait_in_sync(env, [proc], timeout=90)
            rc, _ = proc.terminate(timeout=15)
            assert rc == 0, proc.tail()
        finally:
            proc.ensure_dead()
            writer.stop()
            monitor.stop()
        log = proc.log_path.read_text()
        waits = [float(w) for w in re.findall(r"attempt \d+ failed, next in ([0-9.]+)s", log)]
        print(f"{during} POS changes while the storefront was down; retries waited {waits}; "
              f"the watched price moved again {resumed:.1f}s after it came back")  # fmt: skip
        assert during > 2000, "the POS should go on while the storefront is down"
        assert len(waits) >= 4, f"the connector should retry with backoff while it is down: {waits}"
        assert sum(waits[:3]) < DOWN_S, f"the outage must outlast several backoffs: {waits}"
        assert "Traceback" not in log
        assert store_prices(env)
        check_end_state(env, monitor, writer.watched_value)
    finally:
        cluster.destroy()


def test_a_storefront_connection_dropped_in_a_transaction_is_given_back_without_a_traceback(env, caplog):
    """The outage test's log once held SQLAlchemy's 'Exception during reset or similar' with three tracebacks:
    the pool rolled back the dead connection (which failed in a statement sent on psycopg's own connection, as
    the small-commit path sends them) before closing it. Closing it ends its transaction anyway."""
    import psycopg

    from cdc.sinks.sql.storefront import Storefront

    store = Storefront(env.store_url, "c")
    store.open()
    conn = store.connect()
    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    conn.commit()
    env.store("SELECT pg_terminate_backend(%s)", pid)
    pg = conn.connection.driver_connection  # as pg_merge's commit_small uses it: one simple query, autocommit
    pg.autocommit = True
    with pytest.raises(psycopg.OperationalError):
        pg.execute("BEGIN; SELECT 1; COMMIT")
    with pytest.raises(psycopg.OperationalError):
        pg.autocommit = False
    store.close()  # what the pipeline does with the sink after a failed commit
    noisy = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    assert noisy == []
