"""The Kafka parts of the connector config (cdc/config.py): the Kafka sink, the Kafka source, and the client
settings they share."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from cdc.config_base import Strict, comma_list
from cdc.kafka_security import check_security, security_settings

TOPIC_RE = r"^[A-Za-z0-9._-]{1,200}$"


class KafkaClientOptions(Strict):
    """What the Kafka sink and source share: where the brokers are, and client settings passed as they are."""

    bootstrap_servers: Annotated[str, BeforeValidator(comma_list)] = Field(
        description="host:port of one or more brokers, comma-separated (or a list)"
    )
    client: Literal["kafka-python", "confluent-kafka"] = Field(
        "kafka-python",
        description="the Kafka client: kafka-python (pure Python, the default) or confluent-kafka (librdkafka: "
        "~5x less CPU per record; pip install 'pos-cdc[confluent]')",
    )
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="extra Kafka client settings, passed to the client as they are (kafka-python's names, e.g. "
        "security_protocol, ssl_cafile; librdkafka's for confluent-kafka, e.g. security.protocol); pos-cdc's "
        "own delivery settings (acks, idempotence, offsets) cannot be overridden",
    )

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        None,
        description="how pos-cdc talks to the brokers: SSL (TLS), SASL_SSL (TLS and a user name and password), "
        "SASL_PLAINTEXT, or PLAINTEXT (Kafka's default); see SECURITY.md",
    )
    ssl_cafile: str | None = Field(
        None,
        description="PEM file of the CA that signed the brokers' certificates (default: the system's CAs)",
    )
    ssl_certfile: str | None = Field(
        None, description="PEM file of pos-cdc's client certificate (mutual TLS)"
    )
    ssl_keyfile: str | None = Field(None, description="PEM file of the client certificate's private key")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism of security_protocol SASL_SSL or SASL_PLAINTEXT"
    )
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(
        None,
        description="SASL password; give it as ${file:/run/secrets/NAME} or ${VAR}: it is never shown",
    )

    @model_validator(mode="after")
    def _security_fits(self) -> KafkaClientOptions:
        return check_security(self)

    def client_options(self) -> dict[str, Any]:
        """`options` with the security settings added, in the names of the chosen client."""
        return {**self.options, **security_settings(self)}

    @field_validator("options")
    @classmethod
    def _not_ours(cls, v: dict) -> dict:
        taken = sorted(set(v) & PROTECTED_KAFKA_OPTIONS)
        if taken:
            raise ValueError(
                f"{', '.join(taken)} cannot be set: pos-cdc's delivery guarantees rest on its own values "
                "(acks=all, idempotence, manual offsets)"
            )
        return v


_PROTECTED = (
    "bootstrap_servers",
    "acks",
    "enable_idempotence",
    "enable_auto_commit",
    "group_id",
    "isolation_level",
    "key_serializer",
    "value_serializer",
    "key_deserializer",
    "value_deserializer",
    "transactional_id",
    "allow_auto_create_topics",
    "partition_assignment_strategy",  # eager assignment: a rebalance revokes all (the open batch is abandoned)
    "group_protocol",
)
# in kafka-python's spelling and in librdkafka's (confluent-kafka)
PROTECTED_KAFKA_OPTIONS = frozenset(
    [*_PROTECTED, *(p.replace("_", ".") for p in _PROTECTED), "request.required.acks"]
)


class KafkaSink(KafkaClientOptions):
    """Writes each change as Debezium's change-event envelope (JSON) to `<topic_prefix>.<schema>.<table>`."""

    type: Literal["kafka"]
    topic_prefix: str = Field(pattern=TOPIC_RE, description="topics are <topic_prefix>.<schema>.<table>")
    schemas: bool = Field(
        True, description="JsonConverter's schemas.enable: each key and value carries its schema"
    )
    decimal_handling: Literal["precise", "string", "double"] = Field(
        "precise", description="as Debezium's decimal.handling.mode (double loses digits past ~15)"
    )
    tombstones: bool = Field(
        True, description="a tombstone (null value) after each delete, for log compaction"
    )
    lane_topics: dict[str, str] = Field(
        default_factory=dict,
        description="topic of each lane a route stage gives (default <topic_prefix>.<schema>.<table>.<lane>)",
    )
    lane: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_]{0,30}$",
        description="the lane of every change no route stage gives one: its topic is the lane's; set for each "
        "lane of source.lanes",
    )
    partitions: int = Field(3, ge=1, description="partitions of the topics pos-cdc creates")
    replication_factor: int = Field(
        -1, description="of the topics pos-cdc creates (-1: the broker's default)"
    )
    offsets_topic: str = Field(
        "pos-cdc-offsets", pattern=TOPIC_RE, description="compacted topic where the source position is stored"
    )
    held_topic: str = Field(
        "pos-cdc-held",
        pattern=TOPIC_RE,
        description="topic of changes a stage held (dead letters, quarantine)",
    )
    batch_size: int = Field(
        20000, ge=1, description="changes sent before the pipeline lets the producer catch up"
    )
    batch_max_ms: int = Field(
        200, ge=1, description="longest a change waits before its batch is acknowledged"
    )

    @field_validator("lane_topics")
    @classmethod
    def _lane_topic_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [t for t in v.values() if not re.match(TOPIC_RE, t)]
        if bad:
            raise ValueError(f"not a Kafka topic name: {', '.join(map(repr, bad))} (letters, digits, . _ -)")
        return v

    @model_validator(mode="after")
    def _readable_decimals(self) -> KafkaSink:
        if not self.schemas and self.decimal_handling == "precise":
            raise ValueError(
                "decimal_handling: precise writes a decimal as its unscaled digits in base64 and leaves the scale "
                "to the schema, which schemas: false leaves out, so no consumer can read the price: use "
                "decimal_handling: string (exact) with schemas: false, or keep schemas: true"
            )
        return self


class KafkaSource(KafkaClientOptions):
    """Reads change events (pos-cdc's or Debezium's) from Kafka topics as a member of a consumer group."""

    type: Literal["kafka"]
    topics: list[str] = Field(
        default_factory=list, description="topics to read, e.g. [pos.public.item_price]"
    )
    topic_pattern: str | None = Field(
        None,
        description="a regular expression of topics to read, instead of topics; matched from the start of a "
        "name, as Kafka's clients match it (end it with $ to match whole names)",
    )
    group: str = Field(
        pattern=TOPIC_RE, description="consumer group; connectors sharing it share the partitions"
    )
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="where a partition with no stored position starts"
    )
    heartbeat_topic_prefix: str = Field(
        "__debezium-heartbeat", description="Debezium heartbeat topics (skipped)"
    )
    poll_max_records: int = Field(5000, ge=1, description="records read per poll")

    @model_validator(mode="after")
    def _one_of_topics(self) -> KafkaSource:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("give either topics (a list of names) or topic_pattern (a regular expression)")
        if self.topic_pattern:
            try:
                re.compile(self.topic_pattern)
            except re.error as e:
                raise ValueError(f"topic_pattern is not a regular expression: {e}") from None
        return self
