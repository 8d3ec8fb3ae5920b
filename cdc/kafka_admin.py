"""Kafka's admin calls pos-cdc makes — topics, a consumer group's state, members and committed offsets, partition
end offsets and offsets by time (`cdc status`, `cdc replay`, the Kafka sink creating its topics) — on kafka-python
whichever client the connector streams with: they are not on the hot path."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from cdc.errors import TerminalError, TransientError
from cdc.kafka_client import TP, Record, _servers, kafka_errors
from cdc.kafka_preflight import check_access

log = logging.getLogger("cdc.kafka")

READ_ALL_S = 60.0  # longest a whole-partition read (offsets and held topics) may take


# librdkafka's names of the connection settings -> kafka-python's, for the admin calls of a connector whose
# producer or consumer is confluent-kafka (its `options` are in librdkafka's names)
_LIBRDKAFKA_TO_KAFKA_PYTHON = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "client.id": "client_id",
}


def admin_options(client: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """A connector's client options as the admin calls (always kafka-python) take them."""
    options = options or {}
    if client != "confluent-kafka":
        return options
    out = {_LIBRDKAFKA_TO_KAFKA_PYTHON[k]: v for k, v in options.items() if k in _LIBRDKAFKA_TO_KAFKA_PYTHON}
    if str(options.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
        out["ssl_check_hostname"] = False  # as the streaming client, which does not check the host name
    return out


def _known(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The options a kafka-python client takes (it refuses any other): a consumer's session_timeout_ms or a
    producer's linger_ms in a connector's `options` is for its consumer or producer, not for these calls."""
    return {k: v for k, v in options.items() if k in defaults}


class Admin:
    def __init__(self, bootstrap: str, options: dict[str, Any] | None = None):
        from kafka import KafkaAdminClient

        self.bootstrap = bootstrap
        self.options = options or {}
        check_access(bootstrap, self.options)  # a TLS or SASL refusal: stop now, saying what to fix
        with kafka_errors(bootstrap, "connecting"):
            self._a = KafkaAdminClient(
                bootstrap_servers=_servers(bootstrap), **_known(self.options, KafkaAdminClient.DEFAULT_CONFIG)
            )
        self._offsets_reader = None

    def topics(self) -> set[str]:
        with kafka_errors(self.bootstrap, "listing topics"):
            return set(self._a.list_topics())

    def ensure_topics(
        self, names: Iterable[str], partitions: int = 1, compact: bool = False, rf: int = -1
    ) -> None:
        """Creates the topics that do not exist yet (another process creating one meanwhile is fine)."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        want = sorted(set(names) - self.topics())
        if not want:
            return
        configs = {"cleanup.policy": "compact"} if compact else {}
        for name in want:
            try:
                with kafka_errors(self.bootstrap, f"creating topic {name}"):
                    self._a.create_topics([NewTopic(name, partitions, rf, topic_configs=configs)])
                log.info(
                    "created Kafka topic %s (%d partitions%s)",
                    name,
                    partitions,
                    ", compacted" if compact else "",
                )
            except TerminalError as e:
                if not isinstance(e.__cause__, TopicAlreadyExistsError):
                    raise
        with kafka_errors(self.bootstrap, f"waiting for the leaders of {', '.join(want)}"):
            self._a.wait_for_topics(want, timeout_ms=30_000)  # a new topic takes writes once it has leaders

    def partition_count(self, topic: str) -> int:
        return len(self.partitions(topic))

    def partitions(self, topic: str) -> list[int]:
        with kafka_errors(self.bootstrap, f"describing topic {topic}"):
            (desc,) = self._a.describe_topics([topic])
        if desc.get("error_code"):
            raise TerminalError(f"Kafka topic {topic} does not exist (or cannot be described)")
        return sorted(p["partition_index"] for p in desc["partitions"])

    def group(self, group: str) -> tuple[str, int]:
        """(state, number of members) of a consumer group: 'Dead' or 'Empty' with 0 members when idle."""
        with kafka_errors(self.bootstrap, f"describing group {group}"):
            info = self._a.describe_groups([group])[group]
        return info["group_state"], len(info["members"])

    def group_offsets(self, group: str) -> dict[TP, int]:
        with kafka_errors(self.bootstrap, f"reading group {group}'s offsets"):
            got = self._a.list_group_offsets(group).get(group, {})
        return {(tp.topic, tp.partition): om.offset for tp, om in got.items() if om.offset >= 0}

    def set_group_offsets(self, group: str, offsets: dict[TP, int]) -> None:
        """Sets the group's committed offsets; refused by the broker while the group has members."""
        from kafka import OffsetAndMetadata, TopicPartition

        todo = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        with kafka_errors(self.bootstrap, f"setting group {group}'s offsets"):
            result = self._a.alter_group_offsets(group, todo)
        bad = {
            f"{tp.topic}:{tp.partition}": err.__name__
            for tp, err in result.items()
            if err.__name__ != "NoError"
        }
        if bad:
            raise TerminalError(f"Kafka refused the new offsets of group {group}: {bad}")

    def forget_group(self, group: str) -> None:
        """Deletes a consumer group and its committed offsets (refused by the broker while it has members)."""
        with kafka_errors(self.bootstrap, f"deleting group {group}"):
            result = self._a.delete_groups([group])
        bad = [
            f"{g}: {err.__name__}"
            for g, err in result
            if err.__name__ not in ("NoError", "GroupIdNotFoundError")
        ]
        if bad:
            raise TerminalError(f"Kafka refused to delete group {group}: {', '.join(bad)}")

    def _reader(self):
        if self._offsets_reader is None:
            from kafka import KafkaConsumer

            with kafka_errors(self.bootstrap, "connecting"):
                self._offsets_reader = KafkaConsumer(
                    bootstrap_servers=_servers(self.bootstrap),
                    enable_auto_commit=False,
                    allow_auto_create_topics=False,
                    **_known(self.options, KafkaConsumer.DEFAULT_CONFIG),
                )
        return self._offsets_reader

    def end_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        from kafka import TopicPartition

        with kafka_errors(self.bootstrap, "reading end offsets"):
            got = self._reader().end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): o for tp, o in got.items()}

    def beginning_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        from kafka import TopicPartition

        with kafka_errors(self.bootstrap, "reading beginning offsets"):
            got = self._reader().beginning_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): o for tp, o in got.items()}

    def offsets_for_time(self, tps: Iterable[TP], ts_ms: int) -> dict[TP, int | None]:
        """The first offset at or after `ts_ms` per partition (None: no record that late)."""
        from kafka import TopicPartition

        with kafka_errors(self.bootstrap, "looking up offsets by time"):
            got = self._reader().offsets_for_times({TopicPartition(t, p): ts_ms for t, p in tps})
        return {(tp.topic, tp.partition): (None if v is None else v.offset) for tp, v in got.items()}

    def read_all(self, topic: str, partition: int = 0) -> Iterator[Record]:
        """Every record of one partition, from its beginning to its end as of now (the offsets and held
        topics); nothing when the topic does not exist."""
        from kafka import TopicPartition

        if topic not in self.topics():
            return
        tp = TopicPartition(topic, partition)
        deadline = time.monotonic() + READ_ALL_S
        with kafka_errors(self.bootstrap, f"reading {topic}"):
            reader = self._reader()
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            end = reader.end_offsets([tp])[tp]
            while reader.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"Kafka at {self.bootstrap}: {topic} not read to its end in {READ_ALL_S:.0f}s"
                    )
                for records in reader.poll(timeout_ms=1000).values():
                    for r in records:
                        yield Record(topic, partition, r.offset, r.key, r.value, r.timestamp)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._a.close()
        if self._offsets_reader is not None:
            with contextlib.suppress(Exception):
                self._offsets_reader.close()
