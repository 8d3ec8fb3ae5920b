"""Running connectors side by side in one process (`cdc run`): a thread per pipeline, the daily comparisons
beside them, SIGINT/SIGTERM stopping every pipeline after its current batch, and one pipeline's failure
stopping the others. The CLI builds what runs and reports what failed; this runs it."""

from __future__ import annotations

import logging
import signal
import threading

from cdc.pipeline import Pipeline

log = logging.getLogger("cdc")


def run_side_by_side(pipelines: list[Pipeline], dailies: list) -> list[BaseException]:
    """Runs `pipelines` (and the `dailies`, DailyReconcile) until they all end; what each failed with."""
    errors: list[BaseException] = []

    def on_signal(signum, _frame) -> None:
        log.info("signal %s: stopping after the current batch", signal.Signals(signum).name)
        for p in pipelines:
            p.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def guarded(p: Pipeline) -> None:
        try:
            p.run()
        except BaseException as e:  # noqa: BLE001 - reported by the caller, one line each
            errors.append(e)
            for other in pipelines:
                other.stop()

    threads = [threading.Thread(target=guarded, args=(p,), name=p.cfg.name) for p in pipelines]
    for t in threads:
        t.start()
    for d in dailies:
        d.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    for d in dailies:
        d.stop()
    return errors
