# The C functions of cbytes.py, for `from cython.cimports.cdc.fast.cbytes import ...` in another compiled
# module (encode_c.py): Cython reads this beside cbytes.py when it compiles either. The signatures must be those
# of cbytes.py's @cython.locals / @cython.returns (Cython refuses a mismatch); noexcept as there (exceptval
# check=False), so that a call's -1 is only a result, never a check for a Python exception.

cdef Py_ssize_t put_escaped(unsigned char *o, Py_ssize_t at, unsigned char *s, Py_ssize_t ln) noexcept
cdef Py_ssize_t put_json(unsigned char *o, Py_ssize_t at, unsigned char *s, Py_ssize_t ln) noexcept
cdef Py_ssize_t put_shifted(
    unsigned char *o, Py_ssize_t at, unsigned char *s, Py_ssize_t ln, Py_ssize_t shift, Py_ssize_t nzeros
) noexcept
cdef Py_ssize_t put_digits(unsigned char *o, Py_ssize_t at, unsigned long long v) noexcept
cdef Py_ssize_t put_quoted(unsigned char *o, Py_ssize_t at, unsigned char *s, Py_ssize_t ln, bint nbe) noexcept
cdef bint is_plain_number(unsigned char *s, Py_ssize_t ln) noexcept
