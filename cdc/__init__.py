"""pos-cdc. CDC_PURE_PYTHON=1 makes this process run the pure-Python .py of the hot modules even where their
Cython-compiled extensions are installed (cdc/hotpath.py)."""

from cdc import hotpath as _hotpath

if _hotpath.pure_forced():
    _hotpath.install_pure_finder()
