"""Events kept in bookkeeping tables (held changes, scheduled prices), stored so they come back exactly.

`ChangeEvent.to_envelope()` is the readable Debezium JSON, but it loses types: a Decimal price becomes the
string "0.99", a timestamp an ISO string. `dump_event` writes every field of the event with the type of each
value that JSON cannot carry ({"$": "decimal", "v": "0.99"}), and `load_event` rebuilds the same event, so a
change approved from quarantine or applied by a schedule reaches the later stages and the storefront exactly
as it would have on the stream.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

from cdc.events import UNCHANGED_TOAST, ChangeEvent

_FIELDS = (
    "op",
    "schema",
    "table",
    "before",
    "after",
    "lsn",
    "commit_lsn",
    "seq",
    "ts_ms",
    "txid",
    "snapshot",
    "db",
    "connector_name",
    "key_columns",
    "lane",
    "headers",
)

_DECODE = {
    "decimal": Decimal,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "bytes": bytes.fromhex,
    "uuid": uuid.UUID,
    "tuple": tuple,
}


def encode(v: Any) -> Any:
    """A JSON-ready form of `v` that `decode` turns back into an equal value of the same type."""
    if v is None or v.__class__ in (bool, int, str, float):
        return v
    if isinstance(v, dict):
        out = {k: encode(x) for k, x in v.items()}
        return {"$": "dict", "v": out} if "$" in v else out
    if isinstance(v, list):
        return [encode(x) for x in v]
    if isinstance(v, tuple):
        return {"$": "tuple", "v": [encode(x) for x in v]}
    if isinstance(v, Decimal):
        return {"$": "decimal", "v": str(v)}
    if isinstance(v, dt.datetime):  # before date: a datetime is a date
        return {"$": "datetime", "v": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$": "date", "v": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$": "time", "v": v.isoformat()}
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$": "bytes", "v": bytes(v).hex()}
    if isinstance(v, uuid.UUID):
        return {"$": "uuid", "v": str(v)}
    if v is UNCHANGED_TOAST:
        return {"$": "toast"}
    if isinstance(v, ChangeEvent):
        return {"$": "event", "v": {f: encode(getattr(v, f)) for f in _FIELDS}}
    raise TypeError(f"cannot store a {type(v).__name__} value exactly: {v!r}")


def decode(v: Any) -> Any:
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    tag = v.get("$")
    if tag is None:
        return {k: decode(x) for k, x in v.items()}
    if tag == "dict":
        return {k: decode(x) for k, x in v["v"].items()}
    if tag == "toast":
        return UNCHANGED_TOAST
    if tag == "event":
        return _event(v["v"])
    if tag == "tuple":
        return tuple(decode(x) for x in v["v"])
    return _DECODE[tag](v["v"])


def _event(fields: dict) -> ChangeEvent:
    kw = {f: decode(fields[f]) for f in _FIELDS if f in fields}
    kw["key_columns"] = tuple(kw.get("key_columns") or ())
    kw["headers"] = kw.get("headers") or {}
    return ChangeEvent(**kw)


def dump_event(ev: ChangeEvent) -> str:
    return json.dumps(encode(ev)["v"], separators=(",", ":"))


def load_event(text: str) -> ChangeEvent:
    return _event(json.loads(text))
