"""What the fault tests share: the POS on a cluster of the test's own (to stop, crash or starve it without
harming other tests), a writer that outlives a POS restart, a poller of a process's peak memory, and the one
end check of every fault: the storefront equals the POS exactly and the watched key never went backwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from cdc.localpg import LocalPostgres
from tests.integration.support import (
    CdcProcess,
    Monitor,
    Writer,
    diff,
    fill,
    held_rows,
    in_sync,
    pos_prices,
    store_prices,
)

WATCHED = "WATCHED"


def own_pos(env, settings: dict | None = None) -> LocalPostgres:
    """Moves env's POS to a cluster of its own (the storefront stays on the session's): the caller destroys
    it. env.pg then names that cluster, so support.slot_pids sees its walsenders."""
    cluster = LocalPostgres(settings=settings).start()
    env.pos_dsn = cluster.create_database("pos")
    env.pos_db = "pos"
    env.pg = cluster
    return cluster


class SteadyWriter(Writer):
    """support.Writer that outlives its POS going away: when the connection breaks (a shutdown, a crash) it
    reconnects and goes on, the outcome of the transaction in flight read back from the POS (present keys
    and the watched value are loaded again), so the POS's own rows stay the truth."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.reconnects = 0

    def run(self) -> None:
        start = time.monotonic()
        while self.changes < self.total and not self._halt.is_set():
            try:
                with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                    self.load_present(conn)
                    conn.commit()
                    while self.changes < self.total and not self._halt.is_set():
                        self._running.wait()
                        self._one_txn(conn)
                        if self.rate:
                            ahead = self.changes / self.rate - (time.monotonic() - start)
                            if ahead > 0:
                                time.sleep(ahead)
            except psycopg.OperationalError:
                self.reconnects += 1
                time.sleep(0.2)
            except BaseException as e:  # noqa: BLE001 - surfaced by check()
                self.error = e
                return


class SteadyMonitor(Monitor):
    """support.Monitor that outlives its storefront going away: polls again once it is back."""

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                super().run()
            finally:
                if isinstance(self.error, psycopg.OperationalError):
                    self.error = None
                    time.sleep(0.2)
            if self.error is not None:
                return


def own_store(env) -> LocalPostgres:
    """Moves env's storefront to a cluster of its own (to stop it): the caller destroys it."""
    cluster = LocalPostgres().start()
    env.store_dsn = cluster.create_database("shop")
    env.store_url = cluster.url("shop")
    return cluster


def wait_in_sync(env, procs: list[CdcProcess], timeout: float) -> float:
    """Until the storefront holds exactly the POS's prices, every process alive meanwhile; -> seconds taken."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for p in procs:
            p.assert_alive("while catching up")
        if in_sync(env):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(
        f"storefront != POS after {timeout}s: {diff(pos_prices(env), store_prices(env))}\n"
        + "\n".join(p.tail(20) for p in procs)
    )


def check_end_state(env, monitor: Monitor, watched_value: int | None = None) -> None:
    """The end of every fault: storefront == POS exactly, nothing held, and the watched key never went back
    (nor vanished) while the monitor watched it."""
    pos, store = pos_prices(env), store_prices(env)
    assert store == pos, diff(pos, store)
    if watched_value is not None:
        assert pos[WATCHED] * 100 == watched_value
    assert monitor.polls > 0 and monitor.values, "the monitor never saw the watched row"
    assert monitor.decreases == [], f"the watched price went backwards: {monitor.decreases[:10]}"
    assert monitor.vanished == 0, "the watched row disappeared from the storefront"
    assert held_rows(env) == []


class PeakRss(threading.Thread):
    """Polls /proc/PID/status of a process: VmHWM (the kernel's own peak resident set) and VmRSS, in MB."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True, name="peak-rss")
        self.path = Path(f"/proc/{pid}/status")
        self.interval = interval
        self.hwm_mb = 0.0
        self.max_rss_mb = 0.0
        self._halt = threading.Event()

    def read(self) -> None:
        try:
            fields = dict(line.split(":", 1) for line in self.path.read_text().splitlines() if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            return
        if "VmHWM" in fields:
            self.hwm_mb = max(self.hwm_mb, int(fields["VmHWM"].split()[0]) / 1024)
            self.max_rss_mb = max(self.max_rss_mb, int(fields["VmRSS"].split()[0]) / 1024)

    def run(self) -> None:
        while not self._halt.is_set():
            self.read()
            time.sleep(self.interval)

    def stop(self) -> None:
        self.read()
        self._halt.set()
        self.join(5)


__all__ = [
    "WATCHED",
    "CdcProcess",
    "Monitor",
    "PeakRss",
    "SteadyMonitor",
    "SteadyWriter",
    "Writer",
    "check_end_state",
    "fill",
    "own_pos",
    "own_store",
    "wait_in_sync",
]
