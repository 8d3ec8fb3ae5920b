"""A pure decoder of PostgreSQL's pgoutput logical replication messages (protocol version 1).

No I/O happens here: the caller takes the payload of each XLogData ('w') CopyData message of the
streaming replication protocol (i.e. what follows its 25-byte header) and hands it to `Decoder.decode`,
which returns one message object (the types: cdc/sources/pgoutput_messages.py). Message formats follow the PostgreSQL docs, "Logical Replication
Message Formats"; all integers are network byte order.

Decoded messages: Begin 'B', Commit 'C', Origin 'O', Relation 'R', Type 'Y', Insert 'I', Update 'U',
Delete 'D', Truncate 'T' and the logical decoding message 'M' (protocol-1 layout, no xid). The streaming
messages of protocol 2 ('S', 'E', 'c', 'A') are the stream's to handle (cdc/sources/pg_streamed.py), which hands
the data messages of a stream block here without their xid; here they and the two-phase ones are rejected with
ValueError. Column values are converted by cdc/sources/pg_values.py.

Column values arrive as text (or binary, with the `binary` option) and are converted by the column's type
OID; the text forms assume the replication session has DateStyle=ISO, IntervalStyle=postgres and
extra_float_digits=3:

    int2 int4 int8 oid                 -> int
    numeric                            -> decimal.Decimal, exact ('NaN', 'Infinity', '-Infinity' too)
    float4 float8                      -> float
    text varchar bpchar name "char"    -> str (bpchar keeps its padding)
    bool                               -> bool
    date / time / timestamp            -> datetime.date / datetime.time / naive datetime.datetime
    timetz / timestamptz               -> aware datetime.time / datetime.datetime
    uuid                               -> uuid.UUID
    json jsonb                         -> str, the JSON text untouched
    bytea                              -> bytes
    anything else                      -> str, as sent (arrays, interval, enums, domains, money, ...)

Date/time values Python cannot represent stay the plain str PostgreSQL sent: 'infinity' and '-infinity',
BC dates (' BC' suffix), years after 9999, and the time '24:00:00'. A value in a 'b' (binary) column is
the raw bytes. NULL is None; an unchanged TOASTed value is `cdc.events.UNCHANGED_TOAST`.

Malformed or short buffers, and message types outside protocol version 1, raise `MalformedMessage` (a
`cdc.errors.TerminalError`, and a ValueError) naming the message type and the offset; a data message for a
relation whose Relation message has not been seen raises `cdc.errors.TerminalError`.
"""

from __future__ import annotations

import struct
from decimal import InvalidOperation

from cdc.errors import TerminalError
from cdc.events import UNCHANGED_TOAST
from cdc.sources.pg_values import converter_for, pg_epoch_us_to_unix_ms
from cdc.sources.pgoutput_messages import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    Truncate,
    TypeMsg,
    Update,
)

__all__ = [
    "Begin",
    "Column",
    "Commit",
    "Decoder",
    "Delete",
    "Insert",
    "LogicalMessage",
    "MalformedMessage",
    "Origin",
    "Relation",
    "Truncate",
    "TypeMsg",
    "Update",
    "converter_for",
    "pg_epoch_us_to_unix_ms",
]

# --------------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------------

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
unpack_begin = struct.Struct("!QqI").unpack_from  # final LSN, commit timestamp, xid (pg_stream.py too)
unpack_commit = struct.Struct("!BQQq").unpack_from  # flags, commit LSN, end LSN, commit timestamp (ditto)
_u64 = struct.Struct("!Q").unpack_from
_col_tail = struct.Struct("!Ii").unpack_from  # column type OID, typmod
_trunc_head = struct.Struct("!IB").unpack_from  # number of relations, option bits
_msg_head = struct.Struct("!BQ").unpack_from  # flags, LSN

_UNSUPPORTED = {
    ord("S"): "Stream Start",
    ord("E"): "Stream Stop",
    ord("c"): "Stream Commit",
    ord("A"): "Stream Abort",
    ord("b"): "Begin Prepare",
    ord("P"): "Prepare",
    ord("K"): "Commit Prepared",
    ord("r"): "Rollback Prepared",
    ord("p"): "Stream Prepare",
}

# Exceptions that mean "the bytes are not what the format says" (a value that its converter refuses
# included); they are turned into ValueError with the message type and offset.
_BAD_BYTES = (struct.error, IndexError, ValueError, KeyError, InvalidOperation, TypeError)

_TAG_K, _TAG_O, _TAG_N = ord("K"), ord("O"), ord("N")
_KIND_T = ord("t")


class MalformedMessage(TerminalError, ValueError):
    """A pgoutput message whose bytes do not follow the format (short, unknown tag, bad value text...): the
    connector stops with this one line (reading the same WAL again gives the same bytes)."""


def _malformed(what: str, pos: int, buf: bytes, detail: str) -> MalformedMessage:
    return MalformedMessage(
        f"malformed pgoutput {what} message at offset {pos} (of {len(buf)} bytes): {detail}"
    )


def _describe(exc: BaseException, pos: int, buf: bytes) -> str:
    if isinstance(exc, struct.error | IndexError) or pos >= len(buf):
        return "message ends too early"
    if isinstance(exc, InvalidOperation):
        return "not a numeric value"
    return str(exc) or type(exc).__name__


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated string at `pos` -> (text, position after the NUL). ValueError if unterminated."""
    end = buf.find(0, pos)
    if end < 0:
        raise ValueError("string not NUL-terminated")
    return buf[pos:end].decode(), end + 1


def _read_tuple(buf: bytes, pos: int, rel: Relation, what: str) -> tuple[dict, int, bool]:
    """TupleData at `pos` -> ({column name: value}, position after it, whether a value is an unchanged
    TOASTed one). This is the hot path."""
    start = pos
    name = None
    toasted = False
    try:
        ncols = _u16(buf, pos)[0]
        cols = rel.cols
        if ncols != len(cols):
            raise _malformed(
                what,
                pos,
                buf,
                f"tuple has {ncols} columns but relation {rel.schema}.{rel.name} (oid {rel.oid}) "
                f"has {len(cols)}",
            )
        pos += 2
        size = len(buf)
        row = {}
        length = int.from_bytes  # of a 4-byte slice: cheaper than struct's unpack_from and a tuple
        for name, conv in cols:
            start = pos
            kind = buf[pos]
            if kind == 116:  # 't': text value
                pos += 5
                end = pos + length(buf[pos - 4 : pos])
                if end > size:
                    raise IndexError
                row[name] = conv(buf[pos:end].decode())
                pos = end
            elif kind == 110:  # 'n': NULL
                row[name] = None
                pos += 1
            elif kind == 117:  # 'u': unchanged TOASTed value, not sent
                row[name] = UNCHANGED_TOAST
                toasted = True
                pos += 1
            elif kind == 98:  # 'b': binary value
                pos += 5
                end = pos + length(buf[pos - 4 : pos])
                if end > size:
                    raise IndexError
                row[name] = buf[pos:end]
                pos = end
            else:
                raise _malformed(what, start, buf, f"column {name!r}: unknown tuple data kind {kind!r}")
        return row, pos, toasted
    except MalformedMessage:
        raise
    except _BAD_BYTES as exc:
        detail = _describe(exc, start, buf)
        if name is not None:
            detail = f"column {name!r} of {rel.schema}.{rel.name}: {detail}"
            if buf[start] == _KIND_T and not isinstance(exc, struct.error | IndexError):
                text = buf[start + 5 : start + 5 + _u32(buf, start + 1)[0]]
                detail += f" (value {text[:60]!r}{'...' if len(text) > 60 else ''})"
        raise _malformed(what, start, buf, detail) from exc


class Decoder:
    """Decodes pgoutput messages one at a time, remembering Relation (and Type) messages.

    Use one Decoder per replication stream; `relations` maps relation OID -> latest Relation.
    """

    __slots__ = ("relations", "types", "_dispatch")

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, TypeMsg] = {}
        self._dispatch = {
            ord("U"): self._update,
            ord("I"): self._insert,
            ord("D"): self._delete,
            ord("B"): self._begin,
            ord("C"): self._commit,
            ord("R"): self._relation,
            ord("Y"): self._type,
            ord("O"): self._origin,
            ord("T"): self._truncate,
            ord("M"): self._message,
        }

    def decode(self, buf: bytes | bytearray | memoryview) -> Message:
        """One pgoutput message (the XLogData payload) -> its message object."""
        if type(buf) is not bytes:
            buf = bytes(buf)
        if not buf:
            raise MalformedMessage("malformed pgoutput message at offset 0 (of 0 bytes): empty buffer")
        handler = self._dispatch.get(buf[0])
        if handler is None:
            tag = buf[0]
            if tag in _UNSUPPORTED:
                detail = f"{_UNSUPPORTED[tag]} ({chr(tag)!r}) is not part of protocol version 1"
            else:
                detail = f"unknown message type {chr(tag)!r} (0x{tag:02x})"
            raise MalformedMessage(
                f"unsupported pgoutput message at offset 0 (of {len(buf)} bytes): {detail}"
            )
        return handler(buf)

    # -- data messages -------------------------------------------------------------------------------------

    def _relation_for(self, oid: int, what: str) -> Relation:
        rel = self.relations.get(oid)
        if rel is None:
            raise TerminalError(
                f"pgoutput {what} message for relation oid {oid}, but no Relation message for that oid was "
                f"received on this stream; the decoder must see the stream from its start "
                f"(known oids: {sorted(self.relations) or 'none'})"
            )
        return rel

    def _insert(self, buf: bytes) -> Insert:
        return decode_insert(buf, self._relation_of(buf, "Insert"))

    def _update(self, buf: bytes) -> Update:
        return decode_update(buf, self._relation_of(buf, "Update"))

    def _relation_of(self, buf: bytes, what: str) -> Relation:
        """The Relation a data message names (its oid after the type byte)."""
        try:
            oid = _u32(buf, 1)[0]
        except struct.error as exc:
            raise _malformed(what, 1, buf, _describe(exc, 1, buf)) from exc
        rel = self.relations.get(oid)
        if rel is None:
            rel = self._relation_for(oid, what)  # raises TerminalError
        return rel

    def _delete(self, buf: bytes) -> Delete:
        pos = 1
        try:
            oid = _u32(buf, 1)[0]
            rel = self.relations.get(oid)
            if rel is None:
                rel = self._relation_for(oid, "Delete")  # raises TerminalError
            pos = 5
            tag = buf[5]
            if tag != _TAG_K and tag != _TAG_O:
                raise _malformed("Delete", 5, buf, f"expected 'K' or 'O' before the old tuple, got {tag!r}")
            old, pos, _ = _read_tuple(buf, 6, rel, "Delete")
        except (struct.error, IndexError) as exc:
            raise _malformed("Delete", pos, buf, _describe(exc, pos, buf)) from exc
        if pos != len(buf):
            raise _malformed("Delete", pos, buf, f"{len(buf) - pos} trailing bytes")
        if tag == _TAG_K:
            return Delete(rel, {k: old[k] for k in rel.key_columns}, "K")
        return Delete(rel, old, "O")

    def _truncate(self, buf: bytes) -> Truncate:
        pos = 1
        try:
            nrels, options = _trunc_head(buf, 1)
            pos = 6
            if pos + 4 * nrels > len(buf):
                raise _malformed("Truncate", pos, buf, f"{nrels} relation oids announced; message too short")
            oids = struct.unpack_from(f"!{nrels}I", buf, pos)
        except (struct.error, IndexError) as exc:
            raise _malformed("Truncate", pos, buf, _describe(exc, pos, buf)) from exc
        pos += 4 * nrels
        if pos != len(buf):
            raise _malformed("Truncate", pos, buf, f"{len(buf) - pos} trailing bytes")
        rels = [self._relation_for(oid, "Truncate") for oid in oids]
        return Truncate(rels, bool(options & 1), bool(options & 2))

    # -- transaction and schema messages -------------------------------------------------------------------

    def _begin(self, buf: bytes) -> Begin:
        if len(buf) != 21:
            raise _malformed("Begin", min(len(buf), 21), buf, "expected exactly 21 bytes")
        final_lsn, ts, xid = unpack_begin(buf, 1)
        return Begin(final_lsn, ts, xid)

    def _commit(self, buf: bytes) -> Commit:
        if len(buf) != 26:
            raise _malformed("Commit", min(len(buf), 26), buf, "expected exactly 26 bytes")
        flags, commit_lsn, end_lsn, ts = unpack_commit(buf, 1)
        return Commit(flags, commit_lsn, end_lsn, ts)

    def _origin(self, buf: bytes) -> Origin:
        pos = 1
        try:
            lsn = _u64(buf, 1)[0]
            pos = 9
            name, pos = _cstring(buf, 9)
        except _BAD_BYTES as exc:
            raise _malformed("Origin", pos, buf, _describe(exc, pos, buf)) from exc
        if pos != len(buf):
            raise _malformed("Origin", pos, buf, f"{len(buf) - pos} trailing bytes")
        return Origin(lsn, name)

    def _type(self, buf: bytes) -> TypeMsg:
        pos = 1
        try:
            oid = _u32(buf, 1)[0]
            pos = 5
            schema, pos = _cstring(buf, 5)
            name, pos = _cstring(buf, pos)
        except _BAD_BYTES as exc:
            raise _malformed("Type", pos, buf, _describe(exc, pos, buf)) from exc
        if pos != len(buf):
            raise _malformed("Type", pos, buf, f"{len(buf) - pos} trailing bytes")
        msg = TypeMsg(oid, schema, name)
        self.types[oid] = msg
        return msg

    def _relation(self, buf: bytes) -> Relation:
        pos = 1
        try:
            oid = _u32(buf, 1)[0]
            pos = 5
            schema, pos = _cstring(buf, pos)
            name, pos = _cstring(buf, pos)
            replident = chr(buf[pos])
            pos += 1
            ncols = _u16(buf, pos)[0]
            pos += 2
            columns = []
            for _ in range(ncols):
                flags = buf[pos]
                pos += 1
                colname, pos = _cstring(buf, pos)
                type_oid, typmod = _col_tail(buf, pos)
                pos += 8
                columns.append(Column(colname, type_oid, typmod, bool(flags & 1)))
        except _BAD_BYTES as exc:
            raise _malformed("Relation", pos, buf, _describe(exc, pos, buf)) from exc
        if pos != len(buf):
            raise _malformed("Relation", pos, buf, f"{len(buf) - pos} trailing bytes")
        rel = Relation(oid, schema, name, replident, columns)
        self.relations[oid] = rel
        return rel

    def _message(self, buf: bytes) -> LogicalMessage:
        pos = 1
        try:
            flags, lsn = _msg_head(buf, 1)
            pos = 10
            prefix, pos = _cstring(buf, 10)
            length = _u32(buf, pos)[0]
            pos += 4
            if pos + length != len(buf):
                raise _malformed(
                    "logical decoding", pos, buf, f"content length {length} but {len(buf) - pos} bytes follow"
                )
        except MalformedMessage:
            raise
        except _BAD_BYTES as exc:
            raise _malformed("logical decoding", pos, buf, _describe(exc, pos, buf)) from exc
        return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:])


def decode_insert(buf: bytes, rel: Relation) -> Insert:
    """An Insert message of relation `rel` (whose oid it carries; not looked up again)."""
    pos = 5
    try:
        if buf[5] != _TAG_N:
            raise _malformed("Insert", 5, buf, f"expected 'N' before the new tuple, got {buf[5]!r}")
        new, pos, _ = _read_tuple(buf, 6, rel, "Insert")
    except (struct.error, IndexError) as exc:
        raise _malformed("Insert", pos, buf, _describe(exc, pos, buf)) from exc
    if pos != len(buf):
        raise _malformed("Insert", pos, buf, f"{len(buf) - pos} trailing bytes")
    return Insert(rel, new)


def decode_update(buf: bytes, rel: Relation) -> Update:
    """An Update message of relation `rel` (whose oid it carries; not looked up again)."""
    pos = 5
    try:
        tag = buf[5]
        old = old_kind = None
        if tag == _TAG_K:
            full, pos, _ = _read_tuple(buf, 6, rel, "Update")
            old = {k: full[k] for k in rel.key_columns}
            old_kind = "K"
            tag = buf[pos]
        elif tag == _TAG_O:
            old, pos, _ = _read_tuple(buf, 6, rel, "Update")
            old_kind = "O"
            tag = buf[pos]
        if tag != _TAG_N:
            raise _malformed("Update", pos, buf, f"expected 'K', 'O' or 'N', got {tag!r}")
        new, pos, toasted = _read_tuple(buf, pos + 1, rel, "Update")
    except (struct.error, IndexError) as exc:
        raise _malformed("Update", pos, buf, _describe(exc, pos, buf)) from exc
    if pos != len(buf):
        raise _malformed("Update", pos, buf, f"{len(buf) - pos} trailing bytes")
    return Update(rel, old, old_kind, new, toasted)
