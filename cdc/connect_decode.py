"""Kafka Connect JSON -> Python values, the way back of cdc.connect_schema's encoders, for the messages Debezium's
PostgreSQL connector writes (and pos-cdc's Kafka sink, which writes the same shapes).

`decode_value(field_schema_json, value)` turns one field's JSON value into the Python type pos-cdc's PostgreSQL
source would have produced for the column (Decimal, date, time, datetime, uuid.UUID, bytes, ...), by the field's
logical type name; `decode_schemaless` does what can be done without a schema (JSON's own types; numbers with a
fraction already parsed as Decimal by the caller). A value that does not fit its schema raises ValueMismatch with
what is wrong, never a guess. `is_placeholder` recognises each form of Debezium's unchanged-TOAST placeholder
(UnchangedToastedPlaceholder.java: the string, base64 of its bytes for bytea, one-element lists for arrays).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from cdc.connect_schema import (
    CONNECT_DATE,
    CONNECT_TIME,
    CONNECT_TIMESTAMP,
    DATE,
    DECIMAL,
    EXACT,
    ISO_DATE,
    ISO_TIME,
    ISO_TIMESTAMP,
    MICRO_TIME,
    MICRO_TIMESTAMP,
    NANO_TIME,
    NANO_TIMESTAMP,
    PLACEHOLDER,
    PLACEHOLDER_B64,
    PLACEHOLDER_BYTES,
    TIME_MS,
    TIMESTAMP_MS,
    UUID,
    VARIABLE_DECIMAL,
    ZONED_TIME,
    ZONED_TIMESTAMP,
    ValueMismatch,
)

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_ORD = dt.date(1970, 1, 1).toordinal()
_MS = dt.timedelta(milliseconds=1)
_US = dt.timedelta(microseconds=1)


def _name_uuid_from_bytes(data: bytes) -> str:
    """Java's UUID.nameUUIDFromBytes: MD5, version 3, IETF variant."""
    h = bytearray(hashlib.md5(data).digest())
    h[6] = (h[6] & 0x0F) | 0x30
    h[8] = (h[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(h)))


_PLACEHOLDER_LISTS = (
    [PLACEHOLDER],  # text, varchar, json arrays
    [PLACEHOLDER_B64],  # bytea arrays
    list(PLACEHOLDER_BYTES),  # int4, int8, date arrays: the placeholder's bytes as numbers
    [_name_uuid_from_bytes(PLACEHOLDER_BYTES)],  # uuid arrays
)


def is_placeholder(value: Any) -> bool:
    """Whether a decoded JSON value is one of Debezium's forms of the unchanged-TOAST placeholder."""
    t = type(value)
    if t is str:
        return value == PLACEHOLDER or value == PLACEHOLDER_B64
    if t is list:
        return value in _PLACEHOLDER_LISTS
    if t is dict:
        return value == {PLACEHOLDER: PLACEHOLDER}  # hstore as a map
    return False


def _b64(value: Any) -> bytes:
    if type(value) is not str:
        raise ValueMismatch(f"expected a base64 string, got {_show(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueMismatch(f"not base64: {_show(value)}") from None


def _decimal_from(value: Any, scale: int, name: str) -> Decimal:
    if type(value) in (int, Decimal):  # JsonConverter decimal.format=NUMERIC writes a JSON number
        number = Decimal(value)
        exact = EXACT.quantize(number, Decimal(1).scaleb(-scale))
        return exact if exact == number else number
    raw = _b64(value)
    if not raw:
        raise ValueMismatch(f"empty bytes for {name}")
    return EXACT.scaleb(Decimal(int.from_bytes(raw, "big", signed=True)), -scale)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _need(value: Any, types: tuple[type, ...], what: str) -> Any:
    if type(value) not in types:
        raise ValueMismatch(f"expected {what}, got {_show(value)}")
    return value


def _from_epoch(value: Any, unit: dt.timedelta, what: str) -> dt.datetime:
    _need(value, (int,), what)
    try:
        return _EPOCH + value * unit
    except OverflowError:
        raise ValueMismatch(f"{what} {value} is outside Python's datetime range") from None


def _time_of_day(value: Any, per_second: int, what: str) -> dt.time:
    _need(value, (int,), what)
    if not 0 <= value < 86400 * per_second:
        raise ValueMismatch(f"{what} {value} is not a time of day")
    us = value * 1_000_000 // per_second
    return (_EPOCH + dt.timedelta(microseconds=us)).time()


def _parse_zoned(value: Any, what: str) -> Any:
    _need(value, (str,), what)
    if value in ("infinity", "-infinity"):
        return value  # Debezium's spelling for PostgreSQL's infinite timestamps; pos-cdc keeps them as text
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueMismatch(f"not an ISO-8601 {what}: {_show(value)}") from None
    if parsed.tzinfo is None:
        raise ValueMismatch(f"{what} without an offset: {_show(value)}")
    return parsed


def _parse_zoned_time(value: Any) -> dt.time:
    _need(value, (str,), "ZonedTime string")
    try:
        return dt.time.fromisoformat(value)
    except ValueError:
        raise ValueMismatch(f"not an ISO-8601 time with offset: {_show(value)}") from None


def _date(value: Any) -> dt.date:
    _need(value, (int,), "days since 1970-01-01 (int32)")
    try:
        return dt.date.fromordinal(value + _EPOCH_ORD)
    except (ValueError, OverflowError):
        raise ValueMismatch(f"date {value} days from 1970-01-01 is outside Python's date range") from None


def _float(value: Any) -> Any:
    """A float64/float32 field: a JSON number is kept exact as Decimal (ints stay int); Jackson's non-finite
    strings become Decimal NaN/Infinity."""
    if type(value) in (Decimal, int):
        return value
    if type(value) is str and value in ("NaN", "Infinity", "-Infinity"):
        return Decimal(value)
    raise ValueMismatch(f"expected a number, got {_show(value)}")


def decode_value(schema: dict[str, Any], value: Any) -> Any:
    """A field's JSON value (not null, not the placeholder) -> Python, by the field's schema JSON."""
    return decoder_for(schema)(value)


def decoder_for(schema: dict[str, Any]) -> Callable[[Any], Any]:
    """The function that decodes values of a field with this schema JSON (built once per schema and reused)."""
    name = schema.get("name")
    t = schema.get("type")
    if name is not None:
        fn = _by_name(name, schema)
        if fn is not None:
            return fn
    if t == "string":
        return lambda v: _need(v, (str,), "a string")
    if t in ("int8", "int16", "int32", "int64"):
        what = f"an integer ({t})"
        return lambda v: v if type(v) is int else _need(v, (int,), what)
    if t in ("double", "float", "float64", "float32"):  # JsonConverter writes double/float
        return _float
    if t == "boolean":
        return lambda v: _need(v, (bool,), "true or false")
    if t == "bytes":
        return _b64
    if t == "array":
        item = decoder_for(schema.get("items") or {})

        def array(v: Any) -> list:
            _need(v, (list,), "an array")
            return [None if x is None else item(x) for x in v]

        return array
    if t in ("struct", "map"):
        return lambda v: _need(v, (dict,), f"an object ({t})")

    def unknown(v: Any) -> Any:
        raise ValueMismatch(f"unknown Connect type {t!r}")

    return unknown


def _decimal_decoder(schema: dict[str, Any]) -> Callable[[Any], Any]:
    params = schema.get("parameters") or {}
    try:
        scale = int(params.get("scale", "0"))
    except (TypeError, ValueError):
        bad = params.get("scale")

        def refuse(v: Any) -> Any:
            raise ValueMismatch(f"Decimal schema with a bad scale parameter {bad!r}")

        return refuse
    return lambda v: _decimal_from(v, scale, DECIMAL)


def _uuid(v: Any) -> uuid.UUID:
    try:
        return uuid.UUID(_need(v, (str,), "a UUID string"))
    except ValueError:
        raise ValueMismatch(f"not a UUID: {_show(v)}") from None


def _by_name(name: str, schema: dict[str, Any]) -> Callable[[Any], Any] | None:
    if name == DECIMAL:
        return _decimal_decoder(schema)
    return _NAMED.get(name)


_NAMED: dict[str, Callable[[Any], Any]] = {
    VARIABLE_DECIMAL: lambda v: variable_decimal(v),
    DATE: lambda v: _date(v),
    CONNECT_DATE: lambda v: _date(v),
    MICRO_TIMESTAMP: lambda v: _from_epoch(v, _US, "MicroTimestamp"),
    TIMESTAMP_MS: lambda v: _from_epoch(v, _MS, "Timestamp (ms)"),
    CONNECT_TIMESTAMP: lambda v: _from_epoch(v, _MS, "Timestamp (ms)"),
    NANO_TIMESTAMP: lambda v: _from_epoch(_need(v, (int,), "NanoTimestamp") // 1000, _US, "NanoTimestamp"),
    MICRO_TIME: lambda v: _time_of_day(v, 1_000_000, "MicroTime"),
    TIME_MS: lambda v: _time_of_day(v, 1000, "Time (ms)"),
    CONNECT_TIME: lambda v: _time_of_day(v, 1000, "Time (ms)"),
    NANO_TIME: lambda v: _time_of_day(v, 1_000_000_000, "NanoTime"),
    ZONED_TIMESTAMP: lambda v: _parse_zoned(v, "ZonedTimestamp"),
    ZONED_TIME: lambda v: _parse_zoned_time(v),
    UUID: _uuid,
    ISO_DATE: lambda v: _iso(dt.date.fromisoformat, v, "IsoDate"),
    ISO_TIME: lambda v: _iso(dt.time.fromisoformat, v, "IsoTime"),
    ISO_TIMESTAMP: lambda v: _iso(dt.datetime.fromisoformat, v, "IsoTimestamp"),
}


def _iso(parse: Callable[[str], Any], value: Any, what: str) -> Any:
    try:
        return parse(_need(value, (str,), f"an {what} string"))
    except ValueError:
        raise ValueMismatch(f"not an {what}: {_show(value)}") from None


def variable_decimal(value: Any) -> Decimal:
    """io.debezium.data.VariableScaleDecimal {"scale": s, "value": base64 unscaled} -> Decimal."""
    if type(value) is not dict or set(value) != {"scale", "value"} or type(value["scale"]) is not int:
        raise ValueMismatch(f"expected a VariableScaleDecimal {{scale, value}}, got {_show(value)}")
    return _decimal_from(value["value"], value["scale"], VARIABLE_DECIMAL)


def decode_schemaless(value: Any) -> Any:
    """A field's JSON value without a schema: JSON types as they are (numbers with a fraction are already
    Decimal), and the one shape that can only be a VariableScaleDecimal read back as a Decimal."""
    if type(value) is dict and len(value) == 2 and "scale" in value and "value" in value:
        try:
            return variable_decimal(value)
        except ValueMismatch:
            return value
    return value
