"""Reference rounding engine: exact, any radix, any valid exponent function.

Values are ``gmpy2.mpq`` rationals; the rounding of a rational ``x`` is computed with integer
arithmetic only (Flocq ``round``): ``RN(x) = rnd(x · β^(−cexp x)) · β^(cexp x)`` where ``rnd``
rounds the scaled mantissa to an integer in the format's mode. Results that overflow the
format are returned as the Python floats ``±inf`` or ``nan`` (or saturate), per the format's
overflow rule. In a flush mode (``Format.subnormals``) a rounded result below the smallest
normal magnitude becomes 0 (:func:`flush_result`) and an operation reads a subnormal operand as
0 (:func:`read_operand`). This engine is slow (microseconds per value) and is the judge of the
fast one.
"""
from __future__ import annotations

import decimal
import math
import numbers
from typing import TYPE_CHECKING

import gmpy2
import numpy as np
from gmpy2 import mpfr, mpq, mpz

if TYPE_CHECKING:
    from .format import Format

Exact = "mpq | float"  # a runtime scalar: an exact rational, or ±inf / nan after overflow
_MPZ, _MPQ, _MPFR = type(mpz(0)), type(mpq(0)), type(mpfr(0))


def mag(x: mpq, radix: int) -> int:
    """``mag(x) = e`` with ``β^(e−1) ≤ |x| < β^e`` (x ≠ 0), by exact comparison."""
    a = abs(x)
    n, d = a.numerator, a.denominator
    e = int(math.floor((gmpy2.bit_length(n) - gmpy2.bit_length(d)) * math.log(2) / math.log(radix))) + 1
    b = mpq(radix)
    while b ** (e - 1) > a:
        e -= 1
    while b ** e <= a:
        e += 1
    return e


def round_scaled(q: int, half_cmp: int, inexact: bool, negative: bool, rounding: str) -> int:
    """Round a nonnegative scaled mantissa ``m`` (with ``q = ⌊m⌋``) to an integer.

    ``half_cmp`` is the sign of ``(m − q) − 1/2``; ``inexact`` tells ``m ≠ q``;
    ``negative`` is the sign of the value being rounded (directed modes depend on it).
    """
    if not inexact:
        return q
    if rounding == "nearest_even":
        return q + 1 if half_cmp > 0 or (half_cmp == 0 and q % 2 == 1) else q
    if rounding == "nearest_away":
        return q + 1 if half_cmp >= 0 else q
    if rounding == "toward_zero":
        return q
    if rounding == "upward":
        return q if negative else q + 1
    if rounding == "downward":
        return q + 1 if negative else q
    raise ValueError(f"unknown rounding mode {rounding!r}")


def round_rational(x: mpq, fmt: "Format") -> Exact:
    """The exact rounding of the rational ``x`` to ``fmt`` (one rounding, then overflow)."""
    if x == 0:
        return mpq(0)
    beta = fmt.radix
    negative = x < 0
    a = abs(x)
    c = fmt.fexp(mag(a, beta))
    scaled = a / mpq(beta) ** c
    q = int(gmpy2.f_div(scaled.numerator, scaled.denominator))
    frac = scaled - q
    m = round_scaled(q, _sign(frac - mpq(1, 2)), frac != 0, negative, fmt.rounding)
    return fmt_overflow(flush_result(mpq(m) * mpq(beta) ** c, fmt), negative, fmt)


def round_sqrt(x: mpq, fmt: "Format") -> Exact:
    """The exact rounding of ``√x`` (x ≥ 0 rational) to ``fmt``; ``nan`` for x < 0.

    With ``c = cexp(√x)`` and ``s = x · β^(−2c)``: ``⌊√s⌋ = isqrt(⌊s⌋)``, and
    ``√s`` vs ``q + 1/2`` is decided by ``s`` vs ``(q + 1/2)²``, all exactly.
    """
    if x < 0:
        return math.nan
    if x == 0:
        return mpq(0)
    beta = fmt.radix
    b = mpq(beta)
    # mag(√x) = e  iff  β^(2e−2) ≤ x < β^(2e)
    e = (mag(x, beta) + 1) // 2
    while b ** (2 * e - 2) > x:
        e -= 1
    while b ** (2 * e) <= x:
        e += 1
    c = fmt.fexp(e)
    s = x / b ** (2 * c)
    q = int(gmpy2.isqrt(gmpy2.f_div(s.numerator, s.denominator)))
    half = (mpq(q) + mpq(1, 2)) ** 2
    m = round_scaled(q, _sign(s - half), s != q * q, False, fmt.rounding)
    return fmt_overflow(flush_result(mpq(m) * b ** c, fmt), False, fmt)


def is_tiny(v: mpq, fmt: "Format") -> bool:
    """Whether the exact value ``v`` is nonzero with ``|v| < b_min`` (``fmt.smallest_normal``)."""
    return v != 0 and abs(v) < fmt.smallest_normal


def flush_result(r: mpq, fmt: "Format") -> mpq:
    """The gradually rounded magnitude ``r``, flushed to 0 when ``fmt`` flushes results
    (``subnormals`` ftz) and ``0 < r < b_min`` (tininess after rounding to the subnormal grid)."""
    return mpq(0) if fmt.flushes_results and is_tiny(r, fmt) else r


def read_operand(v: Exact, fmt: "Format") -> Exact:
    """An operand as an operation of ``fmt`` reads it: 0 for a nonzero subnormal under DAZ."""
    if fmt.flushes_operands and not isinstance(v, float) and is_tiny(v, fmt):
        return mpq(0)
    return v


def fmt_overflow(r: mpq, negative: bool, fmt: "Format") -> Exact:
    """Apply the format's overflow rule to the magnitude-rounded ``r = |RN(x)|``.

    IEEE 754 §7.4: overflow iff the result rounded with unbounded exponent exceeds the largest
    finite value; nearest modes give ±inf, directed modes give ±max or ±inf by direction.
    """
    M = fmt.max_finite_exact
    if M is None or r <= M:
        return -r if negative else r
    rule = fmt.overflow
    if rule == "saturate":
        out: Exact = M
    elif rule == "nan":
        return math.nan
    elif rule == "ieee":
        toward_max = (fmt.rounding == "toward_zero"
                      or (fmt.rounding == "upward" and negative)
                      or (fmt.rounding == "downward" and not negative))
        out = M if toward_max else math.inf
    else:  # "none": no overflow threshold
        out = r
    return -out if negative else out


def _sign(q: mpq) -> int:
    return (q > 0) - (q < 0)


def to_exact(x: object) -> Exact:
    """The exact value of a real number as an ``mpq``; ``±inf``/``nan`` as Python floats.

    Accepts Python and NumPy ints and floats (``np.longdouble`` and ml_dtypes' bfloat16/fp8
    scalars too), ``gmpy2`` ``mpz``/``mpq``/``mpfr``, any ``numbers.Rational``
    (``fractions.Fraction``), ``decimal.Decimal`` and decimal or ``n/d`` strings (and 0-d
    arrays of these), each converted without rounding.
    Raises ``ValueError`` for anything else (complex numbers, datetime64, timedelta64, …).
    """
    if isinstance(x, (float, np.floating)):
        # np.isfinite: a finite np.longdouble may lie beyond binary64's range
        return mpq(*x.as_integer_ratio()) if np.isfinite(x) else float(x)
    if isinstance(x, (int, np.integer, np.bool_)) and not isinstance(x, np.timedelta64):
        return mpq(int(x))   # (NumPy makes timedelta64 an integer type: a duration is no number)
    if isinstance(x, (_MPZ, _MPQ)):
        return mpq(x)
    if isinstance(x, _MPFR):
        return mpq(x) if gmpy2.is_finite(x) else float(x)
    if isinstance(x, decimal.Decimal):
        return mpq(x) if x.is_finite() else float(x)
    if isinstance(x, numbers.Rational):
        return mpq(int(x.numerator), int(x.denominator))
    if isinstance(x, (str, np.str_)):
        try:
            return mpq(str(x).strip())
        except ValueError:
            f = float(x)          # "inf", "-inf", "nan"; a malformed string raises ValueError
            if math.isfinite(f):
                raise ValueError(f"cannot read {x!r} as an exact number") from None
            return f
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return to_exact(x[()])
    if isinstance(x, np.generic) and np.can_cast(x.dtype, np.float64):
        return to_exact(x.astype(np.float64))   # ml_dtypes' reals (bfloat16, fp8): exact widening
    raise ValueError(f"expected a real number, got {x!r} of type {type(x).__name__}")


def apply(op: str, fmt: "Format", a: Exact, b: Exact | None = None) -> Exact:
    """One elementary operation on runtime values, rounded once: ``RN(a op b)``.

    Non-finite operands follow IEEE 754 (computed in binary64, whose special-value rules are
    the same); finite operands are read (:func:`read_operand`: DAZ), combined exactly and
    rounded by :func:`round_rational`.
    """
    a = read_operand(a, fmt)
    b = None if b is None else read_operand(b, fmt)
    if not _finite(a) or (b is not None and not _finite(b)):
        fa, fb = _proxy(a), (None if b is None else _proxy(b))
        with _np_quiet():
            r = {"add": lambda: np.float64(fa) + fb, "sub": lambda: np.float64(fa) - fb,
                 "mul": lambda: np.float64(fa) * fb, "div": lambda: np.float64(fa) / fb,
                 "sqrt": lambda: np.sqrt(np.float64(fa))}[op]()
        return float(r) if not math.isfinite(r) else mpq(0) if r == 0 else mpq(float(r))
    if op == "add":
        return round_rational(a + b, fmt)
    if op == "sub":
        return round_rational(a - b, fmt)
    if op == "mul":
        return round_rational(a * b, fmt)
    if op == "div":
        if b == 0:
            return math.nan if a == 0 else (math.inf if a > 0 else -math.inf)
        return round_rational(a / b, fmt)
    if op == "sqrt":
        return round_sqrt(a, fmt)
    raise ValueError(f"unknown elementary operation {op!r}")


def _proxy(v: Exact) -> float:
    """A binary64 stand-in with the same IEEE special-value behaviour: the value itself when
    non-finite, else its sign (only zero-ness and sign matter next to an inf or nan)."""
    if isinstance(v, float):
        return v
    return float((v > 0) - (v < 0))


def _finite(v: Exact) -> bool:
    return not (isinstance(v, float) and not math.isfinite(v))


class _np_quiet:
    def __enter__(self):
        self._old = np.seterr(all="ignore")

    def __exit__(self, *exc):
        np.seterr(**self._old)
