"""Kafka records in Debezium's PostgreSQL change-event format -> ChangeEvents: a pure decoder, no Kafka, no I/O.

`EnvelopeDecoder().decode(topic, key, value)` reads what Debezium's PostgreSQL connector (3.6) writes through
Kafka Connect's JsonConverter, with schemas on (`{"schema", "payload"}`) or off (the bare payload), in every
`decimal.handling.mode` (precise: Decimal bytes + scale or VariableScaleDecimal; string; double), and what
pos-cdc's own EnvelopeEncoder writes. It returns None for what is not a row change: a tombstone (null value), a
heartbeat (`__debezium-heartbeat.<prefix>`, value `{ts_ms}`), transaction metadata (`<prefix>.transaction`,
BEGIN/END), a logical-decoding message (op 'm'). Anything else that is not a valid change event raises
DecodeError (a HoldError, rule "kafka.decode") whose reason names what is wrong and where.

Values come back as the Python types pos-cdc's PostgreSQL source produces (cdc.connect_decode): Decimal, date,
time, datetime (aware for the zoned types), uuid.UUID, bytes; a JSON number with a fraction is read as the Decimal
of its text (never through float); Debezium's unchanged-TOAST placeholder becomes UNCHANGED_TOAST (toast=True).

The ordering key (ChangeEvent.commit_lsn, .seq) — the sink skips a change at or below its key's recorded
position, so this must grow with POS commit order for every change of a key:

- Debezium: source.sequence is `[lastCommitLsn, lsn]` (SourceInfo.sequence()). lastCommitLsn is the LSN the
  connector recorded at the last COMMIT it processed (PostgresStreamingChangeEventSource.commitMessage ->
  PostgresOffsetContext.updateCommitPosition), i.e. the END of the previous transaction's commit record
  (pgoutput's XLogData start for a Commit is txn->end_lsn, logical.c commit_cb_wrapper); lsn is the change's
  own WAL position. Transactions are streamed in commit order, so lastCommitLsn strictly grows from one
  transaction to the next, and within one transaction it is constant while lsn grows; source.lsn alone does
  not (WalPositionLocator: "Only the LSNs of transaction commits are ordered globally"). A restart replays a
  transaction with the same sequence (lastCommitLsn comes back from the offsets, lsn_commit). So a streamed event
  is placed at (lastCommitLsn, lsn). lastCommitLsn is null until the first COMMIT after an offset context was
  created without one (the initial snapshot's, PostgresOffsetContext.initialContext): that first transaction is
  placed at (0, lsn). Snapshot rows carry [lastCommitLsn or null, snapshot LSN] and are placed at
  (lastCommitLsn or 0, 0): below every streamed change that follows them, whose lsn is > 0, even when that
  change was written before the snapshot's LSN (a transaction open at the snapshot point and committed after it,
  which sorting by lsn would lose), and above every change streamed before a re-snapshot that kept the offsets.
  Not covered: a Debezium that starts over from empty offsets (snapshot.mode=always, offsets deleted, a new
  connector name) after the sink has applied its earlier events: its sequence starts again at null, below what
  the sink recorded; see docs/kafka-events.md for what the operator does then.
- pos-cdc (source.version ends with "+pos-cdc"): sequence is `[commit LSN of the event's own transaction, lsn]`,
  which is exactly ChangeEvent's (commit_lsn, seq) for a streamed change (seq is the change's LSN); our
  snapshot rows (no transaction block) come back at (snapshot LSN, 0), below the ordinal they had.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from cdc.connect_decode import decode_schemaless, decoder_for, is_placeholder
from cdc.connect_schema import PLACEHOLDER, PLACEHOLDER_B64, ValueMismatch
from cdc.errors import HoldError
from cdc.events import REFUSAL_HINT, TRUNCATE, UNCHANGED_TOAST, ChangeEvent

OPS = ("c", "u", "d", "r", "t")
_NEEDS = {"c": "after", "r": "after", "u": "after", "d": "before"}
_OURS = "+pos-cdc"
# why a storefront may refuse a value of a record without a value schema (JsonConverter schemas off): the sink
# adds it to the reason of such a refusal (ChangeEvent.headers[REFUSAL_HINT])
SCHEMALESS_HINT = (
    "the Kafka record had no schema (JsonConverter schemas.enable=false), so a value's type is a guess: Debezium "
    "then sends a NUMERIC in decimal.handling.mode=precise as its unscaled bytes without the scale, and a date or "
    "time as a bare number; set decimal.handling.mode=string and key/value.converter.schemas.enable=true on the "
    "Debezium connector (docs/kafka-events.md)"
)
_SCHEMA_HEAD = b'{"schema":'
_PAYLOAD_SEP = b',"payload":'


class DecodeError(HoldError):
    """A Kafka record that is not a change event pos-cdc can apply; `reason` says what is wrong."""

    def __init__(self, reason: str, details: dict | None = None):
        super().__init__(reason, rule="kafka.decode", details=details)


_decode = json.JSONDecoder(
    parse_float=Decimal
).decode  # one decoder: json.loads(..., parse_float=) builds one per call


def _loads(data: bytes) -> Any:
    return _decode(data.decode())


def _preview(data: bytes) -> str:
    text = data[:80].decode("utf-8", "replace")
    return text + ("..." if len(data) > 80 else "")


class _RowSchema:
    """A value schema's row fields: name -> (field type, decoder), built once per distinct schema text."""

    __slots__ = ("fields",)

    def __init__(self, envelope: Any):
        self.fields: dict[str, tuple[str | None, Any]] | None = None
        if not isinstance(envelope, dict):
            return
        for f in envelope.get("fields") or ():
            if isinstance(f, dict) and f.get("field") in ("after", "before") and f.get("type") == "struct":
                rows = [g for g in f.get("fields") or () if isinstance(g, dict)]
                self.fields = {g.get("field"): (g.get("type"), decoder_for(g)) for g in rows}
                return


class EnvelopeDecoder:
    """Decodes Debezium-format records. Keeps only caches (schemas by their text), so it is safe to share."""

    def __init__(self, heartbeat_prefix: str = "__debezium-heartbeat", cache_size: int = 256):
        self.heartbeat_prefix = heartbeat_prefix
        self._schemas: dict[bytes, _RowSchema] = {}
        self._cache_size = cache_size

    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> ChangeEvent | None:
        """One record -> a ChangeEvent, or None for a record that is not a row change (see the module doc)."""
        if value is None:
            return None  # tombstone
        if topic == self.heartbeat_prefix or topic.startswith(self.heartbeat_prefix + "."):
            return None
        row_schema, payload = self._split(value)
        if payload is None:
            return None  # {"schema": ..., "payload": null}: a tombstone written with schemas on
        if not isinstance(payload, dict):
            raise DecodeError(f"{topic}: not a change event: the value is a JSON {type(payload).__name__}")
        op = payload.get("op")
        if op is None:
            if "status" in payload and "id" in payload:
                return None  # transaction metadata, BEGIN/END
            if set(payload) == {"ts_ms"}:
                return None  # a heartbeat on a renamed topic
            raise DecodeError(
                f"{topic}: not a change event: no 'op' field (fields: {', '.join(sorted(payload))})"
            )
        if op == "m":
            return None  # a logical decoding message, not a row change
        if op not in OPS:
            raise DecodeError(f"{topic}: unknown op {op!r} (expected one of c, u, d, r, t)")
        return self._event(topic, key, payload, op, row_schema)

    # -- parsing ------------------------------------------------------------------------------------------------

    def _split(self, value: bytes) -> tuple[_RowSchema | None, Any]:
        """(row schema or None, payload). Reuses the parsed schema when its text was seen before: a Debezium
        value repeats the same few kilobytes of schema in every record."""
        if value.startswith(_SCHEMA_HEAD) and value.endswith(b"}"):
            cut = value.find(_PAYLOAD_SEP)
            if cut > 0:
                text = value[len(_SCHEMA_HEAD) : cut]
                schema = self._schemas.get(text)
                try:
                    if schema is None:
                        schema = _RowSchema(_loads(text))
                        if len(self._schemas) >= self._cache_size:
                            self._schemas.clear()
                        self._schemas[text] = schema
                    return schema, _loads(value[cut + len(_PAYLOAD_SEP) : -1])
                except ValueError:
                    pass  # not the split it looked like: parse the whole record below
        try:
            doc = _loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"value is not JSON ({exc}): {_preview(value)}") from None
        if isinstance(doc, dict) and set(doc) == {"schema", "payload"}:
            return _RowSchema(doc["schema"]), doc["payload"]
        return None, doc

    def _key(self, topic: str, key: bytes) -> tuple[tuple[str, ...], dict]:
        try:
            doc = _loads(key)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{topic}: key is not JSON ({exc}): {_preview(key)}") from None
        names: tuple[str, ...] | None = None
        if isinstance(doc, dict) and set(doc) == {"schema", "payload"}:
            schema, doc = doc["schema"], doc["payload"]
            if isinstance(schema, dict) and isinstance(schema.get("fields"), list):
                names = tuple(f.get("field") for f in schema["fields"] if isinstance(f, dict))
        if not isinstance(doc, dict) or not doc:
            raise DecodeError(f"{topic}: key is not a struct of key columns: {_preview(key)}")
        return (names or tuple(doc)), doc

    # -- the event ------------------------------------------------------------------------------------------------

    def _event(self, topic: str, key: bytes | None, p: dict, op: str, rs: _RowSchema | None) -> ChangeEvent:
        src = p.get("source")
        if not isinstance(src, dict):
            raise DecodeError(f"{topic}: op {op!r} without a 'source' object")
        schema, table = src.get("schema"), src.get("table")
        if not isinstance(schema, str) or not isinstance(table, str) or not table:
            raise DecodeError(
                f"{topic}: source has no schema/table strings (schema={schema!r}, table={table!r})"
            )
        where = f"{topic} ({schema}.{table}, op {op!r})"
        need = _NEEDS.get(op)
        if need is not None and not isinstance(p.get(need), dict):
            raise DecodeError(f"{where}: '{need}' must be an object, got {_kind(p.get(need))}")
        if op == TRUNCATE or key is None:
            if op != TRUNCATE:
                raise DecodeError(
                    f"{where}: no key: the record's key is null; pos-cdc applies changes by key (the source table "
                    "needs a primary key, or Debezium's message.key.columns)"
                )
            key_columns: tuple[str, ...] = ()
        else:
            key_columns, _ = self._key(topic, key)
        fields = rs.fields if rs is not None else None
        toast = [False]
        before = self._row(where, "before", p.get("before"), fields, toast)
        after = self._row(where, "after", p.get("after"), fields, toast)
        commit_lsn, seq, lsn = self._position(where, src, p)
        ts_ms = src.get("ts_ms")
        txid = src.get("txId")
        if type(ts_ms) is not int or (txid is not None and type(txid) is not int):
            raise DecodeError(f"{where}: source.ts_ms must be an integer and txId an integer or null")
        return ChangeEvent(
            op,
            schema,
            table,
            before,
            after,
            lsn,
            commit_lsn,
            seq,
            ts_ms,
            txid,
            _snapshot(where, src.get("snapshot")),
            _str(src.get("db")),
            _str(src.get("name")),
            key_columns,
            toast=toast[0],
            headers={REFUSAL_HINT: SCHEMALESS_HINT} if fields is None else {},
        )

    def _row(self, where: str, side: str, row: Any, fields: dict | None, toast: list) -> dict | None:
        if row is None:
            return None
        if not isinstance(row, dict):
            raise DecodeError(f"{where}: '{side}' must be an object or null, got {_kind(row)}")
        out = {}
        for name, v in row.items():
            if v is None:
                out[name] = None
                continue
            if fields is None:
                if is_placeholder(v):
                    out[name] = UNCHANGED_TOAST
                    toast[0] = True
                else:
                    out[name] = decode_schemaless(v)
                continue
            field = fields.get(name)
            if field is None:
                raise DecodeError(f"{where}: {side}.{name} is not in the value schema")
            if _placeholder(v, field[0]):
                out[name] = UNCHANGED_TOAST
                toast[0] = True
                continue
            try:
                out[name] = field[1](v)
            except ValueMismatch as exc:
                raise DecodeError(f"{where}: {side}.{name}: {exc}") from None
        return out

    def _position(self, where: str, src: dict, p: dict) -> tuple[int, int, int]:
        """(commit_lsn, seq, lsn); the rule and its evidence are in the module docstring."""
        first, second = _sequence(where, src.get("sequence"))
        lsn = src.get("lsn")
        if lsn is not None and type(lsn) is not int:
            raise DecodeError(f"{where}: source.lsn must be an integer or null, got {lsn!r}")
        if lsn is None:
            lsn = second if second is not None else 0
        snapshot = src.get("snapshot")
        version = src.get("version")
        if isinstance(version, str) and version.endswith(_OURS):
            if first is None or second is None:
                raise DecodeError(f"{where}: a pos-cdc event without its source.sequence [commit LSN, LSN]")
            return first, second if p.get("transaction") else 0, lsn
        if snapshot in (None, False, "false", "incremental"):
            if second is None and src.get("lsn") is None:
                raise DecodeError(f"{where}: no position: source.sequence and source.lsn are both missing")
            return first or 0, second if second is not None else lsn, lsn
        return first or 0, 0, lsn


def _sequence(where: str, text: Any) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        if not isinstance(text, str) or text[:1] != "[" or text[-1:] != "]":
            raise ValueError
        items = [x.strip() for x in text[1:-1].split(",")]
        if len(items) != 2:
            raise ValueError
        return tuple(None if x == "null" else int(x.strip('"')) for x in items)  # type: ignore[return-value]
    except ValueError:
        raise DecodeError(f"{where}: source.sequence is not a JSON array of two LSNs: {text!r}") from None


def _placeholder(v: Any, field_type: str | None) -> bool:
    """Debezium's placeholder in a field of this Connect type (the base64 form only in a bytes field)."""
    if type(v) is str:
        return v == PLACEHOLDER or (v == PLACEHOLDER_B64 and field_type == "bytes")
    return type(v) in (list, dict) and is_placeholder(v)


def _snapshot(where: str, v: Any) -> str:
    if v is None or v is False:
        return "false"
    if v is True:
        return "true"
    if isinstance(v, str):
        return v
    raise DecodeError(f"{where}: source.snapshot must be a string, got {v!r}")


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _kind(v: Any) -> str:
    return "null" if v is None else f"a JSON {type(v).__name__}"


__all__ = ["DecodeError", "EnvelopeDecoder"]
