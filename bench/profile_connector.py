"""Runs one connector in-process, in the main thread, under a profiler switched by signals.

    python bench/profile_connector.py CONFIG OUT_DIR [cprofile|pyinstrument|none]

With `none` nothing is profiled (used to run with bench/patches.py, named in $CDC_BENCH_PATCHES, comma-separated).

SIGUSR1 starts profiling; SIGUSR2 stops it and writes OUT_DIR/<name>.prof (cProfile) or <name>.txt and
<name>.html (pyinstrument, a sampling profiler with less overhead: `pip install pyinstrument`), where <name>
is read from OUT_DIR/.next (written by bench/run.py), so only the window from a load to its being applied
is profiled. SIGTERM/SIGINT stop the pipeline as `cdc run` does. Used by `bench/run.py --profile DIR`.
Read a cProfile file with: python -m pstats OUT_DIR/NAME.prof  (sort cumulative / tottime, stats 30)
"""

from __future__ import annotations

import cProfile
import logging
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdc.config import load_config  # noqa: E402
from cdc.pipeline import Pipeline  # noqa: E402


class CProf:
    def __init__(self) -> None:
        self.p = cProfile.Profile()

    def start(self) -> None:
        self.p.enable()

    def stop_and_dump(self, out: Path, name: str) -> None:
        self.p.disable()
        self.p.dump_stats(out / f"{name}.prof")
        self.p = cProfile.Profile()


class PyInstr:
    def __init__(self) -> None:
        from pyinstrument import Profiler

        self.cls = Profiler
        self.p = None

    def start(self) -> None:
        self.p = self.cls(interval=0.0005)
        self.p.start()

    def stop_and_dump(self, out: Path, name: str) -> None:
        self.p.stop()
        (out / f"{name}.txt").write_text(self.p.output_text(unicode=False, color=False, show_all=False))
        (out / f"{name}.html").write_text(self.p.output_html())
        self.p = None


class NoProf:
    def start(self) -> None:
        pass

    def stop_and_dump(self, out: Path, name: str) -> None:
        pass


def main() -> None:
    import os

    patches = [p for p in os.environ.get("CDC_BENCH_PATCHES", "").split(",") if p]
    if patches:
        sys.path.insert(0, str(ROOT / "bench"))
        import patches as bench_patches

        bench_patches.apply(patches)
    cfg = load_config(sys.argv[1])
    out = Path(sys.argv[2])
    kind = sys.argv[3] if len(sys.argv) > 3 else "cprofile"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if patches:
        logging.info("bench patches applied: %s", ", ".join(patches))
    from cdc.cli import tune_gc, tune_threads

    tune_gc()  # as `cdc run` does (its GC thresholds, its thread switch interval): without them the ladder's
    tune_threads()  # p99 came out 2-3x worse under a patch than without one, whatever the patch
    pipeline = Pipeline(cfg)
    prof = {"pyinstrument": PyInstr, "none": NoProf}.get(kind, CProf)()
    state = {"on": False, "n": 0}

    def start(_sig, _frame) -> None:
        if not state["on"]:
            prof.start()
            state["on"] = True

    def dump(_sig, _frame) -> None:
        if not state["on"]:
            return
        state["on"] = False
        try:
            name = (out / ".next").read_text().strip() or f"profile{state['n']}"
        except OSError:
            name = f"profile{state['n']}"
        state["n"] += 1
        prof.stop_and_dump(out, name)
        logging.info("wrote %s profile %s", kind, out / name)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop())
    signal.signal(signal.SIGINT, lambda *_: pipeline.stop())
    pipeline.run()


if __name__ == "__main__":
    main()
