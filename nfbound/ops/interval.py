"""Spec values: rigorous enclosures of tensors of reals.

An :class:`Interval` holds two object arrays of exact rationals (``gmpy2.mpq``) with
``lo ≤ x ≤ hi`` elementwise. Linear operations on exact inputs stay exact (``lo is hi``);
transcendental functions produce true enclosures whose endpoints come from MPFR with directed
rounding. Arithmetic on intervals is exact rational interval arithmetic, so every enclosure is
rigorous by construction (mpmath's ``mpi`` discipline, without rounding the endpoints).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from gmpy2 import mpq

_to_mpq = np.frompyfunc(lambda v: mpq(v), 1, 1)
_to_float = np.frompyfunc(float, 1, 1)


def exact_array(x) -> np.ndarray:
    """``x`` (float64 array, ints, or object array of rationals) as an object array of ``mpq``.

    float64 values are dyadic rationals, converted exactly. Raises ``ValueError`` on NaN/inf.
    """
    a = np.asarray(x)
    if a.dtype != object:
        a = np.asarray(a, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError("spec inputs must be finite (got NaN or inf)")
        return np.asarray(_to_mpq(a), dtype=object).reshape(a.shape)
    out = _to_mpq(a)
    out = np.asarray(out, dtype=object).reshape(a.shape)
    for v in out.reshape(-1):
        if not isinstance(v, type(mpq(0))):
            raise ValueError(f"spec inputs must be finite rationals (got {v!r})")
    return out


@dataclass(frozen=True, eq=False)
class Interval:
    """An enclosure ``lo ≤ x ≤ hi`` of a tensor of reals (object arrays of ``mpq``).

    The endpoints are always arrays, also for a 0-d tensor: NumPy returns a bare scalar from
    arithmetic on 0-d object arrays, so an endpoint that is not an ``ndarray`` is wrapped in
    one (the same array for both endpoints when they are the same object: ``lo is hi`` marks
    an exact interval)."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.lo, np.ndarray) and isinstance(self.hi, np.ndarray):
            return
        lo = _as_array(self.lo)
        hi = lo if self.hi is self.lo else _as_array(self.hi)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @classmethod
    def exact(cls, x) -> "Interval":
        """The exact tensor ``x`` (float64 values are taken as the rationals they denote)."""
        if isinstance(x, Interval):
            return x
        a = exact_array(x)
        return cls(a, a)

    @classmethod
    def between(cls, lo, hi) -> "Interval":
        lo, hi = exact_array(lo), exact_array(hi)
        if lo.shape != hi.shape:
            raise ValueError(f"interval endpoints differ in shape: {lo.shape} vs {hi.shape}")
        return cls(lo, hi)

    @property
    def is_exact(self) -> bool:
        return self.lo is self.hi or bool(np.all(self.lo == self.hi))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.lo.shape

    @property
    def mid(self) -> np.ndarray:
        return self.lo if self.lo is self.hi else _as_array((self.lo + self.hi) / 2)

    @property
    def rad(self) -> np.ndarray:
        """Half-width (exact, object array); zeros for an exact interval."""
        return _as_array((self.hi - self.lo) / 2)

    def __getitem__(self, idx) -> "Interval":
        if self.lo is self.hi:
            v = self.lo[idx]
            return Interval(v, v)
        return Interval(self.lo[idx], self.hi[idx])

    def map_exact(self, f) -> "Interval":
        """Apply a structural (index-only) map such as reshape/transpose to both endpoints."""
        if self.lo is self.hi:
            v = f(self.lo)
            return Interval(v, v)
        return Interval(f(self.lo), f(self.hi))

    # -- arithmetic (exact rational interval arithmetic) -----------------------------------
    def __neg__(self) -> "Interval":
        if self.lo is self.hi:
            v = -self.lo
            return Interval(v, v)
        return Interval(-self.hi, -self.lo)

    def __add__(self, other) -> "Interval":
        o = _coerce(other)
        if self.lo is self.hi and o.lo is o.hi:
            v = self.lo + o.lo
            return Interval(v, v)
        return Interval(self.lo + o.lo, self.hi + o.hi)

    __radd__ = __add__

    def __sub__(self, other) -> "Interval":
        return self + (-_coerce(other))

    def __rsub__(self, other) -> "Interval":
        return _coerce(other) + (-self)

    def __mul__(self, other) -> "Interval":
        o = _coerce(other)
        if self.lo is self.hi and o.lo is o.hi:
            v = self.lo * o.lo
            return Interval(v, v)
        products = [self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi]
        return Interval(_elementwise(min, products), _elementwise(max, products))

    __rmul__ = __mul__

    def reciprocal(self) -> "Interval":
        """``1/x``; raises ``ValueError`` if an enclosure contains 0."""
        if np.any((self.lo <= 0) & (self.hi >= 0)):
            raise ValueError("division by an interval containing 0")
        if self.lo is self.hi:
            v = 1 / self.lo
            return Interval(v, v)
        return Interval(1 / self.hi, 1 / self.lo)

    def __truediv__(self, other) -> "Interval":
        return self * _coerce(other).reciprocal()

    def abs(self) -> "Interval":
        if self.lo is self.hi:
            v = abs(self.lo)
            return Interval(v, v)
        lo = np.where((self.lo <= 0) & (self.hi >= 0), mpq(0),
                      np.minimum(abs(self.lo), abs(self.hi)))
        return Interval(np.asarray(lo, dtype=object), np.maximum(abs(self.lo), abs(self.hi)))

    def maximum(self, other) -> "Interval":
        """Elementwise ``max(x, y)`` (monotone in both arguments)."""
        o = _coerce(other)
        lo = _elementwise(max, [self.lo, o.lo])
        if self.lo is self.hi and o.lo is o.hi:
            return Interval(lo, lo)
        return Interval(lo, _elementwise(max, [self.hi, o.hi]))

    def monotone(self, f_lo, f_hi, increasing: bool = True) -> "Interval":
        """Image under a monotone function given lower/upper enclosing maps of endpoints."""
        if increasing:
            return Interval(f_lo(self.lo), f_hi(self.hi))
        return Interval(f_lo(self.hi), f_hi(self.lo))

    # -- comparison with runtime values ----------------------------------------------------
    def distance(self, runtime) -> np.ndarray:
        """``max(|lo − r|, |hi − r|)`` exactly: the largest ``|x − r|`` over the enclosure
        (object array of ``mpq``; ``inf``/``nan`` where the runtime value is not finite)."""
        r = np.asarray(runtime)
        out = np.empty(self.shape, dtype=object)
        lo, hi = self.lo.reshape(-1), self.hi.reshape(-1)
        rf, of = r.reshape(-1), out.reshape(-1)
        for i in range(of.size):
            v = rf[i]
            if isinstance(v, float) or isinstance(v, np.floating):
                if not math.isfinite(v):
                    of[i] = math.inf
                    continue
            v = mpq(int(v)) if isinstance(v, np.integer) else mpq(v)
            of[i] = max(abs(lo[i] - v), abs(hi[i] - v))
        return out

    def encloses(self, runtime, eps) -> np.ndarray:
        """Elementwise ``|x − r| ≤ ε`` for every real ``x`` of the enclosure (exact test)."""
        d = self.distance(runtime).reshape(-1)
        e = np.broadcast_to(np.asarray(eps, dtype=np.float64), self.shape).reshape(-1)
        out = np.empty(d.size, dtype=bool)
        for i in range(d.size):
            if e[i] == math.inf:        # an infinite bound holds vacuously (it is flagged elsewhere)
                out[i] = True
            elif math.isnan(e[i]) or d[i] == math.inf:
                out[i] = False
            else:
                out[i] = d[i] <= mpq(e[i])
        return out.reshape(self.shape)

    def to_float(self) -> np.ndarray:
        """The midpoint as float64 (rounded to nearest), for display and comparisons."""
        return np.asarray(_to_float(self.mid), dtype=np.float64).reshape(self.shape)


def _as_array(v) -> np.ndarray:
    """An endpoint as an ``ndarray`` (a bare scalar becomes a 0-d object array)."""
    return v if isinstance(v, np.ndarray) else np.asarray(v, dtype=object)


def _coerce(x) -> Interval:
    return x if isinstance(x, Interval) else Interval.exact(x)


def _elementwise(f, arrays: list[np.ndarray]) -> np.ndarray:
    arrays = np.broadcast_arrays(*arrays)
    out = np.empty(arrays[0].shape, dtype=object)
    flats = [a.reshape(-1) for a in arrays]
    fo = out.reshape(-1)
    for i in range(fo.size):
        fo[i] = f(fl[i] for fl in flats)
    return out
