"""Exponent functions of generic formats (Flocq's ``fexp``).

A format with radix β and exponent function ``fexp`` represents the reals
``x = m · β^cexp(x)`` with ``m`` an integer and ``cexp(x) = fexp(mag(x))``, where
``mag(x) = e`` iff ``β^(e−1) ≤ |x| < β^e`` (Flocq ``Generic_fmt``).

Flocq's ``Valid_exp`` is what makes rounding well defined: for every integer ``k``,
  (1) if ``fexp(k) < k`` then ``fexp(k + 1) ≤ k``;
  (2) if ``k ≤ fexp(k)`` then ``fexp(fexp(k) + 1) ≤ fexp(k)`` and
      ``fexp(l) = fexp(k)`` for every ``l ≤ fexp(k)``.

A user-supplied exponent function can only be checked on finitely many exponents: it is
checked on a window (:data:`VALID_EXP_WINDOW` by default) and is *defined* only there —
asking for ``fexp(e)`` with ``e`` outside the window raises ``ValueError`` instead of trusting
an unchecked value.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable

#: Default window of exponents on which a user-supplied exponent function is checked against
#: ``Valid_exp`` (and outside which it is not evaluated). It covers ``mag`` of every binary64
#: value (−1073 … 1024) with room for the neighbours the conditions look at.
VALID_EXP_WINDOW = range(-1200, 1201)


@dataclass(frozen=True)
class ExponentFunction:
    """An exponent function ``fexp: ℤ → ℤ``.

    ``precision`` is ``p`` for FLX/FLT (``fexp(e) = e − p`` in the normal range) and ``None``
    for fixed point; ``emin`` is the exponent of the smallest positive value ``β^emin`` (the
    smallest canonical exponent; ``None`` for FLX, whose exponents are unbounded below).
    A ``custom`` function is evaluated from the table of its values on ``window``, the
    exponents where it was checked; outside them calling it raises ``ValueError``.

    ``monotone`` tells whether ``fexp`` is nondecreasing (Flocq ``Monotone_exp``; true for
    FLX, FLT and FIX, checked on the window for a custom function). ``Valid_exp`` does not
    imply it, and facts such as ``ulp(z) ≤ ulp(RN z)`` or Sterbenz's lemma need it.
    """

    kind: str
    precision: int | None
    emin: int | None
    func: Callable[[int], int] | None = None
    window: range | None = None
    table: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    monotone: bool = True

    def __call__(self, e: int) -> int:
        if self.kind == "FLX":
            return e - self.precision
        if self.kind == "FLT":
            return max(e - self.precision, self.emin)
        if self.kind == "FIX":
            return self.emin
        if e not in self.window:
            raise ValueError(
                f"exponent {e} is outside the window [{self.window.start}, {self.window.stop - 1}] "
                f"on which the custom exponent function was checked; pass a wider window= to custom()")
        return self.table[e - self.window.start]

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

    ``func`` must map every integer of ``window`` (a ``range`` with step 1 and at least two
    exponents) to an integer (``numbers.Integral``; anything else, e.g. ``2.5`` or ``2.0``, is
    rejected rather than truncated). The conditions are checked for every ``k`` of the window,
    as far as the exponents they mention lie in it; the function is then used only on the
    window (see :class:`ExponentFunction`).

    ``precision`` (optional) is a number of digits ``p`` that every binade above the
    underflow range has at least: ``fexp(k) ≤ max(k − p, emin)`` for every ``k`` of the window
    (checked). It is what the relative error model ``RN(z) = z(1 + δ) + θ``,
    ``|δ| ≤ u = β^(1−p)/2``, ``|θ| ≤ η`` needs (in binade ``k`` the error is at most
    ``β^fexp(k)/2``, which is ``≤ u·|z|`` when ``fexp(k) ≤ k − p`` and ``≤ η`` when
    ``fexp(k) ≤ emin``), so a ``precision`` larger than some binade's digits is refused.
    ``emin`` is the exponent of the smallest positive value: by ``Valid_exp`` (2) the set
    ``{k : k ≤ fexp(k)}`` is closed downwards and ``fexp`` is constant on it, so when the
    window's first exponent ``lo`` has ``lo ≤ fexp(lo)``, ``emin = fexp(lo)`` (the smallest
    positive value is ``β^emin``). Otherwise (``fexp(k) < k`` on the whole window, an FLX-like
    function) the format has no smallest positive value within the window and ``emin`` is
    ``None``, as for FLX.

    Raises ``ValueError`` for a non-callable ``func``, a bad ``window`` or ``precision``, a
    non-integer value, or a violated condition (naming it and the exponent where it fails).
    """
    if not callable(func):
        raise ValueError(f"func must be a callable exponent function int -> int, got {func!r}")
    if not isinstance(window, range) or window.step != 1 or len(window) < 2:
        raise ValueError(f"window must be a range of at least two consecutive exponents, got {window!r}")
    if precision is not None:
        _check_int("precision", precision, minimum=1)
        precision = int(precision)
    lo, hi = window.start, window.stop - 1
    values: dict[int, int] = {}
    for k in window:
        v = func(k)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"fexp must return integers: fexp({k}) = {v!r}")
        values[k] = int(v)
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
    emin = values[lo] if lo <= values[lo] else None
    if precision is not None:
        for k in window:
            if values[k] > (k - precision if emin is None else max(k - precision, emin)):
                raise ValueError(
                    f"precision={precision} is more digits than binade {k} has: fexp({k})="
                    f"{values[k]} > max({k} − {precision}, emin); the unit roundoff "
                    f"β^(1−p)/2 would understate its rounding error")
    monotone = all(values[k] <= values[k + 1] for k in range(lo, hi))
    return ExponentFunction("custom", precision, emin, func, window,
                            tuple(values[k] for k in window), monotone)


def _check_int(name: str, value: object, minimum: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer (any
    ``numbers.Integral`` but ``bool``, e.g. ``np.int64``) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
