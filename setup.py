"""Compiles the hot modules listed in cdc/hotpath.py (`COMPILED`) with Cython, in pure-Python mode: each .py file
as it is becomes an extension module beside it, which the import system prefers. Everything else about the
package is in pyproject.toml.

When a module cannot be compiled (no C compiler, no Cython, Cython refusing the code) the install still
succeeds: that module stays pure Python and a warning says so. A module that cimports another listed one
(`from cython.cimports.cdc.fast.cbytes import ...`: C functions, found at import through the other's compiled
module) is compiled only when that one was, earlier in the list: compiled alone, it could not be imported, so
it too stays pure Python, with a warning. `CDC_PURE_PYTHON=1` at run time picks the .py files even when the
extensions are there (cdc/__init__.py).
"""

from __future__ import annotations

import ast
import sys
import traceback
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

# Python's semantics, compiled: annotations stay hints (Cython 3 would otherwise treat `x: int` or `b: bytes`
# as C types or checks: other overflow, other errors); functions keep their Python introspection (binding);
# C types are inferred only where the result cannot differ (infer_types=None, the default, made explicit).
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "infer_types": None,
}


def compiled_modules() -> list[str]:
    """`COMPILED` of cdc/hotpath.py, read without importing cdc (its dependencies may not be installed yet)."""
    tree = ast.parse((ROOT / "cdc" / "hotpath.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py: cdc/hotpath.py has no `COMPILED = (...)` literal")


def cimported(module: str) -> set[str]:
    """The modules whose C functions `module` cimports in pure mode (`from cython.cimports.X import ...`)."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    prefix = "cython.cimports."
    return {
        node.module[len(prefix) :]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefix)
    }


def warn(text: str) -> None:
    print(f"\nWARNING (pos-cdc): {text}\n", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """build_ext that cythonizes each module and compiles it, and on any failure leaves that module pure
    Python with a warning instead of failing the install."""

    def run(self) -> None:
        try:
            import Cython  # noqa: F401  (the build requirement; absent with --no-build-isolation)
        except ImportError:
            warn(
                "Cython is not installed: the hot modules stay pure Python (pip install cython, then reinstall)"
            )
            self.extensions = []
        try:
            super().run()
        except Exception as e:  # the compiler cannot even be set up (a platform without one)
            self._gave_up(self.extensions, e)
            self.extensions = []

    def build_extensions(self) -> None:
        built = []
        listed = {x.name for x in self.extensions}
        for ext in self.extensions:
            missing = sorted(cimported(ext.name) & (listed - {x.name for x in built}))
            if missing:  # compiled, it could not be imported (its C functions are not there)
                warn(
                    f"did not compile {ext.name}: it calls C functions of {', '.join(missing)}, not compiled "
                    "before it (the warning above says why); installed as pure Python, which works the same, "
                    "only slower"
                )
                continue
            try:
                self.build_extension(ext)
                built.append(ext)
            except Exception as e:  # whatever it was, the .py module is the fallback
                self._gave_up([ext], e)
        self.extensions = built  # editable installs copy these, and only these, next to the .py files

    def build_extension(self, ext: Extension) -> None:
        from Cython.Build import cythonize

        (cythonized,) = cythonize(
            [ext], compiler_directives=DIRECTIVES, build_dir=str(Path(self.build_temp) / "cython"), quiet=True
        )
        ext.sources = cythonized.sources  # the generated .c; setuptools' own Extension is the one to build
        super().build_extension(ext)

    def _gave_up(self, exts: list[Extension], e: BaseException) -> None:
        names = ", ".join(x.name for x in exts) or "the hot modules"
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        warn(
            f"could not compile {names} ({detail}); installed as pure Python, which works the same, only "
            "slower. The build needs a C compiler (gcc) and Python's headers (python3-dev): scripts/setup.sh "
            "installs them."
        )


setup(
    ext_modules=[Extension(name, [name.replace(".", "/") + ".py"]) for name in compiled_modules()],
    cmdclass={"build_ext": OptionalBuildExt},
)
