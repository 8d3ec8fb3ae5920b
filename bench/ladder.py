"""The cashier rate ladder of bench/run.py (`--scenario ladder`): the highest single-row transaction rate each
system sustains with p99 commit-to-visible <= 100 ms, native and pos-cdc in the same run.

For each system in turn (native first, on a fresh slot, the POS table prefilled with --rows rows as for
cashier): pgbench runs the cashier script (one single-row price UPDATE per transaction, -c/-j as cashier)
at -R RATE for --step-seconds, for each RATE of the ladder (--ladder, default 1000, 2000, … 12000), while a
marker is committed every 20 ms (500 per 10 s step, so p99 is not the 2nd-worst of 200) and the sink polled
every 2 ms. After each step the system catches up (a fence marker) before the next one starts, so every
step starts from an empty backlog. A step is met when pgbench kept the rate (its TPS >= 95 % of RATE) and
p99 of the markers committed during the step is <= 100 ms. The ladder of a system stops at its second
missed step, or at the first where the POS could not keep the rate (the limit is then the POS, not the
replication, which the report says). The result: the highest met rate of each, and pos-cdc's / native's
(goal, issue 14: >= 1.0); beside it the highest rate with every step up to it met, which differs only when
a noisy machine makes one step miss and a higher one pass.

`bench` is bench/run.py's module (a script: it passes itself), for its Env, systems, Markers and pgbench.
"""

from __future__ import annotations

import argparse
import time

P99_LIMIT_MS = 100.0
KEEP_RATE = 0.95  # pgbench TPS below this share of -R: the POS could not keep the rate
MARKER_INTERVAL_S = 0.02
DEFAULT_LADDER = "1000,2000,3000,4000,5000,6000,7000,8000,9000,10000,11000,12000"


def step(env, args, bench, system, markers, script, rate: int) -> dict:
    alive = getattr(system, "check", lambda: None)
    pg_args = argparse.Namespace(**{**vars(args), "seconds": args.step_seconds, "rate": rate})
    cpu0 = env.cpu(system)
    t_start = time.monotonic()
    markers.start_writer(MARKER_INTERVAL_S)
    res = bench.run_pgbench(env, pg_args, script)
    t_end = time.monotonic()
    markers.stop_writer()
    last = markers.seq
    t_vis = markers.wait(markers.commit(), args.timeout, alive)
    lat = [
        (markers.visible[s] - markers.commits[s][1]) * 1000
        for s in range(1, last + 1)
        if t_start <= markers.commits[s][1] <= t_end
    ]
    if not lat:
        raise bench.BenchError(f"{system.label} -R {rate}: no marker committed during the step")
    p99 = bench.percentile(lat, 99)
    kept = res["tps"] is not None and res["tps"] >= KEEP_RATE * rate
    res.update(
        {
            "rate": rate,
            "markers": len(lat),
            "latency_p50_ms": round(bench.percentile(lat, 50), 1),
            "latency_p99_ms": round(p99, 1),
            "latency_max_ms": round(max(lat), 1),
            "catchup_after_step_s": round(t_vis - t_end, 3),
            "pos_kept_rate": kept,
            "met": kept and p99 <= P99_LIMIT_MS,
            "cpu_step_to_applied": env.cpu_delta(cpu0, env.cpu(system)),
        }
    )
    return res


def scenario_ladder(env, args, bench) -> dict:
    rows = args.rows
    rates = [int(r) for r in args.ladder.split(",")]
    script = env.workdir / "cashier.sql"
    script.write_text(bench.PGBENCH_SCRIPT.format(rows=rows))
    out: dict = {}
    for cls in (bench.Native, bench.PosCdc):
        system = cls(env, "ladder", args)
        env.reset_pos(rows)
        system.prepare_target(rows)
        env.checkpoint()
        steps: list[dict] = []
        stop_reason = "ladder's top reached"
        markers = None
        try:
            system.start()
            markers = bench.Markers(env.pos_dsn, system.dsn, system.marker_sql, poll_s=0.002)
            time.sleep(1.0)
            misses = 0
            for rate in rates:
                s = step(env, args, bench, system, markers, script, rate)
                steps.append(s)
                bench.log(
                    f"  {system.label:8s} -R {rate}: {s['tps']:.0f} TPS, p50 {s['latency_p50_ms']} ms "
                    f"p99 {s['latency_p99_ms']} ms max {s['latency_max_ms']} ms ({s['markers']} markers), "
                    f"caught up {s['catchup_after_step_s']:.2f}s after: "
                    + (
                        "met"
                        if s["met"]
                        else "POS could not keep the rate"
                        if not s["pos_kept_rate"]
                        else "MISSED"
                    )
                )
                if not s["pos_kept_rate"]:
                    stop_reason = f"the POS could not keep {rate} TPS"
                    break
                if not s["met"]:
                    misses += 1
                    if misses >= 2:
                        stop_reason = "p99 missed twice"
                        break
                time.sleep(1.0)
        except BaseException:
            system.kill()  # fast, no graceful stop; the run is aborted anyway
            raise
        finally:
            if markers:
                markers.close()
        met = [s["rate"] for s in steps if s["met"]]
        unbroken = None  # the highest rate with every step up to it met (the same on a quiet machine)
        for s in steps:
            if not s["met"]:
                break
            unbroken = s["rate"]
        res = {
            "steps": steps,
            "sustained_tps": max(met) if met else None,
            "sustained_tps_unbroken": unbroken,
            "stopped": stop_reason,
            "content_ok": bench.verify(env, system, env.pos_content()),
        }
        res.update(system.stop())
        bench.log(f"  {system.label:8s} ladder: highest rate met {res['sustained_tps']} TPS ({stop_reason})")
        out[system.label] = res
    return out


def summary_rows(lad: dict, ratio) -> list[tuple]:
    """bench/run.py's table rows for the ladder: p99 at each rate, then the highest rate met."""
    nat, cdc = lad["native"], lad["pos-cdc"]
    by_rate: dict[int, dict] = {}
    for label, res in (("native", nat), ("pos-cdc", cdc)):
        for s in res["steps"]:
            by_rate.setdefault(s["rate"], {})[label] = s
    rows = []
    for rate in sorted(by_rate):
        n, c = by_rate[rate].get("native", {}), by_rate[rate].get("pos-cdc", {})
        np99, cp99 = n.get("latency_p99_ms"), c.get("latency_p99_ms")
        rows.append(
            ("ladder", f"-R {rate}: p99 ms", np99, cp99, ratio(cp99, np99), "p99 <= 100 ms", c.get("met"))
        )
    a, b = nat["sustained_tps"], cdc["sustained_tps"]
    r = ratio(b, a)
    rows.append(
        ("ladder", "highest TPS with p99 <= 100 ms", a, b, r, "ratio >= 1.0", r is not None and r >= 1.0)
    )
    a, b = nat["sustained_tps_unbroken"], cdc["sustained_tps_unbroken"]
    rows.append(("ladder", "… every step up to it met", a, b, ratio(b, a), "", None))
    rows.append(("ladder", "stopped at", nat["stopped"], cdc["stopped"], None, "", None))
    return rows
