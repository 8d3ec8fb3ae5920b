"""The per-change hot modules that the install compiles with Cython (issue 14), and which path runs.

`COMPILED` is the one list of them: setup.py reads it (without importing cdc) and compiles each module's .py
file as it is, in Cython's pure-Python mode, into an extension module beside it; the import system then
prefers the extension (`pgoutput.cpython-311-x86_64-linux-gnu.so` before `pgoutput.py`). The .py stays the
source of truth and the fallback: an install without a C compiler, or whose Cython build failed, keeps the .py
modules (setup.py warns), and `CDC_PURE_PYTHON=1` in the environment makes a process import the .py files even
when the compiled ones are installed (cdc/__init__.py installs `PureFinder` for that).

`summary()` is the line `cdc run` logs at start and `cdc status` shows; the metric `cdc_hot_path_info` carries
`path()`. Standard library only: setup.py and cdc/__init__.py use this module before anything else is there.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from dataclasses import dataclass

# The modules compiled at install, in dotted form (setup.py reads this assignment with `ast`: keep it a literal),
# in the order they are built: a module that cimports another (encode_c the C functions of cbytes) after it.
COMPILED = (
    "cdc.sources.pg_values",
    "cdc.sources.pgoutput",
    "cdc.fast.encode",
    "cdc.fast.encode_mysql",
    "cdc.fast.cbytes",
    "cdc.fast.encode_c",
    "cdc.sources.pg_run",
)

PURE_ENV = "CDC_PURE_PYTHON"
# a .py file this much newer than its extension module means the extension is stale (a wheel install writes
# both within moments; an edit after a build is later than that)
STALE_AFTER_S = 2.0


def pure_forced() -> bool:
    """CDC_PURE_PYTHON set to anything but "" or "0"."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class PureFinder:
    """A meta path finder that answers for the modules in COMPILED only, with a spec for their .py file (a
    SourceFileLoader), so that the extension module beside it is never loaded. Everything else: None, the
    next finder's turn."""

    @staticmethod
    def find_spec(fullname: str, path=None, target=None):
        if fullname not in COMPILED:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for folder in path or ():
            source = os.path.join(folder, leaf)
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def install_pure_finder() -> None:
    if PureFinder not in sys.meta_path:
        sys.meta_path.insert(0, PureFinder)


def remove_pure_finder() -> None:
    while PureFinder in sys.meta_path:
        sys.meta_path.remove(PureFinder)


def is_extension(filename: str | None) -> bool:
    return bool(filename) and filename.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def origin(name: str) -> str | None:
    """The file module `name` runs from: the loaded module's, else the one an import would load now."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec else None


def compiled_origin(name: str) -> str | None:
    """The extension module installed for `name` (whether or not it is the one that runs), or None."""
    found = origin(name)
    if is_extension(found):
        return found
    if not found:
        return None
    folder, leaf = os.path.split(found)
    stem = leaf.rpartition(".")[0]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = os.path.join(folder, stem + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None


def is_stale(extension: str) -> bool:
    """The module's .py was changed after its extension was built: the extension runs the old code."""
    folder, leaf = os.path.split(extension)
    source = os.path.join(folder, leaf.split(".", 1)[0] + ".py")  # pgoutput.cpython-311-...so -> pgoutput.py
    try:
        return os.path.getmtime(source) > os.path.getmtime(extension) + STALE_AFTER_S
    except OSError:
        return False


def cython_version() -> str | None:
    """The Cython the running compiled modules were built with: their functions' type lives in `_cython_3_3_1`."""
    for name in COMPILED:
        if not is_extension(origin(name)):
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            owner = type(value).__module__
            if owner.startswith("_cython_"):
                return owner[len("_cython_") :].replace("_", ".")
    return None


@dataclass(frozen=True)
class HotPath:
    compiled: tuple[str, ...]  # listed modules that run compiled
    pure: tuple[str, ...]  # listed modules that run as .py
    installed: tuple[str, ...]  # listed modules with an extension installed (used or not)
    stale: tuple[str, ...]  # compiled modules whose .py is newer than the extension
    forced: bool  # CDC_PURE_PYTHON

    @property
    def path(self) -> str:
        """compiled (every listed module), mixed (some) or pure (none)."""
        if not self.pure:
            return "compiled"
        return "mixed" if self.compiled else "pure"


def state() -> HotPath:
    compiled, pure, installed, stale = [], [], [], []
    for name in COMPILED:
        ext = compiled_origin(name)
        if ext:
            installed.append(name)
        if is_extension(origin(name)):
            compiled.append(name)
            if is_stale(ext):
                stale.append(name)
        else:
            pure.append(name)
    return HotPath(tuple(compiled), tuple(pure), tuple(installed), tuple(stale), pure_forced())


def path() -> str:
    return state().path


def summary(hp: HotPath | None = None) -> str:
    """One line: which listed modules run compiled (and with which Cython), which as pure Python, and why."""
    hp = hp or state()
    if hp.forced and not hp.compiled:
        out = f"pure Python ({PURE_ENV}=1)"
        if hp.installed:
            out += "; the compiled modules are installed but not used"
        return out
    parts = []
    if hp.compiled:
        version = cython_version()
        parts.append(f"compiled (Cython {version or '?'}): {', '.join(hp.compiled)}")
    if hp.pure and not hp.compiled:
        parts.append(
            "pure Python: no compiled modules (built without a C compiler or Cython; "
            "run scripts/setup.sh to build them)"
        )
    elif hp.pure:
        parts.append(f"pure Python (not built): {', '.join(hp.pure)}")
    if hp.stale:
        parts.append(
            f"STALE, the .py is newer so the old code runs (rebuild: scripts/setup.sh): {', '.join(hp.stale)}"
        )
    return "; ".join(parts)
