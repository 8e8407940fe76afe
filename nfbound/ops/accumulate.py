"""Rounded accumulation in a stated order, with the replay of its error bound.

A reduction ``Σ_k t_k`` in a format is a sequence of rounded additions; the order is part of
the semantics. For terms ``t̂_k`` (runtime) with ``|t̂_k − t_k| ≤ ε_k`` (spec ``t_k``), each
rounded partial sum ``ŝ = RN(â + b̂)`` satisfies the replay rule (docs/design.md §4)

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

:func:`order_free_bound` bounds a sum computed in *any* order (any tree, blocking, FMA), with
the underflow term of the format's subnormal mode (``Format.underflow_term``).

These are helpers of the reduction rules (no primitive here): the terms are runtime values of
the format, computed or checked by the caller. Overflow: a partial sum that overflows (±inf,
NaN or a saturated ±max_finite) has the rounding term ``inf``, so its bound and every bound
built on it are ``inf`` — never a finite wrong number (an addition exact because an operand
is 0 passes the other operand's value and bound on); :func:`accumulate`'s result goes through
``bounds.rounding.guard_nonfinite`` as every rule output does. :func:`order_free_bound`
assumes no rounding overflows; its callers guard it (:func:`overflow_guard`).
"""
from __future__ import annotations

import numpy as np
from gmpy2 import mpq

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
    ``n·u < 1`` (Higham, Lemma 3.1), else ``inf`` — and in the flush modes already once
    ``n·u > 1/2``, where the quotient exceeds 1: the argument that a flushing bound covers a
    library that does not flush charges a flushed input's ``|x̂|`` once, which covers the
    ``γ·|x̂|·…`` it adds to the non-flushing evaluation only when ``γ ≤ 1``
    (``ops.arithmetic``; docs/design.md §11.9). A bound ``γ·Σ|t|`` with ``γ > 1`` exceeds every
    ``|Σ t|`` it bounds, so little is lost."""
    if n <= 0:
        return 0.0
    nu = float(up(n * fmt.u))
    if nu >= 1.0 or (nu > 0.5 and fmt.subnormals != "gradual"):
        return float("inf")
    return float(up(nu / float(np.nextafter(1.0 - nu, 0.0))))


def gamma(fmt: Format, n: int) -> float:
    """Upper bound of ``γ_n = (1 + u)^n − 1`` for ``fmt`` (0 for fixed point, where rounding
    is purely absolute: ``RN(z) = z + θ``, ``|θ| ≤ η``). Raises for a custom exponent function
    without a declared precision (no relative error model)."""
    if fmt.precision is None:
        if fmt.fexp.kind == "FIX":
            return 0.0
        raise ValueError(f"format {fmt} has no precision: order-free bounds need a unit roundoff")
    return gamma_up(fmt, n)


def order_free_bound(fmt: Format, abs_sum, m: int, eps_sum, *, products: bool):
    """``(bound, Z)`` for a sum of ``m ≥ 1`` leaves evaluated in *any* way.

    The leaves ``ℓ_j`` are runtime format values (``products=False``) or exact products
    ``â_j b̂_j`` of them (``products=True``); ``abs_sum ≥ Σ|ℓ_j|`` and ``eps_sum`` bounds
    ``|Σ ℓ_j − Σ spec_j|`` (``Σ ε_j``, or the propagated ``Σ |â|ε_b + |b̂|ε_a + ε_aε_b``).

    Model. Any binary tree of roundings: each product rounded alone or absorbed by an FMA (one
    rounding of ``â b̂ + s``), partial sums added in any order, blocking, several accumulators
    (``0 + v`` is exact), in ``fmt`` or in a format at least as precise (``u' ≤ u`` and
    underflow term ``τ' ≤ τ``), converted to ``fmt`` at most once at the end. Every rounding
    satisfies ``RN(z) = z(1 + δ) + θ`` with ``|δ| ≤ u`` and ``|θ| ≤ τ = fmt.underflow_term``:

    * gradual underflow, ``τ = η`` (Flocq ``relative_error_N_FLT``); an *addition* then has
      ``θ = 0``: a sum of two values of a format that lies below ``b_min`` is itself a value
      of the format (Hauser), above it the relative model holds. Hauser's argument needs every
      value to be a multiple of ``β^emin``, which a non-monotone custom exponent function can
      break (docs/design.md §11.6): there additions are counted like flush-mode ones;
    * flush modes, ``τ = b_min``: a flushed result is ``0 = z − z`` with ``|z| < b_min`` in every
      tininess convention (``δ = 0``, ``θ = −z``), additions included; a subnormal intermediate
      ``ŝ = RN(z)`` read as 0 by a DAZ operation is ``0 = z − z`` with ``|z| ≤ |ŝ| + η ≤ b_min``,
      a ``θ`` of the rounding that made it.

    Unrolling the tree, ``ŷ = Σ_j ℓ_j Π_{ν ∈ path(j)} (1 + δ_ν) + Σ_ν θ_ν Π_{μ above ν} (1 + δ_μ)``.
    A leaf's path has at most ``L`` roundings — its product rounding or FMA (``products``), at
    most ``m − 1`` additions, the final conversion: ``L = m + 1`` (products) or ``m`` — so
    ``|Π(1 + δ) − 1| ≤ γ_L`` (Higham, Lemma 3.1), and above any rounding at most ``L − 1``
    remain. The roundings that may carry a ``θ`` number at most ``K``: the ``m`` product
    roundings (products), the final conversion, and in the flush modes (or for a non-monotone
    exponent function) the ``m − 1`` additions.
    Hence, with the input errors,

        |ŷ − Σ spec_j| ≤ γ_L·Σ|ℓ_j| + K·τ·(1 + γ_{L−1}) + eps_sum,

    valid when no rounding overflows. ``Z = (1 + γ_L)·Σ|ℓ_j| + K·τ·(1 + γ_{L−1})`` bounds the
    exact operand of every rounding (the same unrolling over a subtree): callers return ``inf``
    where ``Z > max_finite`` (:func:`overflow_guard`). Fixed point: ``γ = 0``. ``γ_L = inf``
    once ``L·u ≥ 1`` (``> 1/2`` in the flush modes, :func:`gamma_up`).
    """
    L = m + 1 if products else m
    exact_additions = fmt.subnormals == "gradual" and fmt.fexp.monotone
    K = (m if products else 0) + 1 + (0 if exact_additions else m - 1)
    g, g1 = gamma(fmt, L), gamma(fmt, L - 1)
    theta = mul_up(float(K), fmt.underflow_term)
    theta = add_up(theta, mul_up(theta, g1))
    S = np.asarray(abs_sum, dtype=np.float64)
    gs = mul_up(g, S)
    return add_up(gs, theta, eps_sum), add_up(S, gs, theta)


def _is_zero(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object:
        return np.vectorize(lambda v: v == 0, otypes=[bool])(a)
    return a == 0


def overflow_guard(fmt: Format, magnitude, bound) -> np.ndarray:
    """``bound`` where ``magnitude ≤ max_finite``, ``inf`` elsewhere.

    ``magnitude`` must bound the exact operand of *every* rounding of the computation; then no
    rounding can overflow (``|z| ≤ max_finite`` rounds to at most ``max_finite`` in every mode,
    ``max_finite`` being representable), which is what the order-free error model assumes.
    Without the guard a saturating format could return a finite, arbitrarily wrong value.
    """
    b = np.asarray(bound, dtype=np.float64)
    if fmt.max_finite is None:
        return b
    return np.where(np.asarray(magnitude) <= _max_finite_down(fmt), b, np.inf)


_DBL_MAX_Q = mpq(np.finfo(np.float64).max)


def _max_finite_down(fmt: Format) -> float:
    """The largest binary64 value ``≤ max_finite``: ``max_finite`` itself when it is one, the
    largest finite binary64 number when ``max_finite`` is beyond binary64's range (decimal64:
    a finite float64 magnitude then never exceeds it, and ``inf`` does)."""
    if fmt.max_finite >= _DBL_MAX_Q:
        return float(np.finfo(np.float64).max)
    mx = float(fmt.max_finite)
    return float(np.nextafter(mx, 0.0)) if mx > fmt.max_finite else mx
