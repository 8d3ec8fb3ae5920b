"""`schedule`: a price that holds only inside a time window (a promotion), and the base price outside it.

    {type: schedule, field: price_fen, value: promo_price_fen, valid_from: promo_from, valid_to: promo_to}

The POS row carries both prices: `field` is the base price and `value` the scheduled one, valid from
`valid_from` (inclusive) to `valid_to` (exclusive). At the time `now()` the stage runs, `field` takes the value
of `value` when the window holds now, and keeps the base price otherwise:

* `value` null: no promotion; the base price stands, nothing is scheduled;
* `valid_from` null: already started; `valid_to` null: no end ('-infinity' / 'infinity' are the same);
* an empty window (`valid_to` <= `valid_from`) never holds.

When the window starts or ends after now, the stage marks the change with
`ev.headers["schedule"] = {"stage", "at", "what", "event"}`: the next boundary ("start" or "end") and a copy of
the change as it reached this stage (with no old image, so it is applied as the row as it is). The sink
stores it in `cdc_scheduled` with the change's source position, in the same transaction as the change; the
pipeline runs the stages from this one again on that copy when the time comes (which schedules the end after
the start), unless a newer change for the key has been applied since, which replaces the schedule.

Deletes and truncates pass. Timestamps without a time zone are read in `timezone`; a date is its midnight.
A bound that is not a time, or a `value` that is an unchanged TOASTed value the old image does not hold, is
held. `now` is injectable (`ScheduleStage.now`, a callable returning an aware datetime) for tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from cdc.errors import HoldError
from cdc.events import CREATE, READ, UNCHANGED_TOAST, UPDATE, ChangeEvent
from cdc.stages.base import StageConfigBase, short

_OPEN = object()  # an open bound: null or +-infinity


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ScheduleConfig(StageConfigBase):
    """A scheduled price (promotion): `field` takes `value` while now is in [valid_from, valid_to) and keeps
    the base price outside; the pipeline applies the row again when the window starts and when it ends.

    Starts and ends are kept in the sink database (`cdc_scheduled`, one per key), committed with the change
    they come from, so they survive restarts (what fell due while stopped is applied at start). A newer change
    of the row replaces them; one is never applied over a newer change. Place the stage where `field` and
    `value` are in the same units (e.g. both in fen, before `money`); a `guard` after it judges each start
    and end like any change (a deep promotion's start, and its end, may need approval)."""

    type: Literal["schedule"]
    field: str = Field(description="the price column the storefront gets; the base price outside the window")
    value: str = Field(description="column with the scheduled (promotion) price; null: no promotion")
    valid_from: str = Field(description="column with the start of the window (inclusive); null: started")
    valid_to: str = Field(description="column with the end of the window (exclusive); null: no end")
    timezone: str = Field(
        "UTC", description="time zone of timestamps without one (timestamp columns), e.g. Asia/Shanghai"
    )

    @field_validator("field", "value", "valid_from", "valid_to")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a column")
        return v

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as UTC or Asia/Shanghai)") from None
        return v

    @model_validator(mode="after")
    def _distinct(self) -> ScheduleConfig:
        cols = [self.field, self.value, self.valid_from, self.valid_to]
        if len(set(cols)) != len(cols):
            raise ValueError("field, value, valid_from and valid_to must be four different columns")
        return self

    def build(self, name: str) -> ScheduleStage:
        return ScheduleStage(self, name)


class ScheduleStage:
    now: Callable[[], dt.datetime]
    """The clock (aware datetime); the wall clock unless a test injects another."""

    def __init__(self, config: ScheduleConfig, name: str):
        self.config = config
        self.name = name
        self.now = utc_now
        self.field = config.field
        self._value = config.value
        self._from = config.valid_from
        self._to = config.valid_to
        self._tz = ZoneInfo(config.timezone)

    def _get(self, ev: ChangeEvent, row: dict, col: str) -> Any:
        try:
            v = row[col]
        except KeyError:
            raise HoldError(
                f"schedule: the row has no column {col} (put the schedule stage before any stage that "
                "renames or drops it)",
                rule=self.name,
                details={"field": col, "op": ev.op},
            ) from None
        if v is UNCHANGED_TOAST:
            before = ev.before
            v = before.get(col, UNCHANGED_TOAST) if before else UNCHANGED_TOAST
            if v is UNCHANGED_TOAST:
                raise HoldError(
                    f"schedule: {col} is an unchanged TOASTed value the source did not send",
                    rule=self.name,
                    details={"field": col, "op": ev.op},
                )
        return v

    def _time(self, ev: ChangeEvent, row: dict, col: str) -> Any:
        v = self._get(ev, row, col)
        if v is None:
            return _OPEN
        if isinstance(v, str):  # 'infinity', or a value stored without its type
            if v.strip().lstrip("+-").lower() == "infinity":
                return _OPEN
            try:
                v = dt.datetime.fromisoformat(v.strip())
            except ValueError:
                pass
        if isinstance(v, dt.datetime):
            return v if v.tzinfo is not None else v.replace(tzinfo=self._tz)
        if isinstance(v, dt.date):
            return dt.datetime.combine(v, dt.time(), self._tz)
        raise HoldError(
            f"schedule: {col} is not a time: {short(v, 60)}",
            rule=self.name,
            details={"field": col, "value": short(v), "op": ev.op},
        )

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        op = ev.op
        row = ev.after
        if (op != UPDATE and op != CREATE and op != READ) or row is None:
            return ev
        promo = self._get(ev, row, self._value)
        if promo is None:
            return ev
        start, end = self._time(ev, row, self._from), self._time(ev, row, self._to)
        now = self.now()
        if start is not _OPEN and end is not _OPEN and end <= start:
            return ev  # an empty window never holds
        started = start is _OPEN or start <= now
        ended = end is not _OPEN and end <= now
        if not started:
            nxt, what = start, "start"
        elif not ended and end is not _OPEN:
            nxt, what = end, "end"
        else:
            nxt = None
        if nxt is not None:
            copy = dataclasses.replace(ev, before=None, after=dict(row), headers=dict(ev.headers))
            copy.headers.pop("schedule", None)
            at = nxt.astimezone(dt.UTC)
            ev.headers["schedule"] = {"stage": self.name, "at": at, "what": what, "event": copy}
        if started and not ended:
            row[self.field] = promo
        return ev
