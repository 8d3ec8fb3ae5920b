"""Scheduled prices end to end, through real PostgreSQL: a promotion starts and ends on time, across a restart;
what falls due while the connector is stopped is applied when it starts; a newer change replaces the schedule
and is never overridden by it; a guard judges each boundary like any change."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal as D

from cdc.ops.held import resolve
from tests.integration.helpers import Running, wait_until
from tests.integration.pricing import GUARD, held, prices, put, setup

SLACK = 2.5  # the pipeline looks for due prices at least once a second while idle


def scheduled(run) -> dict[str, str]:
    return dict(run("SELECT row_key, what FROM cdc_scheduled"))


def wait_price(run, sku: str, price: str, r: Running, not_before: float, within: float = SLACK) -> float:
    """Waits for the storefront to show `price` for `sku`; checks it did not come before `not_before` (epoch s)
    and came within `within` seconds of it; returns when it was seen."""
    wait_until(lambda: prices(run).get(sku) == D(price), timeout=not_before - time.time() + 30, running=r)
    seen = time.time()
    assert seen >= not_before, f"{sku} became {price} {not_before - seen:.2f}s early"
    assert seen <= not_before + within, f"{sku} became {price} {seen - not_before:.2f}s late"
    return seen


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def test_promotion_starts_and_ends_on_time_across_a_restart(env):
    path = setup(env)
    t0 = time.time()
    ts = lambda s: dt.datetime.fromtimestamp(t0 + s, dt.UTC)  # noqa: E731
    put(env, "A", 1000, by="marketing", promo_fen=800, start=ts(12), end=ts(18))  # starts after the restart
    put(env, "F", 1000, promo_fen=900, start=ts(6), end=ts(60))  # starts while the connector is stopped
    put(env, "G", 1000, promo_fen=900, start=ts(6), end=ts(8))  # starts and ends while it is stopped
    put(env, "C", 1000, promo_fen=700, start=ts(-60), end=ts(18))  # running now: 7.00 until 18 s
    put(env, "E", 1000, promo_fen=700, start=ts(-60), end=ts(-30))  # over: the base price
    put(env, "B", 500)  # no promotion
    with Running(path) as r:
        want = {"A": "10.00", "F": "10.00", "G": "10.00", "C": "7.00", "E": "10.00", "B": "5.00"}
        wait_until(
            lambda: prices(env.store) == {k: D(v) for k, v in want.items()}, running=r, what="snapshot"
        )
        assert scheduled(env.store) == {"A": "start", "F": "start", "G": "start", "C": "end"}
        assert time.time() < t0 + 6, "the first run took too long for this test's timeline"
    sleep_until(t0 + 9)  # stopped while A is pending, F started and G came and went
    with Running(path) as r:
        wait_until(
            lambda: prices(env.store)["F"] == D("9.00"), timeout=SLACK + 5, running=r, what="F at start"
        )
        assert prices(env.store)["G"] == D("10.00")
        assert scheduled(env.store) == {"A": "start", "F": "end", "C": "end"}
        wait_price(env.store, "A", "8.00", r, not_before=t0 + 12)
        assert scheduled(env.store) == {"A": "end", "F": "end", "C": "end"}
        wait_price(env.store, "A", "10.00", r, not_before=t0 + 18)
        wait_until(lambda: prices(env.store)["C"] == D("10.00"), timeout=SLACK, running=r, what="C ended")
        assert scheduled(env.store) == {"F": "end"}
        assert prices(env.store) == {k: D(v) for k, v in {**want, "F": "9.00", "C": "10.00"}.items()}
    history = env.store(
        "SELECT new_value, changed_by, via FROM cdc_price_history WHERE row_key = 'A' ORDER BY id"
    )
    assert history == [
        ('{"price": "10.00"}', "marketing", "snapshot"),
        ('{"price": "8.00"}', "marketing", "schedule"),
        ('{"price": "10.00"}', "marketing", "schedule"),
    ]


def test_a_newer_change_replaces_the_schedule_and_is_never_overridden(env):
    path = setup(env)
    t0 = time.time()
    ts = lambda s: dt.datetime.fromtimestamp(t0 + s, dt.UTC)  # noqa: E731
    put(env, "A", 1000, promo_fen=800, start=ts(4), end=ts(10))
    put(env, "B", 1000, promo_fen=800, start=ts(4), end=ts(60))
    put(env, "R", 1000, promo_fen=800, start=ts(4), end=ts(60))
    with Running(path) as r:
        wait_until(lambda: len(prices(env.store)) == 3, running=r)
        assert scheduled(env.store) == {"A": "start", "B": "start", "R": "start"}
        put(env, "B", 1000, by="bob")  # promotion withdrawn: the pending start goes with it
        wait_until(lambda: "B" not in scheduled(env.store), running=r)
        # a newer change that reached the storefront some other way (the row state moved on) while R's entry
        # stayed: the due start sees it and leaves R alone
        wait_until(  # R's position is in cdc_row_state (folded beside the stream) before it is moved on
            lambda: env.store("SELECT count(*) FROM cdc_row_state WHERE row_key = 'R'")[0][0] == 1,
            running=r,
            what="R's position folded",
        )
        env.store("UPDATE cdc_row_state SET seq = seq + 1 WHERE row_key = 'R'")
        wait_price(env.store, "A", "8.00", r, not_before=t0 + 4)
        put(
            env, "A", 1200, by="carol", promo_fen=800, start=ts(4), end=ts(10)
        )  # new base during the promotion
        time.sleep(1)
        assert prices(env.store)["A"] == D("8.00")  # the promotion still holds
        wait_price(env.store, "A", "12.00", r, not_before=t0 + 10)  # and ends on the new base price
        assert prices(env.store) == {"A": D("12.00"), "B": D("10.00"), "R": D("10.00")}
        assert scheduled(env.store) == {}


def test_guard_judges_each_boundary(env):
    """A 70 % promotion is a 70 % drop for the storefront: its start is quarantined like any change, and an
    approval applies it; its end (back up 233 %) is held too, until approved."""
    path = setup(env)
    t0 = time.time()
    ts = lambda s: dt.datetime.fromtimestamp(t0 + s, dt.UTC)  # noqa: E731
    put(env, "A", 1000, promo_fen=300, start=ts(3), end=ts(8))
    with Running(path) as r:
        wait_until(lambda: prices(env.store) == {"A": D("10.00")}, running=r)
        wait_until(lambda: len(held(env.store)) == 1, timeout=15, running=r, what="start held")
        ((entry_id, status, key, rule, reason, _),) = held(env.store)
        assert (status, key, rule) == ("held", "A", f"{GUARD}:max_change_pct") and "70.0% below" in reason
        assert prices(env.store) == {"A": D("10.00")}
        assert resolve(r.cfg, entry_id, "quarantine", apply=True, by="dba").status == "applied"
        assert prices(env.store) == {"A": D("3.00")}
        assert scheduled(env.store) == {"A": "end"}  # the approval brought the end along
        wait_until(lambda: len(held(env.store)) == 2, timeout=20, running=r, what="end held")
        assert held(env.store)[1][4].startswith("price 10.00 is 233.3% above")
        assert resolve(r.cfg, held(env.store)[1][0], "quarantine", apply=True, by="dba").status == "applied"
        assert prices(env.store) == {"A": D("10.00")}


def test_promotion_on_every_storefront(env, store):
    path = setup(env, store)
    t0 = time.time()
    ts = lambda s: dt.datetime.fromtimestamp(t0 + s, dt.UTC)  # noqa: E731
    put(env, "A", 1999, promo_fen=1599, start=ts(4), end=ts(7))
    with Running(path) as r:
        wait_until(lambda: prices(store) == {"A": D("19.99")}, running=r)
        wait_price(store, "A", "15.99", r, not_before=t0 + 4)
        wait_price(store, "A", "19.99", r, not_before=t0 + 7)
        assert scheduled(store) == {}
