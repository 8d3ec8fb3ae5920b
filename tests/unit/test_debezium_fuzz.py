"""Fuzzing the Kafka event decoder (issue 13): whatever a topic holds — random bytes, random JSON, a valid event
with one part replaced by something random — decoding gives a change event, None (not a row change) or a
DecodeError with a reason (the record is then held): never another exception, never a hang."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.events import ChangeEvent
from cdc.sinks.envelope import EnvelopeEncoder
from cdc.sources.debezium import DecodeError, EnvelopeDecoder

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEC = EnvelopeDecoder()
TOPIC = "pos.public.item_price"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def decodes_or_refuses(key: bytes | None, value: bytes | None) -> None:
    try:
        out = DEC.decode(TOPIC, key, value)
    except DecodeError as e:
        assert str(e), "a DecodeError without a reason"
        return
    assert out is None or isinstance(out, ChangeEvent), out


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_random_bytes(key, value):
    decodes_or_refuses(key, value)


@SETTINGS
@given(json_values, json_values)
def test_random_json(key, value):
    decodes_or_refuses(json.dumps(key).encode(), json.dumps(value).encode())


def _valid(schemas: bool) -> tuple[bytes, dict]:
    from decimal import Decimal

    ev = ChangeEvent(
        "u", "public", "item_price", {"item_code": "A", "price": Decimal("1.10")},
        {"item_code": "A", "price": Decimal("1.20")}, 100, 200, 100, 1_700_000_000_000, 7,
        db="pos", connector_name="c", key_columns=("item_code",), types={"price": (1700, 786438)},
    )  # fmt: skip
    (rec,) = EnvelopeEncoder("c", "pos", schemas=schemas, clock=lambda: 0).records(ev)
    return rec.key, json.loads(rec.value)


@SETTINGS
@given(st.booleans(), st.data())
def test_a_valid_event_with_one_part_replaced(schemas, data):
    key, doc = _valid(schemas)
    payload = doc["payload"] if schemas else doc
    where = data.draw(st.sampled_from(["before", "after", "source", "op", "ts_ms", "transaction"]))
    if where in ("before", "after") and data.draw(st.booleans()):
        row = dict(payload[where])
        row[data.draw(st.sampled_from(sorted(row)))] = data.draw(json_values)
        payload[where] = row
    elif where == "source" and data.draw(st.booleans()):
        src = dict(payload["source"])
        src[data.draw(st.sampled_from(sorted(src)))] = data.draw(json_values)
        payload["source"] = src
    else:
        payload[where] = data.draw(json_values)
    decodes_or_refuses(key, json.dumps(doc).encode())
