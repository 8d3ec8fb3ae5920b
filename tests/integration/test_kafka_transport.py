"""POS -> Kafka -> storefront on a real broker and real PostgreSQL: crashes of either connector and of the broker,
two sink connectors sharing a group through rebalances, replay after damage, malformed messages.

Every scenario ends with an exact comparison of the storefront with the POS, and the crash and rebalance
scenarios watch one key whose POS value only grows: the storefront must never show it going back."""

from __future__ import annotations

import json
import random
import time

import pytest

from tests.integration.helpers import Running, wait_until
from tests.integration.kafka_support import Hop, cdc, produce, replay_json, wait_synced
from tests.integration.support import (
    POS_TABLE,
    STORE_TABLE,
    CdcProcess,
    Monitor,
    Writer,
    diff,
    held_rows,
    in_sync,
    pos_prices,
    store_prices,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WATCHED = "WATCHED"


def setup(env, nkeys: int = 500) -> None:
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    env.pos(
        "INSERT INTO item_price SELECT 'K' || lpad(i::text, 4, '0'), i * 7 FROM generate_series(0, %s) i",
        nkeys - 1,
    )
    env.pos("INSERT INTO item_price VALUES (%s, 0)", WATCHED)


def test_crashes_of_both_connectors_and_a_broker_restart_lose_nothing(env, kafka, tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"seed {seed}")
    setup(env)
    hop = Hop(env, kafka)
    writer = Writer(env.pos_dsn, total_changes=12_000, nkeys=2000, rate=600, watched=WATCHED, seed=seed)
    monitor = Monitor(env.store_dsn, WATCHED, interval=0.02)
    logs = tmp_path / "p2k.log", tmp_path / "k2s.log"
    p2k, k2s = CdcProcess(hop.p2k, logs[0]), CdcProcess(hop.k2s, logs[1])
    monitor.start()
    writer.start()
    events = []
    try:
        # kill each side three times at random moments, and restart the broker once in the middle
        for i in range(6):
            time.sleep(rng.uniform(1.0, 2.5))
            writer.check()
            if i == 3:
                kafka.restart()
                events.append("broker restarted")
                continue
            victim = rng.choice(("p2k", "k2s"))
            proc = p2k if victim == "p2k" else k2s
            proc.assert_alive(f"before kill #{i + 1}")
            proc.kill()
            events.append(f"SIGKILL {victim}")
            time.sleep(rng.uniform(0.0, 1.0))
            if victim == "p2k":
                p2k = CdcProcess(hop.p2k, logs[0])
            else:
                k2s = CdcProcess(hop.k2s, logs[1])
        writer.finish(timeout=240)
        wait_synced(env, [p2k, k2s], timeout=240)
        for proc in (p2k, k2s):
            rc, took = proc.terminate(timeout=30)
            assert rc == 0, f"SIGTERM: exit code {rc} after {took:.1f}s\n{proc.tail()}"
    finally:
        for proc in (p2k, k2s):
            proc.ensure_dead()
        writer.stop()
        monitor.stop()
    print(f"{writer.changes} changes; {events}; watched value seen {len(monitor.values)} times")
    assert pos_prices(env) == store_prices(env), diff(pos_prices(env), store_prices(env))
    assert monitor.decreases == [], f"the watched price went back: {monitor.decreases[:5]}"
    assert monitor.vanished == 0
    # each SIGKILL of k2s costs a group session timeout (10 s) before its successor gets the partitions, so
    # with three of them in a 20 s workload few intermediate values show; two prove it moved during the run
    assert len(monitor.values) >= 2, "the watched key should have been seen changing"
    assert held_rows(env) == []


def test_two_sink_connectors_share_the_partitions_through_rebalances(env, kafka, tmp_path):
    """On confluent-kafka (librdkafka's group protocol; the crash test above runs kafka-python's)."""
    setup(env)
    hop = Hop(env, kafka, client="confluent-kafka")
    writer = Writer(env.pos_dsn, total_changes=6_000, nkeys=2000, rate=500, watched=WATCHED, seed=7)
    monitor = Monitor(env.store_dsn, WATCHED, interval=0.02)
    one = CdcProcess(hop.k2s, tmp_path / "k2s-1.log")
    p2k = CdcProcess(hop.p2k, tmp_path / "p2k.log")
    monitor.start()
    writer.start()
    two = None
    try:
        time.sleep(3)
        two = CdcProcess(hop.k2s, tmp_path / "k2s-2.log")  # joins: the partitions are shared
        wait_until(
            lambda: "assigned" in two.log_path.read_text() and _members(kafka, hop.group) == 2,
            timeout=60,
            what="the second member's assignment",
        )
        time.sleep(3)
        rc, _ = one.terminate(timeout=30)  # leaves: its partitions move to the other
        assert rc == 0, one.tail()
        writer.finish(timeout=180)
        wait_synced(env, [p2k, two], timeout=180)
    finally:
        for proc in (one, two, p2k):
            if proc is not None:
                proc.ensure_dead()
        writer.stop()
        monitor.stop()
    logs = [(tmp_path / f"k2s-{i}.log").read_text() for i in (1, 2)]
    assert all("assigned" in text for text in logs)
    assert monitor.decreases == [], f"the watched price went back: {monitor.decreases[:5]}"
    assert held_rows(env) == []


def _members(kafka, group: str) -> int:
    from cdc.kafka_admin import Admin

    admin = Admin(kafka.bootstrap)
    try:
        return admin.group(group)[1]
    finally:
        admin.close()


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_replay_restores_a_damaged_storefront_and_never_moves_a_row_back(env, kafka, client):
    setup(env, nkeys=300)
    hop = Hop(env, kafka, client=client, k2s_extra=", history: true")
    with Running(hop.p2k):
        with Running(hop.k2s) as k2s:
            wait_until(lambda: in_sync(env), timeout=60, what="the snapshot through Kafka", running=k2s)
            env.pos("UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code < 'K0100'")
            env.pos("UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", WATCHED)
            wait_until(lambda: in_sync(env), timeout=60, what="synced", running=k2s)
            # refused while the group is active
            rc, err = replay_json(hop.k2s, "--to-earliest", "--execute")
            assert rc == 1 and "active member" in err, err
        # damage by hand: prices changed, rows deleted, a row added that the POS does not have
        env.store("UPDATE product_price SET price = 0.01 WHERE sku < 'K0050'")
        env.store("DELETE FROM product_price WHERE sku BETWEEN 'K0200' AND 'K0209'")
        env.store("INSERT INTO product_price VALUES ('STRAY', 1)")
        rc, plan = replay_json(hop.k2s, "--to-earliest")
        assert rc == 0, plan
        assert not plan["executed"] and {p["partition"] for p in plan["partitions"]} == {0, 1, 2}
        assert sum(p["records_to_replay"] for p in plan["partitions"]) >= 300 + 100 + 1
        text = cdc("replay", hop.k2s, "--to-earliest")
        assert text.returncode == 0 and "dry run" in text.stdout, text.stdout + text.stderr
        rc, done = replay_json(hop.k2s, "--to-earliest", "--execute")
        assert rc == 0 and done["executed"], done
        stored = {
            r[0]: json.loads(r[1])["offset"] for r in env.store("SELECT partition, position FROM cdc_offsets")
        }
        assert set(stored.values()) == {0}
        monitor = Monitor(env.store_dsn, WATCHED, interval=0.01)
        monitor.start()
        try:
            with Running(hop.k2s) as k2s:
                wait_until(
                    lambda: {k: v for k, v in store_prices(env).items() if k != "STRAY"} == pos_prices(env),
                    timeout=60,
                    what="replay restored every row",
                    running=k2s,
                )
        finally:
            monitor.stop()
        assert monitor.decreases == [], "the replay moved the watched price back"
        # the changes replayed are in the price history once, not again
        dup = "SELECT row_key, commit_lsn, seq FROM cdc_price_history GROUP BY 1, 2, 3 HAVING count(*) > 1"
        assert env.store(dup) == []
        env.pos("UPDATE item_price SET price_fen = 1 WHERE item_code = 'K0001'")  # the hop still flows
        with Running(hop.k2s) as k2s:
            wait_until(lambda: store_prices(env)["K0001"] == pos_prices(env)["K0001"], running=k2s)
    # --shift-by and --to-offset plan as kafka-consumer-groups would
    rc, plan = replay_json(hop.k2s, "--shift-by", "-5")
    assert rc == 0 and all(p["records_to_replay"] == 5 for p in plan["partitions"] if p["current"] >= 5)
    rc, plan = replay_json(hop.k2s, "--to-offset", f"{hop.topic}:0:1")
    assert rc == 0 and [p["new"] for p in plan["partitions"] if p["partition"] == 0] == [1]
    rc, err = replay_json(hop.p2k, "--to-earliest")
    assert rc == 1 and "cannot be rewound" in err and "--resnapshot" in err


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_malformed_messages_are_dead_lettered_while_the_rest_flows(env, kafka, client):
    setup(env, nkeys=10)
    hop = Hop(env, kafka, client=client)
    with Running(hop.p2k), Running(hop.k2s) as k2s:
        wait_until(lambda: in_sync(env), timeout=60, what="synced", running=k2s)
        produce(
            kafka,
            hop.topic,
            [
                (b"x", b"not json at all"),
                (b'{"item_code":"K0001"}', b'{"payload": {"op": "u", "after": {"item_code": 5}}}'),
                (b"{}", b'{"before": null, "after": {"item_code": "Z", "price_fen": 1}, "op": "?"}'),
            ],
        )
        env.pos("UPDATE item_price SET price_fen = 4242 WHERE item_code = 'K0003'")
        wait_until(lambda: in_sync(env), timeout=60, what="the rest flows", running=k2s)
        wait_until(lambda: len(held_rows(env)) == 3, timeout=30, what="three dead letters", running=k2s)
    held = env.store("SELECT kind, status, rule, reason, details FROM cdc_held ORDER BY id")
    assert [(k, s, r) for k, s, r, _, _ in held] == [("dead_letter", "held", "kafka.decode")] * 3
    for _, _, _, reason, details in held:
        where = json.loads(details)
        assert where["topic"] == hop.topic and where["offset"] >= 0 and f"Kafka {hop.topic}:" in reason


# --- events written by hand in Debezium's documented shapes --------------------------------------------------

DBZ_TABLE = "CREATE TABLE product (id int PRIMARY KEY, price numeric(10,2), note text)"


def _dbz_field(mode: str) -> dict:
    if mode == "precise":
        return {
            "type": "bytes",
            "optional": True,
            "name": "org.apache.kafka.connect.data.Decimal",
            "version": 1,
            "parameters": {"scale": "2", "connect.decimal.precision": "10"},
            "field": "price",
        }
    return {"type": "string" if mode == "string" else "double", "optional": True, "field": "price"}


def _dbz_price(mode: str, price: str | None):
    if price is None:
        return None
    if mode == "precise":
        import base64
        from decimal import Decimal

        unscaled = int(Decimal(price).scaleb(2))
        return base64.b64encode(
            unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
        ).decode()
    return price if mode == "string" else float(price)


def _dbz_record(topic: str, mode: str, schemas: bool, op: str, before, after, lsn: int, last_commit: int):
    """A Debezium PostgreSQL connector record (key, value) as JsonConverter writes it."""
    row_fields = [
        {"type": "int32", "optional": False, "field": "id"},
        _dbz_field(mode),
        {"type": "string", "optional": True, "field": "note"},
    ]
    row_schema = {"type": "struct", "fields": row_fields, "optional": True, "name": f"{topic}.Value"}

    def row(r):
        return None if r is None else {**r, "price": _dbz_price(mode, r.get("price"))}

    source = {
        "version": "3.6.1.Final",
        "connector": "postgresql",
        "name": "dbz",
        "ts_ms": 1_796_000_000_000 + lsn,
        "snapshot": "false",
        "db": "pos",
        "sequence": json.dumps([str(last_commit), str(lsn)]),
        "ts_us": None,
        "ts_ns": None,
        "schema": "public",
        "table": "product",
        "txId": 700 + lsn,
        "lsn": lsn,
        "xmin": None,
    }
    payload = {
        "before": row(before),
        "after": row(after),
        "source": source,
        "transaction": None,
        "op": op,
        "ts_ms": 1,
    }
    key = {"id": (after or before)["id"]}
    if not schemas:
        return json.dumps(key).encode(), json.dumps(payload).encode()
    key_schema = {
        "type": "struct",
        "fields": [{"type": "int32", "optional": False, "field": "id"}],
        "optional": False,
        "name": f"{topic}.Key",
    }
    value_schema = {
        "type": "struct",
        "fields": [
            {**row_schema, "field": "before"},
            {**row_schema, "field": "after"},
            {
                "type": "struct",
                "fields": [],
                "optional": False,
                "name": "io.debezium.connector.postgresql.Source",
                "field": "source",
            },
            {"type": "struct", "fields": [], "optional": True, "name": "event.block", "field": "transaction"},
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
        ],
        "optional": False,
        "name": f"{topic}.Envelope",
        "version": 2,
    }
    return (
        json.dumps({"schema": key_schema, "payload": key}).encode(),
        json.dumps({"schema": value_schema, "payload": payload}).encode(),
    )


@pytest.mark.parametrize("schemas", [True, False], ids=["schemas", "no-schemas"])
def test_debezium_shaped_events_are_applied(env, kafka, schemas):
    """Both converters, the decimal modes each can carry (precise needs the schema's scale), the unchanged-TOAST
    placeholder (the stored value stays), deletes with REPLICA IDENTITY DEFAULT followed by tombstones, and a
    heartbeat topic, through the real broker into a real storefront."""
    import uuid

    env.store(DBZ_TABLE)
    prefix = f"dbz{uuid.uuid4().hex[:6]}"
    modes = ["precise", "string", "double"] if schemas else ["string", "double"]
    topics = {m: f"{prefix}{m}.public.product" for m in modes}
    for i, mode in enumerate(modes):
        base, topic = 10 * (i + 1), topics[mode]
        records = [
            _dbz_record(
                topic, mode, schemas, "c", None, {"id": base, "price": "12.50", "note": "a"}, 100, 90
            ),
            _dbz_record(
                topic,
                mode,
                schemas,
                "u",
                None,
                {"id": base, "price": "13.75", "note": "__debezium_unavailable_value"},
                200,
                150,
            ),
            _dbz_record(
                topic,
                mode,
                schemas,
                "c",
                None,
                {"id": base + 1, "price": "99999999.99", "note": "b"},
                210,
                150,
            ),
            _dbz_record(
                topic, mode, schemas, "c", None, {"id": base + 2, "price": "0.01", "note": "c"}, 220, 150
            ),
            _dbz_record(
                topic, mode, schemas, "d", {"id": base + 2, "price": None, "note": None}, None, 300, 250
            ),
        ]
        tombstone_key = records[-1][0]
        produce(kafka, topic, [*records, (tombstone_key, None)])
    produce(kafka, f"__debezium-heartbeat.{prefix}", [(b'{"serverName":"dbz"}', b'{"ts_ms": 1}')])
    cfg = env.write_config(
        f"""
name: @NAME@
source: {{type: kafka, bootstrap_servers: "{kafka.bootstrap}", topic_pattern: "({prefix}.*|__debezium-heartbeat\\\\.{prefix})", group: @NAME@}}
sink: {{type: sql, url: "@STORE@", table: product, key: [id]}}
"""
    )
    expected = []
    for i, _mode in enumerate(modes):
        base = 10 * (i + 1)
        expected += [(base, "13.75", "a"), (base + 1, "99999999.99", "b")]
    with Running(cfg) as r:
        wait_until(
            lambda: [(i, str(p), n) for i, p, n in _product(env)] == expected,
            timeout=60,
            what="Debezium's events applied",
            running=r,
        )
    assert env.store("SELECT count(*) FROM cdc_held")[0][0] == 0


def _product(env):
    return env.store("SELECT id, price, note FROM product ORDER BY id")


def test_status_and_held_changes_on_both_sides_of_the_hop(env, kafka):
    """`cdc status` of each connector: the stored position (an LSN, or offsets per partition), the group and
    each partition's lag; a change a stage holds before Kafka is listed from the held topic."""
    setup(env, nkeys=20)
    env.pos("ALTER TABLE item_price ADD COLUMN note text")
    env.pos("INSERT INTO item_price VALUES ('BAD', 5, 'not a number')")
    # the POS connector runs a money stage on `note`: the BAD row is held, the others flow
    hop = Hop(env, kafka, p2k_extra="}\ntransforms: [{type: money, field: note, divide_by: 1, scale: 2}]\n#")
    with Running(hop.p2k) as p2k, Running(hop.k2s) as k2s:
        wait_until(lambda: len(store_prices(env)) == 21, timeout=60, what="all but BAD", running=k2s)
        wait_until(
            lambda: _status(hop.k2s).get("kafka_lag_records") == 0, timeout=30, what="lag 0", running=p2k
        )
        source_side = _status(hop.p2k)
        assert source_side["state"] == "running" and source_side["position"]["commit_lsn"].count("/") == 1
        sink_side = _status(hop.k2s)
    assert sink_side["group"] == hop.group and sink_side["group_members"] == 1
    parts = sink_side["partitions"]
    assert {p["partition"] for p in parts} == {0, 1, 2} and all(p["lag"] == 0 for p in parts)
    assert sum(p["stored"] for p in parts) == sum(p["end"] for p in parts) >= 21
    assert set(sink_side["position"]) == {f"{hop.topic}:{p}" for p in range(3)}
    held = json.loads(cdc("deadletter", hop.p2k, "list", "--json").stdout)
    assert [(h["kind"], h["rule"], h["source_table"]) for h in held] == [
        ("dead_letter", "money#1", "public.item_price")
    ]
    assert "not a number" in json.dumps(held[0]["event"])
    refused = cdc("deadletter", hop.p2k, "retry", str(held[0]["id"]))
    assert refused.returncode == 1 and "writes to Kafka" in refused.stderr
    stopped = _status(hop.k2s)
    assert stopped["state"] == "stopped" and stopped["group_members"] == 0
    why = cdc("explain", hop.k2s, "K0001", "--json")  # the storefront side, and why not the POS's
    assert why.returncode == 2 and "reads Kafka" in json.loads(why.stdout)["verdict"]
    assert json.loads(why.stdout)["storefront"]["last_applied"]["via"] in ("stream", "snapshot")


def _status(config) -> dict:
    res = cdc("status", config, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_records_lost_to_retention_stop_the_connector_with_the_way_out(env, kafka):
    """Retention deletes records the storefront connector never read: it refuses to skip them silently, says
    which partition and offsets, and `cdc replay --to-earliest --execute` is the documented way on."""
    from kafka import TopicPartition

    setup(env, nkeys=30)
    hop = Hop(env, kafka)
    with Running(hop.p2k):
        with Running(hop.k2s) as k2s:
            wait_until(lambda: in_sync(env), timeout=60, what="synced", running=k2s)
        env.pos("UPDATE item_price SET price_fen = price_fen + 5")  # read by nobody yet
        admin = kafka.admin()
        try:
            wait_until(
                lambda: _end_total(kafka, hop.topic) >= 2 * 31, timeout=30, what="the updates in Kafka"
            )
            ends = {TopicPartition(hop.topic, p): o for (t, p), o in _ends(kafka, hop.topic).items()}
            admin.delete_records(ends)  # as retention would, past what the connector stored
        finally:
            admin.close()
        stopped = Running(hop.k2s).__enter__()
        try:
            wait_until(lambda: stopped.error is not None, timeout=60, what="the connector to stop")
        finally:
            stopped.pipeline.stop()
            stopped.thread.join(30)
        assert "outside what Kafka holds" in str(stopped.error) and "retention" in str(stopped.error)
        assert "cdc replay" in str(stopped.error)
        rc, done = replay_json(hop.k2s, "--to-earliest", "--execute")
        assert rc == 0 and done["executed"], done
        env.pos("UPDATE item_price SET price_fen = 1 WHERE item_code = 'K0001'")
        with Running(hop.k2s) as k2s:
            wait_until(lambda: store_prices(env)["K0001"] == pos_prices(env)["K0001"], running=k2s)


def _ends(kafka, topic: str) -> dict:
    from cdc.kafka_admin import Admin

    admin = Admin(kafka.bootstrap)
    try:
        return admin.end_offsets([(topic, p) for p in admin.partitions(topic)])
    finally:
        admin.close()


def _end_total(kafka, topic: str) -> int:
    return sum(_ends(kafka, topic).values())
