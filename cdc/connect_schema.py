"""Kafka Connect field schemas for PostgreSQL columns, as Debezium's PostgreSQL connector (3.6) builds them, and
the conversion of one value each way (Python <-> the JSON that Kafka Connect's JsonConverter writes).

Why a module of its own: the Kafka sink (sinks/envelope.py) and the Kafka source (sources/debezium.py) must agree
on every type, and the agreement is Debezium's, not ours. References (debezium/debezium at v3.6.1.Final):
PostgresValueConverter.schemaBuilder (the type table), SpecialValueDecimal / VariableScaleDecimal (numerics),
TemporalPrecisionMode.ADAPTIVE (times: precision <= 3 -> milliseconds, <= 6 -> microseconds),
ZonedTimestamp.toIsoString (timestamptz: UTC, 'Z', as many fraction digits as the column's precision).

A schema is a `FieldSchema`; `schema_for_type(oid, typmod, mode)` gives the one Debezium gives a column whose
PostgreSQL type is known, `infer_schema(value, mode)` the one for a value whose column type is unknown (a stage
renamed or converted it). `encoder(schema, mode)` returns a function Python value -> JSON-ready value;
cdc.connect_decode goes back. Money is Decimal end to end: numerics never pass through
float except in `double` mode, which is lossy by definition (Debezium's too), and the decoder reads JSON
numbers with a fraction as Decimal of their printed text.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

DECIMAL_MODES = ("precise", "string", "double")

# logical type names
DECIMAL = "org.apache.kafka.connect.data.Decimal"
VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
DATE = "io.debezium.time.Date"
TIME_MS = "io.debezium.time.Time"
MICRO_TIME = "io.debezium.time.MicroTime"
NANO_TIME = "io.debezium.time.NanoTime"
TIMESTAMP_MS = "io.debezium.time.Timestamp"
MICRO_TIMESTAMP = "io.debezium.time.MicroTimestamp"
NANO_TIMESTAMP = "io.debezium.time.NanoTimestamp"
ZONED_TIMESTAMP = "io.debezium.time.ZonedTimestamp"
ZONED_TIME = "io.debezium.time.ZonedTime"
ISO_DATE, ISO_TIME, ISO_TIMESTAMP = (
    "io.debezium.time.IsoDate",
    "io.debezium.time.IsoTime",
    "io.debezium.time.IsoTimestamp",
)
CONNECT_DATE = "org.apache.kafka.connect.data.Date"
CONNECT_TIME = "org.apache.kafka.connect.data.Time"
CONNECT_TIMESTAMP = "org.apache.kafka.connect.data.Timestamp"
UUID = "io.debezium.data.Uuid"
JSON = "io.debezium.data.Json"
XML = "io.debezium.data.Xml"
PRECISION_PARAM = "connect.decimal.precision"

# Debezium's `unavailable.value.placeholder` default, and its forms per column type
# (UnchangedToastedPlaceholder.java: string, the bytes for bytea, a one-element list for text arrays)
PLACEHOLDER = "__debezium_unavailable_value"
PLACEHOLDER_BYTES = PLACEHOLDER.encode()
PLACEHOLDER_B64 = base64.b64encode(PLACEHOLDER_BYTES).decode()

# Every Decimal operation here runs in this context: no rounding, ever (the default context has 28 digits).
EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_ORD = dt.date(1970, 1, 1).toordinal()
_UTC = dt.UTC
_MS = dt.timedelta(milliseconds=1)
_US = dt.timedelta(microseconds=1)
_INT64 = (-(2**63), 2**63 - 1)


class ValueMismatch(ValueError):
    """A value that does not fit its schema; the message says how (the caller adds where)."""


@dataclass(frozen=True, slots=True)
class FieldSchema:
    """One Connect field schema: type, logical name, version, parameters (in JsonConverter's order). `width`
    is not part of the schema: the fraction digits a ZonedTimestamp is written with (the column's precision)."""

    type: str
    name: str | None = None
    version: int | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    width: int | None = None

    def json(self, optional: bool = True) -> dict[str, Any]:
        """The schema as JsonConverter.asJsonSchema writes it (type, optional, name, version, parameters)."""
        if self.name == VARIABLE_DECIMAL:
            out: dict[str, Any] = {
                "type": "struct",
                "fields": [
                    {"type": "int32", "optional": False, "field": "scale"},
                    {"type": "bytes", "optional": False, "field": "value"},
                ],
                "optional": optional,
                "name": VARIABLE_DECIMAL,
                "version": 1,
                "doc": "Variable scaled decimal",
            }
            return out
        out = {"type": self.type, "optional": optional}
        if self.name is not None:
            out["name"] = self.name
        if self.version is not None:
            out["version"] = self.version
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        return out


STRING = FieldSchema("string")
INT64 = FieldSchema("int64")


def decimal_schema(scale: int, precision: int | None = None) -> FieldSchema:
    params = (("scale", str(scale)),)
    if precision is not None:
        params += ((PRECISION_PARAM, str(precision)),)
    return FieldSchema("bytes", DECIMAL, 1, params)


def _numeric(typmod: int, mode: str) -> FieldSchema:
    if mode == "string":
        return STRING
    if mode == "double":
        return FieldSchema("double")
    if typmod < 0:  # unconstrained numeric: the scale varies per value
        return FieldSchema("struct", VARIABLE_DECIMAL, 1)
    raw = typmod - 4  # VARHDRSZ; PostgreSQL's numeric_typmod_precision / numeric_typmod_scale
    precision, scale = (raw >> 16) & 0xFFFF, ((raw & 0x7FF) ^ 1024) - 1024
    return decimal_schema(scale, precision)


def _time_precision(typmod: int) -> int:
    return 6 if typmod < 0 else typmod  # time/timestamp typmod is the precision; -1 means the default, 6


# type OID -> (schema builder (typmod, mode) -> FieldSchema, the Python types the source gives for it)
_TYPES: dict[int, tuple[Callable[[int, str], FieldSchema], tuple[type, ...]]] = {
    16: (lambda t, m: FieldSchema("boolean"), (bool,)),
    17: (lambda t, m: FieldSchema("bytes"), (bytes, bytearray, memoryview)),
    18: (lambda t, m: STRING, (str,)),
    19: (lambda t, m: STRING, (str,)),
    20: (lambda t, m: INT64, (int,)),
    21: (lambda t, m: FieldSchema("int16"), (int,)),
    23: (lambda t, m: FieldSchema("int32"), (int,)),
    25: (lambda t, m: STRING, (str,)),
    26: (lambda t, m: INT64, (int,)),
    114: (lambda t, m: FieldSchema("string", JSON, 1), (str,)),
    142: (lambda t, m: FieldSchema("string", XML, 1), (str,)),
    700: (lambda t, m: FieldSchema("float"), (float,)),
    701: (lambda t, m: FieldSchema("double"), (float,)),
    1042: (lambda t, m: STRING, (str,)),
    1043: (lambda t, m: STRING, (str,)),
    1082: (lambda t, m: FieldSchema("int32", DATE, 1), (dt.date,)),
    1083: (
        lambda t, m: (
            FieldSchema("int32", TIME_MS, 1)
            if _time_precision(t) <= 3
            else FieldSchema("int64", MICRO_TIME, 1)
        ),
        (dt.time,),
    ),
    1114: (
        lambda t, m: (
            FieldSchema("int64", TIMESTAMP_MS, 1)
            if _time_precision(t) <= 3
            else FieldSchema("int64", MICRO_TIMESTAMP, 1)
        ),
        (dt.datetime,),
    ),
    1184: (
        lambda t, m: FieldSchema("string", ZONED_TIMESTAMP, 1, width=_time_precision(t)),
        (dt.datetime,),
    ),
    1266: (lambda t, m: FieldSchema("string", ZONED_TIME, 1), (dt.time,)),
    1700: (_numeric, (Decimal,)),
    2950: (lambda t, m: FieldSchema("string", UUID, 1), (uuid.UUID,)),
}
_NAIVE_ONLY = {1083, 1114}  # time, timestamp: naive values only
_AWARE_ONLY = {1184, 1266}  # timestamptz, timetz: aware values only


def schema_for_type(oid: int, typmod: int, mode: str) -> FieldSchema | None:
    """Debezium's schema for a column of this PostgreSQL type, or None for a type whose values pos-cdc's source
    hands over as PostgreSQL's text (arrays, interval, enums, money, ...): those are written as strings."""
    entry = _TYPES.get(oid)
    return None if entry is None else entry[0](typmod, mode)


def fits_type(oid: int, value: Any) -> bool:
    """Whether `value` is what pos-cdc's source gives for a column of type `oid` (else a stage changed it, or
    PostgreSQL sent a value Python cannot hold, such as 'infinity': the encoder then infers the schema)."""
    entry = _TYPES.get(oid)
    if entry is None or not isinstance(value, entry[1]):
        return False
    if oid == 1082:
        return type(value) is dt.date
    if oid in (20, 21, 23, 26):
        return type(value) is int  # a bool is an int too
    if oid in _NAIVE_ONLY:
        return value.tzinfo is None
    if oid in _AWARE_ONLY:
        return value.tzinfo is not None
    return True


def infer_schema(value: Any, mode: str) -> FieldSchema:
    """The schema for a value whose column type is unknown: by its Python type (bool before int: a bool is an
    int). A Decimal gets the Decimal logical type with its own scale (precise), a string, or a double."""
    t = type(value)
    if t is bool:
        return FieldSchema("boolean")
    if t is int:
        return INT64
    if t is str:
        return STRING
    if t is Decimal:
        if mode == "precise":
            if not value.is_finite():
                return decimal_schema(0)  # the encoder refuses it, with the reason
            return decimal_schema(-value.as_tuple().exponent)
        return STRING if mode == "string" else FieldSchema("double")
    if t is float:
        return FieldSchema("double")
    if t is dt.datetime:
        if value.tzinfo is None:
            return FieldSchema("int64", MICRO_TIMESTAMP, 1)
        return FieldSchema("string", ZONED_TIMESTAMP, 1, width=6)
    if t is dt.date:
        return FieldSchema("int32", DATE, 1)
    if t is dt.time:
        return FieldSchema("string", ZONED_TIME, 1) if value.tzinfo else FieldSchema("int64", MICRO_TIME, 1)
    if t in (bytes, bytearray, memoryview):
        return FieldSchema("bytes")
    if t is uuid.UUID:
        return FieldSchema("string", UUID, 1)
    return STRING  # anything else is written as str(value)


# ---------------------------------------------------------------------------------------------------------
# Python -> Connect JSON
# ---------------------------------------------------------------------------------------------------------


def _unscaled(value: Decimal, scale: int) -> int:
    """The unscaled integer of `value` at `scale`, exactly; ValueMismatch if that would drop digits."""
    if not value.is_finite():
        raise ValueMismatch(
            f"{value} cannot be written in decimal_handling=precise (Connect's Decimal has no NaN or "
            "Infinity; Debezium fails the same way); use decimal_handling=string"
        )
    scaled = EXACT.scaleb(value, scale)
    if scaled != scaled.to_integral_value():
        raise ValueMismatch(f"{value} has more than {scale} decimal places (the column's scale)")
    return int(scaled)


def int_to_b64(n: int) -> str:
    """Big-endian two's complement in the fewest bytes (Java's BigInteger.toByteArray), base64."""
    length = ((n if n >= 0 else ~n).bit_length() + 8) // 8
    return base64.b64encode(n.to_bytes(length, "big", signed=True)).decode("ascii")


def _float_json(value: float) -> Any:
    # Jackson writes non-finite doubles as the strings "NaN", "Infinity", "-Infinity"
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _decimal_string(value: Decimal) -> str:
    """decimal_handling=string: BigDecimal.toPlainString, and SpecialValueDecimal's names for NaN/Infinity."""
    if value.is_finite():
        return format(value, "f")
    if value.is_nan():
        return "NAN"
    return "POSITIVE_INFINITY" if value > 0 else "NEGATIVE_INFINITY"


def _iso_fraction(us: int, width: int | None) -> str:
    """'.ffffff' with `width` digits, or (None) as few as needed, as java.time's ISO formatters write it."""
    if width is None:
        return f".{us:06d}".rstrip("0") if us else ""
    return f".{us:06d}"[: width + 1].ljust(width + 1, "0") if width > 0 else ""


def _zoned_timestamp(value: dt.datetime, width: int) -> str:
    """ISO-8601 in UTC with `width` fraction digits and 'Z' (isoformat pads the year to 4 digits, strftime not)."""
    if value.utcoffset():
        value = value.astimezone(_UTC)
    text = value.isoformat(timespec="microseconds")  # YYYY-MM-DDTHH:MM:SS.ffffff+00:00
    return f"{text[: 20 + width] if width > 0 else text[:19]}Z"


def _zoned_time(value: dt.time) -> str:
    offset = value.utcoffset() or dt.timedelta(0)
    day = dt.datetime(2000, 1, 1, value.hour, value.minute, value.second, value.microsecond) - offset
    return f"{day:%H:%M:%S}{_iso_fraction(day.microsecond, None)}Z"


def _check_int64(value: int) -> int:
    if not _INT64[0] <= value <= _INT64[1]:
        raise ValueMismatch(f"integer {value} does not fit Connect's int64")
    return value


def encoder(schema: FieldSchema, mode: str) -> Callable[[Any], Any]:
    """A function: a non-null Python value of this field -> its JSON-ready Connect value."""
    name, t = schema.name, schema.type
    if name == DECIMAL:
        scale = int(schema.parameters[0][1])
        return lambda v: int_to_b64(_unscaled(v, scale))
    if name == VARIABLE_DECIMAL:
        return _variable_decimal
    if t == "string" and mode == "string" and name is None:
        return lambda v: _decimal_string(v) if type(v) is Decimal else _string(v)
    if name == DATE:
        return lambda v: v.toordinal() - _EPOCH_ORD
    if name == MICRO_TIMESTAMP:
        return lambda v: (v - _EPOCH) // _US
    if name == TIMESTAMP_MS:
        return lambda v: (v - _EPOCH) // _MS
    if name == MICRO_TIME:
        return lambda v: ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    if name == TIME_MS:
        return lambda v: ((v.hour * 60 + v.minute) * 60 + v.second) * 1000 + v.microsecond // 1000
    if name == ZONED_TIMESTAMP:
        width = 6 if schema.width is None else schema.width
        return lambda v: _zoned_timestamp(v, width) if type(v) is dt.datetime else str(v)
    if name == ZONED_TIME:
        return lambda v: _zoned_time(v) if type(v) is dt.time else str(v)
    if t == "bytes":
        return lambda v: base64.b64encode(v).decode("ascii")
    if t in ("double", "float"):
        return lambda v: _float_json(float(v))
    if t == "int64":
        return _check_int64
    if t in ("int32", "int16", "boolean"):
        return _same
    return _string


def _same(v: Any) -> Any:
    return v


def _string(v: Any) -> str:
    return v if type(v) is str else str(v)


def _variable_decimal(v: Decimal) -> dict[str, Any]:
    if not v.is_finite():
        _unscaled(v, 0)  # raises with the reason
    exponent = v.as_tuple().exponent
    return {"scale": -exponent, "value": int_to_b64(_unscaled(v, -exponent))}


def toast_value(schema: FieldSchema) -> Any:
    """Debezium's placeholder for an unchanged TOAST value in a field of this schema: the bytes for a bytes field
    (base64 in JSON), else the string, as Debezium writes it for every other type (handleUnknownData)."""
    return PLACEHOLDER_B64 if schema.type == "bytes" and schema.name is None else PLACEHOLDER
