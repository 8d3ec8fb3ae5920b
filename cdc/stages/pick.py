"""`pick`: of the POS rows for one SKU (one per store and channel), keep the one that speaks for the online
store, and key the result by SKU.

    {type: pick, key: [sku], where: "channel == 'ONLINE'"}
    {type: pick, key: [sku], store_field: store_id, store: 900, fallback_store: 1}

A row is *chosen* when `where` is true on it, or when its `store_field` equals `store` (the designated
store). With `fallback_store`, a row of that store is chosen too, but only while the designated store has no
row for the SKU. A store id matches when equal as a value or as text (`store: 900` matches 900 and '900').

Every change that passes gets `ev.key_columns = key`, so the sink writes one row per SKU.

Stream semantics (the same transitions as `filter`, judged by "chosen"):

* insert / snapshot read: passes when the row is chosen, else dropped;
* update: chosen after and chosen (or unknown) before -> update; chosen after, known not chosen before -> an
  insert; not chosen after, known chosen before -> a delete (the row stopped speaking for the SKU); not
  chosen after and not chosen or unknown before -> dropped. With no old image the key did not change, so
  the key columns of `after` stand for the old row. Unlike `filter`, an unknown old row never turns into a
  delete: re-keyed by SKU, such a delete would remove the chosen row of another store;
* delete: passes when the old row was chosen, dropped when it was not, and held (HoldError) when the old
  image cannot tell (it lacks `store_field` or a column `where` reads: set REPLICA IDENTITY FULL, or pick on
  key columns, which every old image carries);
* truncate: passes (re-keyed).

An `after` image that lacks a column needed to judge it, or the `key` columns, is held.

**Fallback and the `exists` lookup.** A pure stage cannot query the source, so the pipeline injects
(cdc/fallback.py)

    PickStage.exists: Callable[[dict, Any, str], bool] | None

called as `exists(key_values, store, table)`, where `key_values` maps each `key` column to its value in the
row (named as the row is at this stage, i.e. after earlier renames), `store` is the configured designated
store and `table` the change's source table ("schema.table"); it answers whether that source table has, now,
a row of that store for that key which the stages before the pick let through. The stage calls it only for
rows of the fallback store, once per change and key. When `exists` is None the designated store is treated as
present, so fallback rows are dropped. An exception from `exists` propagates (apply_stages turns it into a
hold of that change, except TransientError / TerminalError: a source that is away is retried).

**A designated row that goes away.** The delete of the designated store's row (or an update that moves it out
of the designated store) passes through as a delete keyed by SKU, and when a fallback store is configured
it is marked `ev.headers["pick_fallback_needed"] = True`, `ev.headers["pick_fallback_store"] =
fallback_store` and `ev.headers["pick_fallback_key"] = key_values` (as for `exists`). The stage cannot produce
the fallback row itself; the pipeline, after buffering the delete, re-reads the fallback store's rows for that
key from the source table (as they are now), runs them through the stages before the pick, keys them as the
pick does and runs the stages after it, and buffers the result as an upsert with the delete's position, in
the same sink transaction: the storefront goes from the designated price straight to the fallback price, or,
when the fallback store has no row (or the stages drop it), the delete stands. A delete that a later stage
drops still gets the fallback row; one that a later stage holds applies nothing, so nothing is re-read for it.

The source column names the lookups use are the `key` and `store_field` columns traced back through the
stages before the pick (renames undone). A stage before the pick that computes or changes one of them (`set`,
`money`, `tax`, `schedule`, `drop`) makes that impossible: `cdc validate` reports it, and `cdc run` refuses
to start (cdc/stages/lineage.py). Only one pick per connector may have a fallback_store.

Because `exists` and the re-read answer about the source as it is now rather than as of the change, a
fallback row may be judged against a designated row that appears or disappears later in the stream; the
later change of the designated row then settles the SKU (its insert overwrites, its delete is marked as
above).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cdc.errors import HoldError
from cdc.events import CREATE, DELETE, READ, TRUNCATE, UNCHANGED_TOAST, UPDATE, ChangeEvent
from cdc.stages.base import StageConfigBase, judgeable_after, short
from cdc.stages.expr import EvalError, Expr, ExprError, MissingField, parse_expr

StoreId = int | str

_UNKNOWN = None


class PickConfig(StageConfigBase):
    """Keep the row that speaks for the online store and key it by SKU (`where`, or `store_field` + `store`
    with an optional `fallback_store`).

    With `fallback_store`, `cdc run` asks the POS (on a connection of its own; the role needs SELECT on the
    source tables) whether the designated store has a row for the SKU, and when the designated row is deleted
    or moves to another store, it reads the fallback store's row and applies it in the same storefront
    transaction as the delete. The lookups find the rows by the source columns of `key` and `store_field`, so
    only `rename` may change those columns before the pick."""

    type: Literal["pick"]
    key: list[str] = Field(description="the key columns of the result, e.g. [sku]")
    where: str | None = Field(
        None, description="condition that chooses the row, e.g. channel == 'ONLINE' (or use store_field)"
    )
    store_field: str | None = Field(None, description="column holding the store id (with store)")
    store: StoreId | None = Field(None, description="the designated store whose row is chosen")
    fallback_store: StoreId | None = Field(
        None,
        description="store whose row is chosen while the designated store has no row for the key; it takes "
        "over when the designated row goes away (read from the POS)",
    )

    @field_validator("key")
    @classmethod
    def _check_key(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("pick needs at least one key column, e.g. key: [sku]")
        for k in v:
            if not k.strip():
                raise ValueError("key column names must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("a key column is listed twice")
        return v

    @field_validator("where")
    @classmethod
    def _check_where(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            expr = parse_expr(v)
        except ExprError as exc:
            raise ValueError(str(exc)) from None
        if expr._result in ("value", "null"):
            raise ValueError(
                f"where must be a condition (e.g. channel == 'ONLINE'), not a value: {v.strip()!r}"
            )
        return v

    @field_validator("store_field")
    @classmethod
    def _check_store_field(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("store_field must name a column")
        return v

    @field_validator("store", "fallback_store", mode="before")
    @classmethod
    def _check_store(cls, v: Any) -> Any:
        if isinstance(v, bool) or (v is not None and not isinstance(v, int | str)):
            raise ValueError(f"a store id is a whole number or a string, got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_mode(self) -> PickConfig:
        by_store = self.store_field is not None or self.store is not None or self.fallback_store is not None
        if self.where is not None and by_store:
            raise ValueError(
                "pick takes either where (e.g. \"channel == 'ONLINE'\") or store_field + store "
                "(+ fallback_store), not both"
            )
        if self.where is None and not by_store:
            raise ValueError(
                "pick needs where (e.g. \"channel == 'ONLINE'\") or store_field + store (+ fallback_store)"
            )
        if by_store and (self.store_field is None or self.store is None):
            raise ValueError(
                "pick by store needs both store_field (the column) and store (the designated id)"
            )
        if self.fallback_store is not None and str(self.fallback_store) == str(self.store):
            raise ValueError("fallback_store must differ from store")
        return self

    def build(self, name: str) -> PickStage:
        return PickStage(self, name)


class PickStage:
    exists: Callable[[dict[str, Any], Any, str], bool] | None
    """Injected by the pipeline: exists(key_values, store, table) -> does source table `table` ("schema.table")
    have a row of `store` for this key now? None: the designated store is treated as present (fallback rows
    are dropped)."""

    def __init__(self, config: PickConfig, name: str):
        self.config = config
        self.name = name
        self.exists = None
        self.key = tuple(config.key)
        self._expr: Expr | None = None if config.where is None else parse_expr(config.where)
        self._store_field = config.store_field
        self._store = config.store
        self._store_text = str(config.store)
        self._fallback = config.fallback_store
        self._fallback_text = None if config.fallback_store is None else str(config.fallback_store)
        if self._expr is not None:
            self._fields: tuple[str, ...] = tuple(sorted(self._expr.fields))
        else:
            self._fields = (config.store_field,)  # type: ignore[assignment]

    # -- judging one image

    def _hold(self, ev: ChangeEvent, reason: str, **details: Any) -> HoldError:
        how = (
            f"where {self._expr.text!r}"
            if self._expr is not None
            else f"{self._store_field} == {self._store!r}"
        )
        details.setdefault("op", ev.op)
        return HoldError(f"pick ({how}): {reason}", rule=self.name, details=details)

    @staticmethod
    def _is(v: Any, store: Any, text: str) -> bool:
        if v is None or v.__class__ is bool:
            return False
        return v == store or str(v) == text

    def _judge(self, row: dict, memo: dict, ev: ChangeEvent) -> tuple[bool, bool]:
        """(chosen, designated) for a complete row; MissingField / EvalError when it cannot be judged."""
        if self._expr is not None:
            v = self._expr(row)
            if v is True:
                return True, True
            if v is False or v is None:
                return False, False
            raise EvalError(f"where must give true or false, got {type(v).__name__} {short(v, 60)}")
        try:
            store = row[self._store_field]  # type: ignore[index]
        except KeyError:
            raise MissingField(self._store_field) from None  # type: ignore[arg-type]
        if store is UNCHANGED_TOAST:
            raise EvalError(f"{self._store_field} is an unchanged TOASTed value")
        if self._is(store, self._store, self._store_text):
            return True, True
        fallback_text = self._fallback_text
        if fallback_text is not None and self._is(store, self._fallback, fallback_text):
            exists = self.exists
            if exists is None:
                return False, False
            kv = {k: row.get(k) for k in self.key}
            ck = tuple(map(repr, kv.values()))
            present = memo.get(ck)
            if present is None:
                present = memo[ck] = bool(exists(kv, self._store, f"{ev.schema}.{ev.table}"))
            return (not present), False
        return False, False

    def _judge_after(self, ev: ChangeEvent, after: dict | None, memo: dict) -> tuple[bool, bool]:
        if after is None:
            raise self._hold(ev, f"op {ev.op!r} change has no after image")
        row = judgeable_after(ev, after, self._fields, self._hold)
        try:
            return self._judge(row, memo, ev)
        except MissingField as exc:
            raise self._hold(ev, f"the row has no field {exc.field!r}", field=exc.field) from None
        except (TypeError, ArithmeticError, ValueError) as exc:
            raise self._hold(ev, str(exc), error=type(exc).__name__) from None

    def _judge_before(self, ev: ChangeEvent, before: dict | None, memo: dict) -> tuple[bool | None, bool]:
        if before is None:
            return _UNKNOWN, False
        try:
            return self._judge(before, memo, ev)
        except (MissingField, TypeError, ArithmeticError, ValueError):
            return _UNKNOWN, False

    # -- the event

    def _rekey(self, ev: ChangeEvent, row: dict | None) -> ChangeEvent:
        if row is not None:
            for k in self.key:
                if k not in row:
                    raise self._hold(ev, f"the row has no key column {k!r}", field=k, key=list(self.key))
        ev.key_columns = self.key
        return ev

    def _gone(self, ev: ChangeEvent, designated: bool, row: dict) -> None:
        if designated and self._fallback is not None:
            ev.headers["pick_fallback_needed"] = True
            ev.headers["pick_fallback_store"] = self._fallback
            ev.headers["pick_fallback_key"] = {k: row[k] for k in self.key}

    def __call__(self, ev: ChangeEvent) -> ChangeEvent | None:
        op = ev.op
        memo: dict = {}
        if op == UPDATE:
            after = ev.after
            chosen, _ = self._judge_after(ev, after, memo)
            before = ev.before
            if before is None and after is not None:
                # no old image: the key did not change, so after's key columns are the old row's
                before = {k: after[k] for k in ev.key_columns if k in after}
            was, was_designated = self._judge_before(ev, before, memo)
            if chosen:
                if was is False:  # starts being chosen: insert it
                    self._rekey(ev, after)
                    ev.op = CREATE
                    ev.before = None
                    return ev
                return self._rekey(ev, after)
            if was is not True:  # not chosen now, and not known to have been chosen: nothing to do
                return None
            # the row stopped speaking for its key: delete it downstream (the old image names the row)
            old = ev.before
            if old:
                gone = dict(after)  # type: ignore[arg-type]
                gone.update((k, v) for k, v in old.items() if v is not UNCHANGED_TOAST)
            else:
                gone = after  # type: ignore[assignment]
            self._rekey(ev, gone)
            ev.op = DELETE
            ev.before = gone
            ev.after = None
            self._gone(ev, was_designated, gone)
            return ev
        if op == CREATE or op == READ:
            chosen, _ = self._judge_after(ev, ev.after, memo)
            return self._rekey(ev, ev.after) if chosen else None
        if op == DELETE:
            was, was_designated = self._judge_before(ev, ev.before, memo)
            if was is None:
                missing = [f for f in self._fields if not ev.before or f not in ev.before]
                raise self._hold(
                    ev,
                    "the old image of this delete cannot tell whether the row was the chosen one"
                    + (f" (it lacks {', '.join(map(repr, missing))})" if missing else "")
                    + "; set REPLICA IDENTITY FULL on the source table, or pick on key columns",
                    fields=missing,
                )
            if not was:
                return None
            self._rekey(ev, ev.before)
            self._gone(ev, was_designated, ev.before)
            return ev
        if op == TRUNCATE:
            return self._rekey(ev, None)
        raise self._hold(ev, f"unknown op {op!r}")
