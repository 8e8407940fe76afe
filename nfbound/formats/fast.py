"""Fast rounding engine: compiled (Numba) kernels on the binary64 bit pattern, radix 2.

Rounding a binary64 value ``x`` to ``FLT(p, emin)``: with the integer significand ``M`` and
``x = M · 2^q`` (``q`` the binary64 quantum of ``x``), the target quantum is
``2^c`` with ``c = max(mag(x) − p, emin)``; dropping ``d = c − q`` bits of ``M`` and rounding
the integer quotient in the format's mode gives ``RN(x) = ⌊M / 2^d⌉ · 2^c`` exactly (no
floating-point operation is involved but the final exact ``ldexp``). :func:`round_array` does
this on blocks of bit patterns without branches (vectorized; see :func:`_round_block`) and calls
:func:`round_scalar` only for the elements a block cannot handle.

Elementary operations ``a ∘ b`` on format values are computed in binary64 together with an
exact *residual* ``ρ`` (``a ∘ b = s + ρ`` exactly: TwoSum for ±, Dekker's TwoProduct for ×,
the remainder ``a − s·b`` for ÷ and ``a − s²`` for √). The kernel rounds ``s`` with the sign of
``ρ`` as a sticky bit, which is rounding to odd in disguise (Boldo & Melquiond): the result is
the correct one-step rounding of the exact value for every mode and every ``p ≤ 51``. When the
format is round-to-nearest with ``p ≤ 25`` the residual is not needed: binary64 double rounding
is innocuous there (Figueroa 1995; Flocq ``Double_rounding``: ``2p + 2 ≤ 53``).

Subnormal modes (``Format.subnormals``) travel in the rounding code (``Format.kernel_params``):
``rounding | FTZ | DAZ``. :func:`round_scalar` rounds gradually and then flushes a result below
``b_min = 2^(emin + p − 1)`` to a zero of its sign (FTZ); :func:`op_scalar` reads subnormal
operands as zeros of their sign (DAZ); :func:`round_array` sends the elements below ``b_min`` to
:func:`round_scalar`. Kernels elsewhere that call these inherit the mode, and their ties-to-even
shortcuts (``rounding == NEAREST_EVEN``) see a flagged code and take the general path.

Preconditions of the operations (checked by ``Format.fast_ops``): radix 2, ``p ≤ 51`` (or
binary64 itself), and a range well inside binary64's (``emin ≥ −480`` and largest finite
``≤ 2^480``) so that the residuals are exact (no underflow in TwoProduct, no overflow in TwoSum).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, UPWARD, DOWNWARD = 0, 1, 2, 3, 4
OVF_NONE, OVF_IEEE, OVF_SATURATE, OVF_NAN = 0, 1, 2, 3
ROUNDING_CODES = {"nearest_even": NEAREST_EVEN, "nearest_away": NEAREST_AWAY,
                  "toward_zero": TOWARD_ZERO, "upward": UPWARD, "downward": DOWNWARD}
OVERFLOW_CODES = {"none": OVF_NONE, "ieee": OVF_IEEE, "saturate": OVF_SATURATE, "nan": OVF_NAN}
#: Subnormal-mode flags or-ed into a rounding code; ``rounding & ROUNDING_MASK`` is the mode.
FTZ, DAZ = 8, 16
ROUNDING_MASK = 7
SUBNORMAL_CODES = {"gradual": 0, "ftz": FTZ, "daz": DAZ, "ftz+daz": FTZ | DAZ}

_SPLITTER = 134217729.0  # 2^27 + 1, Veltkamp's splitting constant for binary64
# No Numba-IR inlining (``inline="always"``): LLVM inlines these small helpers anyway, and IR
# inlining of ``round_scalar`` at each call site of ``op_scalar`` made ``op_array`` take
# minutes to compile (parfors over the blown-up IR); same speed without it.
# error_model="numpy": x/0 is ±inf or NaN (IEEE), never ZeroDivisionError.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@intrinsic
def _bits(typingctx, x):
    """The IEEE 754 bit pattern of a float64 as an int64 (a bitcast, no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))
    return types.int64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, b):
    """The float64 whose bit pattern is the int64 ``b``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(types.int64), codegen


_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_SIGN = np.int64(-0x8000000000000000)
_MANT = np.int64(0x000FFFFFFFFFFFFF)
_IMPLICIT = np.int64(1 << 52)


@_jit
def _round_up(odd, below, half_cmp, inexact, negative, rounding):
    """Whether the truncated magnitude ``m`` (integer significand on the target quantum)
    becomes ``m + 1`` (returns −1 for ``m − 1``).

    ``odd`` is the parity of ``m`` (ties to even); ``half_cmp`` is the sign of (exact remainder
    − half quantum); ``below`` says the exact magnitude lies just below ``m`` quanta (remainder
    0 with a negative sticky residual).
    """
    if not inexact:
        return 0
    if rounding == NEAREST_EVEN:
        if below:
            return 0
        return 1 if half_cmp > 0 or (half_cmp == 0 and odd != 0) else 0
    if rounding == NEAREST_AWAY:
        return 0 if below else (1 if half_cmp >= 0 else 0)
    away = (rounding == UPWARD and not negative) or (rounding == DOWNWARD and negative)
    if below:
        return 0 if away else -1
    return 1 if away else 0


@_jit
def _overflow(y, negative, max_finite, rounding, overflow):
    """The signed result for the magnitude ``y = |RN(x)|`` (rounded with unbounded exponent):
    ``±y`` when ``y ≤ max_finite``, else the overflow rule (IEEE 754 §7.4: ±inf for the
    nearest modes and away from zero, ±max toward zero; or ±max for saturate, NaN for nan)."""
    if y > max_finite:
        if overflow == OVF_IEEE:
            toward_max = (rounding == TOWARD_ZERO or (rounding == UPWARD and negative)
                          or (rounding == DOWNWARD and not negative))
            y = max_finite if toward_max else math.inf
        elif overflow == OVF_SATURATE:
            y = max_finite
        elif overflow == OVF_NAN:
            return math.nan
    return -y if negative else y


@_jit
def smallest_normal(p, emin):
    """``b_min = 2^(emin + p − 1)`` (a binary64 number for every ``Format.fits_binary64``)."""
    return math.ldexp(1.0, emin + p - 1)


@_jit
def flush(x, p, emin):
    """``x``, or a zero of its sign when ``0 < |x| < b_min`` (FTZ of a result, DAZ of an
    operand)."""
    if x != 0.0 and abs(x) < smallest_normal(p, emin):
        return math.copysign(0.0, x)
    return x


@_jit
def round_scalar(x, sticky, p, emin, max_finite, rounding, overflow):
    """:func:`round_gradual` in the rounding mode ``rounding & ROUNDING_MASK``, then the result
    flushed to a zero of its sign when the code carries :data:`FTZ` and it lies below ``b_min``
    (tininess after rounding to the subnormal grid)."""
    y = round_gradual(x, sticky, p, emin, max_finite, rounding & ROUNDING_MASK, overflow)
    if rounding & FTZ:
        return flush(y, p, emin)
    return y


@_jit
def round_gradual(x, sticky, p, emin, max_finite, rounding, overflow):
    """``RN(x + τ)`` where ``τ`` is a real of sign ``sticky`` (−1, 0, +1) smaller than half a
    binary64 quantum of ``x``, rounded to ``FLT(p, emin)`` in ``rounding``; then overflow.

    Normal binary64 ``x = (2^52 + f)·2^(E−1075)``: with ``mag(x) = E − 1022`` the target quantum
    exponent is ``c = max(mag − p, emin)`` and ``d = c − (E − 1075)`` bits are dropped. For
    ``d ≤ 52`` the dropped bits are mantissa bits of the pattern, so rounding the pattern's
    integer ``⌊bits / 2^d⌉`` and shifting back is exact (a carry into the exponent field is
    the carry into the next binade).
    """
    b = _bits(x)
    a = b & _ABS
    E = a >> 52
    if E != 0 and E != 0x7FF and sticky == 0 and rounding == NEAREST_EVEN:
        # hot path: normal binary64 input, no residual, ties-to-even
        d = max(53 - p, emin - (E - 1075))
        if d <= 0:
            # the format's quantum is at most binary64's: x is on the grid, and only the
            # overflow rule can change it
            return _overflow(_from_bits(a), b < 0, max_finite, rounding, overflow)
        if d <= 52:
            rem = a & ((np.int64(1) << d) - 1)
            half = np.int64(1) << (d - 1)
            qm = a >> d
            # parity of the integer significand: the implicit bit when d = 52 (qm is then the
            # exponent field, whose parity is not the significand's)
            if rem > half or (rem == half and ((a | _IMPLICIT) >> d) & 1 == 1):
                qm += 1
            y = _from_bits(qm << d)
            if y > max_finite:
                return _overflow(y, b < 0, max_finite, rounding, overflow)
            return _from_bits((qm << d) | (b & _SIGN))
    if E == 0x7FF or a == 0:
        return x
    negative = b < 0
    s = -sticky if negative else sticky   # sign of the residual in the direction of |x|
    if E == 0:   # binary64 subnormal: the integer significand is the pattern itself
        q = -1074
        e = -1074
        t = a
        while t > 0:
            t >>= 1
            e += 1
    else:
        q = E - 1075
        e = E - 1022
    d = max(e - p, emin) - q
    if d <= 0:
        # the format's quantum is at most binary64's here, so x is on the grid (a nonzero
        # residual would need p > 51, which ``Format.fast_ops`` excludes); only the
        # overflow rule can change it
        return _overflow(_from_bits(a), negative, max_finite, rounding, overflow)
    if d <= 52:
        rem = a & ((np.int64(1) << d) - 1)
        half = np.int64(1) << (d - 1)
        if rem > half:
            half_cmp = 1
        elif rem < half:
            half_cmp = -1
        else:
            half_cmp = s
        qm = a >> d
        inexact = rem != 0 or s != 0
        below = rem == 0 and s < 0
        odd = ((a | _IMPLICIT) >> d) & 1 if E != 0 else qm & 1
        up = _round_up(odd, below, half_cmp, inexact, negative, rounding)
        if up >= 0:
            y = _from_bits((qm + up) << d)
        else:
            # |x| = qm·2^c is a format value and the exact magnitude lies just below it: the
            # result is its predecessor |x| − 2^c', where c' is the quantum of the binade below
            # when |x| is a power of two (c' = max(mag(x) − 1 − p, emin), which is c itself in
            # the format's subnormal range), else c. Both terms are binary64 values: exact.
            pow2 = (a & (a - 1)) == 0 if E == 0 else (a & _MANT) == 0
            c = q + d
            if pow2:
                c = max(e - 1 - p, emin)
            y = _from_bits(a) - math.ldexp(1.0, c)
        return _overflow(y, negative, max_finite, rounding, overflow)
    # d ≥ 53: |x| < 2^c, the result is 0 or 2^c with c = q + d
    if d == 53 and E != 0:   # |x| ∈ [2^c/2, 2^c): compare with the half quantum 2^(c−1)
        half_cmp = 1 if (a & ((np.int64(1) << 52) - 1)) != 0 else s
    else:                    # |x| < 2^(c−1)
        half_cmp = -1
    up = _round_up(np.int64(0), False, half_cmp, True, negative, rounding)
    y = math.ldexp(1.0, q + d) if up > 0 else 0.0
    return _overflow(y, negative, max_finite, rounding, overflow)


@_jit
def two_sum(a, b):
    """Knuth's TwoSum: ``s = fl(a + b)`` and ``ρ`` with ``a + b = s + ρ`` exactly."""
    s = a + b
    bb = s - a
    rho = (a - (s - bb)) + (b - bb)
    return s, rho


@_jit
def _split(a):
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


@_jit
def two_product(a, b):
    """Dekker's TwoProduct: ``p = fl(a·b)`` and ``ρ`` with ``a·b = p + ρ`` exactly
    (no overflow, no underflow)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    rho = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, rho


@_jit
def _sgn(v):
    return (v > 0.0) - (v < 0.0)


@_jit
def op_scalar(op, a, b, p, emin, max_finite, rounding, overflow, simple):
    """One elementary operation (0 add, 1 sub, 2 mul, 3 div, 4 sqrt of ``a``) rounded once.

    ``simple`` is true when binary64 double rounding is innocuous (nearest, p ≤ 25) or the
    format is binary64 itself; otherwise the exact residual's sign is the sticky bit.
    ``rounding`` may carry the subnormal-mode flags: DAZ reads subnormal operands as zeros of
    their sign, FTZ is applied by :func:`round_scalar`.
    """
    if rounding & DAZ:
        a = flush(a, p, emin)
        b = flush(b, p, emin)
    if op == 1:
        b = -b
        op = 0
    if op == 0:
        s = a + b
        if s == 0.0 and (rounding & ROUNDING_MASK) == DOWNWARD and (_bits(a) | _bits(b)) != 0:
            # IEEE 754 §6.3: an exact zero sum is −0 under roundTowardNegative (unless both
            # operands are +0); binary64 evaluated the sum to nearest, which gives +0.
            return -0.0
        if simple or not math.isfinite(s):
            return round_scalar(s, 0, p, emin, max_finite, rounding, overflow)
        s, rho = two_sum(a, b)
        return round_scalar(s, _sgn(rho), p, emin, max_finite, rounding, overflow)
    if op == 2:
        s = a * b
        if simple or not math.isfinite(s) or s == 0.0:
            return round_scalar(s, 0, p, emin, max_finite, rounding, overflow)
        s, rho = two_product(a, b)
        return round_scalar(s, _sgn(rho), p, emin, max_finite, rounding, overflow)
    if op == 3:
        s = a / b
        if simple or not math.isfinite(s) or s == 0.0:
            return round_scalar(s, 0, p, emin, max_finite, rounding, overflow)
        # a/b − s = (a − s·b)/b; a − s·b is exact from TwoProduct and Sterbenz
        ph, pl = two_product(s, b)
        rem = (a - ph) - pl
        return round_scalar(s, _sgn(rem) * _sgn(b), p, emin, max_finite, rounding, overflow)
    s = math.sqrt(a) if a >= 0.0 else math.nan
    if simple or not math.isfinite(s) or s == 0.0:
        return round_scalar(s, 0, p, emin, max_finite, rounding, overflow)
    ph, pl = two_product(s, s)
    rem = (a - ph) - pl      # √a − s has the sign of a − s²
    return round_scalar(s, _sgn(rem), p, emin, max_finite, rounding, overflow)


#: Arrays shorter than this are processed on the calling thread (waking Numba's thread pool
#: costs more than the work).
PARALLEL_MIN = 1 << 17
#: Elements per block of :func:`round_array` (a block is one task of the parallel loop).
BLOCK = 512


def round_array(x, p, emin, max_finite, rounding, overflow, out=None):
    """Elementwise :func:`round_scalar` over a contiguous float64 array (any shape), into
    ``out`` (a new array, or a given C-contiguous float64 array of the same size that does not
    overlap ``x``)."""
    flat = x.reshape(-1)
    res = np.empty_like(flat) if out is None else out.reshape(-1)
    if res.size != flat.size or res.dtype != np.float64 or not out.flags.c_contiguous \
            if out is not None else False:
        raise ValueError("out must be a C-contiguous float64 array with as many elements as x")
    if out is not None and np.may_share_memory(out, x):
        raise ValueError("out must not overlap x")
    kernel = _round_flat_par if flat.size >= PARALLEL_MIN else _round_flat
    kernel(flat, res, p, emin, max_finite, rounding, overflow)
    return res.reshape(x.shape) if out is None else out


def op_array(op, a, b, p, emin, max_finite, rounding, overflow, simple):
    """Elementwise :func:`op_scalar` over two same-shape contiguous float64 arrays."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    kernel = _op_flat_par if fa.size >= PARALLEL_MIN else _op_flat
    return kernel(op, fa, fb, p, emin, max_finite, rounding, overflow, simple).reshape(a.shape)


@_jit
def _round_block(xb, ob, lo, hi, d0, e0, maxbits, rounding, ftz):
    """Round the bit patterns ``xb[lo:hi]`` into ``ob`` without branches (so LLVM vectorizes
    the loop); returns whether some element needs :func:`round_scalar` instead.

    For a normal binary64 ``x`` with ``d = max(53 − p, emin + 1075 − E)`` (``d0 = 53 − p``,
    ``e0 = emin + 1075``; see :func:`round_scalar`) and ``1 ≤ d ≤ 52``, the kept bits of the
    pattern ``a = |x|`` are the integer significand on the target quantum (with the exponent
    field above it) and rounding it to an integer in the mode is ``(a + inc) & ~(2^d − 1)``:
    ``inc`` is ``2^(d−1) − 1 + lsb`` for ties-to-even (``lsb`` the significand's last kept bit,
    the implicit bit when ``d = 52``), ``2^(d−1)`` for ties-away, ``0`` toward zero and
    ``2^d − 1`` away from zero (upward for x > 0, downward for x < 0); a carry into the exponent
    field is the carry into the next binade. ``d ≤ 0`` means ``x`` is representable (``inc =
    0``, nothing cleared). Left to :func:`round_scalar`: binary64 subnormals, inf and NaN
    (``E = 0`` or ``0x7FF``), ``d > 52`` (|x| below the format's quantum: the result is 0 or
    one quantum) and results beyond ``max_finite`` (the overflow rule); with ``ftz`` also
    every ``x`` below ``b_min`` (``d > d0``: the result may have to be flushed). ``rounding``
    is the mode without the subnormal flags.
    """
    bad = np.int64(0)
    if rounding == NEAREST_EVEN:
        for i in range(lo, hi):
            b = xb[i]
            a = b & _ABS
            E = a >> 52
            d = max(d0, e0 - E)
            dd = min(max(d, 0), 52)
            mask = (np.int64(1) << dd) - 1
            half = mask - (mask >> 1)
            inc = half - 1 + (((a | _IMPLICIT) >> dd) & 1)
            inc = inc if dd > 0 else np.int64(0)
            r = (a + inc) & ~mask
            ob[i] = r | (b & _SIGN)
            bad |= (d > 52) | (E == 0x7FF) | (E == 0) | (r > maxbits) | (ftz & (d > d0))
    else:
        for i in range(lo, hi):
            b = xb[i]
            a = b & _ABS
            E = a >> 52
            d = max(d0, e0 - E)
            dd = min(max(d, 0), 52)
            mask = (np.int64(1) << dd) - 1
            neg = b < 0
            if rounding == NEAREST_AWAY:
                inc = mask - (mask >> 1)
            elif rounding == TOWARD_ZERO:
                inc = np.int64(0)
            elif rounding == UPWARD:
                inc = np.int64(0) if neg else mask
            else:
                inc = mask if neg else np.int64(0)
            r = (a + inc) & ~mask
            ob[i] = r | (b & _SIGN)
            bad |= (d > 52) | (E == 0x7FF) | (E == 0) | (r > maxbits) | (ftz & (d > d0))
    return bad != 0


@_jit
def _round_block_fix(x, out, lo, hi, p, emin, max_finite, rounding, overflow):
    """:func:`round_scalar` on the elements of ``x[lo:hi]`` that :func:`_round_block` left
    (and a few more: ``a + 2^d > maxbits`` covers every overflowing ``r ≤ a + 2^d − 1``)."""
    d0 = 53 - p
    e0 = emin + 1075
    maxbits = _bits(max_finite)
    ftz = (rounding & FTZ) != 0
    for i in range(lo, hi):
        a = _bits(x[i]) & _ABS
        E = a >> 52
        d = max(d0, e0 - E)
        if d > 52 or E == 0x7FF or E == 0 or a + (np.int64(1) << min(max(d, 0), 52)) > maxbits \
                or (ftz and d > d0):
            out[i] = round_scalar(x[i], 0, p, emin, max_finite, rounding, overflow)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _round_flat(x, out, p, emin, max_finite, rounding, overflow):
    xb, ob = x.view(np.int64), out.view(np.int64)
    maxbits = _bits(max_finite)
    for lo in range(0, x.size, BLOCK):
        hi = min(x.size, lo + BLOCK)
        if _round_block(xb, ob, lo, hi, 53 - p, emin + 1075, maxbits, rounding & ROUNDING_MASK,
                        (rounding & FTZ) != 0):
            _round_block_fix(x, out, lo, hi, p, emin, max_finite, rounding, overflow)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _round_flat_par(x, out, p, emin, max_finite, rounding, overflow):
    xb, ob = x.view(np.int64), out.view(np.int64)
    maxbits = _bits(max_finite)
    for k in numba.prange((x.size + BLOCK - 1) // BLOCK):
        lo = k * BLOCK
        hi = min(x.size, lo + BLOCK)
        if _round_block(xb, ob, lo, hi, 53 - p, emin + 1075, maxbits, rounding & ROUNDING_MASK,
                        (rounding & FTZ) != 0):
            _round_block_fix(x, out, lo, hi, p, emin, max_finite, rounding, overflow)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _op_flat(op, a, b, p, emin, max_finite, rounding, overflow, simple):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = op_scalar(op, a[i], b[i], p, emin, max_finite, rounding, overflow, simple)
    return out


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _op_flat_par(op, a, b, p, emin, max_finite, rounding, overflow, simple):
    out = np.empty_like(a)
    for i in numba.prange(a.size):
        out[i] = op_scalar(op, a[i], b[i], p, emin, max_finite, rounding, overflow, simple)
    return out


OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3, "sqrt": 4}
