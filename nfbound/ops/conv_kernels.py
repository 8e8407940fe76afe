"""Compiled (Numba) kernels of the convolution family: runtime and replay bound in one pass.

Every kernel evaluates, for each output entry, a sequential rounded accumulation

    s ← t_0,   s ← RN(s + t_j)  (j = 1, 2, …),   then optionally  s ← RN(s + b)

where ``t_j = RN(a_j · w_j)`` (a product of two runtime values; the bias sum has no product) —
the *sequential* order of :mod:`nfbound.ops.conv`, with the term lists given as precomputed
index tables (structural zeros — padding, positions a kernel offset misses — are not in the
lists: adding an exact 0 changes nothing and is charged nothing). The first live term is
taken as ``0 + t_0``, an exact addition, so it is copied with its bound.

Alongside, when ``with_bound`` is set, the replay bound (docs/design.md §4) is accumulated with the
same float64 operations, in the same order, as the NumPy generic path
(:func:`nfbound.ops.elementwise.mul_error`, :func:`nfbound.ops.accumulate.rounded_add`,
:func:`nfbound.bounds.rounding.rounding_term`, :mod:`nfbound.bounds.upward`), so the two
paths give bit-identical bounds (tested):

* product term  ``ε_t = ((|a|·ε_w ⊕ |w|·ε_a) ⊕ ε_a·ε_w) ⊕ r_mul`` where every ``⊕``/``·`` is a
  binary64 operation followed by one step up (``nextafter(·, +inf)``), except that a product
  with a zero factor is exactly 0 and adding an exact 0 is exact (no step; ``add_up``); a NaN
  bound becomes ``inf``; ``r_mul = 0`` when ``a = 0`` or ``w = 0`` (exact product);
* accumulation  ``e ← (e ⊕ ε_t) ⊕ r_add`` with ``r_add = 0`` when ``s = 0`` or ``t = 0``;
* ``r`` = :func:`rounding_term` of the runtime result: ``ulp(ẑ)/2`` (nearest) or ``ulp(ẑ)``
  (directed), ``inf`` when ``ẑ`` is not finite or is a saturated ``±max_finite``.

One binary64 step up after a round-to-nearest operation on nonnegative reals is an upper
bound of the exact result (it errs by at most half a step), so every bound here is at least
the mathematical replay bound.

Kernel format parameters ``p, emin, max_finite, rounding, overflow, simple`` are
``Format.kernel_params``; they are valid only when ``Format.fast_ops`` is true. ``nearest``
and ``saturates`` select the rounding-term variant (see :mod:`nfbound.bounds.rounding`).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from ..formats.fast import FTZ, NEAREST_EVEN, OVF_NAN, OVF_SATURATE, op_scalar, smallest_normal

_inline = numba.njit(cache=True, nogil=True, inline="always")   # small helpers: IR-inlined
_call = numba.njit(cache=True, nogil=True)                       # a real call (rare paths)
_kernel = numba.njit(cache=True, nogil=True, parallel=True)
_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_SIGN = np.int64(-0x8000000000000000)
_IMPLICIT = np.int64(1 << 52)
_TINY = 5e-324          # nextafter(0, +inf): the smallest positive binary64 value


@intrinsic
def _f2i(typingctx, x):
    """The bit pattern of a float64 as an int64 (bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))
    return types.int64(types.float64), codegen


@intrinsic
def _i2f(typingctx, b):
    """The float64 with bit pattern ``b`` (bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(types.int64), codegen


@_inline
def up(v):
    """``nextafter(v, +inf)`` for every float64 ``v`` (NaN and +inf are fixed points)."""
    if v != v or v == math.inf:
        return v
    if v == 0.0:
        return _TINY
    b = _f2i(v)
    return _i2f(b + 1) if v > 0.0 else _i2f(b - 1)


@_inline
def mul_up(a, b):
    """Upper bound of ``a·b`` (``a, b ≥ 0``); exactly 0 when a factor is 0 (also ``0·inf``)."""
    if a == 0.0 or b == 0.0:
        return 0.0
    return up(a * b)


@_inline
def add_step(acc, t):
    """One addition of :func:`nfbound.bounds.upward.add_up`: ``acc + t`` rounded up, exact
    (no step) when an operand is 0."""
    if t == 0.0:
        return acc
    if acc == 0.0:
        return t
    return up(acc + t)


@_inline
def rounding_term(z, exact, p, emin, max_finite, rounding, nearest, saturates):
    """:func:`nfbound.bounds.rounding.rounding_term` of one runtime result ``z`` (FLT formats):
    ``ulp(z)/2`` (at least ``2^−1074``) or ``ulp(z)`` with ``ulp(z) = 2^max(mag(z) − p, emin)``
    (``2^emin`` at 0), ``b_min`` for ``|z| < b_min`` when ``rounding`` carries a subnormal
    flag (``Format.underflow_term``), ``inf`` if ``z`` is not finite or a saturated
    ``±max_finite``, 0 if the op was exact."""
    if exact:
        return 0.0
    if not math.isfinite(z):
        return math.inf
    if saturates and abs(z) == max_finite:
        return math.inf
    if rounding >= FTZ and abs(z) < smallest_normal(p, emin):
        return smallest_normal(p, emin)
    E = (_f2i(z) & _ABS) >> 52
    if E != 0:                      # normal binary64: mag(z) = E − 1022, no libm call
        c = max(E - 1022 - p, emin)
    elif z == 0.0:
        c = emin
    else:
        c = max(math.frexp(z)[1] - p, emin)
    if nearest:
        c -= 1
    if c >= -1022:                  # 2^c (the ulp, or ulp/2), built from its bit pattern
        return _i2f((c + 1023) << 52)
    if not nearest:
        return math.ldexp(1.0, c)
    # as NumPy: ulp·0.5, which underflows to 0 for ulp = 2^−1074; 2^−1074 bounds 2^−1075
    return max(math.ldexp(1.0, c + 1) * 0.5, _TINY)


@_inline
def _nearest_even_hot(x, p, emin, max_finite):
    """``(True, RN(x))`` for the common case of ``round_scalar(x, 0, …)`` in ties-to-even,
    else ``(False, x)``; the same arithmetic as the hot paths of ``round_scalar`` and
    ``fast._round_block``, branch-free.

    For a normal binary64 ``x`` with ``d = max(53 − p, emin + 1075 − E)`` dropped bits,
    ``1 ≤ d ≤ 52``, rounding the integer significand on the target quantum to even is the
    integer operation ``(a + 2^(d−1) − 1 + lsb) & ~(2^d − 1)`` on the pattern ``a = |x|``
    (``lsb`` the significand's last kept bit — the implicit bit when ``d = 52``; a carry into
    the exponent field is the carry into the next binade); ``d ≤ 0`` means ``x`` is in the
    format. Binary64 subnormals, inf/NaN, ``d > 52`` and results beyond ``max_finite`` are
    left to the general code (data-dependent branches are what cost most on random data).
    """
    b = _f2i(x)
    a = b & _ABS
    E = a >> 52
    if E == 0 or E == 0x7FF:
        return False, x
    d = max(53 - p, emin + 1075 - E)
    if d <= 0:
        return True, x
    if d > 52:
        return False, x
    one = np.int64(1)
    r = (a + ((one << (d - 1)) - 1) + (((a | _IMPLICIT) >> d) & one)) & ~((one << d) - 1)
    if _i2f(r) > max_finite:
        return False, x
    return True, _i2f(r | (b & _SIGN))


@_inline
def _nearest_even_lane(x, d0, e0, maxbits):
    """Branch-free form of :func:`_nearest_even_hot` for vectorised loops (as
    ``fast._round_block``): ``(y, bad)`` with ``y = RN(x)`` whenever ``bad`` is 0; ``bad`` is 1
    for the cases left to the general code (``d0 = 53 − p``, ``e0 = emin + 1075``, ``maxbits``
    the bit pattern of ``max_finite``)."""
    b = _f2i(x)
    a = b & _ABS
    E = a >> 52
    d = max(d0, e0 - E)
    dd = min(max(d, 0), 52)
    one = np.int64(1)
    mask = (one << dd) - 1
    half = mask - (mask >> 1)
    inc = half - 1 + (((a | _IMPLICIT) >> dd) & one)
    inc = inc if dd > 0 else np.int64(0)
    r = (a + inc) & ~mask
    bad = (d > 52) | (E == 0x7FF) | (E == 0) | (r > maxbits)
    return _i2f(r | (b & _SIGN)), np.int64(bad)


@_inline
def _dot_step_lanes(a, ws, s, tmp, started, d0, e0, maxbits):
    """``tmp[co] = RN(s[co] + RN(a·ws[co]))`` (or ``RN(a·ws[co])`` for the first term) for all
    lanes without branches, so LLVM vectorises the loop; returns whether some lane needs the
    general code (then ``tmp`` is to be discarded)."""
    bad = np.int64(0)
    if started:
        for co in range(s.size):
            t, b1 = _nearest_even_lane(a * ws[co], d0, e0, maxbits)
            y, b2 = _nearest_even_lane(s[co] + t, d0, e0, maxbits)
            tmp[co] = y
            bad |= b1 | b2
    else:
        for co in range(s.size):
            t, b1 = _nearest_even_lane(a * ws[co], d0, e0, maxbits)
            tmp[co] = t
            bad |= b1
    return bad != 0


@_inline
def _up_lane(v):
    """:func:`up` for ``v ≥ 0`` (or NaN) as selects: ``nextafter(v, +inf)``."""
    nxt = _i2f(_f2i(v) + 1)
    return _TINY if v == 0.0 else (v if v == math.inf else nxt)


@_inline
def _mul_up_lane(a, b):
    """:func:`mul_up` as selects."""
    pr = _up_lane(a * b)
    return 0.0 if (a == 0.0) | (b == 0.0) else pr


@_inline
def _add_step_lane(acc, t):
    """:func:`add_step` as selects."""
    sm = _up_lane(acc + t)
    return acc if t == 0.0 else (t if acc == 0.0 else sm)


@_inline
def _rounding_term_lane(z, exact, p, emin, max_finite, saturates):
    """:func:`rounding_term` for nearest modes as selects: ``(r, bad)``; ``bad`` when ``z`` is
    not finite, a binary64 subnormal, saturated, or ``ulp(z)/2 < 2^−1022`` (left to the scalar
    code)."""
    E = (_f2i(z) & _ABS) >> 52
    c = max(E - 1022 - p, emin)
    c = (emin if z == 0.0 else c) - 1
    r = _i2f((max(c, -1022) + 1023) << 52)
    bad = (E == 0x7FF) | ((E == 0) & (z != 0.0)) | (c < -1022) | (saturates & (abs(z) == max_finite))
    return (0.0 if exact else r), np.int64(bad & (not exact))


@_inline
def _dot_step_lanes_bound(a, ea, ws, ews, s, e, ts, te, started, p, emin, max_finite,
                          saturates, d0, e0, maxbits):
    """The bound-carrying step of :func:`_dot_step_lanes` (nearest-even, ``simple`` formats):
    for every lane ``co`` the product ``RN(a·w)`` with its mul-rule bound and the accumulation
    with its rounding term, exactly the operations of :func:`_product` and
    :func:`_accumulate`, written with selects so that the loop vectorises; results into
    ``ts``, ``te``; returns whether some lane needs the scalar code (then both are discarded)."""
    bad = np.int64(0)
    aa = abs(a)
    for co in range(s.size):
        w = ws[co]
        ew = ews[co]
        t, b1 = _nearest_even_lane(a * w, d0, e0, maxbits)
        rm, b2 = _rounding_term_lane(t, (a == 0.0) | (w == 0.0), p, emin, max_finite, saturates)
        et = _add_step_lane(_add_step_lane(_add_step_lane(_mul_up_lane(aa, ew),
                                                          _mul_up_lane(abs(w), ea)),
                                           _mul_up_lane(ea, ew)), rm)
        et = math.inf if et != et else et
        if started:
            sc = s[co]
            y, b3 = _nearest_even_lane(sc + t, d0, e0, maxbits)
            ra, b4 = _rounding_term_lane(y, (sc == 0.0) | (t == 0.0), p, emin, max_finite,
                                         saturates)
            ts[co] = y
            te[co] = _add_step_lane(_add_step_lane(e[co], et), ra)
            bad |= b1 | b2 | b3 | b4
        else:
            ts[co] = t
            te[co] = et
            bad |= b1 | b2
    return bad != 0


@_call
def _op_general(op, a, b, p, emin, max_finite, rounding, overflow, simple):
    """``Format._op`` on scalars: :func:`nfbound.formats.fast.op_scalar`, then infinities
    mapped to NaN or ``±max`` in formats without them (as ``Format._no_inf`` does). A real
    call: one compiled copy shared by every call site."""
    z = op_scalar(op, a, b, p, emin, max_finite, rounding, overflow, simple)
    if z == math.inf or z == -math.inf:
        if overflow == OVF_NAN:
            return math.nan
        if overflow == OVF_SATURATE:
            return max_finite if z > 0 else -max_finite
    return z


@_inline
def mul(a, b, p, emin, max_finite, rounding, overflow, simple):
    """``RN(a·b)`` exactly as ``Format.mul``: when ``simple`` (binary64 double rounding is
    innocuous) and ties-to-even, ``op_scalar`` rounds the binary64 product once with
    ``round_scalar(a·b, 0, …)``, whose common case is done inline here; else ``op_scalar``."""
    if simple and rounding == NEAREST_EVEN:
        ok, y = _nearest_even_hot(a * b, p, emin, max_finite)
        if ok:
            return y
    return _op_general(2, a, b, p, emin, max_finite, rounding, overflow, simple)


@_inline
def add(a, b, p, emin, max_finite, rounding, overflow, simple):
    """``RN(a + b)`` exactly as ``Format.add`` (same structure as :func:`mul`)."""
    if simple and rounding == NEAREST_EVEN:
        ok, y = _nearest_even_hot(a + b, p, emin, max_finite)
        if ok:
            return y
    return _op_general(0, a, b, p, emin, max_finite, rounding, overflow, simple)


@_inline
def _product(a, ea, w, ew, with_bound, p, emin, max_finite, rounding, overflow, simple,
             nearest, saturates):
    """``(RN(a·w), ε_t)`` with the mul rule ``|a|ε_w + |w|ε_a + ε_aε_w + r_mul``."""
    t = mul(a, w, p, emin, max_finite, rounding, overflow, simple)
    if not with_bound:
        return t, 0.0
    r = rounding_term(t, a == 0.0 or w == 0.0, p, emin, max_finite, rounding, nearest, saturates)
    et = add_step(add_step(add_step(mul_up(abs(a), ew), mul_up(abs(w), ea)), mul_up(ea, ew)), r)
    return t, (math.inf if et != et else et)


@_inline
def _accumulate(started, s, e, t, et, with_bound, p, emin, max_finite, rounding, overflow,
                simple, nearest, saturates):
    """One step of the sequential replay: copy the first term, else ``RN(s + t)`` and
    ``e ← (e ⊕ ε_t) ⊕ r_add``."""
    if not started:
        return t, et
    s2 = add(s, t, p, emin, max_finite, rounding, overflow, simple)
    if with_bound:
        r = rounding_term(s2, s == 0.0 or t == 0.0, p, emin, max_finite, rounding, nearest,
                          saturates)
        e = add_step(add_step(e, et), r)
    return s2, e


@_inline
def _term_step(a, ea, ws, ews, s, e, tmp, tmpe, started, with_bound, lanes, p, emin,
               max_finite, rounding, overflow, simple, nearest, saturates, d0, e0, maxbits):
    """One term of every lane's sum, in place: ``s[co] ← RN(s[co] + RN(a·ws[co]))`` (just the
    product while not ``started``) and, with ``with_bound``, ``e[co]`` by :func:`_product` and
    :func:`_accumulate`. The vectorised lanes (:func:`_dot_step_lanes`,
    :func:`_dot_step_lanes_bound`, results in ``tmp``/``tmpe``) are used when ``lanes`` and
    kept unless some lane needs the scalar code, which then redoes the step."""
    if with_bound:
        if lanes and not _dot_step_lanes_bound(a, ea, ws, ews, s, e, tmp, tmpe, started, p, emin,
                                               max_finite, saturates, d0, e0, maxbits):
            s[:] = tmp
            e[:] = tmpe
            return
        for co in range(s.size):
            tt, et = _product(a, ea, ws[co], ews[co], True, p, emin, max_finite, rounding,
                              overflow, simple, nearest, saturates)
            s[co], e[co] = _accumulate(started, s[co], e[co], tt, et, True, p, emin, max_finite,
                                       rounding, overflow, simple, nearest, saturates)
    elif lanes and not _dot_step_lanes(a, ws, s, tmp, started, d0, e0, maxbits):
        s[:] = tmp
    else:
        for co in range(s.size):
            tt = mul(a, ws[co], p, emin, max_finite, rounding, overflow, simple)
            s[co] = add(s[co], tt, p, emin, max_finite, rounding, overflow,
                        simple) if started else tt


@_kernel
def gather_reduce(A, eA, W, eW, bias, eb, first, second, count, has_bias, with_bound,
                  p, emin, max_finite, rounding, overflow, simple, nearest, saturates):
    """``out[n, co, t] = Σ_c Σ_{j < count[t]} RN(A[n, c, first[t, j]] · W[c, second[t, j], co])``
    accumulated sequentially over ``c`` (outer) then ``j``, bias last; with its replay bound.

    Shapes: ``A, eA`` (N, C, S); ``W, eW`` (C, K, Co); ``bias, eb`` (Co,); tables (P, M).
    Serves the conv forward, the conv input gradient and the transpose-conv forward. One
    parallel task per ``(n, t)``; the innermost loop runs over the independent sums of all
    output channels (the order of each sum is unchanged). In ties-to-even formats where
    binary64 double rounding is innocuous, that loop is branch-free and vectorised
    (:func:`_dot_step_lanes`, :func:`_dot_step_lanes_bound`), and redone with the scalar code
    when some lane needs it.
    """
    N, C = A.shape[0], A.shape[1]
    Co = W.shape[2]
    P = first.shape[0]
    out = np.zeros((N, Co, P))
    bnd = np.zeros((N, Co, P))
    lanes = simple and rounding == NEAREST_EVEN
    d0, e0, maxbits = 53 - p, emin + 1075, _f2i(max_finite)
    for q in prange(N * P):
        n = q // P
        t = q % P
        s = np.zeros(Co)
        e = np.zeros(Co)
        tmp = np.zeros(Co)
        tmpe = np.zeros(Co)
        started = False
        for c in range(C):
            for j in range(count[t]):
                i = first[t, j]
                k = second[t, j]
                _term_step(A[n, c, i], eA[n, c, i] if with_bound else 0.0, W[c, k],
                           eW[c, k] if with_bound else W[c, k], s, e, tmp, tmpe, started,
                           with_bound, lanes, p, emin, max_finite, rounding, overflow, simple,
                           nearest, saturates, d0, e0, maxbits)
                started = True
        for co in range(Co):
            if has_bias:
                s[co], e[co] = _accumulate(started, s[co], e[co], bias[co], eb[co], with_bound,
                                           p, emin, max_finite, rounding, overflow, simple,
                                           nearest, saturates)
            out[n, co, t] = s[co]
            bnd[n, co, t] = e[co]
    return out, bnd


@_kernel
def weight_grad(X, eX, D, eD, first, second, count, with_bound,
                p, emin, max_finite, rounding, overflow, simple, nearest, saturates):
    """``g[co, ci, k] = Σ_n Σ_{j < count[k]} RN(X[n, ci, first[k, j]] · D[n, second[k, j], co])``
    accumulated sequentially over ``n`` (outer) then ``j``; with its replay bound.

    Shapes: ``X, eX`` (N, Ci, S); ``D, eD`` (N, P, Co) (channels last); tables (K, M). The
    conv kernel gradient (``X`` the input, ``D`` the output gradient) and the transpose-conv
    weight gradient. One parallel task per ``(ci, k)``, output channels innermost.
    """
    N, Ci = X.shape[0], X.shape[1]
    Co = D.shape[2]
    K = first.shape[0]
    out = np.zeros((Co, Ci, K))
    bnd = np.zeros((Co, Ci, K))
    lanes = simple and rounding == NEAREST_EVEN
    d0, e0, maxbits = 53 - p, emin + 1075, _f2i(max_finite)
    for q in prange(Ci * K):
        ci = q // K
        k = q % K
        s = np.zeros(Co)
        e = np.zeros(Co)
        tmp = np.zeros(Co)
        tmpe = np.zeros(Co)
        started = False
        for n in range(N):
            for j in range(count[k]):
                i = first[k, j]
                o = second[k, j]
                _term_step(X[n, ci, i], eX[n, ci, i] if with_bound else 0.0, D[n, o],
                           eD[n, o] if with_bound else D[n, o], s, e, tmp, tmpe, started,
                           with_bound, lanes, p, emin, max_finite, rounding, overflow, simple,
                           nearest, saturates, d0, e0, maxbits)
                started = True
        for co in range(Co):
            out[co, ci, k] = s[co]
            bnd[co, ci, k] = e[co]
    return out, bnd


@_kernel
def bias_grad(D, eD, with_bound, p, emin, max_finite, rounding, overflow, simple, nearest,
              saturates):
    """``g[co] = Σ_n Σ_o D[n, co, o]`` accumulated sequentially (``n`` outer, ``o`` row-major);
    with its replay bound (the terms are exact runtime values with errors ``eD``)."""
    N, Co, P = D.shape
    out = np.zeros(Co)
    bnd = np.zeros(Co)
    for co in prange(Co):
        s = 0.0
        e = 0.0
        started = False
        for n in range(N):
            for o in range(P):
                s, e = _accumulate(started, s, e, D[n, co, o], eD[n, co, o], with_bound, p,
                                   emin, max_finite, rounding, overflow, simple, nearest,
                                   saturates)
                started = True
        out[co] = s
        bnd[co] = e
    return out, bnd
