"""The two connectors of a Kafka hop, for the tests: POS -> Kafka (`p2k`) and Kafka -> storefront (`k2s`), on the
session's real broker, with the item_price -> product_price tables of support.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from tests.integration.support import ROOT, in_sync

P2K = """
name: @NAME@-p2k
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
sink: {type: kafka, bootstrap_servers: "@KAFKA@", topic_prefix: @PREFIX@, partitions: 3, client: @CLIENT@@P2K_EXTRA@}
"""

K2S = """
name: @NAME@-k2s
source: {type: kafka, bootstrap_servers: "@KAFKA@", topics: [@PREFIX@.public.item_price], group: @NAME@-g, client: @CLIENT@}
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price}}
  - {type: money, field: price, divide_by: 100, scale: 2}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku], batch_size: 500@K2S_EXTRA@}
"""


class Hop:
    """The config files of one test's Kafka hop; topics get a prefix of their own."""

    def __init__(self, env, kafka, p2k_extra: str = "", client: str = "kafka-python", k2s_extra: str = ""):
        self.env, self.kafka = env, kafka
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.topic = f"{self.prefix}.public.item_price"

        def body(text: str) -> str:
            return (
                text.replace("@KAFKA@", kafka.bootstrap)
                .replace("@PREFIX@", self.prefix)
                .replace("@P2K_EXTRA@", p2k_extra)
                .replace("@CLIENT@", client)
                .replace("@K2S_EXTRA@", k2s_extra)
            )

        self.p2k = env.write_config(body(P2K), "p2k.yaml")
        self.k2s = env.write_config(body(K2S), "k2s.yaml")
        self.group = f"{env.name}-g"


def cdc(*args, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def replay_json(config, *args) -> tuple[int, dict | str]:
    res = cdc("replay", config, *args, "--json")
    if res.returncode != 0:
        return res.returncode, res.stderr
    return 0, json.loads(res.stdout)


def wait_synced(env, procs, timeout: float) -> None:
    """Until the storefront has exactly the POS's prices; every process must stay alive meanwhile."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            p.assert_alive("while catching up")
        if in_sync(env):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"not in sync after {timeout}s; last log lines:\n" + "\n".join(p.tail(15) for p in procs)
    )


def produce(kafka, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """Writes raw records (key, value) and waits for their acknowledgement."""
    from cdc.kafka_admin import Admin
    from cdc.kafka_client import Producer

    admin = Admin(kafka.bootstrap)
    try:
        admin.ensure_topics([topic], partitions=3)
    finally:
        admin.close()
    producer = Producer(kafka.bootstrap)
    try:
        for key, value in messages:
            producer.send(topic, key, value)
        producer.flush()
    finally:
        producer.close()
