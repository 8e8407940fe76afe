"""``softmax(x, dim=-1)`` in the stable form, with two sound bounds of which the smaller is kept.

Runtime, along ``dim`` (every step rounded to the format, in this order):

    m̂ = max_j x̂_j            (exact)
    d̂_i = RN(x̂_i − m̂)
    ê_i = RN(exp(d̂_i))        (correctly rounded, ``transcendental.rounded``; exp(−∞) = 0)
    ŝ = Σ_i ê_i               (rounded after every addition, in ``order``; default sequential)
    ŷ_i = RN(ê_i / ŝ)

Spec: the mathematical ``y_i = exp(x_i)/Σ_j exp(x_j)``, *unshifted*. For any real ``c``,
multiplying numerator and denominator by ``exp(−c) > 0`` gives
``exp(x_i)/Σ_j exp(x_j) = exp(x_i − c)/Σ_j exp(x_j − c)``: the shift cancels exactly. The spec
enclosure uses ``c = max_j hi_j`` (so every exponent is ``≤ 0``); the bounds compare the runtime
with the spec written with ``c = m̂`` (the runtime maximum, a fixed real), so the runtime's
shift costs no error term at all.

``ŝ ≥ 1`` whenever finite: ``ê`` at the maximum is ``RN(e^0) = 1``, every term is ``≥ 0`` and
rounding is monotone, so each partial sum dominates its operands. Hence
``0 ≤ ê_i ≤ ŝ`` and ``ŷ_i ∈ [0, 1]``, like the spec.

Any order. Every rule takes ``order_free`` (what an ``order=any`` arithmetic passes): the
bounds then hold for *every* evaluation of the sums — ``ŝ`` (any tree, blocking, wider
accumulator) and the VJP's ``⟨ĝ, ŷ⟩`` (products rounded or fused into the additions) — not
only for the runtime's ``order``. The steps after a sum see another evaluation's value, so
they are bounded for every value the sum may take (:func:`stable_exp_sum_error`,
:func:`_softmax_composed`, :func:`_softmax_vjp_free`; ``pool.order_free_sum``,
``pool.any_rounding``). The exponentials are correctly rounded in this model; PyTorch's
binary32 ``exp`` (SLEEF, 1-ulp) is not, and multiplies by ``1/ŝ`` instead of dividing
(``tests/test_order_free_reductions.py`` measures its outputs against the bounds).

Inputs. The runtime, bound and VJP rules take runtime values: ``x`` and the upstream gradient
``g`` (of ``x``'s shape, the output's) must be finite values of the format
(``checks.format_value``; a ``ValueError`` names the argument otherwise). The ``*_last``
helpers, shared with :mod:`~nfbound.ops.loss`, do not re-check.

Overflow and domain errors. A runtime step that overflows (a difference ``x̂_i − m̂`` or the
sum ``ŝ`` reaching ±inf, NaN or a saturated ±max_finite) makes the bound of every affected
output ``inf`` — never a finite wrong number; the range rule ``|ŷ − y| ≤ max(ŷ, 1 − ŷ)``
keeps finite outputs bounded by at most 1. softmax has no domain error: the spec is defined
for every enclosure (huge logits included, see :func:`softmax_last_spec`).
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
from gmpy2 import mpq

from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import abs_up, add_up, div_up, exact_array_up, exp_up, mul_up, sum_up, up
from ..formats import Format
from . import checks
from .accumulate import check_order, overflow_guard
from .elementwise import _abs_down, _sub_down, _zero, div_error, mul_error
from .interval import Interval
from .linalg import _sample_order
from .pool import any_rounding, order_free_sum, sequential_sum
from .primitive import Primitive, register
from .reduce import _check_bool
from .transcendental import exp_error, exp_spec, rounded

#: Spec exponents below this are enclosed by ``[0, e^L]`` (``exp`` is increasing): the rationals
#: stay small (MPFR would otherwise give e^(−10^30) a denominator of 10^30 bits), and
#: ``e^−2000 ≈ 10^−869`` is far below the smallest positive value of every preset (decimal64's
#: ``10^−398``), so the enclosure's width never exceeds a bound's underflow term. A format with
#: a smaller ``β^emin`` would still get a rigorous enclosure, only a wider one than its bounds.
EXP_FLOOR = mpq(-2000)


# =============================================================================================
# Small helpers
# =============================================================================================
def _axis(x, dim) -> int:
    """``dim`` normalised against ``x`` (torch's range ``[−ndim, ndim)``); 0-d inputs refused."""
    nd = np.ndim(x)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise ValueError(f"dim must be an integer, got {dim!r}")
    if nd == 0:
        raise ValueError("softmax needs an input with at least one dimension")
    if not -nd <= dim < nd:
        raise ValueError(f"dim={dim} is out of range for a {nd}-d input")
    return int(dim) % nd


def _finite(a) -> np.ndarray:
    """Elementwise finiteness of runtime values (float64 or objects holding ±inf/NaN floats)."""
    a = np.asarray(a)
    if a.dtype == object:
        return np.vectorize(lambda v: not (isinstance(v, float) and not np.isfinite(v)),
                            otypes=[bool])(a)
    return np.isfinite(a)


def _down(x) -> np.ndarray:
    return np.nextafter(np.asarray(x, dtype=np.float64), -np.inf)


def _exp_down(x) -> np.ndarray:
    """Lower bound ``≥ 0`` of ``e^x`` (NumPy's exp four binary64 steps down, the mirror of
    ``upward.exp_up``)."""
    with np.errstate(over="ignore", under="ignore"):
        y = np.exp(np.asarray(x, dtype=np.float64))
    for _ in range(4):
        y = _down(y)
    return np.maximum(y, 0.0)


def _sum_down(a, axis: int = -1) -> np.ndarray:
    """Lower bound of the sum of nonnegative ``a`` along ``axis`` (one step down per add)."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0)
    acc = a[0].copy()
    for k in range(1, a.shape[0]):
        with np.errstate(invalid="ignore"):
            acc = np.maximum(_down(acc + a[k]), 0.0)
    return acc


def _excluded_max(e: np.ndarray) -> np.ndarray:
    """``max_{j ≠ i} ε_j`` along the last axis (0 for a single entry)."""
    n = e.shape[-1]
    top = np.max(e, axis=-1, keepdims=True)
    arg = np.asarray(np.argmax(e, axis=-1))[..., None]
    if n == 1:
        return np.zeros(e.shape)
    masked = np.where(np.arange(n) == arg, 0.0, e)
    second = np.max(masked, axis=-1, keepdims=True)
    return np.where(np.arange(n) == arg, second, top)


# =============================================================================================
# Runtime pieces (last axis)
# =============================================================================================
def exp_safe(fmt: Format, d):
    """``RN(exp(d̂))`` where ``d̂`` is finite, ``0`` at ``−∞`` (an overflowed difference), NaN at
    NaN (the bound is then ``inf``)."""
    d = np.asarray(d)
    ok = _finite(d)
    if ok.all():
        return np.asarray(rounded("exp", fmt, d))
    out = d.copy()
    if ok.any():
        out[ok] = rounded("exp", fmt, d[ok])
    bad = ~ok
    out[bad] = [0.0 if (v == -np.inf) else np.nan for v in d[bad]]
    return out


def exp_safe_error(fmt: Format, d, ed):
    """``(RN(exp(d̂)), η)`` with ``|ê − e^d| ≤ η`` for every ``|d − d̂| ≤ ε_d``:
    ``η = min(exp_bound, max(ê, e^(d̂ + ε_d)↑))`` where ``d̂`` is finite, ``inf`` elsewhere.

    The second term is the range rule: ``ê`` and ``e^d`` both lie in ``[0, max(ê, e^(d̂+ε))]``.
    It matters when a huge ``ε_d`` (the rounding term of ``x̂ − m̂`` for far-apart logits) meets
    a tiny ``e^d̂``: ``e^d̂(e^ε − 1)`` overflows while both values are ≈ 0. ``η = inf`` where
    ``ê`` overflowed (``bounds.rounding.guard_nonfinite``)."""
    d = np.asarray(d)
    ok = _finite(d)
    e = exp_safe(fmt, d)
    eta = np.full(d.shape, np.inf)
    if ok.any():
        ed = np.broadcast_to(np.asarray(ed, dtype=np.float64), d.shape)
        dk, ek = d[ok], ed[ok]
        rule = exp_error(fmt, dk, ek)[1]
        d_hi = exact_array_up(dk) if dk.dtype == object else np.asarray(dk, dtype=np.float64)
        e_hi = exact_array_up(e[ok]) if e.dtype == object else np.asarray(e[ok], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            rng = np.fmax(e_hi, exp_up(add_up(d_hi, ek)))
        eta[ok] = np.fmin(rule, rng)
    return e, guard_nonfinite(fmt, e, eta)


def stable_exp_sum(fmt: Format, x, order: str = "sequential"):
    """Runtime ``(m̂, d̂, ê, ŝ)`` along the last axis (module docstring)."""
    x = np.asarray(x)
    m = np.max(x, axis=-1, keepdims=True)
    d = fmt.sub(x, np.broadcast_to(m, x.shape))
    e = exp_safe(fmt, d)
    s, _ = sequential_sum(fmt, e, None, order=order, axis=-1)
    return m, d, e, s


class ExpSum(NamedTuple):
    """The stable steps of :func:`stable_exp_sum_error` with their bounds (last axis)."""

    m: np.ndarray        #: ``m̂``, the runtime row maximum (keepdims)
    d: np.ndarray        #: ``d̂_i = RN(x̂_i − m̂)``
    delta: np.ndarray    #: ``δ_i ≥ |d̂_i − (x_i − m̂)|``
    e: np.ndarray        #: ``ê_i = RN(exp d̂_i)``
    eta: np.ndarray      #: ``η_i ≥ |ê_i − e^(x_i − m̂)|``
    s: np.ndarray        #: ``ŝ``, the runtime sum of the ``ê`` (in ``order``)
    sigma: np.ndarray    #: ``σ ≥ |ŝ' − Σ e^(x_j − m̂)|`` for every evaluation ``ŝ'`` covered
    spread: np.ndarray   #: ``≥ |ŝ' − ŝ|`` for every evaluation ``ŝ'`` covered


def stable_exp_sum_error(fmt: Format, x, ex, order: str = "sequential",
                         order_free: bool = False) -> ExpSum:
    """Runtime ``(m̂, d̂, ê, ŝ)`` with bounds against the spec shifted by ``m̂``:

    * ``|d̂_i − (x_i − m̂)| ≤ δ_i = ε_i + r_i`` (``r_i`` the rounding term of ``RN(x̂_i − m̂)``,
      0 when ``x̂_i = m̂`` or an operand is 0) — no error for ``m̂``: it is the chosen shift;
    * ``|ê_i − e^(x_i − m̂)| ≤ η_i`` (``exp_bound``: ``e^d̂(e^δ − 1) + r``);
    * ``|ŝ − Σ e^(x_j − m̂)| ≤ σ``: the replay of the rounded sum in ``order`` (``spread = 0``:
      that evaluation only), or with ``order_free`` the bound of *every* evaluation ``ŝ'`` of
      the sum (``pool.order_free_sum`` of the ``ê``, which no order changes, plus ``Σ η``) and
      ``spread = 2ρ ≥ |ŝ' − ŝ|`` (``ρ`` that bound with the ``ê`` as their own spec — a
      subnormal ``ê_j`` that an addition reads as 0 under DAZ, and a wider accumulator does
      not, erring by ``ê_j``; the runtime ``ŝ`` is one evaluation).

    Every evaluation has ``ŝ' ≥ 1`` and ``ŝ' ≥ ê_i``: on the path from a leaf ``v ≥ b_min`` to
    the root every node is a monotone rounding of a sum of nonnegative operands one of which is
    ``≥ v``, hence ``≥ RN(v) = v`` (so normal: read as itself, never flushed; a final conversion
    from a wider accumulator is monotone and fixes ``v`` as well). The leaf at the maximum is
    ``RN(e^0) = 1``, and a subnormal leaf is below 1.
    """
    x = np.asarray(x)
    m = np.max(x, axis=-1, keepdims=True)
    mb = np.broadcast_to(m, x.shape)
    d = fmt.sub(x, mb)
    exact = _zero(x) | _zero(mb) | (x == mb)
    delta = add_up(ex, rounding_term(fmt, d, exact))
    e, eta = exp_safe_error(fmt, d, delta)
    if not order_free:
        s, sigma = sequential_sum(fmt, e, eta, order=order, axis=-1)
        return ExpSum(m, d, delta, e, eta, s, sigma, np.zeros(np.shape(s)))
    s, _ = sequential_sum(fmt, e, None, order=order, axis=-1)
    read_as_zero = abs_up(np.asarray(e) - np.asarray(fmt.daz(e)))
    rho, _ = order_free_sum(fmt, sum_up(abs_up(e), axis=-1), x.shape[-1],
                            sum_up(read_as_zero, axis=-1))
    sigma = guard_nonfinite(fmt, s, add_up(rho, sum_up(eta, axis=-1)))
    return ExpSum(m, d, delta, e, eta, s, sigma, mul_up(2.0, rho))


def box_factors(x, ex) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds ``(H_i, Λ_i)`` of ``y_i`` and of ``1 − y_i`` over the box
    ``B = {z : |z_j − x̂_j| ≤ ε_j}`` (last axis), for ``y = softmax(z)``.

    Any shift cancels (module docstring); take ``c = max_j (x̂_j − ε_j)↓`` (a float64, an exact
    constant), so the largest lower corner has ``e^(·−c) ≥ 1`` however large the ``ε`` are.
    With ``P_j = e^((x̂_j + ε_j) − c)↑ ≥ e^(z_j − c)`` and ``Q_j = e^((x̂_j − ε_j) − c)↓ ≤
    e^(z_j − c)`` for every ``z ∈ B``: ``y_i ≤ P_i / Σ_j Q_j`` and
    ``1 − y_i = Σ_{j≠i} e_j/(e_i + Σ_{j≠i} e_j) ≤ Σ_{j≠i} P_j / Q_i``, with
    ``Σ_{j≠i} P_j ≤ (Σ_j P_j)↑ − P_i`` (rounded up). ``inf`` (no information) where every
    ``ε`` of the row is infinite.
    """
    xl, xh = _value_lo_hi(x)
    with np.errstate(invalid="ignore", over="ignore"):
        low = np.where(ex == 0, xl, _down(xl - ex))
        high = np.where(ex == 0, xh, up(xh + ex))
        c = np.max(low, axis=-1, keepdims=True)
        P = exp_up(up(high - c))
        Q = _exp_down(_down(low - c))
    P = np.where(np.isnan(P), np.inf, P)
    Q = np.where(np.isnan(Q), 0.0, Q)
    T = sum_up(P, axis=-1)
    D = _sum_down(Q, axis=-1)
    H = div_up(P, D[..., None])
    with np.errstate(invalid="ignore"):
        rest = np.maximum(up(T[..., None] - P), 0.0)
    Lam = div_up(rest, Q)
    finite_c = np.isfinite(c)
    return np.where(finite_c, H, np.inf), np.where(finite_c, Lam, np.inf)


def _value_lo_hi(x) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(lo, hi)`` with ``lo ≤ x̂ ≤ hi`` (``x̂`` itself for float64 runtime values)."""
    a = np.asarray(x)
    if a.dtype != object:
        a = np.asarray(a, dtype=np.float64)
        return a, a
    return -exact_array_up(-a), exact_array_up(a)


def softmax_last(fmt: Format, x, order: str = "sequential"):
    """Runtime softmax along the last axis."""
    _, _, e, s = stable_exp_sum(fmt, x, order)
    return fmt.div(e, np.broadcast_to(s[..., None], e.shape))


def softmax_last_error(fmt: Format, x, ex, order: str = "sequential", order_free: bool = False):
    """``(ŷ, ε)`` along the last axis with ``ε = min(A, B, R)`` (``inf`` where ``ŷ``
    overflowed: ``bounds.rounding.guard_nonfinite``). All three are sound:

    **A (composition of the step rules).** With ``δ, η, σ`` of :func:`stable_exp_sum_error`,
    the division rule ``|ê/ŝ − e/s| ≤ (η + |ê/ŝ|·σ)/s`` (from
    ``ê/ŝ − e/s = (ê − e)/s + (ê/ŝ)(s − ŝ)/s``) with ``s ≥ max(ŝ − σ, e^(−ε_t))`` — the spec sum
    contains ``e^(x_t − m̂) ≥ e^(−ε_t)`` for the runtime argmax ``t`` — plus ``r`` of
    ``RN(ê/ŝ)`` (``elementwise.div_error`` with that floor). ``order_free``
    (:func:`_softmax_composed`): the same for every evaluation ``ŝ'`` of the sum.

    **B (Lipschitz + own rounding).** ``|ŷ_i − y_i| ≤ |softmax(x̂)_i − softmax(x)_i| +
    |ŷ_i − softmax(x̂)_i|``; the second term is A with ``ε = 0`` (``A0``). For the first, on the
    segment ``z(t) = x + t(x̂ − x)`` (inside the box ``B`` of :func:`box_factors`, which holds
    both ends and is convex), with ``v = x̂ − x``, ``|v_j| ≤ ε_j``:
    ``d y_i/dt = y_i (v_i − Σ_j y_j v_j) = y_i Σ_{j≠i} y_j (v_i − v_j)`` (as ``Σ_j y_j = 1``), so
    ``|d y_i/dt| ≤ y_i (1 − y_i)(ε_i + ε*_i)``, ``ε*_i = max_{j≠i} ε_j``. Over ``B``,
    ``y_i(1 − y_i) ≤ κ_i = min(1/4, H_i, Λ_i)`` (``y(1−y) ≤ min(y, 1 − y, 1/4)``), giving
    ``|softmax(x̂)_i − softmax(x)_i| ≤ κ_i (ε_i + ε*_i) ≤ (ε_i + ε*_i)/4`` — the ∞→∞ norm of
    the Jacobian row, ``2y_i(1 − y_i) ≤ 1/2``, times ``max ε``, refined. No rounding enters
    the first term, so B holds for every evaluation when ``A0`` does.

    **R (range).** ``ŷ_i, y_i ∈ [0, 1]`` (module docstring), so ``|ŷ_i − y_i| ≤
    max(ŷ_i, 1 − ŷ_i)``. ``order_free``: another evaluation's ``ŷ'_i = RN(ê_i/ŝ')`` lies in
    ``[0, 1]`` too (``0 ≤ ê_i ≤ ŝ'``, :func:`stable_exp_sum_error`; 0 and 1 are format values)
    and within ``2·A0`` of ``ŷ_i`` (both within ``A0`` of ``softmax(x̂)``), so
    ``|ŷ'_i − y_i| ≤ min(1, max(ŷ_i, 1 − ŷ_i) + 2·A0)``.
    """
    x = np.asarray(x)
    ex = np.asarray(ex, dtype=np.float64)
    y, A = _softmax_composed(fmt, x, ex, order, order_free)
    _, A0 = _softmax_composed(fmt, x, np.zeros(x.shape), order, order_free) if np.any(ex) \
        else (y, A)
    H, Lam = box_factors(x, ex)
    kappa = np.fmin(0.25, np.fmin(H, Lam))
    L = mul_up(kappa, add_up(ex, _excluded_max(ex)))
    B = add_up(L, A0)
    R = _range_cap(y, _finite(y))
    if order_free:
        R = np.fmin(1.0, add_up(R, mul_up(2.0, A0)))
    return y, guard_nonfinite(fmt, y, np.fmin(np.fmin(A, B), R))


def _range_cap(y, ok) -> np.ndarray:
    """``max(ŷ, 1 − ŷ)`` rounded up (``inf`` where ``ŷ`` is not finite): the largest distance
    from ``ŷ ∈ [0, 1]`` to a point of ``[0, 1]``. ``1 − ŷ`` is checked exact by Fast2Sum
    (``|1| ≥ |ŷ|``: the residual ``(−ŷ) − ((1 − ŷ) − 1)`` is exact) and pushed up otherwise."""
    a = np.asarray(y)
    if a.dtype == object:
        yy = np.where(ok, a, mpq(0))
        one_minus = exact_array_up(np.asarray(1 - yy, dtype=object))
        yf = exact_array_up(yy)
    else:
        yf = np.where(ok, np.asarray(a, dtype=np.float64), 0.0)
        s = 1.0 - yf
        t = (-yf) - (s - 1.0)
        one_minus = np.where(t == 0, s, up(s))
    return np.where(ok, np.fmax(yf, one_minus), np.inf)


def _softmax_composed(fmt: Format, x, ex, order: str, order_free: bool = False):
    """Bound A of :func:`softmax_last_error`.

    ``order_free``: a library's ``ŷ'_i = RN(ê_i/ŝ')`` for any evaluation ``ŝ'`` of the sum. As
    for the runtime, ``|ê_i/ŝ' − e_i/s| ≤ (η_i + (ê_i/ŝ')·σ)/s`` with ``σ`` the order-free bound
    of :func:`stable_exp_sum_error` and ``s ≥ D = max(ŝ − σ, e^(−ε_t))`` (the runtime ``ŝ`` is
    one evaluation); ``ê_i/ŝ' ≤ q_i = min(1, ê_i / max(1, ŝ − spread))`` (``ŝ' ≥ 1``,
    ``ŝ' ≥ ŝ − spread``, ``ê_i ≤ ŝ'``); and the division's rounding is bounded for every
    quotient ``≤ q_i`` by ``pool.any_rounding(q_i)`` — the runtime's rounding term, computed from
    its own quotient, need not bound another's. ``inf`` where ``q_i`` exceeds the largest finite
    value (``overflow_guard``)."""
    S = stable_exp_sum_error(fmt, x, ex, order, order_free)
    t = np.asarray(np.argmax(x, axis=-1))[..., None]
    e_top = np.take_along_axis(np.broadcast_to(ex, x.shape), t, axis=-1)
    floor = np.broadcast_to(_exp_down(-e_top), x.shape)
    sb = np.broadcast_to(S.s[..., None], x.shape)
    sig = np.broadcast_to(S.sigma[..., None], x.shape)
    if not order_free:
        y, A = div_error(fmt, S.e, S.eta, sb, sig, floor=floor)
        return np.asarray(y), A
    y = np.asarray(fmt.div(S.e, sb))
    s_lo = _abs_down(sb)
    den = np.maximum(_sub_down(s_lo, sig), floor)
    q = np.fmin(1.0, div_up(abs_up(S.e), np.maximum(_sub_down(s_lo, S.spread[..., None]), 1.0)))
    A = add_up(div_up(add_up(S.eta, mul_up(q, sig)), den), any_rounding(fmt, q))
    return y, guard_nonfinite(fmt, y, overflow_guard(fmt, q, A))


# =============================================================================================
# Spec pieces (last axis)
# =============================================================================================
def exp_enclosure(lo, hi) -> Interval:
    """Enclosure of ``e^t`` for ``t ∈ [lo, hi]`` (object arrays, exponents ``≤ 0`` in use):
    ``exp_spec`` on the arguments clamped at :data:`EXP_FLOOR`; where ``lo`` is below the floor
    the lower end is 0 (``0 < e^t`` and ``e^t ≤ e^max(t, L)``: ``exp`` is increasing)."""
    lo = np.asarray(lo, dtype=object)
    hi = np.asarray(hi, dtype=object)
    clamp = np.vectorize(lambda v: v if v > EXP_FLOOR else EXP_FLOOR, otypes=[object])
    E = exp_spec(Interval(clamp(lo), clamp(hi)))
    below = np.vectorize(lambda v: v < EXP_FLOOR, otypes=[bool])(lo)
    E_lo = np.where(below, mpq(0), E.lo) if below.any() else E.lo
    return Interval(np.asarray(E_lo, dtype=object), E.hi)


def softmax_last_spec(x: Interval) -> Interval:
    """Enclosure of ``softmax`` over the box ``[lo, hi]`` along the last axis.

    ``y_i = a/(a + b)`` with ``a = e^(x_i − c)``, ``b = Σ_{j≠i} e^(x_j − c)`` (any shift ``c``)
    is increasing in ``x_i`` and decreasing in every other ``x_j``, so its range over the box is
    ``[y_i(lo_i; hi_{j≠i}), y_i(hi_i; lo_{j≠i})]``, enclosed with the exponential enclosures
    (``a/(a + b)`` increasing in ``a``, decreasing in ``b``). The lower ends use
    ``c = max_j hi_j`` and the upper ends ``c = max_j lo_j``: then the largest competing term is
    ``e^0 = 1`` exactly unless it is ``x_i``'s own, so clamping exponents below
    :data:`EXP_FLOOR` costs at most ``e^−2000`` relative. An upper end whose exponent
    ``hi_i − max lo`` exceeds ``−EXP_FLOOR`` is taken as 1 (``y_i ≤ 1``). For an exact input
    both shifts are the row maximum.
    """
    c_lo = np.max(x.hi, axis=-1, keepdims=True)
    E_lo_pt = exp_enclosure(x.lo - c_lo, x.lo - c_lo)            # e^(lo − c_lo)
    E_hi_pt = E_lo_pt if x.lo is x.hi else exp_enclosure(x.hi - c_lo, x.hi - c_lo)
    total_hi = np.sum(E_hi_pt.hi, axis=-1, keepdims=True)
    lo = np.vectorize(lambda a, b: a / (a + b) if a > 0 else mpq(0),
                      otypes=[object])(E_lo_pt.lo, total_hi - E_hi_pt.hi)
    if x.lo is x.hi:
        a_hi, b_lo = E_lo_pt.hi, np.sum(E_lo_pt.lo, axis=-1, keepdims=True) - E_lo_pt.lo
        hi = np.vectorize(lambda a, b: a / (a + b), otypes=[object])(a_hi, b_lo)
        return Interval(np.asarray(lo, dtype=object), np.asarray(hi, dtype=object))
    c_hi = np.max(x.lo, axis=-1, keepdims=True)
    arg = x.hi - c_hi
    huge = np.vectorize(lambda v: v > -EXP_FLOOR, otypes=[bool])(arg)
    arg = np.where(huge, mpq(0), arg)
    A = exp_enclosure(arg, arg).hi                                 # e^(hi_i − c_hi)
    B = exp_enclosure(x.lo - c_hi, x.lo - c_hi).lo                 # e^(lo_j − c_hi)
    b_lo = np.sum(B, axis=-1, keepdims=True) - B
    hi = np.vectorize(lambda a, b, h: mpq(1) if h else a / (a + b), otypes=[object])(A, b_lo, huge)
    return Interval(np.asarray(lo, dtype=object), np.asarray(hi, dtype=object))


# =============================================================================================
# The primitive
# =============================================================================================
def _to_last(a, ax: int):
    return np.moveaxis(np.asarray(a), ax, -1)


def _from_last(a, ax: int):
    return np.moveaxis(np.asarray(a), -1, ax)


def softmax_runtime(fmt: Format, x, *, dim: int = -1, order: str = "sequential",
                    order_free: bool = False):
    """``ŷ_i = RN(ê_i/ŝ)`` along ``dim`` (module docstring for the steps). ``order_free`` only
    selects the bound (validated here)."""
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, dim)
    check_order(order)
    _check_bool("order_free", order_free)
    return _from_last(softmax_last(fmt, _to_last(x, ax), order), ax)


def softmax_spec(x: Interval, *, dim: int = -1, order: str = "sequential",
                 order_free: bool = False) -> Interval:
    """``exp(x_i)/Σ_j exp(x_j)`` enclosed (:func:`softmax_last_spec`)."""
    ax = _axis(x.lo, dim)
    check_order(order)
    y = softmax_last_spec(Interval(_to_last(x.lo, ax), _to_last(x.hi, ax)))
    return Interval(_from_last(y.lo, ax), _from_last(y.hi, ax))


def softmax_bound(fmt: Format, xs, eps, *, dim: int = -1, order: str = "sequential",
                  order_free: bool = False):
    """``min(A, B, R)`` of :func:`softmax_last_error` (for every evaluation order of the sum
    with ``order_free``)."""
    (x,), (ex,) = xs, eps
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, dim)
    check_order(order)
    order_free = _check_bool("order_free", order_free)
    e = checks.eps_like("eps", ex, x)
    _, b = softmax_last_error(fmt, _to_last(x, ax), _to_last(e, ax), order, order_free)
    return np.asarray(_from_last(b, ax), dtype=np.float64)


def softmax_vjp_runtime(fmt: Format, xs, g, *, dim: int = -1, order: str = "sequential",
                        order_free: bool = False):
    """``∂/∂x = y ⊙ (g − ⟨g, y⟩)`` along ``dim`` (torch's ``_softmax_backward_data``), with
    ``ŷ`` the runtime softmax and the rounded steps

        p̂_j = RN(ĝ_j · ŷ_j),  ĉ = Σ_j p̂_j (rounded, ``order``),  ŵ_i = RN(ĝ_i − ĉ),
        out_i = RN(ŷ_i · ŵ_i).
    """
    (x,) = xs
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, dim)
    check_order(order)
    _check_bool("order_free", order_free)
    checks.same_shape(("g", "x"), g, x)
    g = checks.format_value("g", g, fmt)
    xl, gl = _to_last(x, ax), _to_last(g, ax)
    y = softmax_last(fmt, xl, order)
    p = fmt.mul(gl, y)
    c, _ = sequential_sum(fmt, p, None, order=order, axis=-1)
    w = fmt.sub(gl, np.broadcast_to(np.asarray(c)[..., None], gl.shape))
    return (_from_last(fmt.mul(y, w), ax),)


def softmax_vjp_spec(xs, g: Interval, *, dim: int = -1, order: str = "sequential",
                     order_free: bool = False):
    """``y ⊙ (g − ⟨g, y⟩)`` in interval arithmetic (an enclosure; ``y`` enters twice)."""
    (x,) = xs
    ax = _axis(x.lo, dim)
    y = softmax_spec(x, dim=dim)
    gy = g * y
    tot = gy.map_exact(lambda a: np.sum(_to_last(a, ax), axis=-1, keepdims=True))
    tot = tot.map_exact(lambda a: np.broadcast_to(_from_last(a, ax), x.shape))
    return (y * (g - tot),)


def softmax_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, dim: int = -1,
                      order: str = "sequential", order_free: bool = False):
    """The step rules along the runtime order of :func:`softmax_vjp_runtime`, with ``ε_y`` the
    forward bound: product rule for ``p̂``, replay of the rounded sum for ``ĉ``,
    ``ε_g + ε_c + r`` for ``ŵ``, product rule for the output.

    ``order_free`` (every evaluation order of both sums — the forward one inside ``ŷ``, and
    ``⟨ĝ, ŷ⟩``, each product rounded or fused into an addition): :func:`_softmax_vjp_free`."""
    (x,), (ex,) = xs, eps
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, dim)
    check_order(order)
    order_free = _check_bool("order_free", order_free)
    checks.same_shape(("g", "x"), g, x)
    g = checks.format_value("g", g, fmt)
    e = checks.eps_like("eps", ex, x)
    eg = checks.eps_like("eps_g", eps_g, g)
    xl, gl, el, egl = (_to_last(a, ax) for a in (x, g, e, eg))
    y, ey = softmax_last_error(fmt, xl, el, order, order_free)
    if order_free:
        return (np.asarray(_from_last(_softmax_vjp_free(fmt, y, ey, gl, egl, order), ax),
                           dtype=np.float64),)
    p, ep = mul_error(fmt, gl, egl, y, ey)
    c, ec = sequential_sum(fmt, p, ep, order=order, axis=-1)
    cb = np.broadcast_to(np.asarray(c)[..., None], gl.shape)
    w = fmt.sub(gl, cb)
    ew = add_up(egl, np.broadcast_to(np.asarray(ec)[..., None], gl.shape),
                rounding_term(fmt, w, _zero(gl) | _zero(cb)))
    _, eo = mul_error(fmt, y, ey, w, ew)
    return (np.asarray(_from_last(eo, ax), dtype=np.float64),)


def _softmax_vjp_free(fmt: Format, y, ey, g, eg, order: str) -> np.ndarray:
    """The VJP bound (last axis) for every evaluation: a library's softmax ``ŷ'`` (any order;
    ``|ŷ' − y| ≤ ε_y``, the order-free forward bound, and ``ŷ' ∈ [0, 1]``), then
    ``ĉ' = ⟨ĝ, ŷ'⟩`` in any order with products rounded or fused, ``ŵ' = RN(ĝ − ĉ')``,
    ``RN(ŷ' ŵ')``. The runtime values (``order``) are one such evaluation.

    * ``ĉ'``: ``pool.order_free_sum`` over the exact products ``ĝ_j ŷ'_j`` (``products``) with
      ``Σ|ĝ_j ŷ'_j| ≤ Σ |ĝ_j|·min(1, ŷ_j + 2ε_y)`` and ``|Σ ĝ_j ŷ'_j − Σ g_j y_j| ≤
      Σ |ĝ_j|ε_y + min(1, ŷ_j + ε_y)·ε_g`` (``ĝŷ' − gy = ĝ(ŷ' − y) + y(ĝ − g)``): ``(ε_c, Z)``;
    * ``ŵ'``: ``ε_w = ε_g + ε_c + any_rounding(|ĝ| + Z)`` (``|ĉ'| ≤ Z``);
    * the output: :func:`mul_any` of ``ŷ'`` (magnitude ``≤ 1``) and ``ŵ'``.

    ``inf`` where an operand of some rounding could exceed the largest finite value."""
    ga = abs_up(g)
    y_spec = np.fmin(1.0, add_up(abs_up(y), ey))
    y_any = np.fmin(1.0, add_up(abs_up(y), mul_up(2.0, ey)))
    ec, Z = order_free_sum(fmt, sum_up(mul_up(ga, y_any), axis=-1), g.shape[-1],
                           sum_up(add_up(mul_up(ga, ey), mul_up(y_spec, eg)), axis=-1),
                           products=True)
    Mw = add_up(ga, Z[..., None])
    ew = overflow_guard(fmt, Mw, add_up(eg, ec[..., None], any_rounding(fmt, Mw)))
    c, _ = sequential_sum(fmt, fmt.mul(g, y), None, order=order, axis=-1)
    w = fmt.sub(g, np.broadcast_to(np.asarray(c)[..., None], g.shape))
    return guard_nonfinite(fmt, fmt.mul(y, w), mul_any(fmt, y, ey, w, ew, a_cap=1.0))


def mul_any(fmt: Format, a, ea, b, eb, a_cap: float = np.inf) -> np.ndarray:
    """Bound of ``|RN(a'b') − ab|`` for *every* ``a'``, ``b'`` within ``ε_a``, ``ε_b`` of the
    spec ``a``, ``b`` whose runtime values ``â``, ``b̂`` are such values too (values computed in
    an order the bound must not depend on): ``|a'| ≤ A' = min(a_cap, |â| + 2ε_a)`` (``a_cap``
    bounds ``|a'|`` and ``|a|`` when known, e.g. 1 for a softmax), ``|b| ≤ |b̂| + ε_b``,
    ``|b'| ≤ |b̂| + 2ε_b``, and ``a'b' − ab = a'(b' − b) + b(a' − a)``:

        A'·ε_b + (|b̂| + ε_b)·ε_a + any_rounding(A'·(|b̂| + 2ε_b)),

    ``inf`` where that magnitude exceeds the largest finite value (``overflow_guard``)."""
    A1 = np.fmin(a_cap, add_up(abs_up(a), mul_up(2.0, ea)))
    bb = abs_up(b)
    M = mul_up(A1, add_up(bb, mul_up(2.0, eb)))
    return overflow_guard(fmt, M, add_up(mul_up(A1, eb), mul_up(add_up(bb, eb), ea),
                                         any_rounding(fmt, M)))


def _sample_softmax(rng, fmt: Format):
    shape = tuple(int(v) for v in rng.integers(1, 5, size=rng.integers(1, 4)))
    x = rng.standard_normal(shape) * 3
    dim = int(rng.integers(-len(shape), len(shape)))
    return (fmt.round(x),), {"dim": dim, "order": _sample_order(rng),
                             "order_free": bool(rng.random() < 0.25)}


softmax = register(Primitive("softmax", softmax_runtime, softmax_spec, softmax_bound,
                             softmax_vjp_runtime, softmax_vjp_spec, softmax_vjp_bound,
                             _sample_softmax))
