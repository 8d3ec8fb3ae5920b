"""More real parts for the end-to-end tests: `cdc run` as a child process, a paced random writer on the POS,
a monitor of one storefront value, and exact state comparisons."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]

# The POS table and the storefront table most tests use, and the connector between them.
POS_TABLE = "CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint NOT NULL)"
STORE_TABLE = "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2))"
PRICE_CONFIG = """
name: @NAME@
source: {{type: postgres, dsn: "@POS@", tables: [public.item_price]{source_extra}}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
sink: {{type: sql, url: "@STORE@", table: product_price, key: [sku]{sink_extra}}}
"""


def price_config(source_extra: str = "", sink_extra: str = "") -> str:
    """The item_price -> product_price connector; extras are appended to the flow mappings (", k: v")."""
    return PRICE_CONFIG.format(source_extra=source_extra, sink_extra=sink_extra)


def fen(value: int) -> Decimal:
    """price_fen (integer fen) -> the storefront's price in yuan, as the connector's money stage makes it."""
    return Decimal(value).scaleb(-2)


def pos_prices(env) -> dict[str, Decimal]:
    return {code: fen(p) for code, p in env.pos("SELECT item_code, price_fen FROM item_price")}


def store_prices(env) -> dict[str, Decimal]:
    return dict(env.store("SELECT sku, price FROM product_price"))


def in_sync(env) -> bool:
    return pos_prices(env) == store_prices(env)


def diff(expected: dict, actual: dict, limit: int = 10) -> str:
    """A short description of how two key -> value maps differ (for assertion messages)."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    return (
        f"{len(missing)} missing {missing[:limit]}, {len(extra)} unexpected {extra[:limit]}, "
        f"{len(changed)} different {[(k, expected[k], actual[k]) for k in changed[:limit]]}"
    )


def slot_pids(env, application_name: str | None = None) -> list[int]:
    """pids of the walsenders streaming from env's POS database (optionally of one application_name)."""
    rows = env.pg.execute(
        "SELECT s.active_pid, r.application_name FROM pg_replication_slots s "
        "JOIN pg_stat_replication r ON r.pid = s.active_pid "
        f"WHERE s.database = '{env.pos_db}' AND NOT s.temporary"
    )
    return [pid for pid, app in rows if application_name is None or app == application_name]


def held_rows(env) -> list[tuple]:
    """(kind, status, key, source_table, rule, reason) of everything in the sink DB's cdc_held table."""
    return env.store(
        "SELECT kind, status, row_key, source_table, rule, reason FROM cdc_held ORDER BY commit_lsn, seq, id"
    )


# --- `cdc run` in a child process -------------------------------------------------------------------------


class CdcProcess:
    """`python -m cdc.cli run CONFIG` as a child process (the `cdc` console script's code), output to a log."""

    def __init__(self, config_path, log_path, *args: str):
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.log.write(f"\n===== cdc run started at {time.strftime('%H:%M:%S')} =====\n".encode())
        self.log.flush()
        self.offset = self.log.tell()  # where this run's own lines start
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc.cli", "run", str(config_path), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_for(self, words: str, timeout: float = 60) -> None:
        """Until this run's log says `words` (e.g. that it streams: its signal handlers are in place)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_alive(f"while waiting for {words!r}")
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                if words.encode() in f.read():
                    return
            time.sleep(0.1)
        raise AssertionError(f"`cdc run` never said {words!r} in {timeout}s; its log:\n{self.tail()}")

    def assert_alive(self, what: str = "") -> None:
        rc = self.proc.poll()
        assert rc is None, f"`cdc run` exited by itself with code {rc} {what}; its log:\n{self.tail()}"

    def kill(self) -> None:
        """SIGKILL: the crash case; nothing gets to clean up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def terminate(self, timeout: float = 10) -> tuple[int | None, float]:
        """SIGTERM; -> (exit code or None if still running after `timeout`, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        if rc is None:
            self.kill()
        else:
            self.log.close()
        return rc, took

    def ensure_dead(self) -> None:
        if self.alive:
            self.kill()


# --- a paced random writer -------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Random single-row and multi-row transactions of inserts, updates and deletes on item_price.

    Keys are K0000..K{nkeys-1}; one `watched` key (never deleted) gets price_fen + 1 in every transaction
    that touches it, so its value only ever grows. Stops after `total_changes` row changes; `rate` (changes
    per second) paces it. `pause()`/`resume()` hold it between transactions.
    """

    def __init__(
        self,
        dsn: str,
        total_changes: int,
        nkeys: int = 2000,
        rate: float | None = None,
        watched: str | None = "WATCHED",
        seed: int = 0,
        multi_ratio: float = 0.3,
        big_ratio: float = 0.01,
        watched_ratio: float = 0.3,
    ):
        super().__init__(daemon=True, name="pos-writer")
        self.dsn = dsn
        self.total = total_changes
        self.keys = [f"K{i:04d}" for i in range(nkeys)]
        self.rate = rate
        self.watched = watched
        self.rng = random.Random(seed)
        self.multi_ratio, self.big_ratio, self.watched_ratio = multi_ratio, big_ratio, watched_ratio
        self.changes = 0
        self.txns = 0
        self.watched_value: int | None = None
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self.present: set[str] = set()

    def load_present(self, conn: psycopg.Connection) -> None:
        self.present = {r[0] for r in conn.execute("SELECT item_code FROM item_price").fetchall()}
        if self.watched:
            self.present.discard(self.watched)
            row = conn.execute(
                "SELECT price_fen FROM item_price WHERE item_code = %s", (self.watched,)
            ).fetchone()
            if row is None:
                conn.execute("INSERT INTO item_price VALUES (%s, 0)", (self.watched,))
                conn.commit()
                self.watched_value = 0
            else:
                self.watched_value = row[0]

    def stop(self) -> None:
        self._halt.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                self.load_present(conn)
                conn.commit()
                start = time.monotonic()
                while self.changes < self.total and not self._halt.is_set():
                    self._running.wait()
                    self._one_txn(conn)
                    if self.rate:
                        ahead = self.changes / self.rate - (time.monotonic() - start)
                        if ahead > 0:
                            time.sleep(ahead)
        except BaseException as e:  # noqa: BLE001 - surfaced by check()
            self.error = e

    def _one_txn(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        r = rng.random()
        if r < self.big_ratio:
            n = rng.randint(100, 300)
        elif r < self.multi_ratio:
            n = rng.randint(2, 30)
        else:
            n = 1
        n = min(n, max(1, self.total - self.changes))
        watched_at = rng.randrange(n + 1) if self.watched and rng.random() < self.watched_ratio else -1
        present = set(self.present)
        done = 0
        with conn.cursor() as cur:
            for i in range(n + 1):
                if i == watched_at:
                    cur.execute(
                        "UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s",
                        (self.watched,),
                    )
                    done += 1
                if i == n:
                    break
                key = rng.choice(self.keys)
                if key not in present:
                    cur.execute("INSERT INTO item_price VALUES (%s, %s)", (key, rng.randint(1, 10**7)))
                    present.add(key)
                elif rng.random() < 0.7:
                    cur.execute(
                        "UPDATE item_price SET price_fen = %s WHERE item_code = %s",
                        (rng.randint(1, 10**7), key),
                    )
                else:
                    cur.execute("DELETE FROM item_price WHERE item_code = %s", (key,))
                    present.discard(key)
                done += 1
        conn.commit()
        self.present = present
        self.changes += done
        self.txns += 1
        if watched_at >= 0:
            self.watched_value += 1

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self, timeout: float = 300) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"writer did not finish within {timeout}s ({self.changes} changes)"
        self.check()


# --- a monitor of one storefront value --------------------------------------------------------------------


class Monitor(threading.Thread):
    """Polls one storefront row's price every `interval` seconds; records every decrease (never backwards)."""

    def __init__(self, store_dsn: str, sku: str, interval: float = 0.02):
        super().__init__(daemon=True, name="store-monitor")
        self.dsn, self.sku, self.interval = store_dsn, sku, interval
        self.values: list[Decimal] = []  # distinct consecutive values seen
        self.decreases: list[tuple[Decimal, Decimal]] = []
        self.vanished = 0  # polls that found no row after one had been seen
        self.polls = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._first = threading.Event()  # the first poll is done: what the row held before the test acts

    def start(self) -> None:
        """Starts polling and returns once the row has been read once, so that the first value recorded is the
        one from before whatever the test does next (on a busy machine the thread may start late)."""
        super().start()
        if not self._first.wait(10):
            raise AssertionError("the storefront monitor did not read the row within 10 s")

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._halt.is_set():
                    try:
                        row = conn.execute(
                            "SELECT price FROM product_price WHERE sku = %s", (self.sku,)
                        ).fetchone()
                    except psycopg.errors.UndefinedTable:
                        row = None
                    self.polls += 1
                    if row is None:
                        if self.values:
                            self.vanished += 1
                    else:
                        v = row[0]
                        if self.values and v < self.values[-1]:
                            self.decreases.append((self.values[-1], v))
                        if not self.values or v != self.values[-1]:
                            self.values.append(v)
                    self._first.set()
                    time.sleep(self.interval)
        except BaseException as e:  # noqa: BLE001 - surfaced by stop()
            self.error = e
        finally:
            self._first.set()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        if self.error is not None:
            raise self.error


def fill(env, nkeys: int, seed: int = 1, watched: str = "WATCHED") -> None:
    """item_price with `nkeys` random prices among K0000..K1999 and the watched key at 0; product_price empty."""
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    rng = random.Random(seed)
    rows = [(f"K{i:04d}", rng.randint(1, 10**7)) for i in range(0, 2000, 2000 // nkeys)]
    env.pos(
        "INSERT INTO item_price SELECT * FROM unnest(%s::text[], %s::bigint[])",
        [k for k, _ in rows],
        [p for _, p in rows],
    )
    env.pos("INSERT INTO item_price VALUES (%s, 0)", watched)


def run_cdc(*args, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """`python -m cdc.cli ARGS` (the `cdc` console script's code) to its end, output captured; `env` on top of
    this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
