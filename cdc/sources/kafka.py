"""Kafka source: reads change events — pos-cdc's own and genuine Debezium's (cdc/sources/debezium.py) — from
Kafka topics, as a member of a consumer group.

Positions: a `KafkaPosition` is the next offset to read of each (topic, partition) read since the last
commit. The checkpointer stores it in the sink database in the same transaction as the rows (partitions
"kafka:<topic>:<partition>"), then `confirm` commits it to the group too, so `kafka-consumer-groups` and
other lag tools see it. The sink database is the authority: at every assignment a partition is sought to the
offset stored there (the group's committed offset only where the sink has none), so a crash between the two
commits costs a re-read, never a gap.

Never backwards: what the sink compares is the POS position each event carries (commit LSN and sequence,
decoded from `source.sequence`), not the Kafka offset, so duplicates (a producer's retry after a crash), a
replay (`cdc replay`) and events of one key arriving through two lanes leave each row at its newest change.
The source cannot bound those positions (`floor` is None): the sink looks every change's key up.

Rebalances: kafka-python uses the eager protocol, so a rebalance revokes every partition before assigning
anew. What the pipeline buffered since the last commit is then abandoned (`Abandon`: rolled back, nothing
applied), and the partitions this member gets are read again from their stored offsets: nothing is lost, and
nothing is applied by two members at once.

A message that is not a change event pos-cdc can apply (not JSON, no key, a value that does not match its
schema) is yielded as `Unreadable`, dead-lettered by the sink with the reason, topic, partition and offset,
while the stream goes on. Tombstones, heartbeats and transaction metadata are skipped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cdc.config import ConnectorConfig
from cdc.errors import HoldError, TerminalError
from cdc.events import Abandon, ChangeEvent, Idle, TxnEnd, Unreadable
from cdc.kafka_admin import Admin, admin_options
from cdc.kafka_client import TP, Record, open_consumer
from cdc.sources.debezium import DecodeError, EnvelopeDecoder

log = logging.getLogger("cdc.source.kafka")

POLL_MS = 100  # how long a poll waits for records before the source reports Idle
LIVENESS_S = 15.0  # with no records for this long, the brokers are asked whether they are still there
LAG_EVERY_S = 1.0
PREFIX = "kafka:"


@dataclass(frozen=True, slots=True)
class KafkaPosition:
    """The next offset to read per (topic, partition)."""

    offsets: tuple[tuple[str, int, int], ...]  # (topic, partition, next offset), sorted

    @classmethod
    def of(cls, offsets: dict[TP, int]) -> KafkaPosition:
        return cls(tuple(sorted((t, p, o) for (t, p), o in offsets.items())))

    def as_dict(self) -> dict[TP, int]:
        return {(t, p): o for t, p, o in self.offsets}

    def regresses(self, last: KafkaPosition) -> bool:
        before = last.as_dict()
        return any(o < before.get((t, p), o) for t, p, o in self.offsets)

    def after(self, last: KafkaPosition) -> KafkaPosition:
        return KafkaPosition.of({**last.as_dict(), **self.as_dict()})

    def __str__(self) -> str:
        return ",".join(f"{t}:{p}:{o}" for t, p, o in self.offsets) or "(none)"


def partition_name(topic: str, partition: int) -> str:
    """The offset store's partition name of a Kafka partition."""
    return f"{PREFIX}{topic}:{partition}"


def stored_offsets(stored: dict[str, str]) -> dict[TP, int]:
    """The Kafka offsets among the sink's stored positions."""
    out = {}
    for name, text in stored.items():
        if name.startswith(PREFIX):
            pos = json.loads(text)
            out[(pos["topic"], pos["partition"])] = pos["offset"]
    return out


class KafkaSource:
    def __init__(self, cfg: ConnectorConfig, metrics: Any = None):
        self.cfg = cfg
        self.scfg = cfg.source
        self.decoder = EnvelopeDecoder(heartbeat_prefix=self.scfg.heartbeat_topic_prefix)
        self.metrics = metrics
        self.consumer = None  # cdc.kafka_client.Consumer or its confluent-kafka twin
        self.next: dict[TP, int] = {}  # next offset of each partition, as far as yielded
        self.confirmed: dict[TP, int] = {}  # as far as committed downstream
        self._reload: Callable[[], KafkaPosition | None] | None = None
        self._abandon = False
        self._new: set[TP] = set()  # assigned in the last poll, not settled yet
        self._heard_at = time.monotonic()  # when records (or an answer to check_alive) last came
        self._lag_at = 0.0
        self._lag_series: set[TP] = set()  # partitions whose lag this member reports

    # --- set-up ---------------------------------------------------------------------------------------

    def check(self) -> None:
        """Nothing to check before start: the group and topics are the broker's to allow (read() says)."""

    def undo_prepare(self) -> None:
        """Nothing to undo: a group with no committed offsets holds nothing back."""

    def prepare(self) -> None:
        """The brokers answer; topics named in the config that do not exist yet are reported (the consumer
        waits for them: the connector that writes them may not have started)."""
        s = self.scfg
        admin = Admin(s.bootstrap_servers, admin_options(s.client, s.client_options()))
        try:
            missing = sorted(set(s.topics) - admin.topics())
        finally:
            admin.close()
        if missing:
            log.warning(
                "%s: topics %s do not exist yet; waiting for them (is the connector that writes them running?)",
                self.cfg.name,
                ", ".join(missing),
            )

    def wire(self, stages: list) -> None:
        return None  # a pick's fallback store needs the POS: refused by the config for a Kafka source

    def batch_changes(self, min_run: int = 1) -> bool:
        return False  # a topic's messages are JSON envelopes, one change each: the fast path reads pgoutput

    def commits_overlap(self) -> bool:
        return False  # a rebalance inside poll() must find every commit ended (see _revoked)

    def tick(self) -> None:
        pass

    def observe(self, metrics: Any) -> None:
        """The running source sets the lag per partition itself (from its fetches); nothing to probe."""

    def reset(self) -> None:
        """For `cdc run --resnapshot`: the sink forgets its stored positions; the group's committed offsets go
        too, so the topics are read again from `start` (refused while a member of the group runs)."""
        s = self.scfg
        admin = Admin(s.bootstrap_servers, admin_options(s.client, s.client_options()))
        try:
            state, members = admin.group(s.group)
            if members:
                raise TerminalError(
                    f"consumer group {s.group} has {members} active member(s) ({state}): stop every process of "
                    "the connector before --resnapshot"
                )
            admin.forget_group(s.group)
        finally:
            admin.close()

    # --- positions ------------------------------------------------------------------------------------

    def load_position(self, stored: dict[str, str]) -> KafkaPosition | None:
        offsets = stored_offsets(stored)
        return KafkaPosition.of(offsets) if offsets else None

    def dump_position(self, position: KafkaPosition) -> dict[str, str]:
        return {
            partition_name(t, p): json.dumps({"topic": t, "partition": p, "offset": o})
            for t, p, o in position.offsets
        }

    def floor(self, position: KafkaPosition | None) -> None:
        return None

    def confirm(self, position: KafkaPosition) -> None:
        offsets = position.as_dict()
        self.confirmed.update(offsets)
        if self.consumer is not None:
            self.consumer.commit(offsets)

    # --- reading --------------------------------------------------------------------------------------

    def read(self, resume: KafkaPosition | None, reload=None) -> Iterator[Any]:
        s = self.scfg
        self._reload = reload
        self.consumer = open_consumer(
            s.client,
            s.bootstrap_servers,
            s.group,
            s.client_options(),
            on_assigned=self._assigned,
            on_revoked=self._revoked,
            auto_offset_reset=s.start,
            max_poll_records=s.poll_max_records,
        )
        log.info("%s: Kafka client %s", self.cfg.name, s.client)
        self.consumer.subscribe(s.topics or None, s.topic_pattern)
        log.info(
            "%s: reading %s as a member of group %s",
            self.cfg.name,
            s.topic_pattern or ", ".join(s.topics),
            s.group,
        )
        decode = self.decoder.decode
        while True:
            records = self.consumer.poll(POLL_MS)
            if self._abandon:
                self._abandon = False
                yield Abandon()
            if self._new:
                self._settle()
            now = time.monotonic()
            if not records and self._unstored():
                yield TxnEnd(KafkaPosition.of(self._unstored()), int(time.time() * 1000))  # store the starts
            if not records:
                if now - self._heard_at >= LIVENESS_S:  # nothing for a while: do the brokers still answer?
                    self.consumer.check_alive()
                    self._heard_at = now
                self._report_lag()
                yield Idle()
                continue
            self._heard_at = now
            ts_ms = 0
            for r in records:
                self.next[(r.topic, r.partition)] = r.offset + 1
                try:
                    ev = decode(r.topic, r.key, r.value)
                except DecodeError as e:
                    yield self._unreadable(r, e)
                    continue
                except Exception as e:  # noqa: BLE001 - a message no rule foresaw must not stop the stream
                    yield self._unreadable(r, DecodeError(f"cannot decode: {type(e).__name__}: {e}"))
                    continue
                if ev is None:
                    continue  # a tombstone, a heartbeat, transaction metadata
                ev.headers["kafka"] = f"{r.topic}:{r.partition}:{r.offset}"
                ts_ms = max(ts_ms, ev.ts_ms)
                yield ev
            advanced = self._unstored()
            if advanced:
                yield TxnEnd(KafkaPosition.of(advanced), ts_ms or int(time.time() * 1000))
            self._report_lag()

    def _unstored(self) -> dict[TP, int]:
        """The partitions whose next offset is not the one stored (read since, or a start never stored)."""
        return {tp: o for tp, o in self.next.items() if self.confirmed.get(tp) != o}

    def _settle(self) -> None:
        """After an assignment (on this thread, where blocking calls are allowed): a stored offset outside what
        Kafka still has stops the connector (the changes in between are gone: say so); a partition with no
        stored offset gets the one the consumer starts at (the group's, or `start`) stored at the next
        commit, so a rebalance or a restart before the first record resumes there and loses nothing."""
        tps, self._new = self._new, set()
        bounds = self.consumer.bounds(tps)
        for tp in sorted(tps):
            low, high = bounds[tp]
            if tp in self.confirmed:  # a stored offset
                stored = self.confirmed[tp]
                if not low <= stored <= high:
                    raise TerminalError(
                        f"{self.cfg.name}: {tp[0]}:{tp[1]}: the stored offset {stored} is outside what Kafka "
                        f"holds ({low}..{high}): "
                        + (
                            "retention deleted records this connector never read, so changes were lost; "
                            if stored < low
                            else "the topic was recreated; "
                        )
                        + "copy the POS anew (cdc run <the POS connector> --resnapshot) and move this connector "
                        "to the new records (cdc replay CONFIG --to-earliest --execute)"
                    )
            else:
                self.next[tp] = self.consumer.start_offset(tp)

    def _unreadable(self, r: Record, err: HoldError) -> Unreadable:
        where = f"{r.topic}:{r.partition}:{r.offset}"
        err.details = {**err.details, "topic": r.topic, "partition": r.partition, "offset": r.offset}
        err.reason = f"{err.reason} (Kafka {where})"
        raw = {
            "kafka": where,
            "key": None if r.key is None else r.key.decode("utf-8", "replace"),
            "value": None if r.value is None else r.value.decode("utf-8", "replace")[:100_000],
        }
        schema, _, table = r.topic.rpartition(".")
        ev = ChangeEvent(
            "u", schema, table, None, raw, 0, 0, 0, r.timestamp, toast=False, headers={"kafka": where}
        )
        return Unreadable(ev, err)

    def _assigned(self, tps: set[TP]) -> dict[TP, int]:
        """Inside poll, after a rebalance: each partition starts at the offset the sink stored for it (the
        group's committed offset where the sink has none)."""
        stored = {}
        if self._reload is not None:
            pos = self._reload()
            stored = pos.as_dict() if pos is not None else {}
        starts = {tp: stored[tp] for tp in tps if tp in stored}
        for tp, offset in starts.items():
            self.next[tp] = self.confirmed[tp] = offset
        self._new |= tps  # settled by read() once poll returns
        log.info(
            "%s: assigned %s",
            self.cfg.name,
            ", ".join(f"{t}:{p}@{stored.get((t, p), 'group offset')}" for t, p in sorted(tps)) or "nothing",
        )
        return starts

    def _revoked(self, tps: set[TP]) -> None:
        """Inside poll, before a rebalance: what was read and not committed is abandoned."""
        if not tps:
            return
        if any(self.next.get(tp) != self.confirmed.get(tp) for tp in self.next):
            self._abandon = True
        for tp in tps:
            self.next.pop(tp, None)
            self.confirmed.pop(tp, None)
            if tp in self._lag_series:  # no longer this member's to report
                self._lag_series.discard(tp)
                self.metrics.kafka_lag.remove(self.cfg.name, tp[0], str(tp[1]))
        log.info("%s: partitions revoked: %s", self.cfg.name, ", ".join(f"{t}:{p}" for t, p in sorted(tps)))

    def _report_lag(self) -> None:
        now = time.monotonic()
        if self.metrics is None or now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        for (topic, partition), lag in self.consumer.lag().items():
            self.metrics.kafka_lag.labels(self.cfg.name, topic, str(partition)).set(lag)
            self._lag_series.add((topic, partition))

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
