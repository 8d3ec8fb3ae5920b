"""Fuzzing the pgoutput decoder and the replication stream's reader (issue 13): whatever bytes arrive — random
bytes after any message type, a valid message cut short, lengthened or with one byte changed, a replication
frame (XLogData, keepalive, the stream messages of protocol 2) cut short — decoding gives a message or raises a
`CdcError` that names the message and what was wrong (the connector stops with that line): never another
exception, never a hang; a message cut short or lengthened never yields a row, and a transaction with a frame
cut short never reaches its end (so none of it is applied)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.config import ConnectorConfig
from cdc.errors import CdcError
from cdc.events import ChangeBatch, ChangeEvent, TxnEnd
from cdc.sources.pg_stream import HDR_K, HDR_W, WalStream
from cdc.sources.pgoutput import Decoder
from tests.unit.test_pgoutput import PRODUCT_COLS, PRODUCTS, ROW, insert_msg, relation_msg, valid_messages

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = valid_messages()
TAGS = sorted(set(b"BCORYIUDTMSEcAbPKrpZ\x00"))


def decoder() -> Decoder:
    dec = Decoder()
    dec.decode(relation_msg(PRODUCTS, "public", "products", "d", PRODUCT_COLS))
    return dec


def decodes_or_refuses(raw: bytes):
    """The message, or None when the decoder refused it with a CdcError that says where and what."""
    try:
        return decoder().decode(raw)
    except CdcError as e:
        text = str(e)
        assert "pgoutput" in text and ("offset" in text or "oid" in text), text
        return None


@SETTINGS
@given(st.sampled_from(TAGS), st.binary(max_size=120))
def test_random_bytes_after_any_message_type(tag, body):
    decodes_or_refuses(bytes([tag]) + body)


@SETTINGS
@given(st.sampled_from(VALID), st.data())
def test_a_valid_message_cut_short_or_lengthened_never_decodes(message, data):
    _, raw = message
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw = raw + data.draw(st.binary(min_size=1, max_size=20))
    assert decodes_or_refuses(raw) is None


@SETTINGS
@given(st.sampled_from(VALID), st.data())
def test_a_valid_message_with_one_byte_changed(message, data):
    _, raw = message
    i = data.draw(st.integers(0, len(raw) - 1))
    decodes_or_refuses(raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1 :])


@SETTINGS
@given(st.binary(min_size=2, max_size=40))
def test_random_text_in_every_typed_column(text):
    """A value whose text its column's converter refuses (not a number, a date, a bool...) is refused with
    the column's name, never passed on as something else."""
    for i in range(2, len(ROW)):
        row = list(ROW)
        row[i] = text.decode("latin-1")
        msg = decodes_or_refuses(insert_msg(PRODUCTS, row))
        if msg is not None:
            assert msg.new[PRODUCT_COLS[0][1]] == ROW[0]


# --- the replication stream: frames as the walsender sends them -------------------------------------------


class Frames:
    """The part of a replication connection the stream's reader uses, serving `frames` and then ending the
    copy (-1, as a walsender that stops)."""

    def __init__(self, frames: list[bytes]):
        self.frames = list(frames)
        self._r, self._w = os.pipe()
        os.write(self._w, b"x")
        self.socket = self._r
        self.error_message = b""

    def get_copy_data(self, _async: int) -> tuple[int, bytes]:
        if not self.frames:
            return -1, b""
        f = self.frames.pop(0)
        return len(f), f

    def consume_input(self) -> None:
        pass

    def get_result(self) -> None:
        return None

    def put_copy_data(self, _data: bytes) -> int:
        return 1

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


CFG = ConnectorConfig.model_validate(
    {
        "name": "fuzz",
        "source": {
            "type": "postgres",
            "dsn": "host=x",
            "tables": ["public.products"],
            "stream_in_progress": True,
        },
        "sink": {"type": "sql", "url": "sqlite:///x.db", "table": "t", "key": ["sku"]},
    }
)


def xlog(payload: bytes, lsn: int = 100) -> bytes:
    return b"w" + HDR_W.pack(lsn, lsn, 0) + payload


def txn(*changes: bytes) -> list[bytes]:
    begin = b"B" + struct.pack("!QqI", 200, 700_000_000_000_000, 7)
    commit = b"C" + struct.pack("!BQQq", 0, 200, 201, 700_000_000_000_000)
    return [xlog(begin), *(xlog(c) for c in changes), xlog(commit)]


def streamed_txn(*changes: bytes) -> list[bytes]:
    """The same as protocol 2 streams it while it runs: a block, then its stream commit."""
    xid = struct.pack("!I", 9)
    block = [xlog(c[:1] + xid + c[1:]) for c in changes]
    commit = b"c" + xid + struct.pack("!BQQq", 0, 300, 301, 700_000_000_000_000)
    return [xlog(b"S" + xid + b"\x01"), *block, xlog(b"E"), xlog(commit)]


RELATION = xlog(relation_msg(PRODUCTS, "public", "products", "d", PRODUCT_COLS))
KEEPALIVE = b"k" + HDR_K.pack(500, 0, 0)


def read_all(frames: list[bytes], batching: bool = False) -> list:
    """Every event the reader yields for `frames`, until the stream ends or the reader refuses a frame; with
    `batching`, the runs of two or more inserts and updates it yields as ChangeBatch expanded into their events (as the
    fast path does for whatever it cannot encode)."""
    conn = Frames(frames)
    out: list = []
    stream = WalStream(CFG, "pos")
    stream.batching = batching
    stream.batch_min = 2  # (with batching: a run of one comes as its event, longer ones as a batch)
    try:
        for ev in stream.read_loop(conn, 0):
            out.extend(ev.events() if isinstance(ev, ChangeBatch) else [ev])
            assert len(out) < 1000, "the reader keeps yielding: a hang"
    except CdcError as e:
        out.append(e)
    finally:
        conn.close()
    return out


def rows(events: list) -> list[dict]:
    return [e.after for e in events if isinstance(e, ChangeEvent)]


@pytest.mark.parametrize("batching", [False, True])
@pytest.mark.parametrize("shape", [txn, streamed_txn])
def test_the_reader_passes_a_valid_transaction(shape, batching):
    events = read_all([RELATION, KEEPALIVE, *shape(insert_msg(PRODUCTS, ROW))], batching)
    assert len(rows(events)) == 1
    assert "walsender stopped" in str(events[-1])  # the end of the frames
    # the Begin's and the Commit's fields, as sent (the reader unpacks those two itself)
    (change,) = [e for e in events if isinstance(e, ChangeEvent)]
    (end,) = [e for e in events if isinstance(e, TxnEnd)]
    lsns = (200, 201) if shape is txn else (300, 301)
    assert (end.position.commit_lsn, end.position.end_lsn) == lsns and change.commit_lsn == lsns[0]
    assert end.ts_ms == change.ts_ms == 700_000_000_000 + 946_684_800_000
    assert change.txid == (7 if shape is txn else 9)


@SETTINGS
@given(st.sampled_from([txn, streamed_txn]), st.booleans(), st.data())
def test_the_reader_refuses_a_frame_cut_short(shape, batching, data):
    frames = [RELATION, KEEPALIVE, *shape(insert_msg(PRODUCTS, ROW))]
    i = data.draw(st.integers(0, len(frames) - 1))
    cut = data.draw(st.integers(1, len(frames[i]) - 1))
    events = read_all(frames[:i] + [frames[i][:cut]] + frames[i + 1 :], batching)
    end = events[-1]
    assert isinstance(end, CdcError), events
    # rows of a transaction whose commit never came are never applied (the pipeline keeps no half of one)
    assert not any(isinstance(e, TxnEnd) for e in events), f"a transaction with a frame cut short: {events}"
    assert "walsender stopped" not in str(end), f"frame {i} cut at {cut} was not noticed: {end}"


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=60), max_size=8), st.booleans())
def test_the_reader_on_random_frames(frames, batching):
    events = read_all([RELATION, *frames], batching)
    assert isinstance(events[-1], CdcError), events
