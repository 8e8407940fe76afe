"""Rounded accumulation in a stated order, with the replay of its error bound.

A reduction ``Σ_k t_k`` in a format is a sequence of rounded additions; the order is part of
the semantics. For terms ``t̂_k`` (runtime) with ``|t̂_k − t_k| ≤ ε_k`` (spec ``t_k``), each
rounded partial sum ``ŝ = RN(â + b̂)`` satisfies the replay rule (DESIGN.md §4)

    |ŝ − (a + b)| ≤ ε_a + ε_b + r,      r = rounding_term(ŝ)  (0 when â = 0 or b̂ = 0),

so the bound of the whole sum is the same tree of additions over the ε's and the local
rounding terms, evaluated with upward rounding. Orders:

* ``"sequential"`` (default, TorchLean): ``((t_0 + t_1) + t_2) + …`` — ``t_0`` is taken as
  ``0 + t_0``, an exact addition;
* ``"reversed"``: the same from the last term;
* ``"pairwise"``: adjacent pairs level by level (``(t0+t1) + (t2+t3)``, …; an odd last term
  moves up unchanged);
* ``"blocked:B"``: sequential inside consecutive blocks of ``B`` terms, then sequential over the
  block sums.

:func:`order_free_bound` bounds a sum computed in *any* order (any tree, blocking, FMA).

These are helpers of the reduction rules (no primitive here): the terms are runtime values of
the format, computed or checked by the caller. Overflow: a partial sum that overflows (±inf,
NaN or a saturated ±max_finite) has the rounding term ``inf``, so its bound and every bound
built on it are ``inf`` — never a finite wrong number (an addition exact because an operand
is 0 passes the other operand's value and bound on); :func:`accumulate`'s result goes through
``bounds.rounding.guard_nonfinite`` as every rule output does. :func:`order_free_bound`
assumes no rounding overflows; its callers guard it (``reduce.overflow_guard``).
"""
from __future__ import annotations

import numpy as np

from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import add_up, mul_up, up
from ..formats import Format

ORDERS = ("sequential", "reversed", "pairwise", "blocked:B")


def check_order(order: str) -> str:
    """Validate an order name; raises ``ValueError`` naming the valid ones."""
    if order in ("sequential", "reversed", "pairwise"):
        return order
    if isinstance(order, str) and order.startswith("blocked:"):
        try:
            b = int(order.split(":", 1)[1])
        except ValueError:
            b = 0
        if b >= 1:
            return order
    raise ValueError(f"order must be one of {ORDERS} (B a positive integer), got {order!r}")


def rounded_add(fmt: Format, a, ea, b, eb):
    """``RN(a + b)`` and its replay bound ``ε_a + ε_b + r`` (``r = 0`` for an exact add of 0)."""
    s = fmt.add(a, b)
    exact = _is_zero(a) | _is_zero(b)
    return s, add_up(ea, eb, rounding_term(fmt, s, exact))


def accumulate(fmt: Format, terms, eps, order: str = "sequential", axis: int = -1):
    """Reduce ``terms`` along ``axis`` with rounding after every addition, in ``order``.

    Returns ``(sum, bound)``: the runtime sum and an upper bound of ``|sum − Σ t_k|`` where the
    ``t_k`` are the spec terms with ``|t̂_k − t_k| ≤ eps_k`` (``inf`` where the sum
    overflowed). An empty reduction is exactly 0.
    """
    s, b = _accumulate(fmt, terms, eps, order, axis)
    return s, guard_nonfinite(fmt, s, b)


def _accumulate(fmt: Format, terms, eps, order: str, axis: int):
    order = check_order(order)
    t = np.moveaxis(np.asarray(terms), axis, -1)
    e = np.moveaxis(np.broadcast_to(np.asarray(eps, dtype=np.float64), np.asarray(terms).shape), axis, -1)
    n = t.shape[-1]
    zero = np.zeros(t.shape[:-1], dtype=t.dtype)
    if t.dtype == object:
        zero = np.full(t.shape[:-1], 0, dtype=object)
        from gmpy2 import mpq
        zero[...] = mpq(0)
    if n == 0:
        return zero, np.zeros(t.shape[:-1])
    if order == "reversed":
        t, e = t[..., ::-1], e[..., ::-1]
        order = "sequential"
    if order == "sequential":
        return _sequential(fmt, t, e)
    if order == "pairwise":
        parts = [(t[..., k], e[..., k]) for k in range(n)]
        while len(parts) > 1:
            nxt = [rounded_add(fmt, *parts[i], *parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
            if len(parts) % 2:
                nxt.append(parts[-1])
            parts = nxt
        s, b = parts[0]
        return np.asarray(s), np.asarray(b, dtype=np.float64)
    B = int(order.split(":", 1)[1])
    sums, bounds = zip(*(_sequential(fmt, t[..., i:i + B], e[..., i:i + B]) for i in range(0, n, B)))
    return _sequential(fmt, np.stack(sums, axis=-1), np.stack(bounds, axis=-1))


def _sequential(fmt: Format, t: np.ndarray, e: np.ndarray):
    s, b = t[..., 0].copy(), e[..., 0].copy()   # 0 + t_0 is exact
    for k in range(1, t.shape[-1]):
        s, b = rounded_add(fmt, s, b, t[..., k], e[..., k])
    return np.asarray(s), np.asarray(b, dtype=np.float64)


def gamma_up(fmt: Format, n: int) -> float:
    """Upper bound of ``γ_n = (1 + u)^n − 1`` (0 for ``n ≤ 0``), via ``n·u/(1 − n·u)`` when
    ``n·u < 1`` (Higham, Lemma 3.1), else ``inf``."""
    if n <= 0:
        return 0.0
    nu = float(up(n * fmt.u))
    if nu >= 1.0:
        return float("inf")
    return float(up(nu / float(np.nextafter(1.0 - nu, 0.0))))


def order_free_bound(fmt: Format, abs_terms_sum, n: int, eps_sum) -> np.ndarray:
    """Bound of a sum of ``n`` runtime terms computed in *any* order (tree, blocked, FMA).

    ``|fl(Σ t̂) − Σ t| ≤ γ_{n−1}·Σ|t̂| + (n − 1)·η + Σ ε_k``: the first term is TorchLean's
    ``Reductions/Tree`` bound (each of the at most ``n − 1`` additions on the path of a term
    multiplies it by some ``(1 + δ)``, ``|δ| ≤ u``) valid in the normal range; every addition
    may in addition err by ``η`` in the subnormal range (Flocq ``relative_error_N_FLT``:
    ``RN(z) = z(1 + δ) + θ``, ``|θ| ≤ η``); the last term propagates the term errors.
    """
    g = gamma_up(fmt, n - 1)
    return add_up(mul_up(g, abs_terms_sum), mul_up(max(n - 1, 0), fmt.eta), eps_sum)


def _is_zero(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object:
        return np.vectorize(lambda v: v == 0, otypes=[bool])(a)
    return a == 0
