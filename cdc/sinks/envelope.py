"""ChangeEvent -> Kafka records in Debezium's PostgreSQL change-event format (Kafka Connect JsonConverter JSON).

`EnvelopeEncoder.records(ev)` returns `Record(topic, key, value)` tuples, bytes ready for a producer, so a consumer
written for Debezium's PostgreSQL connector (3.6) reads pos-cdc's topics unchanged, and pos-cdc's own Kafka source
(cdc.sources.debezium) reads both. What Debezium does, and we do the same:

- topic `<topic_prefix>.<schema>.<table>`; key: the primary-key columns as a struct (`<topic>.Key`), null for a
  table without key columns and for a truncate (Debezium's doc: "a truncate event ... has no message key");
- value: the envelope struct `<topic>.Envelope` with fields before, after, source
  (`io.debezium.connector.postgresql.Source`), transaction (`event.block`), op, ts_ms, ts_us, ts_ns, in that order
  (TableSchemaBuilder.create adds the transaction field before Envelope.build adds op and the times);
- with `schemas=True` each key and value is `{"schema": ..., "payload": ...}`, else the bare payload;
- a delete is followed by a tombstone (same key, value null) when `tombstones=True` (tombstones.on.delete);
- an update that changes the key becomes a delete of the old key (+ tombstone) and a create of the new one,
  as Debezium emits it, so that compaction and partitioning by key stay right;
- an unchanged TOAST value is written as Debezium's placeholder, never as a made-up value.

What pos-cdc writes that differs (each on purpose, see docs/kafka-events.md): source.version is
"<version>+pos-cdc", the mark by which our decoder knows our ordering fields; source.sequence's first element is
the event's own commit LSN (Debezium's is the previous transaction's end LSN); transaction.total_order (the
event's ordinal in its transaction) is on every streamed event; envelope ts_ms is the encode time,
as in Debezium, while source.ts_ms is the commit time.

Speed: the schema JSON of a relation is built once per shape of row (column names, the Python types of the
values, the scale of Decimal values) and reused; an event costs the value conversions and one json.dumps per
row. Fragments are built with json.dumps too, so the output is deterministic (fixed field order).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

from cdc.connect_schema import (
    DECIMAL_MODES,
    VARIABLE_DECIMAL,
    FieldSchema,
    ValueMismatch,
    encoder,
    fits_type,
    infer_schema,
    schema_for_type,
    toast_value,
)
from cdc.errors import HoldError
from cdc.events import CONNECTOR_VERSION, CREATE, DELETE, TRUNCATE, UNCHANGED_TOAST, UPDATE, ChangeEvent

SOURCE_VERSION = f"{CONNECTOR_VERSION}+pos-cdc"
_SNAPSHOT_VALUES = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"


class Record(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    # CRC-32 of the key's payload JSON (the same with or without schemas): all records of one key go to one
    # partition (its value modulo the partition count); None for a record without a key
    spread: int | None = None


class EncodeError(HoldError):
    """One change cannot be written in the configured format (e.g. NaN in decimal_handling=precise)."""

    def __init__(self, reason: str):
        super().__init__(reason, rule="kafka.encode")


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _prim(t: str, field: str, optional: bool = False) -> dict[str, Any]:
    return {"type": t, "optional": optional, "field": field}


def source_schema() -> dict[str, Any]:
    """io.debezium.connector.postgresql.Source as Debezium 3.6 declares it (SchemaFactory.sourceInfoSchemaBuilder
    + PostgresSourceInfoStructMaker)."""
    snapshot = {
        "type": "string",
        "optional": True,
        "name": "io.debezium.data.Enum",
        "version": 1,
        "parameters": {"allowed": _SNAPSHOT_VALUES},
        "default": "false",
        "field": "snapshot",
    }
    fields = [_prim("string", "version"), _prim("string", "connector"), _prim("string", "name")]
    fields += [_prim("int64", "ts_ms"), snapshot, _prim("string", "db"), _prim("string", "sequence", True)]
    fields += [_prim("int64", "ts_us", True), _prim("int64", "ts_ns", True)]
    fields += [_prim("string", "schema"), _prim("string", "table"), _prim("int64", "txId", True)]
    fields += [_prim("int64", "lsn", True), _prim("int64", "xmin", True)]
    fields += [_prim("string", "origin", True), _prim("int64", "origin_lsn", True)]
    return {
        "type": "struct",
        "fields": fields,
        "optional": False,
        "name": "io.debezium.connector.postgresql.Source",
    }


TRANSACTION_SCHEMA = {
    "type": "struct",
    "fields": [_prim("string", "id"), _prim("int64", "total_order"), _prim("int64", "data_collection_order")],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}


class _Layout:
    """Everything about one shape of row of one relation that does not change from event to event."""

    __slots__ = ("fields", "key_fields", "value_schema", "key_schema")

    def __init__(self, fields, key_fields, value_schema: str, key_schema: str | None):
        self.fields: list[tuple[str, Callable[[Any], Any], Any]] = fields  # name, converter, toast value
        self.key_fields: list[tuple[str, Callable[[Any], Any]]] = key_fields
        self.value_schema = value_schema  # '{"schema":<envelope schema>,"payload":' or '' (schemas off)
        self.key_schema = key_schema


class _Relation:
    __slots__ = ("topic", "types", "layouts", "source_head", "source_mid")

    def __init__(self, topic: str, types: dict | None, source_head: str, source_mid: str):
        self.topic = topic
        self.types = types
        self.layouts: dict[tuple, _Layout] = {}
        self.source_head = source_head  # '{"version":...,"name":...,"ts_ms":'
        self.source_mid = source_mid  # ',"schema":...,"table":...,"txId":'


_EXTRA_TYPES = (Decimal, dt.datetime, dt.time)


def _extra(row: dict) -> tuple:
    """What besides their Python types decides the schemas of a row's values: the scale of a Decimal, whether a
    datetime or time is aware."""
    return tuple(
        v.as_tuple().exponent if type(v) is Decimal else v.tzinfo is None
        for v in row.values()
        if type(v) in _EXTRA_TYPES
    )


class EnvelopeEncoder:
    """Encodes ChangeEvents as Debezium-format Kafka records. One encoder per Kafka sink (it keeps per-relation
    caches and the per-transaction counters of transaction.data_collection_order)."""

    def __init__(
        self,
        connector_name: str,
        topic_prefix: str,
        schemas: bool = True,
        decimal_handling: str = "precise",
        tombstones: bool = True,
        clock: Callable[[], int] | None = None,
        lane_topics: dict[str, str] | None = None,
        lane: str | None = None,
    ):
        if decimal_handling not in DECIMAL_MODES:
            raise ValueError(
                f"decimal_handling must be one of {', '.join(DECIMAL_MODES)}, not {decimal_handling!r}"
            )
        self.connector_name = connector_name
        self.topic_prefix = topic_prefix
        self.schemas = schemas
        self.mode = decimal_handling
        self.tombstones = tombstones
        self.lane_topics = dict(lane_topics or {})
        self.lane = lane  # the lane of every change no route stage gave one (a lane of source.lanes)
        self.clock = clock or time.time_ns  # ns since the epoch: envelope ts_ms/ts_us/ts_ns
        self._relations: dict[tuple[str, str, str], _Relation] = {}
        self._txn: tuple[Any, int] | None = None
        self._txn_counts: dict[tuple[str, str], int] = {}
        self._txn_total = 0
        self._source_schema = source_schema()

    # -- public ------------------------------------------------------------------------------------------------

    def records(self, ev: ChangeEvent) -> list[Record]:
        """The records for one change: usually one; a delete and its tombstone; a key change as delete
        (+ tombstone) and create. Raises EncodeError (a HoldError) for a value the format cannot carry."""
        try:
            if ev.op == UPDATE and ev.before and ev.key_columns and self._key_changed(ev):
                return self._key_change(ev)
            return self._records(ev, ev.op, ev.before, ev.after)
        except ValueMismatch as exc:
            raise EncodeError(f"{ev.schema}.{ev.table}: {exc}") from exc

    def topic(self, schema: str, table: str, lane: str | None = None) -> str:
        """`<prefix>.<schema>.<table>`, and for a change a `route` stage gave a lane, that lane's configured
        topic or `<prefix>.<schema>.<table>.<lane>`: each lane is a topic of its own, so a consumer of the fast
        lane never waits behind the bulk lane's backlog."""
        base = f"{self.topic_prefix}.{schema}.{table}"
        if lane is None:
            return base
        return self.lane_topics.get(lane) or f"{base}.{lane}"

    # -- one event ------------------------------------------------------------------------------------------------

    def _records(self, ev: ChangeEvent, op: str, before: dict | None, after: dict | None) -> list[Record]:
        rel = self._relation(ev)
        layout = self._layout(rel, ev, before, after)
        key = spread = None
        if op != TRUNCATE and layout.key_fields:
            key, spread = self._key(layout, before if op == DELETE else after, ev)
        value = self._value(rel, layout, ev, op, before, after)
        lane = ev.lane or self.lane
        topic = rel.topic if lane is None else self.topic(ev.schema, ev.table, lane)
        out = [Record(topic, key, value, spread)]
        if op == DELETE and self.tombstones and key is not None:
            out.append(Record(topic, key, None, spread))
        return out

    def _key_changed(self, ev: ChangeEvent) -> bool:
        before, after = ev.before, ev.after or {}
        return any(k in before and before[k] != after.get(k) for k in ev.key_columns)

    def _key_change(self, ev: ChangeEvent) -> list[Record]:
        return self._records(ev, DELETE, ev.before, None) + self._records(ev, CREATE, None, ev.after)

    def _key(self, layout: _Layout, row: dict | None, ev: ChangeEvent) -> tuple[bytes, int]:
        row = row or {}
        payload = {}
        for name, conv in layout.key_fields:
            v = row.get(name)
            if v is None or v is UNCHANGED_TOAST:
                raise ValueMismatch(f"key column {name!r} has no value in the {ev.op!r} event")
            payload[name] = conv(v)
        text = _dumps(payload)
        spread = zlib.crc32(text.encode())
        if layout.key_schema is not None:
            text = f"{layout.key_schema}{text}}}"
        return text.encode(), spread

    def _row(self, layout: _Layout, row: dict | None) -> str:
        if row is None:
            return "null"
        out = {}
        for name, conv, toast in layout.fields:
            if name in row:
                v = row[name]
                out[name] = None if v is None else toast if v is UNCHANGED_TOAST else conv(v)
        return _dumps(out)

    def _value(self, rel: _Relation, layout: _Layout, ev, op: str, before, after) -> bytes:
        ts_ms = ev.ts_ms
        source = (
            f'{rel.source_head}{ts_ms},"snapshot":{_json_str(ev.snapshot)},"db":{_json_str(ev.db)},'
            f'"sequence":"[\\"{ev.commit_lsn}\\",\\"{ev.lsn}\\"]","ts_us":{ts_ms * 1000},'
            f'"ts_ns":{ts_ms * 1_000_000}{rel.source_mid}{_num(ev.txid)},"lsn":{ev.lsn},'
            f'"xmin":null,"origin":null,"origin_lsn":null}}'
        )
        now = self.clock()
        text = (
            f'{layout.value_schema}{{"before":{self._row(layout, before)},"after":{self._row(layout, after)},'
            f'"source":{source},"transaction":{self._transaction(ev)},"op":"{op}",'
            f'"ts_ms":{now // 1_000_000},"ts_us":{now // 1000},"ts_ns":{now}}}'
        )
        if layout.value_schema:
            text += "}"
        return text.encode()

    def _transaction(self, ev: ChangeEvent) -> str:
        if ev.txid is None:
            return "null"
        txn = (ev.txid, ev.commit_lsn)
        if txn != self._txn:
            self._txn, self._txn_counts, self._txn_total = txn, {}, 0
        rel = (ev.schema, ev.table)
        n = self._txn_counts[rel] = self._txn_counts.get(rel, 0) + 1
        self._txn_total += 1
        return f'{{"id":"{ev.txid}:{ev.commit_lsn}","total_order":{self._txn_total},"data_collection_order":{n}}}'

    # -- caches -------------------------------------------------------------------------------------------------

    def _relation(self, ev: ChangeEvent) -> _Relation:
        rid = (ev.schema, ev.table, ev.connector_name)
        rel = self._relations.get(rid)
        if rel is None or (rel.types is not ev.types and rel.types != ev.types):
            head = _dumps({"version": SOURCE_VERSION, "connector": "postgresql", "name": self.connector_name})
            mid = _dumps({"schema": ev.schema, "table": ev.table})
            rel = _Relation(
                self.topic(ev.schema, ev.table), ev.types, f'{head[:-1]},"ts_ms":', f',{mid[1:-1]},"txId":'
            )
            self._relations[rid] = rel
        return rel

    def _layout(self, rel: _Relation, ev: ChangeEvent, before: dict | None, after: dict | None) -> _Layout:
        shape = (
            tuple(after) if after else (),
            tuple(map(type, after.values())) if after else (),
            tuple(before) if before else (),
            tuple(map(type, before.values())) if before else (),
            ev.key_columns,
        )
        key = (shape, _extra(after) if after else (), _extra(before) if before else ())
        layout = rel.layouts.get(key)
        if layout is None:
            layout = rel.layouts[key] = self._build_layout(rel, ev, before, after)
        return layout

    def _build_layout(self, rel: _Relation, ev: ChangeEvent, before, after) -> _Layout:
        names = list(after or ())
        names += [n for n in before or () if n not in (after or {})]
        schemas = {n: self._field_schema(n, ev.types, after, before) for n in names}
        fields = [(n, encoder(s, self.mode), toast_value(s)) for n, s in schemas.items()]
        key_fields = [(n, encoder(schemas[n], self.mode)) for n in ev.key_columns if n in schemas]
        if schemas and len(key_fields) != len(ev.key_columns):  # (a truncate has no row, and no key)
            missing = [n for n in ev.key_columns if n not in schemas]
            raise ValueMismatch(f"key column(s) {', '.join(missing)} not in the row")
        value_schema = key_schema = None
        if self.schemas:
            prefix = rel.topic
            row_schema = {
                "type": "struct",
                "fields": [{**s.json(True), "field": n} for n, s in schemas.items()],
                "optional": True,
                "name": f"{prefix}.Value",
            }
            envelope = {
                "type": "struct",
                "fields": [
                    {**row_schema, "field": "before"},
                    {**row_schema, "field": "after"},
                    {**self._source_schema, "field": "source"},
                    TRANSACTION_SCHEMA,
                    _prim("string", "op"),
                    _prim("int64", "ts_ms", True),
                    _prim("int64", "ts_us", True),
                    _prim("int64", "ts_ns", True),
                ],
                "optional": False,
                "name": f"{prefix}.Envelope",
                "version": 2,
            }
            value_schema = f'{{"schema":{_dumps(envelope)},"payload":'
            if key_fields:
                key_struct = {
                    "type": "struct",
                    "fields": [{**schemas[n].json(False), "field": n} for n, _ in key_fields],
                    "optional": False,
                    "name": f"{prefix}.Key",
                }
                key_schema = f'{{"schema":{_dumps(key_struct)},"payload":'
        return _Layout(fields, key_fields, value_schema or "", key_schema)

    def _field_schema(
        self, name: str, types: dict | None, after: dict | None, before: dict | None
    ) -> FieldSchema:
        """The column's declared type when its values are what the source gives for that type (and, for a
        fixed-scale numeric, have that scale); else inferred from the value (a stage changed it)."""
        values = [row[name] for row in (after, before) if row and row.get(name) is not None]
        values = [v for v in values if v is not UNCHANGED_TOAST]
        declared = types.get(name) if types else None
        if declared is not None:
            schema = schema_for_type(declared[0], declared[1], self.mode)
            if schema is not None and all(
                fits_type(declared[0], v) and _scale_fits(schema, v) for v in values
            ):
                return schema
        if not values:
            return FieldSchema("string")
        schema = infer_schema(values[0], self.mode)
        for v in values[1:]:
            other = infer_schema(v, self.mode)
            if other != schema:  # before and after disagree (two Decimal scales): the variable-scale struct
                if type(v) is Decimal and type(values[0]) is Decimal:
                    return FieldSchema("struct", VARIABLE_DECIMAL, 1)
                return FieldSchema("string")
        return schema


def _scale_fits(schema: FieldSchema, value: Any) -> bool:
    if schema.parameters and schema.parameters[0][0] == "scale" and type(value) is Decimal:
        return value.is_finite() and value.as_tuple().exponent == -int(schema.parameters[0][1])
    return True


_STRINGS: dict[str, str] = {}


def _json_str(v: str) -> str:
    """A JSON string literal, memoised: source.snapshot and source.db take a handful of values."""
    out = _STRINGS.get(v)
    if out is None:
        if len(_STRINGS) > 1000:
            _STRINGS.clear()
        out = _STRINGS[v] = _dumps(v)
    return out


def _num(v: int | None) -> str:
    return "null" if v is None else str(v)
