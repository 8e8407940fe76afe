"""Exponent functions of generic formats (Flocq's ``fexp``).

A format with radix β and exponent function ``fexp`` represents the reals
``x = m · β^cexp(x)`` with ``m`` an integer and ``cexp(x) = fexp(mag(x))``, where
``mag(x) = e`` iff ``β^(e−1) ≤ |x| < β^e`` (Flocq ``Generic_fmt``).

Flocq's ``Valid_exp`` is what makes rounding well defined: for every integer ``k``,
  (1) if ``fexp(k) < k`` then ``fexp(k + 1) ≤ k``;
  (2) if ``k ≤ fexp(k)`` then ``fexp(fexp(k) + 1) ≤ fexp(k)`` and
      ``fexp(l) = fexp(k)`` for every ``l ≤ fexp(k)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: Window of exponents over which a user-supplied exponent function is checked.
VALID_EXP_WINDOW = range(-1200, 1201)


@dataclass(frozen=True)
class ExponentFunction:
    """An exponent function ``fexp: ℤ → ℤ``.

    ``precision`` is ``p`` for FLX/FLT (``fexp(e) = e − p`` in the normal range) and ``None``
    for fixed point; ``emin`` is the smallest canonical exponent (``None`` for FLX, whose
    exponents are unbounded below).
    """

    kind: str
    precision: int | None
    emin: int | None
    func: Callable[[int], int] | None = None

    def __call__(self, e: int) -> int:
        if self.kind == "FLX":
            return e - self.precision
        if self.kind == "FLT":
            return max(e - self.precision, self.emin)
        if self.kind == "FIX":
            return self.emin
        return int(self.func(e))

    def __str__(self) -> str:
        if self.kind == "FLX":
            return f"FLX(p={self.precision})"
        if self.kind == "FLT":
            return f"FLT(p={self.precision}, emin={self.emin})"
        if self.kind == "FIX":
            return f"FIX(emin={self.emin})"
        return f"custom({self.func!r})"


def FLX(p: int) -> ExponentFunction:
    """Floating point with precision ``p`` and unbounded exponents: ``fexp(e) = e − p``."""
    _check_int("precision", p, minimum=1)
    return ExponentFunction("FLX", int(p), None)


def FLT(p: int, emin: int) -> ExponentFunction:
    """IEEE-style floating point with gradual underflow: ``fexp(e) = max(e − p, emin)``.

    ``β^emin`` is the smallest positive representable value (the smallest subnormal).
    """
    _check_int("precision", p, minimum=1)
    _check_int("emin", emin)
    return ExponentFunction("FLT", int(p), int(emin))


def FIX(emin: int) -> ExponentFunction:
    """Fixed point with quantum ``β^emin``: ``fexp(e) = emin``."""
    _check_int("emin", emin)
    return ExponentFunction("FIX", None, int(emin))


def custom(func: Callable[[int], int], *, precision: int | None = None,
           window: range = VALID_EXP_WINDOW) -> ExponentFunction:
    """A user-supplied exponent function, checked against Flocq's ``Valid_exp`` on ``window``.

    ``precision`` (optional) is the number of digits in the normal range, used for ``u``;
    ``emin`` is read off as ``min fexp`` over the window. Raises ``ValueError`` naming the
    violated condition and the exponent where it fails.
    """
    values = {k: int(func(k)) for k in window}
    lo, hi = window.start, window.stop - 1
    for k in window:
        f = values[k]
        if f < k:
            if k + 1 <= hi and values[k + 1] > k:
                raise ValueError(
                    f"fexp is not a valid exponent function: Valid_exp (1) fails at k={k}: "
                    f"fexp(k)={f} < k but fexp(k+1)={values[k + 1]} > k")
        else:
            if lo <= f + 1 <= hi and values[f + 1] > f:
                raise ValueError(
                    f"fexp is not a valid exponent function: Valid_exp (2) fails at k={k}: "
                    f"fexp(fexp(k)+1)={values[f + 1]} > fexp(k)={f}")
            for l in range(lo, min(f, hi) + 1):
                if values[l] != f:
                    raise ValueError(
                        f"fexp is not a valid exponent function: Valid_exp (2) fails at k={k}: "
                        f"fexp({l})={values[l]} differs from fexp(k)={f} although {l} ≤ fexp(k)")
    if precision is not None:
        _check_int("precision", precision, minimum=1)
    return ExponentFunction("custom", precision, min(values.values()), func)


def _check_int(name: str, value: object, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
