"""Subnormal modes (``Format.subnormals``: gradual | ftz | daz | ftz+daz): the emulation against
MPFR, the underflow terms of the bounds, the registry ops on tiny data, and PyTorch on CPU.

What PyTorch 2.13 (CPU) does, measured on this machine (avx512_bf16, amx_bf16) and checked by
:func:`test_torch_flush_behaviour_as_measured`:

* bfloat16 with oneDNN (``torch.backends.mkldnn`` enabled, the default): ``matmul`` and
  ``linear`` above oneDNN's size threshold (``m·n·k > 16³``) and ``conv2d`` at every size read
  bfloat16 subnormal inputs as zero and flush binary32 subnormal products and partial sums to
  zero (a 17×17 product of entries ``2^−64`` is 0; the exact value is ``17·2^−128``); below the
  threshold ``matmul``/``linear`` underflow gradually. With oneDNN disabled nothing flushes.
* float16: nothing flushes, with or without oneDNN (float16 subnormal inputs are read as they
  are; products of float16 values are never binary32 subnormals, ``|a·b| ≥ 2^−48``).

So the matching modes are ``bfloat16:subnormals=ftz+daz`` with oneDNN, ``gradual`` without, and
``gradual`` for float16; the ``ftz+daz`` bound covers a library that does not flush as well.
"""
from __future__ import annotations

import math

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpfr, mpq
from hypothesis import given, settings
from hypothesis import strategies as st

import nfbound.ops as ops
from nfbound import formats
from nfbound.bounds.rounding import rounding_term
from nfbound.bounds.upward import exact_array_up
from nfbound.formats import Format
from nfbound.ops import conv as C
from nfbound.ops import linalg as L
from nfbound.ops.interval import Interval, exact_array

MODES = ("ftz", "daz", "ftz+daz")
BINARY_PRESETS = ("binary16", "bfloat16", "tf32", "binary32", "float8_e4m3fn", "float8_e5m2")
_MPFR_ROUND = {"nearest_even": gmpy2.RoundToNearest, "toward_zero": gmpy2.RoundToZero,
               "upward": gmpy2.RoundUp, "downward": gmpy2.RoundDown}


def fmt_of(name: str, mode: str) -> Format:
    return formats.get(f"{name}:subnormals={mode}" if ":" not in name
                       else f"{name},subnormals={mode}")


# -- the field ------------------------------------------------------------------------------------
def test_mode_is_validated_named_and_round_trips():
    with pytest.raises(ValueError, match="subnormals"):
        Format.flt(2, 8, -133, subnormals="flush")
    for spec in ("flx:p=8,subnormals=ftz", "fix:emin=-8,emax=8,subnormals=daz"):
        with pytest.raises(ValueError, match="subnormals"):
            formats.get(spec)
    with pytest.raises(ValueError, match="subnormals"):
        Format(2, formats.FLX(8), subnormals="ftz")
    f = formats.get("bfloat16:subnormals=ftz+daz")
    assert f.subnormals == "ftz+daz" and f.flushes_results and f.flushes_operands
    assert formats.get(f.spec) == f and "subnormals=ftz+daz" in f.spec
    g = formats.get("flt:p=8,emin=-133,emax=128,subnormals=ftz")
    assert g.flushes_results and not g.flushes_operands
    assert formats.get("bfloat16") != f and "subnormals" not in formats.get("bfloat16").spec
    assert f.underflow_term_exact == f.smallest_normal == mpq(2) ** -126
    assert formats.get("bfloat16").underflow_term == formats.get("bfloat16").eta


# -- emulation against MPFR ------------------------------------------------------------------------
def _mpfr_context(fmt: Format) -> gmpy2.context:
    """MPFR with the format's precision and subnormal range (``x = m·2^e``, ``1/2 ≤ m < 1``:
    the smallest subnormal ``2^emin`` has MPFR exponent ``emin + 1``); overflow is out of the
    test's range."""
    return gmpy2.context(precision=fmt.precision, emin=fmt.emin + 1, emax=4096,
                         subnormalize=True, round=_MPFR_ROUND[fmt.rounding])


def _flush(v: float, fmt: Format, on: bool) -> float:
    return math.copysign(0.0, v) if on and v != 0 and abs(v) < float(fmt.smallest_normal) else v


def mpfr_reference(fmt: Format, op: str, a: float, b: float) -> float:
    """The independent model: DAZ on the operands, MPFR's correctly rounded, subnormalized
    result, then FTZ on it (``op == "round"``: a conversion, FTZ only). No overflow threshold:
    callers compare inside the finite range."""
    ctx = _mpfr_context(fmt)
    if op != "round":
        a, b = _flush(a, fmt, fmt.flushes_operands), _flush(b, fmt, fmt.flushes_operands)
    x, y = mpfr(a, 53), mpfr(b, 53)
    r = {"round": lambda: ctx.plus(x), "add": lambda: ctx.add(x, y),
         "sub": lambda: ctx.sub(x, y), "mul": lambda: ctx.mul(x, y),
         "div": lambda: ctx.div(x, y), "sqrt": lambda: ctx.sqrt(abs(x))}[op]()
    return _flush(float(r), fmt, fmt.flushes_results)


def _tiny_values(rng, fmt: Format, n: int) -> np.ndarray:
    """float64 values whose magnitudes cover the subnormal range, ``b_min`` and a few binades
    above and (for products) ``√b_min``, with random significands and signs."""
    lo, hi = fmt.emin - 2, fmt.emin + fmt.precision + 4
    mid = (fmt.emin + fmt.precision) // 2
    e = np.where(rng.random(n) < 0.7, rng.integers(lo, hi, n), rng.integers(mid - 3, mid + 3, n))
    return np.ldexp(rng.random(n) + 0.5, e) * rng.choice([-1.0, 1.0], n)


def check_against_mpfr(fmt: Format, n: int, seed: int) -> int:
    """``Format.round`` and the five operations on ``n`` values each against
    :func:`mpfr_reference`, bit for bit (signs of zeros included); returns the mismatches."""
    rng = np.random.default_rng(seed)
    grad = Format(fmt.radix, fmt.fexp, fmt.rounding, fmt.overflow, fmt.max_finite)
    x = _tiny_values(rng, fmt, n)
    a, b = grad.round(_tiny_values(rng, fmt, n)), grad.round(_tiny_values(rng, fmt, n))
    b = np.where(rng.random(n) < 0.3, grad.round(rng.standard_normal(n)), b)   # mixed scales
    bad = 0
    for op, got, args in (("round", fmt.round(x), (x, x)), ("add", fmt.add(a, b), (a, b)),
                          ("sub", fmt.sub(a, b), (a, b)), ("mul", fmt.mul(a, b), (a, b)),
                          ("div", fmt.div(a, np.where(b == 0, 1.0, b)), (a, np.where(b == 0, 1.0, b))),
                          ("sqrt", fmt.sqrt(np.abs(a)), (np.abs(a), a))):
        want = np.array([mpfr_reference(fmt, op, float(s), float(t)) for s, t in zip(*args)])
        inside = np.abs(want) <= float(fmt.max_finite)    # overflow is not the subject here
        bad += int(np.sum(((got != want) | (np.signbit(got) != np.signbit(want))) & inside))
    return bad


def _reference_formats():
    out = [(p, m) for p in BINARY_PRESETS for m in MODES]
    return out + [("bfloat16:rounding=up", "ftz+daz"), ("binary16:rounding=down", "ftz"),
                  ("float8_e5m2:rounding=zero", "daz"), ("bfloat16:rounding=down", "ftz+daz")]


@pytest.mark.parametrize("name,mode", _reference_formats())
def test_emulation_equals_mpfr_with_flush(name, mode):
    """10^5 values per preset (over its modes): round, +, −, ×, ÷, √ bit-identical to MPFR
    (``subnormalize=True``) with DAZ on the operands and FTZ on the result."""
    assert check_against_mpfr(fmt_of(name, mode), 100_000 // (6 * len(MODES)), seed=1) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", _reference_formats())
def test_emulation_equals_mpfr_with_flush_sweep(name, mode):
    assert check_against_mpfr(fmt_of(name, mode), 1_000_000 // 6, seed=2) == 0


@pytest.mark.parametrize("mode", MODES)
def test_exact_engine_agrees_with_the_compiled_one(mode):
    """Object (exact) operands take the reference engine: same values as the kernels."""
    fmt = fmt_of("bfloat16", mode)
    rng = np.random.default_rng(3)
    grad = formats.get("bfloat16")
    a, b = grad.round(_tiny_values(rng, fmt, 400)), grad.round(_tiny_values(rng, fmt, 400))
    d = np.where((b == 0) | fmt.tiny(b), 1.0, b)   # exact zeros carry no sign: no x/±0 here
    for op, y in (("add", b), ("mul", b), ("div", d)):
        fast = getattr(fmt, op)(a, y)
        exact = getattr(fmt, op)(a.astype(object), y.astype(object))
        assert np.array_equal(fast, exact.astype(np.float64))
    x = _tiny_values(rng, fmt, 400)
    assert np.array_equal(fmt.round(x), fmt.round(x.astype(object)))


def test_big_arrays_take_the_parallel_kernel_and_flush_the_same():
    fmt = fmt_of("bfloat16", "ftz")
    x = _tiny_values(np.random.default_rng(4), fmt, 1 << 18)
    got = fmt.round(x)
    small = np.concatenate([fmt.round(x[i:i + 1000]) for i in range(0, x.size, 1000)])
    assert np.array_equal(got, small) and not np.any(fmt.tiny(got))


# -- kernels ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_compiled_kernels_equal_the_generic_path(mode):
    """conv and matmul kernels (ties-to-even shortcuts skipped in the flush modes) equal the
    NumPy paths built on ``fmt.mul``/``fmt.add``, runtime and replay bound, on data whose
    products and partial sums cross ``b_min``."""
    fmt = fmt_of("bfloat16", mode)
    rng = np.random.default_rng(5)
    x = fmt.round(_tiny_values(rng, fmt, 2 * 3 * 5 * 5).reshape(2, 3, 5, 5) * 2.0 ** 60)
    w = fmt.round(rng.standard_normal((4, 3, 3, 3)) * 2.0 ** -60)
    ex, ew = np.abs(x) * 2.0 ** -9, np.abs(w) * 2.0 ** -9
    got = C.conv_forward(fmt, x, w, None, (ex, ew), engine="compiled")
    want = C.conv_forward(fmt, x, w, None, (ex, ew), engine="generic")
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    A, B = x.reshape(6, 25), w.reshape(4, 27)[:, :25].T.copy()
    EA, EB = np.abs(A) * 2.0 ** -9, np.abs(B) * 2.0 ** -9
    k = L._mm3(fmt, A[None], EA[None], B[None], EB[None])
    g = L._mm3(fmt, A[None], EA[None], B[None], EB[None], kernel=False)
    assert np.array_equal(k[0], g[0]) and np.array_equal(k[1], g[1])
