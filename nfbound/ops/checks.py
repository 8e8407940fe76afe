"""Argument checks shared by the ops: clear ``ValueError``s that name the argument.

Runtime values (inputs, upstream gradients ``g``) and error bounds (``eps``) are read at their
exact value, whatever the NumPy dtype, never through a float64 conversion first (int64
``2^53 + 1`` is not ``2^53``, longdouble ``1 + 2^−60`` is not 1):

* read exactly: bool (0 and 1: NumPy's bool is a numeric type, ``Format.round`` takes it, and
  a result from a bool array is the result from its 0/1 floats, so refusing it would guard
  nothing), int8..int64 and uint8..uint64 at any magnitude, float16/32/64, longdouble,
  ml_dtypes' real types (bfloat16, the fp8s: widening casts to float64 are exact), NumPy
  scalars and 0-d arrays of these, and object arrays, lists or scalars of Python ints (of any
  size), ``fractions.Fraction``, ``decimal.Decimal``, ``gmpy2`` ``mpz``/``mpq``/``mpfr``;
* refused, with a one-line ``ValueError`` naming the argument: complex numbers, strings and
  bytes (``Format.round`` reads decimal strings; a runtime value is a number, never text),
  datetime64, timedelta64, void/structured records, and object elements that are not real
  numbers.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import numpy as np
from gmpy2 import mpq

from ..bounds.upward import exact_array_up
from ..formats import Format
from ..formats.format import _as_binary64, _map, signed_float_array
from ..formats.reference import Exact, to_exact

_TRUSTED: ContextVar[bool] = ContextVar("nfbound_trusted_format_values", default=False)
_MPQ = type(mpq(0))


def _exact_number(name: str, v) -> Exact:
    """The exact value of one element (``mpq``; ``±inf``/``nan`` as floats), or a
    ``ValueError`` naming the argument when it is not a real number."""
    if type(v) is _MPQ:          # the runtime values of formats held exactly: no copy
        return v
    if not isinstance(v, (str, bytes, np.str_, np.bytes_)):
        try:
            return to_exact(v)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{name} must hold real numbers, got {v!r} of type {type(v).__name__}")


def exact_values(name: str, x) -> np.ndarray:
    """The exact values of ``x``: a float64 array when every element is a binary64 value
    (converted exactly), else an object array of ``mpq`` (``±inf``/``nan`` as floats).
    Refuses what is not real numbers (module doc) with a ``ValueError`` naming ``name``."""
    a = _as_binary64(x, name)
    return a if a is not None else _map(lambda v: _exact_number(name, v), x)


def finite(name: str, x) -> np.ndarray:
    """:func:`exact_values` of ``x``; raises if it holds NaN or ±inf."""
    a = exact_values(name, x)
    if a.dtype == object:
        bad = [v for v in a.reshape(-1) if isinstance(v, float)]
        if bad:
            raise ValueError(f"{name} contains non-finite values ({bad[0]!r})")
    elif not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _runtime_dtype(fmt: Format) -> np.dtype:
    """How runtime values of ``fmt`` are held: float64 when the format fits binary64, exact
    objects otherwise."""
    return np.dtype(np.float64 if fmt.fits_binary64 else object)


def format_value(name: str, x, fmt: Format) -> np.ndarray:
    """``x`` as an array of values of ``fmt`` in the format's runtime representation (float64
    when it fits binary64, else an object array of ``mpq``); raises if it holds NaN/±inf, a
    number that is not a value of the format, or anything but real numbers (module doc).

    The grid test is made on the exact value given (:func:`finite`), and a value that passes
    is converted exactly: a value of a format that fits binary64 is a binary64 value.

    Every runtime rule takes format values: the compiled elementary operations round the exact
    result of two *format values* once (for p ≤ 25 through one binary64 operation, innocuous
    only for such operands), so an off-grid operand would be rounded twice and its error missed
    by the bound. Off-grid data is rounded first, with ``fmt.round``, its representation error
    becoming the input's ``eps`` (the graphs do this for inputs and parameters).
    """
    a = finite(name, x)
    if not fmt.fits_binary64 and a.dtype != object:
        a = _map(to_exact, a)                        # binary64 values → rationals, exactly
    trusted = _TRUSTED.get() and isinstance(x, np.ndarray) and x.dtype == _runtime_dtype(fmt)
    if not trusted:
        on_grid = np.asarray(fmt.is_representable(a), dtype=bool)
        if not on_grid.all():
            bad = a.reshape(-1)[np.flatnonzero(~on_grid.reshape(-1))[0]]
            raise ValueError(f"{name} holds values that are not {fmt} values (e.g. {bad}); "
                             f"round them with the format's round() first")
    if fmt.fits_binary64 and a.dtype == object:
        a = signed_float_array(a, x)                 # a value of the format is a binary64 value
    return a


@contextmanager
def trusted_format_values() -> Iterator[None]:
    """Within this block :func:`format_value` skips the grid test for arrays already held as
    the format's runtime values (float64 for formats that fit binary64, object arrays
    otherwise); any other dtype is checked in full and converted.

    For composers whose every runtime value is a format value by construction: the graphs,
    whose leaves are rounded with ``fmt.round`` (or checked once on entry) and whose other
    values are outputs of runtime rules (every rule returns values of its format: the
    registry-wide test checks it). The grid test then runs once per leaf instead of once per
    rule call.
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def same_shape(names: tuple[str, str], a, b) -> None:
    """Elementwise binary ops do not broadcast silently: shapes must be equal."""
    sa, sb = np.shape(a), np.shape(b)
    if sa != sb:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {sa} and {sb}")


def eps_like(name: str, eps, x) -> np.ndarray:
    """An error bound for ``x``: a nonnegative float64 array broadcastable to ``x``'s shape.

    Each entry is at least the exact value given: one that is not a binary64 value (an
    integer beyond 2^53, a longdouble, a rational) is rounded **up** (``exact_up``), never to
    nearest, which could make the bound smaller than the error it bounds. ``+inf`` is a
    (vacuous) bound; NaN, negative entries (tested exactly: ``−2^−2000`` is negative though
    it rounds up to ``−0``) and what is not real numbers are refused.
    """
    e = exact_values(name, eps)
    with np.errstate(invalid="ignore"):
        negative = np.vectorize(lambda v: v < 0, otypes=[bool])(e) if e.dtype == object else e < 0
    if e.dtype == object:
        e = exact_array_up(e)
    if np.any(np.isnan(e)) or np.any(negative):
        raise ValueError(f"{name} must be nonnegative (an error bound), got negative or NaN entries")
    try:
        return np.broadcast_to(e, np.shape(x))
    except ValueError:
        raise ValueError(f"{name} has shape {e.shape}, not broadcastable to {np.shape(x)}") from None
