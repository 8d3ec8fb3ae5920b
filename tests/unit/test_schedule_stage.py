"""The `schedule` stage (a pure function of the event and an injected clock), the typed event store, and
apply_stages letting a lookup's transient/terminal errors through."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from pydantic import ValidationError

from cdc.errors import HoldError, TerminalError, TransientError
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.stages import GuardStage, ScheduleConfig, apply_stages, build_stages
from cdc.stored import decode, dump_event, encode, load_event

UTC = dt.UTC
T0 = dt.datetime(2024, 11, 11, 12, 0, tzinfo=UTC)
CFG = {"type": "schedule", "field": "price", "value": "promo", "valid_from": "start", "valid_to": "end"}


def stage(now=T0, **cfg):
    (s,) = build_stages([{**CFG, **cfg}])
    s.now = lambda: now
    return s


def ev(op="u", **row):
    after = {"sku": "A", "price": Decimal("10.00"), "promo": None, "start": None, "end": None, **row}
    return ChangeEvent(op, "public", "item_price", {"sku": "A"}, after, 90, 100, 3, 1000, 7)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


class TestSchedule:
    def test_no_promotion(self):
        out = stage()(ev())
        assert out.after["price"] == Decimal("10.00") and "schedule" not in out.headers

    def test_future_window_keeps_the_base_price_and_schedules_the_start(self):
        out = stage()(ev(promo=Decimal("8.00"), start=at(5), end=at(10)))
        assert out.after["price"] == Decimal("10.00")
        s = out.headers["schedule"]
        assert (s["stage"], s["at"], s["what"]) == ("schedule#1", at(5), "start")
        copy = s["event"]
        assert copy.before is None and copy.after["price"] == Decimal("10.00")
        assert (copy.commit_lsn, copy.seq) == (100, 3) and "schedule" not in copy.headers
        # the copy is the change as it came in: running the stage on it at the start gives the promotion
        stored = dump_event(copy)  # as the sink keeps it
        again = stage(now=at(5))(load_event(stored))
        assert again.after["price"] == Decimal("8.00") and again.headers["schedule"]["what"] == "end"
        assert again.headers["schedule"]["at"] == at(10)
        end = stage(now=at(10))(load_event(stored))  # at (or after) the end: the base price, nothing more
        assert end.after["price"] == Decimal("10.00") and "schedule" not in end.headers

    def test_inside_the_window(self):
        out = stage()(ev(promo=Decimal("8.00"), start=at(-5), end=at(10)))
        assert out.after["price"] == Decimal("8.00")
        assert out.headers["schedule"]["what"] == "end"
        assert out.headers["schedule"]["event"].after["price"] == Decimal("10.00")

    @pytest.mark.parametrize(
        "start,end,price,what",
        [
            (None, None, "8.00", None),  # open both ways: always
            (None, at(1), "8.00", "end"),
            (at(-1), None, "8.00", None),
            (at(1), None, "10.00", "start"),
            (at(0), at(1), "8.00", "end"),  # start inclusive
            (at(-1), at(0), "10.00", None),  # end exclusive
            (at(5), at(5), "10.00", None),  # empty window
            (at(5), at(1), "10.00", None),
            ("-infinity", "infinity", "8.00", None),
        ],
    )
    def test_bounds(self, start, end, price, what):
        out = stage()(ev(promo=Decimal("8.00"), start=start, end=end))
        assert out.after["price"] == Decimal(price)
        assert out.headers.get("schedule", {}).get("what") == what

    def test_naive_times_and_dates_are_read_in_the_configured_zone(self):
        shanghai = stage(timezone="Asia/Shanghai")
        # 20:00 in Shanghai is 12:00 UTC: the window starts exactly now
        out = shanghai(ev(promo=Decimal("8"), start=dt.datetime(2024, 11, 11, 20, 0), end=None))
        assert out.after["price"] == Decimal("8")
        out = shanghai(ev(promo=Decimal("8"), start=dt.date(2024, 11, 12), end=None))
        assert out.headers["schedule"]["at"] == dt.datetime(2024, 11, 11, 16, 0, tzinfo=UTC)
        out = stage()(ev(promo=Decimal("8"), start="2024-11-11T12:30:00+00:00", end=None))
        assert out.headers["schedule"]["at"] == at(30)

    def test_deletes_and_truncates_pass(self):
        d = ChangeEvent("d", "public", "item_price", {"sku": "A"}, None, 1, 1, 1, 1)
        assert stage()(d) is d and not d.headers

    def test_unchanged_toast_value_is_taken_from_before(self):
        e = ev(promo=UNCHANGED_TOAST, start=at(-1), end=at(1))
        e.before = {"sku": "A", "promo": Decimal("7.00")}
        assert stage()(e).after["price"] == Decimal("7.00")
        e = ev(promo=UNCHANGED_TOAST, start=at(-1), end=at(1))
        with pytest.raises(HoldError, match="unchanged TOASTed"):
            stage()(e)

    @pytest.mark.parametrize(
        "row,match",
        [
            ({"start": "soon"}, "start is not a time: 'soon'"),
            ({"start": 5}, "start is not a time"),
        ],
    )
    def test_bad_rows_are_held(self, row, match):
        with pytest.raises(HoldError, match=match) as exc:
            stage()(ev(promo=Decimal("8"), **row))
        assert exc.value.rule == "schedule#1"

    def test_missing_column_is_held(self):
        e = ev(promo=Decimal("8"))
        del e.after["end"]
        with pytest.raises(HoldError, match="no column end"):
            stage()(e)

    @pytest.mark.parametrize(
        "cfg,match",
        [
            ({"value": "price"}, "four different columns"),
            ({"timezone": "Mars/Base"}, "unknown time zone"),
            ({"valid_to": " "}, "must name a column"),
            ({"extra": 1}, "Extra inputs"),
        ],
    )
    def test_config_errors(self, cfg, match):
        with pytest.raises(ValidationError, match=match):
            ScheduleConfig.model_validate({**CFG, **cfg})


class TestStoredEvents:
    def test_round_trip_keeps_every_type(self):
        e = ev(
            promo=Decimal("8.000"),
            start=at(1),
            end=dt.datetime(2024, 1, 1, 0, 0),
            day=dt.date(2024, 1, 2),
            t=dt.time(1, 2, 3, 4),
            b=b"\x00\xff",
            u=uuid.UUID(int=5),
            f=0.1,
            n=None,
            flag=True,
            big=2**70,
            toast=UNCHANGED_TOAST,
            tricky={"$": "dict", "v": 1},
            text="$",
        )
        e.key_columns = ("sku",)
        e.lane = "priority"
        e.headers = {"changed_by": "bo", "schedule": {"at": at(5), "event": ev(promo=Decimal("1"))}}
        back = load_event(dump_event(e))
        assert back == e
        assert type(back.after["promo"]) is Decimal and str(back.after["promo"]) == "8.000"
        assert back.after["toast"] is UNCHANGED_TOAST and back.key_columns == ("sku",)

    def test_unknown_types_are_refused(self):
        with pytest.raises(TypeError):
            encode(object())
        assert decode(encode([Decimal("1.5"), (1, 2)])) == [Decimal("1.5"), (1, 2)]


class TestLookupErrors:
    CFG = {"type": "guard", "field": "price", "max_change_pct": 50}

    @pytest.mark.parametrize("error", [TransientError("storefront away"), TerminalError("no such column")])
    def test_transient_and_terminal_errors_propagate(self, error):
        (g,) = build_stages([self.CFG])
        assert isinstance(g, GuardStage)

        def current(row):
            raise error

        g.current = current
        with pytest.raises(type(error)):
            apply_stages([g], ev())

    def test_other_lookup_errors_hold_the_change(self):
        (g,) = build_stages([self.CFG])
        g.current = lambda row: 1 / 0
        with pytest.raises(HoldError, match="stage guard#1 failed: ZeroDivisionError"):
            apply_stages([g], ev())
