"""cdc/hotpath.py: the hot modules run compiled where the install built them (the suite fails when it did not,
so CI exercises the compiled code), CDC_PURE_PYTHON=1 switches a process to their .py files, and the path
that runs is said in one line and exported as cdc_hot_path_info."""

from __future__ import annotations

import ast
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


def test_a_module_that_cimports_another_is_listed_after_it():
    """setup.py compiles the listed modules in their order, one that cimports another's C functions only when
    that one compiled before it (else it stays pure Python: compiled alone, it could not be imported)."""
    for i, name in enumerate(hotpath.COMPILED):
        tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cython.cimports.cdc."):
                cimported = node.module.removeprefix("cython.cimports.")
                assert cimported in hotpath.COMPILED[:i], f"{name} cimports {cimported}: list it first"


# a process without Cython: the listed modules' .py files with cdc/cython_shim.py, and encode_c's lines
WITHOUT_CYTHON = r"""
import importlib, sys
sys.modules["cython"] = None  # `import cython` raises ImportError, as where Cython is not installed
from cdc import cython_shim, hotpath
from cdc.fast import encode, encode_c
from cdc.fast.encode import PASS, TEXT

mods = [importlib.import_module(n) for n in hotpath.COMPILED]
assert all(m.__file__.endswith(".py") for m in mods), mods
assert {getattr(m, "cython", cython_shim) for m in mods} == {cython_shim}, mods
msg = b"I\0\0\0\1N\0\2" + b"t\0\0\0\2k1" + b"t\0\0\0\3a\tb"
args = ([msg], [7], 0, 2, ((0, PASS, ()), (1, TEXT, ())), (0,), b"\tu\t", b"\n")
lines, expect = {}, {}
assert encode_c.encode_run(*args, lines) == encode.encode_run(*args, expect) == 1
assert lines == expect == {b"k1": b"k1\ta\\tb\tk1\tu\t7\n"}, lines
"""


def test_the_listed_modules_run_interpreted_without_cython():
    """Without Cython installed, the .py files import (the declarations from cdc/cython_shim.py) and run:
    encode_c imports cbytes's C functions as Python functions then, and calls encode.py."""
    env = {**os.environ, hotpath.PURE_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_CYTHON], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr


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
