"""Transcendental elementwise primitives: exp, tanh, sigmoid, softplus, safe_log.

Semantics (docs/design.md §3): each op is **one** rounding of the exact function of the runtime
input, ``ŷ = RN(f(x̂))`` — sigmoid is the correctly rounded ``1/(1 + e^−x)`` (not a sequence of
rounded exp/add/div), softplus the correctly rounded ``log(1 + e^x)``, safe_log the correctly
rounded ``log(max(x, c))`` with the constant ``c > 0`` taken exactly (as ``scale``/``safe_div``
do: a float64 ``c`` is the dyadic rational it holds; the default ``c = 1e-12`` is binary64's
``1e-12``). The spec is the exact function over the reals (rigorous MPFR enclosures), the
bounds follow docs/design.md §4 and are never worse than TorchLean's rules.

How the runtime gets the correctly rounded value (Ziv's strategy, vectorised):

1. *filter* (formats that fit binary64): ``y = f(x̂)`` in binary64 with NumPy. **Accuracy
   assumption A**: ``|y − f(x̂)| ≤ 2^−40·|y| + 2^−1000`` for every finite ``x̂`` (NumPy's
   ``exp``/``log``/``tanh``/``log1p`` err by a few binary64 ulps, i.e. ``≈ 2^−50``; the margin
   is ``2^10``-fold; the absolute term covers binary64 underflow). ``tests/test_transcendental``
   checks A against MPFR on ``10^5`` values including extreme ones. Both ends of
   ``[y − d, y + d]`` (``d = 2^−40|y| + 2^−1000``, every step rounded outward, clipped at 0 on
   the side the sign of ``f(x̂)`` excludes) are rounded to the format; rounding is monotone, so
   where the two agree that is ``RN(f(x̂))``.
2. *slow path* (the other elements — rare for ``p ≤ 36``; every element for binary64, decimal
   and other object formats): a rigorous enclosure of ``f(x̂)`` from MPFR with directed
   rounding (128 bits, then 256, … up to 65536), rounded at both ends with the reference
   engine (``reference.round_rational``) until both agree. ``f(x̂)`` is transcendental for
   rational ``x̂`` outside the exact cases ``exp(0) = 1``, ``tanh(0) = 0``,
   ``sigmoid(0) = 1/2``, ``log(1) = 0`` (Lindemann–Weierstrass; softplus is never rational),
   so it is never a rounding boundary and the loop ends; the exact cases are rounded exactly.
   Where the loop would need absurd precision or leave MPFR's range — overflow of exp,
   underflow below half the smallest positive value, tanh/sigmoid within half a spacing of
   ±1, softplus within half a spacing above a large ``x̂`` — the value is shown (by a directed
   MPFR comparison) to lie in an open interval free of rounding boundaries, and any point of
   that interval is rounded instead (:func:`_stand_in`). Past ``|x̂| > 2^20`` with no such
   argument (formats without underflow or overflow threshold) the runtime refuses with a
   ``ValueError`` rather than guess.

Bounds use upward-rounded binary64 arithmetic (``bounds.upward``); lower bounds are one step
down (``_down``). Like ``upward.exp_up``, the local ``_exp_down``/``_log1p_up`` trust NumPy's
``exp``/``log1p`` to 4 binary64 ulps (the much weaker assumption A is what is tested).

Inputs. Every runtime, bound and VJP rule takes runtime values: ``x`` and the upstream
gradient ``g`` must be finite values of the format (``checks.format_value``, a ``ValueError``
naming the argument otherwise), and ``g`` must have the output's (= ``x``'s) shape.
:func:`rounded`, :func:`exp_error` and :func:`safe_log_values` serve other modules composing
rules on values they computed themselves, and do not re-check.

Overflow and domain errors. A runtime result that overflows (exp beyond the largest finite
value: ±inf, NaN or a saturated ±max_finite) gets the bound ``inf``, never a finite wrong
number; so does a VJP product that overflows. No op here has a runtime domain error: safe_log
clamps its argument at ``c > 0``, so its runtime, spec and bound are defined everywhere (the
bound is at most ``ε/c``). The spec of safe_log therefore never refuses; the plain ``log``
enclosure (:func:`enclose`) raises ``ValueError`` for a non-positive argument. Beyond
``|x̂| > 2^20`` without an overflow/underflow threshold that decides the rounding (formats
without one), the runtime raises ``ValueError`` rather than guess.
"""
from __future__ import annotations

import math
from functools import lru_cache

import gmpy2
import numpy as np
from gmpy2 import mpfr, mpq

from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import add_up, div_up, exact_array_up, exact_up, exp_up, expm1_up, mul_up, up
from ..formats import Format
from ..formats.reference import mag, round_rational, to_exact
from . import checks
from .elementwise import div_error, mul_error
from .interval import Interval
from .primitive import Primitive, register

# -- constants ------------------------------------------------------------------------------
REL_ERR_F64 = 2.0 ** -40        #: assumption A, relative part
ABS_ERR_F64 = 2.0 ** -1000      #: assumption A, absolute part
SPEC_PRECISION = 200            #: MPFR bits of the spec enclosures
ZIV_START, ZIV_MAX = 128, 1 << 16
X_BIG = 1 << 20                 #: beyond |x| > 2^20 only asymptotic enclosures are used
#: ``sup |tanh''| = 4/(3√3) = 0.76980…`` and ``sup |sigmoid''| = 1/(6√3) = 0.096225…``, rounded up.
TANH2_LIP = 0.7699
SIGMOID2_LIP = 0.09623
DEFAULT_C = 1e-12

_EMAX, _EMIN = gmpy2.get_emax_max(), gmpy2.get_emin_min()
_NAMES = ("exp", "tanh", "sigmoid", "softplus", "log")
_TINY = mpq(2) ** -16384         #: τ of the asymptotic enclosures (e^−2^20 is far smaller)


@lru_cache(maxsize=None)
def _ctx(prec: int, upward: bool):
    """An MPFR context rounding toward ``+inf`` (upward) or ``−inf``, full exponent range."""
    return gmpy2.context(precision=prec, round=gmpy2.RoundUp if upward else gmpy2.RoundDown,
                         emax=_EMAX, emin=_EMIN)


# =============================================================================================
# Rigorous scalar enclosures (MPFR, directed rounding)
# =============================================================================================
def _exact_value(name: str, x: mpq) -> mpq | None:
    """``f(x)`` where it is rational: exp(0) = 1, tanh(0) = 0, sigmoid(0) = 1/2, log(1) = 0."""
    if name == "log":
        return mpq(0) if x == 1 else None
    if x != 0:
        return None
    return {"exp": mpq(1), "tanh": mpq(0), "sigmoid": mpq(1, 2)}.get(name)


def _mpfr_endpoint(name: str, x: mpq, prec: int, upper: bool) -> mpq:
    """A rational ``≤ f(x)`` (``upper=False``) or ``≥ f(x)`` (``upper=True``) at ``prec`` bits.

    Every ``f`` is increasing, so the lower end evaluates at ``x`` rounded down with every
    step rounded down (and the upper end symmetrically); sigmoid is ``1/(1 + e^−x)``, whose
    lower end needs the denominator rounded *up*. MPFR rounds each function correctly in the
    requested direction, so the chain is an enclosure; ``mpq(mpfr)`` is exact. softplus at
    ``x > 0`` is ``x + log1p(e^−x)`` with the (decreasing) tail evaluated at ``x`` rounded the
    other way and the sum taken exactly.

    Arguments are negated as rationals, before the directed conversion to MPFR: the ``−`` of
    an ``mpfr`` rounds to the *global* context (53 bits), which would make the enclosures of
    non-dyadic rationals (decimal inputs, spec endpoints) non-rigorous.
    """
    C, O = _ctx(prec, upper), _ctx(prec, not upper)
    if name == "exp":
        r = C.exp(mpfr(x, prec, C))
    elif name == "tanh":
        r = C.tanh(mpfr(x, prec, C))
    elif name == "log":
        r = C.log(mpfr(x, prec, C))
    elif name == "softplus":
        if x > 0:   # x + log(1 + e^−x), the sum exact: keeps softplus(x) > x visible for large x
            return x + mpq(C.log1p(C.exp(mpfr(-x, prec, C))))     # −x rounded C-wise = −(x, O-wise)
        r = C.log1p(C.exp(mpfr(x, prec, C)))
    elif name == "sigmoid":
        r = C.div(1, O.add(1, O.exp(mpfr(-x, prec, O))))         # −x rounded O-wise = −(x, C-wise)
    else:
        raise ValueError(f"unknown transcendental function {name!r}")
    return mpq(r)


def _show(x: mpq) -> str:
    """``x`` to 6 significant digits for a message (any magnitude: ``float`` would overflow
    beyond binary64's range, e.g. decimal64 values)."""
    return f"{mpfr(x, 53):.6g}"


def _asymptote(name: str, x: mpq, upper: bool) -> mpq:
    """Enclosure ends for ``|x| > 2^20`` (no MPFR): with ``τ = 2^−16384 > 2^−|x|``,
    ``0 < 1 − tanh|x| < 2e^−2|x| < τ``, ``0 < 1 − σ(x) = σ(−x) < e^−x < τ`` (x > 0),
    ``0 < σ(x), e^x, softplus(x) < e^x < τ`` (x < 0), ``0 < softplus(x) − x < e^−x < τ``."""
    if name == "exp":
        if x > 0:
            raise ValueError(f"exp: x = {_show(x)} exceeds 2^20; e^x has no finite rational "
                             "enclosure of reasonable size")
        return _TINY if upper else mpq(0)
    if name == "tanh":
        if x > 0:
            return mpq(1) if upper else 1 - _TINY
        return _TINY - 1 if upper else mpq(-1)
    if name == "sigmoid":
        if x > 0:
            return mpq(1) if upper else 1 - _TINY
        return _TINY if upper else mpq(0)
    if name == "softplus":
        if x > 0:
            return x + _TINY if upper else x
        return _TINY if upper else mpq(0)
    raise ValueError(f"no asymptotic enclosure for {name!r}")


def enclose(name: str, x: mpq, prec: int = SPEC_PRECISION, upper: bool | None = None):
    """Rigorous rational enclosure ``(lo, hi)`` of ``f(x)`` (or one end if ``upper`` is given).
    Exact where ``f(x)`` is rational; ``log`` needs ``x > 0``."""
    x = mpq(x)
    v = _exact_value(name, x)
    if v is not None:
        return (v, v) if upper is None else v
    if name == "log" and x <= 0:
        raise ValueError(f"log: argument {_show(x)} is not positive")
    far = name != "log" and abs(x) > X_BIG
    one = (lambda up_: _asymptote(name, x, up_)) if far else \
        (lambda up_: _mpfr_endpoint(name, x, prec, up_))
    if upper is None:
        return one(False), one(True)
    return one(upper)


# =============================================================================================
# Runtime: correctly rounded values
# =============================================================================================
def _unbounded_representable(fmt: Format, v: mpq) -> bool:
    r = round_rational(v, Format(fmt.radix, fmt.fexp, fmt.rounding, "none", None))
    return not isinstance(r, float) and r == v


def _half_spacing(fmt: Format, a: mpq) -> mpq:
    """``β^c/2`` with ``c = min(fexp(mag(a) − 1), fexp(mag(a)))``, for a representable ``a ≠ 0``:
    the spacing of the grid next to ``a`` on either side is ``β^fexp(mag a)`` or (below a power
    of β) ``β^fexp(mag a − 1)``, so the nearest rounding boundary other than ``a`` (a midpoint
    or, in directed modes, a neighbour) is at least ``β^c/2`` away."""
    e = mag(a, fmt.radix)
    return mpq(fmt.radix) ** min(fmt.fexp(e - 1), fmt.fexp(e)) / 2


@lru_cache(maxsize=None)
def _thresholds(name: str, fmt: Format) -> dict:
    """Exact rational thresholds of :func:`_stand_in` (64-bit MPFR, rounded the safe way)."""
    D, U = _ctx(64, False), _ctx(64, True)
    out: dict = {}
    beta = mpq(fmt.radix)
    if name == "exp" and fmt.max_finite is not None and fmt.overflow != "none":
        two_m = 2 * fmt.max_finite
        out["over"] = (mpq(U.log(mpfr(two_m, 64, U))), two_m)        # x ≥ over ⇒ e^x ≥ 2M
    if name in ("exp", "sigmoid", "softplus") and fmt.emin is not None:
        t = beta ** fmt.emin / 4
        out["under"] = (mpq(D.log(mpfr(t, 64, D))), t)                # x ≤ under ⇒ f(x) < t
    if name in ("tanh", "sigmoid") and _unbounded_representable(fmt, mpq(1)):
        g = _half_spacing(fmt, mpq(1))
        k = 4 if name == "tanh" else 2
        t = U.log(mpfr(k / g, 64, U))
        t = U.div(t, 2) if name == "tanh" else t
        out["one"] = (mpq(t), 1 - g / 2)        # x ≥ T ⇒ 1 − f(x) < g/2
    return out


def _stand_in(name: str, fmt: Format, x: mpq):
    """A rational that rounds like ``f(x)`` when ``f(x)`` provably lies in an open interval
    without rounding boundaries, else ``None``:

    * exp, ``x ≥ ln(2M)``: ``e^x ≥ 2M ≥ β^emax``; every value ``≥ 2M`` overflows alike → ``2M``;
    * exp/sigmoid/softplus, ``x ≤ ln(β^emin/4)``: ``0 < f(x) ≤ e^x ≤ β^emin/4``; all of
      ``(0, β^emin/2)`` rounds alike (to 0, or to ``β^emin`` upward) → ``β^emin/4``;
    * tanh (|x|) and sigmoid (x) near 1: ``1 − f < g/2`` with ``g`` the half spacing below 1
      (``1 − tanh t < 2e^−2t``, ``1 − σ(t) < e^−t``); ``(1 − g, 1)`` is free → ``±(1 − g/2)``;
    * softplus, large representable ``x``: ``0 < softplus(x) − x < e^−x ≤ g``, ``g`` the half
      spacing above ``x`` → ``x + g/2``.
    """
    th = _thresholds(name, fmt)
    if "over" in th and x >= th["over"][0]:
        return th["over"][1]
    if "under" in th and x <= th["under"][0]:
        return th["under"][1]
    if "one" in th:
        if name == "tanh" and abs(x) >= th["one"][0]:
            return th["one"][1] if x > 0 else -th["one"][1]
        if name == "sigmoid" and x >= th["one"][0]:
            return th["one"][1]
    if name == "softplus" and x > 32 and _unbounded_representable(fmt, x):
        g = _half_spacing(fmt, x)
        D = _ctx(64, False)
        if x >= -mpq(D.log(mpfr(g, 64, D))):                       # ⇒ e^−x ≤ g
            return x + g / 2
    return None


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _start_precision(fmt: Format) -> int:
    p = fmt.precision or 64
    return max(ZIV_START, int(p * math.log2(fmt.radix)) + 64)


def correctly_rounded(name: str, fmt: Format, x) -> object:
    """``RN(f(x))`` in ``fmt`` for one exact rational ``x`` (mpq, or ``±inf``/``nan`` float
    after overflow), by the slow path described in the module docstring."""
    x = mpq(x)
    v = _exact_value(name, x)
    if v is None:
        v = _stand_in(name, fmt, x)
    if v is not None:
        return round_rational(v, fmt)
    if name != "log" and abs(x) > X_BIG:
        raise ValueError(f"{name}: x = {_show(x)} is too large in magnitude (> 2^20) for an "
                         f"exact evaluation in format {fmt} (no overflow/underflow threshold "
                         "decides it)")
    prec = _start_precision(fmt)
    while True:
        lo, hi = enclose(name, x, prec)
        a, b = round_rational(lo, fmt), round_rational(hi, fmt)
        if _same(a, b):
            return a
        if prec >= ZIV_MAX:
            raise ValueError(f"{name}: could not decide the rounding of {name}({x}) in format "
                             f"{fmt} with {ZIV_MAX} bits")
        prec *= 2


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus64(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


#: The binary64 evaluations the filter trusts under assumption A.
F64 = {"exp": np.exp, "tanh": np.tanh, "sigmoid": _sigmoid64, "softplus": _softplus64,
       "log": np.log}


def _negative_value(name: str, x: np.ndarray) -> np.ndarray:
    """Where ``f(x) < 0`` (tanh: x < 0; log: x < 1; the others are positive)."""
    if name == "tanh":
        return x < 0
    if name == "log":
        return x < 1
    return np.zeros(x.shape, dtype=bool)


def filter_enclosure(name: str, x: np.ndarray, y: np.ndarray):
    """``[lo, hi] ∋ f(x)`` under assumption A from the binary64 value ``y`` (outward rounded;
    clipped at ±0 by the known sign of ``f(x)``)."""
    with np.errstate(all="ignore"):
        d = up(up(np.abs(y) * REL_ERR_F64) + ABS_ERR_F64)
        lo = np.nextafter(y - d, -np.inf)
        hi = up(y + d)
    neg = _negative_value(name, x)
    lo = np.where(neg, lo, np.maximum(lo, 0.0))
    hi = np.where(neg, np.minimum(hi, -0.0), hi)
    return lo, hi


def _apply(name: str, fmt: Format, x):
    """``(RN(f(x)), exact)`` elementwise: the correctly rounded values, and where ``f(x)`` was
    a format value (exact special case: no rounding error)."""
    a = np.asarray(x)
    special = {"exp": 0, "tanh": 0, "sigmoid": 0, "log": 1}.get(name)
    if fmt.fits_binary64:
        xf = np.asarray(a, dtype=np.float64)
        with np.errstate(all="ignore"):
            y = F64[name](xf)
        lo, hi = filter_enclosure(name, xf, y)
        if special is not None:
            v = float(_exact_value(name, mpq(special)))
            at = xf == special
            ev = xf if name == "tanh" else np.full(xf.shape, v)   # tanh(±0) = ±0
            lo, hi = np.where(at, ev, lo), np.where(at, ev, hi)
        rl, rh = np.split(fmt.round(np.concatenate([lo.reshape(-1), hi.reshape(-1)])), 2)
        rl, rh = rl.reshape(xf.shape), rh.reshape(xf.shape)
        neg = _negative_value(name, xf)
        out = np.where(neg, rl, rh)
        ok = np.isfinite(y) & ((rl == rh) | (np.isnan(rl) & np.isnan(rh)))
        if special is not None:
            ok |= xf == special
        flat_out, flat_x, flat_neg = out.reshape(-1), xf.reshape(-1), neg.reshape(-1)
        for i in np.flatnonzero(~ok.reshape(-1)):
            r = correctly_rounded(name, fmt, mpq(float(flat_x[i])))
            r = float(r)
            flat_out[i] = -0.0 if (r == 0 and flat_neg[i]) else r
    else:
        flat = a.reshape(-1)
        out = np.empty(flat.size, dtype=object)
        for i, v in enumerate(flat):
            out[i] = correctly_rounded(name, fmt, to_exact(v))
        out = out.reshape(a.shape)
        xf = None
    exact = np.zeros(a.shape, dtype=bool)
    if special is not None:
        v = _exact_value(name, mpq(special))
        if _same(round_rational(v, fmt), v):
            exact = (a == special) if xf is None else (xf == special)
            exact = np.asarray(exact, dtype=bool)
    return out, exact


# =============================================================================================
# Shared bound helpers
# =============================================================================================
def _down(x) -> np.ndarray:
    """One binary64 step toward −inf: a lower bound of any real whose RN is ``x``."""
    return np.nextafter(np.asarray(x, dtype=np.float64), -np.inf)


def _lo_hi(x) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(lo, hi)`` with ``lo ≤ x ≤ hi`` (both ``x`` for float64 values)."""
    a = np.asarray(x)
    if a.dtype != object:
        a = np.asarray(a, dtype=np.float64)
        return a, a
    hi = exact_array_up(a)
    lo = -exact_array_up(np.vectorize(lambda v: -v, otypes=[object])(a))
    return lo, hi


def _abs_lo_hi(x) -> tuple[np.ndarray, np.ndarray]:
    """float64 bounds of ``|x|``."""
    lo, hi = _lo_hi(x)
    alo = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
    return alo, np.maximum(np.abs(lo), np.abs(hi))


def _exp_down(x) -> np.ndarray:
    """Lower bound ``≥ 0`` of ``e^x`` (NumPy's ``exp`` four binary64 steps down; see
    ``upward.exp_up``)."""
    with np.errstate(over="ignore", under="ignore"):
        y = np.exp(np.asarray(x, dtype=np.float64))
    for _ in range(4):
        y = _down(y)
    return np.maximum(y, 0.0)


def _log1p_up(t) -> np.ndarray:
    """Upper bound of ``log(1 + t)`` for ``t ≥ 0``: ``min(t, log1p(t) four steps up)``
    (``log(1 + t) ≤ t``)."""
    t = np.asarray(t, dtype=np.float64)
    y = np.log1p(t)
    for _ in range(4):
        y = up(y)
    return np.fmin(t, y)


def _bell(E_dn, E_up) -> np.ndarray:
    """Upper bound of ``E/(1 + E)²`` from ``E_dn ≤ E ≤ E_up`` (numerator up, denominator down)."""
    den = _down(np.square(_down(1.0 + E_dn)))
    return div_up(E_up, den)


def _finish(prop, eps, r) -> np.ndarray:
    """``prop + r``; exactly ``r`` where ``ε = 0`` (then ``prop = 0``)."""
    return np.where(eps == 0, r, add_up(prop, r))


def _unary_eps(fmt: Format, xs, eps):
    """The input of a bound rule (a runtime value of ``fmt``) and its bound as float64."""
    (x,) = xs
    if len(eps) != 1:
        raise ValueError(f"expected 1 input bound, got {len(eps)}")
    x = checks.format_value("x", x, fmt)
    return x, np.asarray(checks.eps_like("eps_x", eps[0], x), dtype=np.float64)


def _one_like(y):
    a = np.asarray(y)
    if a.dtype == object:
        out = np.empty(a.shape, dtype=object)
        out[...] = mpq(1)
        return out
    return np.ones(a.shape)


def _exact_difference(a, b, out) -> np.ndarray:
    """Whether ``out == a − b`` exactly (so the rounding of ``a − b`` cost nothing): TwoSum's
    residual for float64 operands (``a − b = s + t`` exactly, and a binary64-representable
    difference has ``t = 0``), exact rationals otherwise."""
    A, B, O = np.asarray(a), np.asarray(b), np.asarray(out)
    if A.dtype != object and B.dtype != object and O.dtype != object:
        A, B, O = (np.asarray(v, dtype=np.float64) for v in (A, B, O))
        with np.errstate(all="ignore"):
            s = A - B
            bb = s - A
            t = (A - (s - bb)) + (-B - bb)
        return np.isfinite(s) & (t == 0) & (O == s)
    A, B, O = np.broadcast_arrays(np.asarray(A, dtype=object), np.asarray(B, dtype=object),
                                  np.asarray(O, dtype=object))
    f = np.frompyfunc(lambda p, q, o: (not isinstance(o, float)) and to_exact(o) == to_exact(p) - to_exact(q), 3, 1)
    return np.asarray(f(A, B, O), dtype=bool)


def _spec_map(name: str, x: Interval) -> Interval:
    """``f`` over an enclosure, ``f`` increasing: ``[f(lo)↓, f(hi)↑]`` at 200 bits; exact
    inputs where ``f`` is rational give exact (point) outputs."""
    f_lo = np.frompyfunc(lambda v: enclose(name, v, upper=False), 1, 1)
    f_hi = np.frompyfunc(lambda v: enclose(name, v, upper=True), 1, 1)
    lo = np.asarray(f_lo(x.lo), dtype=object).reshape(x.shape)
    hi = np.asarray(f_hi(x.hi), dtype=object).reshape(x.shape)
    return Interval(lo, hi)


def _sample(scale: float, shift: float = 0.0):
    def sample(rng, fmt: Format):
        shape = tuple(int(s) for s in rng.integers(1, 5, size=rng.integers(1, 3)))
        return (fmt.round(rng.standard_normal(shape) * scale + shift),), {}
    return sample


def _check_g(fmt: Format, g, x):
    """The upstream gradient: ``x``'s (the output's) shape, runtime values of ``fmt``."""
    checks.same_shape(("g", "x"), g, x)
    return checks.format_value("g", g, fmt)


def _vjp_args(fmt: Format, xs, g):
    """``(x, g)`` of a VJP runtime rule, both checked."""
    (x,) = xs
    x = checks.format_value("x", x, fmt)
    return x, _check_g(fmt, g, x)


def rounded(name: str, fmt: Format, x) -> np.ndarray:
    """``RN(f(x̂))`` elementwise for runtime values ``x̂`` of ``fmt`` (not re-checked: for rules
    that compose the function on values they computed), ``name`` one of
    ``exp, tanh, sigmoid, softplus, log``."""
    return _apply(name, fmt, x)[0]


# =============================================================================================
# exp
# =============================================================================================
def exp_runtime(fmt: Format, x):
    """``RN(e^x̂)`` elementwise (one rounding; overflow per the format's rule)."""
    return _apply("exp", fmt, checks.format_value("x", x, fmt))[0]


def exp_spec(x: Interval) -> Interval:
    """``[e^lo↓, e^hi↑]`` (exp is increasing); ``e^0 = 1`` exactly."""
    return _spec_map("exp", x)


def exp_bound(fmt: Format, xs, eps):
    """``E·(e^ε − 1) + r`` with ``E ≥ e^x̂``, ``r`` the rounding term of ``ŷ = RN(e^x̂)``.

    ``|ŷ − e^x| ≤ |ŷ − e^x̂| + e^x̂·|1 − e^(x − x̂)| ≤ r + e^x̂·(e^ε − 1)`` since
    ``|1 − e^t| ≤ e^|t| − 1``. ``E = min(exp_up(x̂), ŷ + r)``: the second is rigorous from the
    correct rounding (``e^x̂ ≤ ŷ + r``). ``e^ε − 1 ≤ ε·e^ε``: never above TorchLean's
    ``e^(x̂+ε)·ε + r``. ``r = 0`` at ``x̂ = 0`` (``e^0 = 1`` exact); ``inf`` on overflow.
    """
    x, e = _unary_eps(fmt, xs, eps)
    return exp_error(fmt, x, e)[1]


def exp_error(fmt: Format, x, e):
    """``(RN(e^x̂), bound)`` of :func:`exp_bound` for runtime values ``x̂`` (not re-checked)
    and a float64 input bound ``e`` of their shape; the bound is ``inf`` where ``RN(e^x̂)``
    overflowed (``bounds.rounding.guard_nonfinite``)."""
    y, exact = _apply("exp", fmt, x)
    r = rounding_term(fmt, y, exact)
    _, x_hi = _lo_hi(x)
    _, y_hi = _lo_hi(y)
    E = np.fmin(exp_up(x_hi), add_up(y_hi, r))
    return y, guard_nonfinite(fmt, y, _finish(mul_up(E, expm1_up(e)), e, r))


def exp_vjp_runtime(fmt: Format, xs, g):
    """``RN(g · ŷ)``, ``ŷ = RN(e^x̂)`` (PyTorch ``ExpBackward0``: ``grad * result``)."""
    x, g = _vjp_args(fmt, xs, g)
    return (fmt.mul(g, _apply("exp", fmt, x)[0]),)


def exp_vjp_spec(xs, g: Interval):
    (x,) = xs
    return (g * exp_spec(x),)


def exp_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """The product rule (``mul_error``) on ``g·ŷ`` with ``|ŷ − e^x| ≤`` :func:`exp_bound`."""
    x, e = _unary_eps(fmt, xs, eps)
    g = _check_g(fmt, g, x)
    y, ey = exp_error(fmt, x, e)
    return (mul_error(fmt, g, checks.eps_like("eps_g", eps_g, g), y, ey)[1],)


exp = register(Primitive("exp", exp_runtime, exp_spec, exp_bound, exp_vjp_runtime,
                         exp_vjp_spec, exp_vjp_bound, _sample(2.0), libm=True))


# =============================================================================================
# tanh
# =============================================================================================
def tanh_runtime(fmt: Format, x):
    """``RN(tanh x̂)`` elementwise."""
    return _apply("tanh", fmt, checks.format_value("x", x, fmt))[0]


def tanh_spec(x: Interval) -> Interval:
    """``[tanh(lo)↓, tanh(hi)↑]`` (increasing); ``tanh 0 = 0`` exactly."""
    return _spec_map("tanh", x)


def _sech2_sup(x, e) -> np.ndarray:
    """Upper bound of ``sup tanh' = sup sech²`` over ``[x̂ − ε, x̂ + ε]``: ``sech²`` is even and
    decreasing in ``|t|``, so the sup is at ``a = max(|x̂| − ε, 0)`` (a lower bound of ``a``
    is used), and ``sech² a = 4E/(1 + E)²`` with ``E = e^−2a``; capped at 1."""
    alo, _ = _abs_lo_hi(x)
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.maximum(_down(alo - e), 0.0)
        a2 = -2.0 * np.where(np.isnan(a), 0.0, a)          # −inf past binary64: e^−inf = 0
    s = mul_up(4.0, _bell(_exp_down(a2), exp_up(a2)))
    return np.fmin(s, 1.0)


def tanh_bound(fmt: Format, xs, eps):
    """``min(ε·sup_{|t − x̂| ≤ ε} sech² t, 2) + r`` (mean value theorem; tanh's range has width
    2). TorchLean's ``2 + r`` is never smaller; ``r = 0`` at ``x̂ = 0``."""
    x, e = _unary_eps(fmt, xs, eps)
    y, exact = _apply("tanh", fmt, x)
    return guard_nonfinite(fmt, y, _tanh_error(x, e, rounding_term(fmt, y, exact)))


def _tanh_error(x, e, r) -> np.ndarray:
    """:func:`tanh_bound` given the rounding term ``r`` of ``RN(tanh x̂)``."""
    return _finish(np.fmin(mul_up(e, _sech2_sup(x, e)), 2.0), e, r)


def tanh_vjp_runtime(fmt: Format, xs, g):
    """``RN(g · RN(1 − RN(ŷ·ŷ)))`` with ``ŷ = RN(tanh x̂)`` (PyTorch ``TanhBackward0``:
    ``grad * (1 − y²)``, in that order)."""
    x, g = _vjp_args(fmt, xs, g)
    y = _apply("tanh", fmt, x)[0]
    d = fmt.sub(_one_like(y), fmt.mul(y, y))
    return (fmt.mul(g, d),)


def tanh_vjp_spec(xs, g: Interval):
    """``g · sech² x``; ``sech²`` is even and decreasing in ``|x|``: with ``[t₀, t₁]`` the
    enclosure of ``tanh |x|``, ``sech² x ∈ [1 − t₁², 1 − t₀²]``."""
    (x,) = xs
    t = tanh_spec(x.abs())
    lo = np.asarray(1 - t.hi * t.hi, dtype=object)
    hi = np.asarray(1 - t.lo * t.lo, dtype=object)
    return (g * Interval(lo, hi),)


def _derivative_error(d_A, d_B, lip, e):
    """``min(A, B + lip·ε)``: two sound bounds of ``|d̂ − f'(x)|`` — (A) the rounded steps
    replayed on ``ŷ`` with its full forward bound; (B) the same replay with ``ŷ``'s rounding
    term only (error against ``f'(x̂)``) plus ``|f'(x̂) − f'(x)| ≤ sup|f''|·ε``."""
    return np.fmin(d_A, add_up(d_B, mul_up(lip, e)))


def tanh_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """Replay of ``s = RN(ŷ²)``, ``d = RN(1 − s)``, ``RN(g·d)`` with the product rule
    (``mul_error``) and the subtraction rule (``1`` exact; ``r_d = 0`` when ``1 − s`` is exact,
    e.g. ``s ≥ 1/2``, Sterbenz); ``|d − sech² x|`` is the smaller of the two bounds of
    :func:`_derivative_error` (``sup|tanh''| = 4/(3√3) < 0.7699``), capped at 1 (both in
    ``[0, 1]``)."""
    x, e = _unary_eps(fmt, xs, eps)
    g = _check_g(fmt, g, x)
    eg = checks.eps_like("eps_g", eps_g, g)
    y, exact = _apply("tanh", fmt, x)
    r_y = rounding_term(fmt, y, exact)
    e_y = _tanh_error(x, e, r_y)
    s, es_A = mul_error(fmt, y, e_y, y, e_y)
    _, es_B = mul_error(fmt, y, r_y, y, r_y)
    one = _one_like(y)
    d = fmt.sub(one, s)
    r_d = rounding_term(fmt, d, _exact_difference(one, s, d))
    e_d = np.fmin(add_up(_derivative_error(es_A, es_B, TANH2_LIP, e), r_d), 1.0)
    return (mul_error(fmt, g, eg, d, e_d)[1],)


tanh = register(Primitive("tanh", tanh_runtime, tanh_spec, tanh_bound, tanh_vjp_runtime,
                          tanh_vjp_spec, tanh_vjp_bound, _sample(2.0), libm=True))


# =============================================================================================
# sigmoid
# =============================================================================================
def sigmoid_runtime(fmt: Format, x):
    """``RN(σ(x̂))``, ``σ(x) = 1/(1 + e^−x)``, rounded once (not a chain of rounded ops)."""
    return _apply("sigmoid", fmt, checks.format_value("x", x, fmt))[0]


def sigmoid_spec(x: Interval) -> Interval:
    """``[σ(lo)↓, σ(hi)↑]`` (increasing); ``σ(0) = 1/2`` exactly."""
    return _spec_map("sigmoid", x)


def _sigmoid_prime_sup(x, e) -> np.ndarray:
    """Upper bound of ``sup σ'`` over ``[x̂ − ε, x̂ + ε]``: ``σ'(t) = E/(1 + E)²``, ``E = e^−|t|``,
    even and decreasing in ``|t|``; evaluated at a lower bound of ``max(|x̂| − ε, 0)``, capped
    at 1/4."""
    alo, _ = _abs_lo_hi(x)
    with np.errstate(invalid="ignore"):
        a = np.maximum(_down(alo - e), 0.0)
    a = np.where(np.isnan(a), 0.0, a)
    return np.fmin(_bell(_exp_down(-a), exp_up(-a)), 0.25)


def sigmoid_bound(fmt: Format, xs, eps):
    """``min(ε·sup σ', 1) + r`` (mean value theorem; σ's range has width 1). TorchLean's
    range-based ``1 + r`` is never smaller; ``r = 0`` at ``x̂ = 0`` (``σ(0) = 1/2`` exact)."""
    x, e = _unary_eps(fmt, xs, eps)
    y, exact = _apply("sigmoid", fmt, x)
    return guard_nonfinite(fmt, y, _sigmoid_error(x, e, rounding_term(fmt, y, exact)))


def _sigmoid_error(x, e, r) -> np.ndarray:
    """:func:`sigmoid_bound` given the rounding term ``r`` of ``RN(σ(x̂))``."""
    return _finish(np.fmin(mul_up(e, _sigmoid_prime_sup(x, e)), 1.0), e, r)


def sigmoid_vjp_runtime(fmt: Format, xs, g):
    """``RN(g · RN(ŷ · RN(1 − ŷ)))``, ``ŷ = RN(σ(x̂))``: the derivative ``ŷ(1 − ŷ)`` first, then
    times ``g`` (PyTorch's CPU kernel groups it as ``(g·(1 − y))·y``; this is nfbound's stated
    order)."""
    x, g = _vjp_args(fmt, xs, g)
    y = _apply("sigmoid", fmt, x)[0]
    return (fmt.mul(g, fmt.mul(y, fmt.sub(_one_like(y), y))),)


def sigmoid_vjp_spec(xs, g: Interval):
    """``g · σ'(x)``; ``σ'(x) = s(1 − s)`` with ``s = σ(|x|) ∈ [1/2, 1)`` decreasing in ``|x|``:
    with ``[s₀, s₁]`` the enclosure of ``σ(|x|)``, ``σ' ∈ [s₁(1 − s₁), s₀(1 − s₀)]``."""
    (x,) = xs
    s = sigmoid_spec(x.abs())
    lo = np.asarray(s.hi * (1 - s.hi), dtype=object)
    hi = np.asarray(s.lo * (1 - s.lo), dtype=object)
    return (g * Interval(lo, hi),)


def sigmoid_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """Replay of ``a = RN(1 − ŷ)`` (exact for ``ŷ ≥ 1/2``), ``d = RN(ŷ·a)``, ``RN(g·d)`` with
    the subtraction and product rules; ``|d − σ'(x)|`` from :func:`_derivative_error`
    (``sup|σ''| = 1/(6√3) < 0.09623``)."""
    x, e = _unary_eps(fmt, xs, eps)
    g = _check_g(fmt, g, x)
    eg = checks.eps_like("eps_g", eps_g, g)
    y, exact = _apply("sigmoid", fmt, x)
    r_y = rounding_term(fmt, y, exact)
    e_y = _sigmoid_error(x, e, r_y)
    one = _one_like(y)
    a = fmt.sub(one, y)
    r_a = rounding_term(fmt, a, _exact_difference(one, y, a))
    d, ed_A = mul_error(fmt, y, e_y, a, add_up(e_y, r_a))
    _, ed_B = mul_error(fmt, y, r_y, a, add_up(r_y, r_a))
    e_d = _derivative_error(ed_A, ed_B, SIGMOID2_LIP, e)
    return (mul_error(fmt, g, eg, d, e_d)[1],)


sigmoid = register(Primitive("sigmoid", sigmoid_runtime, sigmoid_spec, sigmoid_bound,
                             sigmoid_vjp_runtime, sigmoid_vjp_spec, sigmoid_vjp_bound,
                             _sample(4.0), libm=True))


# =============================================================================================
# softplus
# =============================================================================================
def softplus_runtime(fmt: Format, x):
    """``RN(log(1 + e^x̂))`` elementwise, rounded once."""
    return _apply("softplus", fmt, checks.format_value("x", x, fmt))[0]


def softplus_spec(x: Interval) -> Interval:
    """``[softplus(lo)↓, softplus(hi)↑]`` (increasing)."""
    return _spec_map("softplus", x)


def softplus_bound(fmt: Format, xs, eps):
    """``ε·σ(x̂ + ε) + r``: softplus' = σ is increasing, so its sup over ``[x̂ − ε, x̂ + ε]`` is
    ``σ(x̂ + ε) ≤ 1/(1 + e^−(x̂+ε))`` (denominator rounded down), at most TorchLean's
    Lipschitz-1 ``ε + r``."""
    x, e = _unary_eps(fmt, xs, eps)
    y, exact = _apply("softplus", fmt, x)
    r = rounding_term(fmt, y, exact)
    _, x_hi = _lo_hi(x)
    with np.errstate(over="ignore"):
        b = up(x_hi + e)
    sup = np.fmin(div_up(1.0, _down(1.0 + _exp_down(-b))), 1.0)
    return guard_nonfinite(fmt, y, _finish(mul_up(e, sup), e, r))


def softplus_vjp_runtime(fmt: Format, xs, g):
    """``RN(g · RN(σ(x̂)))`` (PyTorch ``SoftplusBackward0``: ``grad * sigmoid(x)``)."""
    x, g = _vjp_args(fmt, xs, g)
    return (fmt.mul(g, _apply("sigmoid", fmt, x)[0]),)


def softplus_vjp_spec(xs, g: Interval):
    (x,) = xs
    return (g * sigmoid_spec(x),)


def softplus_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """The product rule on ``g·σ̂`` with ``|σ̂ − σ(x)| ≤`` :func:`sigmoid_bound`."""
    x, e = _unary_eps(fmt, xs, eps)
    g = _check_g(fmt, g, x)
    s, exact = _apply("sigmoid", fmt, x)
    return (mul_error(fmt, g, checks.eps_like("eps_g", eps_g, g), s,
                      _sigmoid_error(x, e, rounding_term(fmt, s, exact)))[1],)


softplus = register(Primitive("softplus", softplus_runtime, softplus_spec, softplus_bound,
                              softplus_vjp_runtime, softplus_vjp_spec, softplus_vjp_bound,
                              _sample(4.0), libm=True))


# =============================================================================================
# safe_log: log(max(x, c))
# =============================================================================================
def _clamp_constant(c) -> mpq:
    """``c`` as the exact positive rational it denotes (``ValueError`` naming ``c``)."""
    if isinstance(c, np.ndarray):
        if c.shape != ():
            raise ValueError(f"safe_log: c must be a scalar, got an array of shape {c.shape}")
        c = c.item()
    if isinstance(c, bool) or c is None:
        raise ValueError(f"safe_log: c must be a positive finite number, got {c!r}")
    try:
        q = to_exact(c)
    except (TypeError, ValueError):
        raise ValueError(f"safe_log: c must be a positive finite number, got {c!r}") from None
    if isinstance(q, float) or q <= 0:
        raise ValueError(f"safe_log: c must be a positive finite number, got {c!r}")
    return q


def _clamped(x, c: mpq) -> np.ndarray:
    """``x < c`` elementwise, compared exactly."""
    a = np.asarray(x)
    if a.dtype != object:
        a = np.asarray(a, dtype=np.float64)
        cf = float(c)
        if mpq(cf) == c:
            return a < cf
        c_dn = -exact_up(-c)                  # c is not binary64: x < c ⇔ x ≤ c↓
        return a <= c_dn
    return np.vectorize(lambda v: to_exact(v) < c, otypes=[bool])(a)


@lru_cache(maxsize=None)
def _log_of_c(fmt: Format, c: mpq):
    r = correctly_rounded("log", fmt, c)
    if fmt.fits_binary64:
        r = float(r)
        r = -0.0 if (r == 0 and c < 1) else r
    return r


def safe_log_runtime(fmt: Format, x, *, c=DEFAULT_C):
    """``RN(log(max(x̂, c)))`` elementwise: one rounding of the exact value (the clamp is exact,
    ``c > 0`` taken exactly; default ``1e-12`` as a binary64 number)."""
    return _safe_log_apply(fmt, checks.format_value("x", x, fmt), _clamp_constant(c))[0]


def safe_log_values(fmt: Format, x, c=DEFAULT_C):
    """:func:`safe_log_runtime` on runtime values ``x̂`` that are not re-checked (for rules
    composing the log on values they computed)."""
    return _safe_log_apply(fmt, x, _clamp_constant(c))[0]


def _safe_log_apply(fmt: Format, x, cq: mpq):
    a = np.asarray(x)
    cl = _clamped(a, cq)
    if a.dtype == object:
        t = a.copy()
        t[cl] = mpq(1)
    else:
        t = np.where(cl, 1.0, np.asarray(a, dtype=np.float64))
    out, exact = _apply("log", fmt, t)
    if cl.any():
        out = out.copy()
        out[cl] = _log_of_c(fmt, cq)
        exact = exact.copy()
        exact[cl] = cq == 1
    return out, exact


def safe_log_spec(x: Interval, *, c=DEFAULT_C) -> Interval:
    """``[log(max(lo, c))↓, log(max(hi, c))↑]`` (``t ↦ log max(t, c)`` is nondecreasing and
    defined everywhere, so no domain error); ``log 1 = 0`` exactly."""
    return _spec_map("log", x.maximum(_clamp_constant(c)))


def safe_log_bound(fmt: Format, xs, eps, *, c=DEFAULT_C):
    """``min(t, log1p(t)) + r`` with ``t = max(D₋/m₋, D₊/m̂)``, where ``m̂ = max(x̂, c)``,
    ``m₋ = max(x̂ − ε, c)``, ``D₋ = min(ε, max(x̂ − c, 0))``, ``D₊ = min(ε, max(x̂ + ε − c, 0))``.

    Why: ``g(t) = log max(t, c)`` is nondecreasing, so over ``|x − x̂| ≤ ε`` the error
    ``g(x̂) − g(x)`` lies between ``g(x̂) − g(x̂ + ε) = −log(m₊/m̂)`` and
    ``g(x̂) − g(x̂ − ε) = log(m̂/m₋)``; ``m̂ − m₋ ≤ D₋`` and ``m₊ − m̂ ≤ D₊`` (max is 1-Lipschitz
    and both are 0 on the clamped side), and ``log(1 + u/m) ≤ u/m``. Since ``m₋ ≥ c > 0`` the
    bound is always finite (``≤ ε/c``): the clamp makes a domain error impossible. Where
    ``x̂ − ε > c`` this is at most the docs/design.md §4.9 rule ``ε/(x̂ − ε) + r``. ``r = 0`` where
    ``max(x̂, c) = 1``.
    """
    x, e = _unary_eps(fmt, xs, eps)
    cq = _clamp_constant(c)
    y, exact = _safe_log_apply(fmt, x, cq)
    r = rounding_term(fmt, y, exact)
    x_lo, x_hi = _lo_hi(x)
    c_lo = -exact_up(-cq)
    with np.errstate(invalid="ignore", over="ignore"):
        d_minus = np.fmin(e, np.maximum(up(x_hi - c_lo), 0.0))
        d_plus = np.fmin(e, np.maximum(up(up(x_hi + e) - c_lo), 0.0))
        m_minus = np.maximum(_down(x_lo - e), c_lo)
        m_hat = np.maximum(x_lo, c_lo)
    t = np.fmax(div_up(d_minus, m_minus), div_up(d_plus, m_hat))
    t = np.where(e == 0, 0.0, t)
    return guard_nonfinite(fmt, y, _finish(_log1p_up(t), e, r))


def safe_log_vjp_runtime(fmt: Format, xs, g, *, c=DEFAULT_C):
    """``1[x̂ ≥ c] · RN(g / x̂)`` (PyTorch ``log(clamp(x, min=c))``: ``LogBackward0`` gives
    ``g / max(x̂, c)``, then ``ClampMinBackward`` passes it where ``x̂ ≥ c`` and 0 elsewhere —
    the derivative of ``log max(x, c)`` is 0 below ``c``)."""
    x, g = _vjp_args(fmt, xs, g)
    cq = _clamp_constant(c)
    active = ~_clamped(x, cq)
    return (_where_active(fmt.div(g, _active_denominator(x, active)), active),)


def _where_active(q, active) -> np.ndarray:
    """``q̂`` where active, 0 elsewhere (the clamp's zero derivative)."""
    return np.where(active, q, mpq(0) if np.asarray(q).dtype == object else 0.0)


def _active_denominator(x, active):
    """``x̂`` where active, 1 elsewhere (a harmless divisor; those entries are replaced by 0)."""
    a = np.asarray(x)
    if a.dtype == object:
        d = a.copy()
        d[~active] = mpq(1)
        return d
    return np.where(active, a, 1.0)


def safe_log_vjp_spec(xs, g: Interval, *, c=DEFAULT_C):
    """``g · D(x)`` with ``D(x) = 1/x`` for ``x ≥ c`` and 0 below (the convention at the kink
    matches the runtime's). Over ``[lo, hi]``: ``[1/hi, 1/lo]`` if ``lo ≥ c``; 0 if ``hi < c``;
    else the hull ``[0, 1/c]`` of ``{0} ∪ [1/hi, 1/c]``."""
    (x,) = xs
    cq = _clamp_constant(c)
    lo_f, hi_f = x.lo.reshape(-1), x.hi.reshape(-1)
    dlo = np.empty(lo_f.size, dtype=object)
    dhi = np.empty(lo_f.size, dtype=object)
    for i in range(lo_f.size):
        lo, hi = lo_f[i], hi_f[i]
        if lo >= cq:
            dlo[i], dhi[i] = 1 / hi, 1 / lo
        elif hi < cq:
            dlo[i] = dhi[i] = mpq(0)
        else:
            dlo[i], dhi[i] = mpq(0), 1 / cq
    return (g * Interval(dlo.reshape(x.shape), dhi.reshape(x.shape)),)


def safe_log_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, c=DEFAULT_C):
    """Cases on the indicator ``1[x ≥ c]``, which the runtime evaluates at ``x̂``:

    * runtime active (``x̂ ≥ c``): against spec points ``x ≥ c`` the division rule
      (``div_error``, denominator floor ``max(c, x̂ − ε)``); where ``x̂ − ε ≥ c`` is not sure the
      spec may also be 0, so the bound is the larger of that and ``|q̂|``;
    * runtime clamped (output 0): 0 where ``x̂ + ε < c`` surely; else the spec is 0 or
      ``g/x`` with ``x ≥ c``: ``(|ĝ| + ε_g)/c``.
    """
    x, e = _unary_eps(fmt, xs, eps)
    g = _check_g(fmt, g, x)
    eg = np.asarray(checks.eps_like("eps_g", eps_g, g), dtype=np.float64)
    cq = _clamp_constant(c)
    active = ~_clamped(x, cq)
    c_hi, c_lo = exact_up(cq), -exact_up(-cq)
    q, b_div = div_error(fmt, g, eg, _active_denominator(x, active), np.where(active, e, 0.0),
                         floor=c_lo)
    x_lo, x_hi = _lo_hi(x)
    with np.errstate(invalid="ignore", over="ignore"):
        sure_active = _down(x_lo - e) >= c_hi
        sure_clamped = up(x_hi + e) < c_lo
    out = _where_active(q, active)
    _, q_abs = _abs_lo_hi(out)
    _, g_abs = _abs_lo_hi(g)
    b_active = np.where(sure_active, b_div, np.fmax(b_div, q_abs))
    b_clamped = np.where(sure_clamped, 0.0, div_up(add_up(g_abs, eg), c_lo))
    return (guard_nonfinite(fmt, out, np.where(active, b_active, b_clamped)),)


def _sample_safe_log(rng, fmt: Format):
    shape = tuple(int(s) for s in rng.integers(1, 5, size=rng.integers(1, 3)))
    x = np.abs(rng.standard_normal(shape)) * 3.0
    x = np.where(rng.random(shape) < 0.2, 0.0, x)
    c = [DEFAULT_C, 2.0 ** -6, 0.1, 0.5][int(rng.integers(4))]
    return (fmt.round(x),), {"c": c}


safe_log = register(Primitive("safe_log", safe_log_runtime, safe_log_spec, safe_log_bound,
                              safe_log_vjp_runtime, safe_log_vjp_spec, safe_log_vjp_bound,
                              _sample_safe_log, libm=True))
