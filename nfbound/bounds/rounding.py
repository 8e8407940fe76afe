"""The local rounding term of one elementary operation.

For an operation whose exact result on runtime operands is ``z`` and whose runtime result is
``ẑ = round(z)``:

* nearest modes: ``|ẑ − z| ≤ ulp(z)/2`` (Flocq ``error_le_half_ulp``, any valid ``fexp``);
* directed modes: ``|ẑ − z| < ulp(z)``;

and ``ulp(z)`` is bounded from ``ẑ`` alone: rounding maps the binade ``β^(e−1) ≤ |z| < β^e``
into itself or onto its upper end ``β^e`` (the rounding of ``z`` in its binade's grid lies
between two neighbours of that grid, and ``β^(e−1)``, ``β^e`` are on it). So ``z`` lies in
``ẑ``'s binade, where ``ulp(z) = ulp(ẑ)``, or — only when ``|ẑ| = β^j`` is a power of β — in
the binade below, where ``ulp(z) = β^fexp(j)``; and ``ẑ = 0`` comes only from the underflow
binades, where ``ulp(z) = β^emin = ulp(0)`` (``η = β^emin/2``). For a monotone ``fexp``
(FLX, FLT, FIX: Flocq ``Monotone_exp``) ``β^fexp(j) ≤ ulp(β^j)`` and the term is ``ulp(ẑ)/2``
(nearest) or ``ulp(ẑ)``; a custom exponent function that is valid but not monotone (e.g.
``e − 3`` for odd ``e``, ``e − 5`` for even) also gets the binade below at powers of β;
* flush modes (``fmt.subnormals`` not ``"gradual"``): a result ``|ẑ| < b_min`` (zero or a
  subnormal) charges ``fmt.underflow_term = b_min``. FTZ: ``ẑ = 0`` may stand for any exact
  ``|z| < b_min`` (in every tininess convention), not only ``|z| ≤ η``; DAZ: a subnormal ``ẑ``
  is read as 0 by the operation that consumes it, and ``b_min`` bounds both ``|ẑ − z|`` and
  ``|0 − z|`` (see ``Format.underflow_term_exact``). In gradual underflow the same rule reads
  ``ulp/2 = η`` (or ``ulp``) there, so ``fmt.underflow_term`` is the term below ``b_min`` in
  every mode;
* overflow: ``ẑ = ±inf`` or NaN charges ``inf``; so does a saturated ``|ẑ| = max_finite``
  (saturation, or IEEE directed rounding toward the largest finite), since ``z`` may be
  arbitrarily large.

The term is computed from ``ẑ`` alone, so no exact ``z`` is needed; where the caller knows the
operation was exact (an operand 0, …) it passes ``exact`` and the term is 0. (In the flush
modes ``0 + x̂`` with a subnormal ``x̂`` rounds to 0 although flagged exact: its error ``|x̂|``
is carried by ``x̂``'s own bound — a subnormal result charged ``b_min`` here, a subnormal input
charged ``|x̂|`` by ``Primitive``.)

:func:`guard_nonfinite` states the same overflow fact for a rule's *output*: whatever the rule
composed (a zero factor times an overflowed intermediate is NaN while its rounding term is 0
and ``mul_up(0, inf) = 0``), a runtime value that may have overflowed gets the bound ``inf``.
"""
from __future__ import annotations

import math

import numpy as np

from gmpy2 import mpq

from ..formats import Format, reference
from .upward import exact_array_up


def rounding_term(fmt: Format, out, exact=None) -> np.ndarray:
    """Elementwise upper bound (float64) of ``|out − z|`` where ``out = round(z)`` in ``fmt``."""
    a = np.asarray(out)
    finite = ~_not_finite(a)
    if fmt.fits_binary64 and a.dtype != object:
        a = a.astype(np.float64, copy=False)
        h = np.where(finite, _from_binary64_ulp(fmt, fmt.ulp(np.where(finite, a, 0.0))), np.inf)
    else:
        flat = a.reshape(-1)
        safe = np.array([v if f else 0 for v, f in zip(flat, finite.reshape(-1))], dtype=object)
        ulp = np.asarray(fmt.ulp(safe))
        if not fmt.fexp.monotone:
            ulp = np.maximum(ulp, _ulp_below_powers(fmt, safe))
        if ulp.dtype == object:
            h = exact_array_up(ulp / 2 if fmt.is_nearest else ulp)
        else:   # a format fitting binary64 given exact (object) values: float64 ulps
            h = _from_binary64_ulp(fmt, ulp)
        h = np.where(finite.reshape(-1), h, np.inf).reshape(a.shape)
        if fmt.fexp.kind == "FLX":   # no underflow: only an exact 0 rounds to 0
            h = np.where(np.vectorize(lambda v: v == 0, otypes=[bool])(a), 0.0, h)
    if fmt.subnormals != "gradual":
        h = np.where(_below_normal(fmt, a), fmt.underflow_term, h)
    h = np.where(_saturated(fmt, a), np.inf, h)
    if exact is not None:
        h = np.where(exact, 0.0, h)
    return np.asarray(h, dtype=np.float64)


def _ulp_below_powers(fmt: Format, a: np.ndarray) -> np.ndarray:
    """``β^fexp(j)`` where ``|a| = β^j`` (the ulp of the binade just below), 0 elsewhere
    (exact values, object array)."""
    def one(v):
        q = reference.to_exact(v)
        if q == 0:
            return mpq(0)
        j = reference.mag(q, fmt.radix) - 1
        return mpq(fmt.radix) ** fmt.fexp(j) if abs(q) == mpq(fmt.radix) ** j else mpq(0)
    return np.vectorize(one, otypes=[object])(a)


def _below_normal(fmt: Format, a: np.ndarray) -> np.ndarray:
    """Where ``|a| < b_min``: zeros and nonzero subnormals (never inf or NaN)."""
    zero = a == 0 if a.dtype != object else np.vectorize(lambda v: v == 0, otypes=[bool])(a)
    return zero | fmt.tiny(a)


def overflowed(fmt: Format, out) -> np.ndarray:
    """Where a runtime value of ``fmt`` may be the result of an overflow: ±inf or NaN (in an
    object array, the floats among the exact rationals), or ``±max_finite`` in a format whose
    overflowing roundings give ``±max_finite`` (:func:`_saturates`). There ``|ẑ − z|`` has no
    finite bound: the exact ``z`` may be arbitrarily large."""
    a = np.asarray(out)
    return _not_finite(a) | _saturated(fmt, a)


def guard_nonfinite(fmt: Format, out, bound) -> np.ndarray:
    """``bound`` (float64) with ``inf`` wherever the runtime ``out`` :func:`overflowed` or the
    bound is NaN (computed from an overflowed operand), so that no rule returns a finite bound,
    or a NaN one that would fail silently in comparisons, for a value that overflowed.

    Every rule passes its final ``(runtime, bound)`` through this, and so do the helpers that
    compose rules (``mul_error``, ``div_error``, …, a reduction's result): a bound composed
    from the steps' bounds can be finite where the runtime is not, e.g. ``0·inf = NaN``
    charges no rounding (a zero factor is exact) and propagates ``mul_up(0, inf) = 0``; and
    an exact op passes a saturated ``±max_finite`` on with its input's bound. A single
    rounded addition inside a reduction needs no guard of its own: its rounding term is
    ``inf`` at an overflow, and an addition exact because an operand is 0 passes the other
    operand's value and bound on."""
    b = np.asarray(bound, dtype=np.float64)
    return np.where(overflowed(fmt, out) | np.isnan(b), np.inf, b)


def _not_finite(a: np.ndarray) -> np.ndarray:
    """±inf or NaN entries (object arrays: the floats that are not finite)."""
    if a.dtype == object:
        return np.vectorize(lambda v: isinstance(v, float) and not math.isfinite(v),
                            otypes=[bool])(a).reshape(a.shape)
    return ~np.isfinite(a.astype(np.float64, copy=False))


def _from_binary64_ulp(fmt: Format, ulp: np.ndarray) -> np.ndarray:
    """The term from float64 ulps: ``ulp/2`` (nearest) or ``ulp`` (directed). ``ulp/2`` is
    exact except for ``ulp = 2^−1074`` (binary64's own quantum), where it underflows to 0: the
    smallest float64 above ``2^−1075`` is ``2^−1074`` itself."""
    return np.maximum(ulp * 0.5, np.float64(5e-324)) if fmt.is_nearest else ulp


def _saturated(fmt: Format, a: np.ndarray) -> np.ndarray:
    """Entries at ``±max_finite`` in a format where that may be a saturated overflow."""
    if fmt.max_finite is None or not _saturates(fmt):
        return np.zeros(a.shape, dtype=bool)
    if fmt.fits_binary64 and a.dtype != object:
        return np.abs(a.astype(np.float64, copy=False)) == float(fmt.max_finite)
    return np.vectorize(lambda v: not isinstance(v, float) and abs(v) == fmt.max_finite,
                        otypes=[bool])(a).reshape(a.shape)


def _saturates(fmt: Format) -> bool:
    """Whether an overflowing result can come out as ``±max_finite`` (so ``|ẑ| = max`` does
    not bound ``|z|``)."""
    return fmt.overflow == "saturate" or (fmt.overflow == "ieee" and not fmt.is_nearest)
