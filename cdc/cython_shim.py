"""What a compiled hot module (cdc/hotpath.py) takes from Cython's `cython` module, for when it runs interpreted
without Cython installed: the type declarations are hints only, as they are to Python.

    try:
        import cython
    except ImportError:
        from cdc import cython_shim as cython

Compiled, `cython.locals(...)` gives the named locals C types (Py_ssize_t: a C integer for positions and
lengths, which never overflows there; uchar: a byte; bint: a C truth value), and `cython.ccall` makes a
function callable from C within its module (and from Python as ever); interpreted, they change nothing.
"""

from __future__ import annotations

compiled = False
Py_ssize_t = int
uchar = int
bint = bool


def locals(**_types):  # noqa: A001 - Cython's name
    return lambda fn: fn


def ccall(fn):
    return fn


p_uchar = p_char = ulonglong = None  # (pointer and integer types: named in declarations only)


def cfunc(fn):
    return fn


inline = cfunc


def returns(_type):
    return lambda fn: fn


def exceptval(*_args, **_kw):
    return lambda fn: fn


def declare(_type=None, value=None):
    """A C variable compiled; interpreted, just its value."""
    return value
