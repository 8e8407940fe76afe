"""Upward-rounded bound arithmetic on nonnegative float64 arrays.

Every bound is a nonnegative real computed in binary64. Each operation here returns a float64
that is **at least** the exact result: the round-to-nearest result is pushed one binary64 step
up with ``nextafter(·, +inf)``. Round-to-nearest errs by at most half a step (also in the
subnormal range, where the step is ``2^−1074``), so one step up is always an upper bound.
Overflow gives ``+inf``, which is a (vacuous) upper bound, never a wrong one.

Reductions (:func:`sum_up`) accumulate sequentially with a step up after every addition, so
the result is an upper bound of the exact sum whatever NumPy would have done.
"""
from __future__ import annotations

import math

import numpy as np
from gmpy2 import mpq

_INF = np.float64(np.inf)
_DBL_MAX = float(np.finfo(np.float64).max)


def up(x) -> np.ndarray:
    """One binary64 step toward +inf: an upper bound of any real that ``x`` is the RN of."""
    return np.nextafter(np.asarray(x, dtype=np.float64), _INF)


def add_up(*terms) -> np.ndarray:
    """Upper bound of ``Σ terms`` (nonnegative arrays, broadcast), one step up per addition."""
    acc = np.asarray(terms[0], dtype=np.float64)
    for t in terms[1:]:
        acc = _add_step(acc, np.asarray(t, dtype=np.float64))
    return acc


def _add_step(acc: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``acc + t`` rounded up; adding an exact 0 is exact and takes no step."""
    with np.errstate(over="ignore"):
        return np.where(t == 0, acc, np.where(acc == 0, t, up(acc + t)))


def mul_up(a, b) -> np.ndarray:
    """Upper bound of ``a · b`` for nonnegative ``a``, ``b`` (``0 · inf`` is taken as 0:
    a zero factor is an exact zero, so the product is exactly 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = up(a * b)
    return np.where((a == 0) | (b == 0), 0.0, p)


def div_up(a, b) -> np.ndarray:
    """Upper bound of ``a / b`` for ``a ≥ 0``, ``b > 0`` (``inf`` where ``b ≤ 0``)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = up(a / b)
    return np.where(b > 0, np.where(a == 0, 0.0, q), _INF)


def sum_up(x, axis=None) -> np.ndarray:
    """Upper bound of the exact sum of nonnegative ``x`` along ``axis`` (sequential, one step
    up per addition)."""
    a = np.asarray(x, dtype=np.float64)
    if axis is None:
        a = a.reshape(-1)
        axis = 0
    a = np.moveaxis(a, axis, 0)
    if a.shape[0] == 0:
        return np.zeros(a.shape[1:])
    acc = a[0].copy()
    for k in range(1, a.shape[0]):
        acc = _add_step(acc, a[k])
    return acc


def exact_up(q) -> float:
    """The smallest float64 ``≥`` the exact rational ``q``: ``inf`` above binary64's range,
    ``−DBL_MAX`` below it (so ``−exact_up(−q)`` is a lower bound of ``q`` for every ``q``, e.g.
    decimal64 values up to ``10^385``). A float ``q`` (±inf after an overflow) is returned as
    is."""
    if isinstance(q, float):
        return q
    q = mpq(q)
    try:
        f = float(q)
    except OverflowError:
        f = math.inf if q > 0 else -math.inf
    if math.isinf(f):
        return f if f > 0 else -_DBL_MAX
    if mpq(f) >= q:
        return f
    with np.errstate(over="ignore"):
        return float(np.nextafter(f, math.inf))


def exact_array_up(x) -> np.ndarray:
    """Elementwise :func:`exact_up` of an object array of rationals (``inf`` stays ``inf``)."""
    a = np.asarray(x, dtype=object)
    return np.array([exact_up(v) for v in a.reshape(-1)], dtype=np.float64).reshape(a.shape)


def abs_up(x) -> np.ndarray:
    """``|x|`` of runtime values as float64 rounded upward (exact for binary64 values; object
    arrays of rationals through :func:`exact_up`)."""
    a = np.asarray(x)
    if a.dtype == object:
        return exact_array_up(np.vectorize(abs, otypes=[object])(a))
    return np.abs(a.astype(np.float64, copy=False))


def exp_up(x) -> np.ndarray:
    """Upper bound of ``e^x``: NumPy's ``exp`` is within a few binary64 ulps; four steps up
    cover an error of up to 4 ulps (libm ``exp`` is documented below 1 ulp)."""
    with np.errstate(over="ignore"):
        y = np.exp(np.asarray(x, dtype=np.float64))
    for _ in range(4):
        y = up(y)
    return y


def expm1_up(x) -> np.ndarray:
    """Upper bound of ``e^x − 1`` for ``x ≥ 0`` (four steps up over NumPy's ``expm1``)."""
    with np.errstate(over="ignore"):
        y = np.expm1(np.asarray(x, dtype=np.float64))
    for _ in range(4):
        y = up(y)
    return y
