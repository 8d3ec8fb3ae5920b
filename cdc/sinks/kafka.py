"""Kafka sink: every change as Debezium's change-event envelope (JSON, cdc/sinks/envelope.py) on
`<topic_prefix>.<schema>.<table>`, keyed by the primary-key columns, sent by an idempotent acks=all producer.

Delivery: `commit(positions)` sends the source position to a compacted offsets topic (key: the connector's
name) after the batch's records, then waits until Kafka acknowledged every record sent since the last commit,
the position included. Only then does the checkpointer confirm the source (the replication slot) past them:
a change the slot no longer holds is in Kafka. Records cannot be taken back: a batch abandoned on a stop or an
error stays sent, and after a crash the changes between the last acknowledged position and the crash are sent
again. Consumers are unaffected: pos-cdc's Kafka source applies a change only when it is newer than the row's
recorded POS position (source.sequence), so a duplicate, or a partial transaction followed by the whole one,
leaves the same rows.

A change a stage holds (or one the format cannot carry) goes to the held topic with the reason and the event,
keyed by connector; `cdc deadletter` lists it there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from typing import Any

from cdc.config import ConnectorConfig
from cdc.errors import HoldError
from cdc.events import ChangeEvent, jsonable
from cdc.kafka_admin import Admin, admin_options
from cdc.kafka_client import open_producer
from cdc.sinks.envelope import EnvelopeEncoder

log = logging.getLogger("cdc.sink.kafka")


def read_held(cfg: ConnectorConfig) -> list[dict]:
    """The held topic's entries of this connector, as `cdc deadletter list` shows them (id: the offset)."""
    s, out = cfg.sink, []
    admin = Admin(s.bootstrap_servers, admin_options(s.client, s.client_options()))
    try:
        for r in admin.read_all(s.held_topic):
            entry = json.loads(r.value)
            if r.key == cfg.name.encode() and entry.get("connector") == cfg.name:
                commit, _, seq = entry.get("position", "0#0").partition("#")
                out.append(
                    {
                        "id": r.offset,
                        "row_key": None,
                        "status": "held",
                        "commit_lsn": commit,
                        "seq": seq,
                        **entry,
                    }
                )
    finally:
        admin.close()
    return out


class KafkaSink:
    def __init__(self, cfg: ConnectorConfig, metrics: Any = None):
        self.cfg = cfg
        self.scfg = cfg.sink
        self.name = cfg.name
        self.encoder = EnvelopeEncoder(
            cfg.name,
            self.scfg.topic_prefix,
            schemas=self.scfg.schemas,
            decimal_handling=self.scfg.decimal_handling,
            tombstones=self.scfg.tombstones,
            lane_topics=self.scfg.lane_topics,
            lane=self.scfg.lane,
        )
        self.caught_up = False
        self.producer = None  # cdc.kafka_client.Producer or its confluent-kafka twin
        self.admin: Admin | None = None
        self._topics: set[str] = set()
        self._partitions: dict[str, int] = {}  # topic -> partition count
        self.last_commit_time: str | None = None  # as stored with the newest position (load_offsets)
        self._held: Counter[str] = Counter()  # held since the last commit
        self._held_records: list[bytes] = []  # their held-topic records, sent at commit
        self._committed_held: Counter[str] = Counter()
        self._m_errors = self._m_unconfirmed = None
        if metrics is not None:
            self._m_errors = metrics.kafka_producer_errors.labels(cfg.name)
            self._m_unconfirmed = metrics.kafka_unconfirmed.labels(cfg.name)

    # --- lifecycle ------------------------------------------------------------------------------------

    def open(self) -> None:
        s = self.scfg
        self.admin = Admin(s.bootstrap_servers, admin_options(s.client, s.client_options()))
        self.admin.ensure_topics([s.offsets_topic], partitions=1, compact=True, rf=s.replication_factor)
        self.admin.ensure_topics([s.held_topic], partitions=1, rf=s.replication_factor)
        self._topics = self.admin.topics()
        self.producer = open_producer(s.client, s.bootstrap_servers, s.client_options())
        log.info("%s: Kafka client %s", self.name, s.client)

    def start_folding(self) -> None:
        pass

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
            self.producer = None
        if self.admin is not None:
            self.admin.close()
            self.admin = None

    # --- positions ------------------------------------------------------------------------------------

    def load_offsets(self) -> dict[str, str]:
        """The newest position stored for this connector in the offsets topic ({} when none)."""
        s, key = self.scfg, self.name.encode()
        admin = self.admin or Admin(s.bootstrap_servers, admin_options(s.client, s.client_options()))
        try:
            latest = None
            for r in admin.read_all(s.offsets_topic):
                if r.key == key:
                    latest = r.value  # the newest wins; a tombstone (forget_offsets) forgets
        finally:
            if admin is not self.admin:
                admin.close()
        if not latest:
            return {}
        stored = json.loads(latest)
        self.last_commit_time = stored.get("at")
        return stored["positions"]

    def set_floor(self, floor: int | None) -> None:
        pass

    def forget_offsets(self) -> None:
        self.producer.send(self.scfg.offsets_topic, self.name.encode(), None, 0)
        self.producer.flush()

    # --- the data path --------------------------------------------------------------------------------

    def add(self, ev: ChangeEvent) -> None:
        try:
            records = self.encoder.records(ev)
        except HoldError as e:
            self.hold(ev, e)
            return
        send, partitions = self.producer.send, self._partitions
        for topic, key, value, spread in records:
            n = partitions.get(topic) or self._create(topic)
            send(topic, key, value, None if spread is None else spread % n)

    def _create(self, topic: str) -> int:
        """Creates the topic if it does not exist; its partition count (records of a key go to partition
        crc32(key payload) % count, so the count is read once per topic)."""
        s = self.scfg
        if topic not in self._topics:
            self.admin.ensure_topics([topic], partitions=s.partitions, rf=s.replication_factor)
            self._topics.add(topic)
        n = self._partitions[topic] = self.admin.partition_count(topic)
        return n

    def hold(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> None:
        record = {
            "connector": self.name,
            "kind": kind,
            "rule": err.rule,
            "reason": err.reason,
            "details": jsonable(err.details),
            "source_table": f"{ev.schema}.{ev.table}",
            "position": str(ev.position),
            "event": ev.to_envelope(),
            "held_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        self._held_records.append(json.dumps(record).encode())  # sent with the batch, at commit
        self._held[kind] += 1
        log.warning("%s: change at %s held (%s, %s): %s", self.name, ev.position, kind, err.rule, err.reason)

    def write_async(self) -> None:
        """The producer sends in the background already; this only reports how much is not confirmed."""
        if self._m_unconfirmed is not None:
            self._m_unconfirmed.set(self.producer.sent)

    def writer_idle(self) -> bool:
        return False  # (the producer sends in the background already)

    def commit(self, positions: dict[str, str] | None, floor: int | None = None) -> None:
        """Waits until Kafka acknowledged every record of the batch (and what it held), and only then sends
        the position and waits for it too: a position must never be durable while a record it covers is not
        (records on other partitions are acknowledged independently, so one flush for both would not do)."""
        name = self.name.encode()
        for record in self._held_records:
            self.producer.send(self.scfg.held_topic, name, record, 0)
        if self._m_unconfirmed is not None:
            self._m_unconfirmed.set(self.producer.sent)
        try:
            self.producer.flush()
            if positions:
                stored = {"positions": positions, "at": dt.datetime.now(dt.UTC).isoformat()}
                self.producer.send(self.scfg.offsets_topic, name, json.dumps(stored).encode(), 0)
                self.producer.flush()
        except Exception:
            if self._m_errors is not None:
                self._m_errors.inc()
            raise
        self._held_records.clear()
        self._committed_held.update(self._held)
        self._held.clear()
        if self._m_unconfirmed is not None:
            self._m_unconfirmed.set(0)

    def commit_begin(self, positions: dict[str, str], floor: int | None = None) -> bool:
        return False  # the producer already sends in the background; commit() waits for the acknowledgements

    def commit_end(self, block: bool = True) -> bool:
        return True

    def rollback(self) -> None:
        """What was sent stays sent (see the module's docstring); what the batch held is dropped (held again
        when the batch is read again)."""
        self._held.clear()
        self._held_records.clear()

    def drain_held(self) -> dict[str, int]:
        out, self._committed_held = dict(self._committed_held), Counter()
        return out

    # --- hooks ----------------------------------------------------------------------------------------

    def wire(self, stages: list) -> None:
        pass  # stages that need the storefront are refused by the config (config.transport_problems)

    def prefetch(self, field: str, rows: list) -> None:
        pass

    def tick(self) -> None:
        pass
