"""cdc/hotpath.py: the hot modules run compiled where the install built them (the suite fails when it did not,
so CI exercises the compiled code), CDC_PURE_PYTHON=1 switches a process to their .py files, and the path
that runs is said in one line and exported as cdc_hot_path_info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdc import hotpath
from cdc.hotpath import HotPath
from cdc.metrics import Metrics
from cdc.pipeline import Pipeline
from tests.unit.test_compiled_equivalence import ALLOW_PURE_ENV
from tests.unit.test_pipeline import NAME, config

ROOT = Path(__file__).resolve().parents[2]


def flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def test_the_listed_modules_run_compiled():
    """The suite runs on the compiled modules: a missing or stale build fails it, unless this run is the pure
    one (CDC_PURE_PYTHON=1) or the machine has no C compiler (CDC_ALLOW_PURE=1, never in CI)."""
    state = hotpath.state()
    if state.forced:
        assert state.compiled == (), f"CDC_PURE_PYTHON=1 yet compiled: {hotpath.summary(state)}"
        return
    if state.pure and flag(ALLOW_PURE_ENV):
        pytest.skip(f"{ALLOW_PURE_ENV}=1: {hotpath.summary(state)}")
    assert state.pure == (), (
        f"not compiled: {', '.join(state.pure)} ({hotpath.summary(state)}); build them with scripts/setup.sh "
        f"or `python setup.py build_ext --inplace` (a machine without a C compiler: {ALLOW_PURE_ENV}=1)"
    )
    assert state.stale == (), hotpath.summary(state)


def imported_files(env: dict) -> list[str]:
    code = "import importlib, json, cdc.hotpath as h; print(json.dumps([importlib.import_module(n).__file__ for n in h.COMPILED]))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cdc_pure_python_imports_the_py_files():
    for path in imported_files({hotpath.PURE_ENV: "1"}):
        assert path.endswith(".py"), path


def test_without_cdc_pure_python_the_compiled_modules_load_when_installed():
    for name, path in zip(hotpath.COMPILED, imported_files({hotpath.PURE_ENV: "0"}), strict=True):
        installed = hotpath.compiled_origin(name)
        assert path == (installed or path), (name, path, installed)


def test_the_finder_answers_for_the_listed_modules_only():
    assert hotpath.PureFinder.find_spec("cdc.sources.postgres", [str(ROOT / "cdc" / "sources")]) is None
    spec = hotpath.PureFinder.find_spec("cdc.sources.pgoutput", [str(ROOT / "cdc" / "sources")])
    assert spec.origin == str(ROOT / "cdc" / "sources" / "pgoutput.py")
    assert type(spec.loader).__name__ == "SourceFileLoader"


def test_summary_lines():
    both = ("cdc.sources.pg_values", "cdc.sources.pgoutput")
    compiled = hotpath.summary(HotPath(both, (), both, (), False))
    assert compiled.startswith("compiled (Cython ") and compiled.endswith(": " + ", ".join(both))
    assert hotpath.summary(HotPath((), both, (), (), False)) == (
        "pure Python: no compiled modules (built without a C compiler or Cython; "
        "run scripts/setup.sh to build them)"
    )
    assert hotpath.summary(HotPath((), both, (), (), True)) == "pure Python (CDC_PURE_PYTHON=1)"
    assert hotpath.summary(HotPath((), both, both, (), True)).startswith(
        "pure Python (CDC_PURE_PYTHON=1); the"
    )
    mixed = hotpath.summary(HotPath(both[:1], both[1:], both[:1], both[:1], False))
    assert "pure Python (not built): cdc.sources.pgoutput" in mixed and "STALE" in mixed
    assert [HotPath(*a).path for a in ((both, (), both, (), False), (both[:1], both[1:], (), (), False))] == [
        "compiled",
        "mixed",
    ]
    assert HotPath((), both, both, (), True).path == "pure"


def test_the_pipeline_exports_the_path():
    metrics = Metrics()
    Pipeline(config(), metrics)
    sample = metrics.registry.get_sample_value(
        "cdc_hot_path_info", {"connector": NAME, "path": hotpath.path()}
    )
    assert sample == 1
