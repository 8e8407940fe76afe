"""Compiled (Numba) kernels of the convolution family: runtime and replay bound in one pass.

Every kernel evaluates, for each output entry, a sequential rounded accumulation

    s ← t_0,   s ← RN(s + t_j)  (j = 1, 2, …),   then optionally  s ← RN(s + b)

where ``t_j = RN(a_j · w_j)`` (a product of two runtime values; the bias sum has no product) —
the *sequential* order of :mod:`nfbound.ops.conv`, with the term lists given as precomputed
index tables (structural zeros — padding, positions a kernel offset misses — are not in the
lists: adding an exact 0 changes nothing and is charged nothing). The first live term is
taken as ``0 + t_0``, an exact addition, so it is copied with its bound.

Alongside, when ``with_bound`` is set, the replay bound (DESIGN.md §4) is accumulated with the
same float64 operations, in the same order, as the NumPy generic path
(:func:`nfbound.ops.elementwise.mul_error`, :func:`nfbound.ops.accumulate.rounded_add`,
:func:`nfbound.bounds.rounding.rounding_term`, :mod:`nfbound.bounds.upward`), so the two
paths give bit-identical bounds (tested):

* product term  ``ε_t = ((|a|·ε_w ⊕ |w|·ε_a) ⊕ ε_a·ε_w) ⊕ r_mul`` where every ``⊕``/``·`` is a
  binary64 operation followed by one step up (``nextafter(·, +inf)``), a product with a zero
  factor is exactly 0, and ``r_mul = 0`` when ``a = 0`` or ``w = 0`` (exact product);
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

from ..formats.fast import OVF_NAN, OVF_SATURATE, op_scalar

_inline = numba.njit(cache=True, nogil=True)
_kernel = numba.njit(cache=True, nogil=True, parallel=True)
_TINY = 5e-324          # nextafter(0, +inf): the smallest positive binary64 value
_ADD, _MUL = 0, 2


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
def rounding_term(z, exact, p, emin, max_finite, nearest, saturates):
    """:func:`nfbound.bounds.rounding.rounding_term` of one runtime result ``z`` (FLT formats):
    ``ulp(z)/2`` or ``ulp(z)`` with ``ulp(z) = 2^max(mag(z) − p, emin)`` (``2^emin`` at 0),
    ``inf`` if ``z`` is not finite or a saturated ``±max_finite``, 0 if the op was exact."""
    if exact:
        return 0.0
    if not math.isfinite(z):
        return math.inf
    if saturates and abs(z) == max_finite:
        return math.inf
    if z == 0.0:
        c = emin
    else:
        c = max(math.frexp(z)[1] - p, emin)
    h = math.ldexp(1.0, c)
    return h * 0.5 if nearest else h


@_inline
def _op(op, a, b, p, emin, max_finite, rounding, overflow, simple):
    """``Format._op`` on scalars: the compiled operation, then infinities mapped to NaN or
    ``±max`` in formats without infinities (as ``Format._no_inf`` does)."""
    z = op_scalar(op, a, b, p, emin, max_finite, rounding, overflow, simple)   # inlined here once
    if z == math.inf or z == -math.inf:
        if overflow == OVF_NAN:
            return math.nan
        if overflow == OVF_SATURATE:
            return max_finite if z > 0 else -max_finite
    return z


@_inline
def _product(a, ea, w, ew, with_bound, p, emin, max_finite, rounding, overflow, simple,
             nearest, saturates):
    """``(RN(a·w), ε_t)`` with the mul rule ``|a|ε_w + |w|ε_a + ε_aε_w + r_mul``."""
    t = _op(_MUL, a, w, p, emin, max_finite, rounding, overflow, simple)
    if not with_bound:
        return t, 0.0
    r = rounding_term(t, a == 0.0 or w == 0.0, p, emin, max_finite, nearest, saturates)
    et = up(up(up(mul_up(abs(a), ew) + mul_up(abs(w), ea)) + mul_up(ea, ew)) + r)
    return t, et


@_inline
def _accumulate(started, s, e, t, et, with_bound, p, emin, max_finite, rounding, overflow,
                simple, nearest, saturates):
    """One step of the sequential replay: copy the first term, else ``RN(s + t)`` and
    ``e ← (e ⊕ ε_t) ⊕ r_add``."""
    if not started:
        return t, et
    s2 = _op(_ADD, s, t, p, emin, max_finite, rounding, overflow, simple)
    if with_bound:
        r = rounding_term(s2, s == 0.0 or t == 0.0, p, emin, max_finite, nearest, saturates)
        e = up(up(e + et) + r)
    return s2, e


@_kernel
def gather_reduce(A, eA, W, eW, bias, eb, first, second, count, has_bias, with_bound,
                  p, emin, max_finite, rounding, overflow, simple, nearest, saturates):
    """``out[n, co, t] = Σ_{c} Σ_{j < count[t]} RN(A[n, c, first[t, j]] · W[c, co, second[t, j]])``
    accumulated sequentially over ``c`` (outer) then ``j``, bias last; with its replay bound.

    Shapes: ``A, eA`` (N, C, S); ``W, eW`` (C, Co, K); ``bias, eb`` (Co,); tables (P, M).
    Serves the conv forward, the conv input gradient and the transpose-conv forward.
    """
    N, C = A.shape[0], A.shape[1]
    Co = W.shape[1]
    P = first.shape[0]
    out = np.zeros((N, Co, P))
    bnd = np.zeros((N, Co, P))
    for q in prange(N * Co * P):
        n = q // (Co * P)
        co = (q // P) % Co
        t = q % P
        s = 0.0
        e = 0.0
        started = False
        m = count[t]
        for c in range(C):
            for j in range(m):
                a = A[n, c, first[t, j]]
                w = W[c, co, second[t, j]]
                ea = eA[n, c, first[t, j]] if with_bound else 0.0
                ew = eW[c, co, second[t, j]] if with_bound else 0.0
                tt, et = _product(a, ea, w, ew, with_bound, p, emin, max_finite, rounding,
                                  overflow, simple, nearest, saturates)
                s, e = _accumulate(started, s, e, tt, et, with_bound, p, emin, max_finite,
                                   rounding, overflow, simple, nearest, saturates)
                started = True
        if has_bias:
            s, e = _accumulate(started, s, e, bias[co], eb[co], with_bound, p, emin,
                               max_finite, rounding, overflow, simple, nearest, saturates)
        out[n, co, t] = s
        bnd[n, co, t] = e
    return out, bnd


@_kernel
def weight_grad(X, eX, D, eD, first, second, count, with_bound,
                p, emin, max_finite, rounding, overflow, simple, nearest, saturates):
    """``g[co, ci, k] = Σ_n Σ_{j < count[k]} RN(X[n, ci, first[k, j]] · D[n, co, second[k, j]])``
    accumulated sequentially over ``n`` (outer) then ``j``; with its replay bound.

    Shapes: ``X, eX`` (N, Ci, S); ``D, eD`` (N, Co, P); tables (K, M). The conv kernel
    gradient (``X`` the input, ``D`` the output gradient) and the transpose-conv weight gradient.
    """
    N, Ci = X.shape[0], X.shape[1]
    Co = D.shape[1]
    K = first.shape[0]
    out = np.zeros((Co, Ci, K))
    bnd = np.zeros((Co, Ci, K))
    for q in prange(Co * Ci * K):
        co = q // (Ci * K)
        ci = (q // K) % Ci
        k = q % K
        s = 0.0
        e = 0.0
        started = False
        m = count[k]
        for n in range(N):
            for j in range(m):
                x = X[n, ci, first[k, j]]
                d = D[n, co, second[k, j]]
                ex = eX[n, ci, first[k, j]] if with_bound else 0.0
                ed = eD[n, co, second[k, j]] if with_bound else 0.0
                tt, et = _product(x, ex, d, ed, with_bound, p, emin, max_finite, rounding,
                                  overflow, simple, nearest, saturates)
                s, e = _accumulate(started, s, e, tt, et, with_bound, p, emin, max_finite,
                                   rounding, overflow, simple, nearest, saturates)
                started = True
        out[co, ci, k] = s
        bnd[co, ci, k] = e
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
