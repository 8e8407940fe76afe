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
import zlib

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


# -- the rounding term ----------------------------------------------------------------------------
TERM_FORMATS = [f"{p}:rounding={r},subnormals={m}" for p in ("bfloat16", "binary16", "float8_e5m2")
                for r in ("even", "up", "down", "zero") for m in ("gradual",) + MODES]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(TERM_FORMATS), k=st.integers(-12, 14),
       frac=st.fractions(min_value=-1, max_value=1, max_denominator=10**6))
def test_rounding_term_covers_every_flush_convention(name, k, frac):
    """For an exact ``z`` near ``b_min`` (``z = frac·b_min·2^k``): the emulated result is within
    ``rounding_term`` of ``z``; so is 0 whenever ``|z| < b_min`` in a flush mode (a flush under
    any tininess convention); and under DAZ a subnormal result's term also covers its reading
    as 0. (Old code charged ``η`` for 0 in every mode: ``2^−134`` against ``|z|`` up to
    ``2^−126`` in bfloat16.)"""
    fmt = formats.get(name)
    z = mpq(frac.numerator, frac.denominator) * fmt.smallest_normal * mpq(2) ** k
    zh = fmt.round(np.array([z], dtype=object))
    r = rounding_term(fmt, zh)[0]
    assert abs(mpq(float(zh[0])) - z) <= mpq(r)
    if fmt.subnormals != "gradual" and abs(z) < fmt.smallest_normal:
        assert abs(z) <= mpq(rounding_term(fmt, np.zeros(1))[0])
    if fmt.flushes_operands and fmt.tiny(zh)[0]:
        assert abs(mpq(float(zh[0])) - z) + abs(mpq(float(zh[0]))) <= mpq(r)


def test_rounding_term_of_a_flushed_zero_is_b_min():
    """Regression: ``bfloat16:subnormals=ftz`` rounds ``2^−127`` to 0; the term of 0 must be
    ``b_min = 2^−126`` (the gradual term ``η = 2^−134`` was 64 times too small)."""
    fmt = formats.get("bfloat16:subnormals=ftz")
    assert fmt.round(np.array([2.0 ** -127]))[0] == 0
    assert rounding_term(fmt, np.array([0.0, 1.0]))[0] == 2.0 ** -126
    assert rounding_term(fmt, np.array([0.0, 1.0]))[1] == 2.0 ** -8
    assert rounding_term(formats.get("bfloat16"), np.zeros(1))[0] == 2.0 ** -134


# -- every registered op on data around b_min ------------------------------------------------------
TINY_FORMATS = ["bfloat16:subnormals=ftz+daz", "binary16:subnormals=ftz", "float8_e5m2:subnormals=daz",
                "bfloat16:rounding=up,subnormals=ftz", "binary16:rounding=down,subnormals=ftz+daz",
                "float8_e4m3fn:rounding=zero,subnormals=daz"]


def _gradual(fmt: Format) -> Format:
    return Format(fmt.radix, fmt.fexp, fmt.rounding, fmt.overflow, fmt.max_finite)


def _to_tiny(rng, fmt: Format, x) -> np.ndarray:
    """``x`` scaled by a power of two so that its largest magnitude lies a few binades around
    ``b_min``, as values of the format (subnormals included: they are values in every mode)."""
    a = np.asarray(x, dtype=np.float64)
    top = np.max(np.abs(a), initial=0.0)
    if top == 0:
        return a
    k = int(np.log2(float(fmt.smallest_normal)) - np.floor(np.log2(top))) + int(rng.integers(-3, 6))
    return _gradual(fmt).round(np.ldexp(a, k))


def _spec_within(rng, fmt: Format, x, rel: float):
    if np.asarray(x).dtype.kind in "iu":
        return Interval.exact(np.asarray(x, dtype=np.float64)), np.zeros(np.shape(x))
    xq = exact_array(x)
    if rel == 0:
        return Interval.exact(xq), np.zeros(np.shape(x))
    eps = exact_array_up(np.abs(xq)) * rel + float(fmt.smallest_normal) / 8
    return Interval.exact(xq + exact_array(eps * rng.uniform(-0.5, 0.5, xq.shape))), eps


def check_tiny_enclosure(op_name: str, fmt_name: str, trials: int) -> None:
    """Forward and VJP enclosures of one registered op with some inputs (and the upstream
    gradient) moved to the neighbourhood of ``b_min``, in a flush mode: exercises the DAZ/FTZ
    reading of the inputs (``Primitive``), the kernels' flushes and every rule's underflow
    terms."""
    fmt = formats.get(fmt_name)
    P = ops.get(op_name)
    rng = np.random.default_rng(zlib.crc32(f"{op_name}|{fmt_name}".encode()))
    for trial in range(trials):
        xs, params = P.sample(rng, fmt)
        xs = tuple(x if x is None or np.asarray(x).dtype.kind in "iu" or rng.random() < 0.3
                   else _to_tiny(rng, fmt, x) for x in xs)
        rel = 0.0 if trial == 0 else 2.0 ** -10
        spec_in, eps = zip(*(_spec_within(rng, fmt, x, rel) if x is not None
                             else (None, None) for x in xs))
        try:
            spec_out = P.spec(*spec_in, **params)
        except ValueError:
            continue    # a spec domain error is a clear refusal
        out = P.runtime(fmt, *xs, **params)
        bound = P.bound(fmt, xs, eps, **params)
        ok = spec_out.encloses(out, bound)
        assert ok.all(), f"{op_name} forward enclosure failed in {fmt_name}"
        g = _to_tiny(rng, fmt, rng.standard_normal(np.shape(out))) if rng.random() < 0.5 \
            else fmt.round(rng.standard_normal(np.shape(out)))
        eg = exact_array_up(np.abs(exact_array(g))) * rel
        g_spec = Interval.exact(exact_array(g) + exact_array(eg) / 4)
        try:
            grads_spec = P.vjp_spec(spec_in, g_spec, **params)
        except ValueError:
            continue    # e.g. sqrt's slope at an input flushed to 0
        grads = P.vjp_runtime(fmt, xs, g, **params)
        grads_bound = P.vjp_bound(fmt, xs, eps, g, eg, **params)
        for i, (gr, gs, gb) in enumerate(zip(grads, grads_spec, grads_bound)):
            if gr is not None:
                assert gs.encloses(gr, gb).all(), \
                    f"{op_name} VJP enclosure failed for input {i} in {fmt_name}"


@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_registry_ops_on_tiny_data(op_name):
    """One flush-mode format per op (rotating through :data:`TINY_FORMATS`), two instances."""
    fmt_name = TINY_FORMATS[sorted(ops.REGISTRY).index(op_name) % len(TINY_FORMATS)]
    check_tiny_enclosure(op_name, fmt_name, trials=2)


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", TINY_FORMATS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_registry_ops_on_tiny_data_sweep(op_name, fmt_name):
    check_tiny_enclosure(op_name, fmt_name, trials=12)


# -- order-free bounds --------------------------------------------------------------------------------
def _matmul_order_free(fmt: Format, A, B):
    """nfbound's order-free bound of ``A @ B`` (input errors 0) and the exact spec."""
    P = ops.get("matmul")
    bound = P.bound(fmt, (A, B), (np.zeros(A.shape), np.zeros(B.shape)), order_free=True)
    return bound, P.spec(Interval.exact(A), Interval.exact(B))


def test_audit_17x17_bfloat16_entries_2_pow_minus_64():
    """Regression (audit issue 11, hole 5): oneDNN returns 0 for this product (exact
    ``17·2^−128``). The gradual order-free bound (``4.66e−39``) does not cover a flushing
    library; the ``ftz+daz`` one does."""
    A = np.full((17, 17), 2.0 ** -64)
    exact = 17 * 2.0 ** -128
    grad, _ = _matmul_order_free(formats.get("bfloat16"), A, A)
    assert (grad < exact).all()
    flush, spec = _matmul_order_free(formats.get("bfloat16:subnormals=ftz+daz"), A, A)
    assert spec.encloses(np.zeros((17, 17)), flush).all() and (flush >= exact).all()


def _library_dot(rng, fmt: Format, acc: Format, a, b) -> np.ndarray:
    """Row-wise ``Σ a·b`` of ``(T, n)`` arrays as some library might evaluate it: products
    rounded in the accumulator format ``acc`` or fused into FMAs, a random order spread over a
    random number of accumulators (blocking), the accumulators added in a random tree, one
    final conversion to ``fmt``; every operation with ``acc``'s subnormal mode."""
    T, n = a.shape
    fma = rng.random() < 0.5
    k = int(rng.integers(1, 5))
    sums: list = [None] * k
    for i, j in enumerate(rng.permutation(n)):
        x, y = acc.daz(a[:, j]), acc.daz(b[:, j])
        s = sums[i % k]
        if s is None:
            sums[i % k] = acc.mul(x, y)
        elif fma:   # one rounding of the exact x·y + s
            exact = exact_array(x) * exact_array(y) + exact_array(acc.daz(s))
            sums[i % k] = np.where(exact == 0, 0.0, acc.round(exact).astype(np.float64))
        else:
            sums[i % k] = acc.add(s, acc.mul(x, y))
    parts = [s for s in sums if s is not None]
    while len(parts) > 1:
        i, j = sorted(rng.choice(len(parts), 2, replace=False))
        parts[i] = acc.add(parts[i], parts.pop(j))
    return fmt.round(parts[0])


def _tiny_operands(rng, fmt: Format, T: int, n: int) -> np.ndarray:
    """Entries whose products straddle ``b_min`` (``≈ √b_min``), some subnormal, some normal."""
    e = int(np.log2(float(fmt.smallest_normal))) // 2
    x = np.ldexp(rng.random((T, n)) + 0.5, rng.integers(e - 4, e + 4, (T, n)))
    x = np.where(rng.random((T, n)) < 0.1, np.ldexp(rng.random((T, n)), 2 * e - 2), x)
    x = np.where(rng.random((T, n)) < 0.05, rng.standard_normal((T, n)), x)
    return _gradual(fmt).round(x * rng.choice([-1.0, 1.0], (T, n)))


LIBRARIES = [("bfloat16:subnormals=ftz+daz", "binary32:subnormals=ftz+daz"),
             ("bfloat16:subnormals=ftz+daz", "binary32"),
             ("bfloat16:subnormals=ftz+daz", "bfloat16:subnormals=ftz"),
             ("bfloat16:subnormals=ftz", "bfloat16:subnormals=ftz"),
             ("bfloat16", "binary32"),
             ("binary16:subnormals=ftz+daz", "binary16:subnormals=daz"),
             ("binary16", "binary32:subnormals=ftz+daz"),
             ("float8_e5m2:rounding=up,subnormals=ftz+daz", "float8_e5m2:rounding=up,subnormals=ftz")]


def check_order_free_covers_libraries(fmt_name: str, acc_name: str, batches: int, seed: int) -> int:
    """Violations of the order-free dot bound of ``fmt`` by emulated library evaluations
    (:func:`_library_dot` with accumulator ``acc``) of tiny dot products, exact test."""
    fmt, acc = formats.get(fmt_name), formats.get(acc_name)
    rng = np.random.default_rng(seed)
    bad = 0
    for _ in range(batches):
        T, n = 16, int(rng.integers(1, 40))
        a, b = _tiny_operands(rng, fmt, T, n), _tiny_operands(rng, fmt, T, n)
        y = _library_dot(rng, fmt, acc, a, b)
        bound, spec = _matmul_order_free(fmt, a[:, None, :], b[:, :, None])
        bad += int((~spec.encloses(y[:, None, None], bound)).sum())
    return bad


@pytest.mark.parametrize("fmt_name,acc_name", LIBRARIES)
def test_order_free_bound_covers_flushing_libraries(fmt_name, acc_name):
    """Any order, blocking, FMA, a wider accumulator with or without flushes, DAZ inputs: the
    order-free bound of the format's mode holds (the library's per-rounding underflow term
    never exceeds the format's: a binary32 accumulator flushes at ``2^−126``, bfloat16's
    ``b_min``, and rounds gradually within binary16's ``η``)."""
    assert check_order_free_covers_libraries(fmt_name, acc_name, batches=6, seed=7) == 0


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name,acc_name", LIBRARIES)
def test_order_free_bound_covers_flushing_libraries_sweep(fmt_name, acc_name):
    assert check_order_free_covers_libraries(fmt_name, acc_name, batches=150, seed=8) == 0


def test_gradual_order_free_bound_misses_a_flushing_library():
    """The gradual bound's promise is gradual underflow: a flushing evaluation escapes it
    (this is what the flush modes are for)."""
    fmt, acc = formats.get("bfloat16"), formats.get("binary32:subnormals=ftz+daz")
    a = np.full((1, 17), 2.0 ** -64)
    y = _library_dot(np.random.default_rng(0), fmt, acc, a, a)
    bound, spec = _matmul_order_free(fmt, a[:, None, :], a[:, :, None])
    assert y[0] == 0 and not spec.encloses(y[:, None, None], bound).all()


@pytest.mark.parametrize("mode", MODES)
def test_order_free_sum_bound_covers_flushing_sums(mode):
    """``sum(order_free=True)``: random orders of a flushing accumulator over tiny terms
    (``K = n`` underflow terms in the flush modes, ``1`` in gradual underflow)."""
    fmt = fmt_of("bfloat16", mode)
    acc = fmt_of("binary32", mode)
    rng = np.random.default_rng(9)
    P = ops.get("sum")
    for _ in range(20):
        n = int(rng.integers(1, 30))
        t = _gradual(fmt).round(np.ldexp(rng.standard_normal((8, n)), -126 + int(rng.integers(-6, 3))))
        s = acc.daz(t[:, 0])
        for j in rng.permutation(np.arange(1, n)):
            s = acc.add(s, acc.daz(t[:, j]))
        y = fmt.round(s)
        b = P.bound(fmt, (t,), (np.zeros(t.shape),), axis=1, order_free=True)
        assert P.spec(Interval.exact(t), axis=1).encloses(y, b).all()


@pytest.mark.parametrize("mode", ["ftz", "ftz+daz"])
def test_sterbenz_difference_below_b_min_is_flushed_not_exact(mode):
    """Regression: ``1.5·b_min − b_min`` is exact by Sterbenz's lemma in gradual underflow, but
    its value ``b_min/2`` is flushed to 0 under FTZ; ``sub`` took it as exact (bound 0)."""
    fmt = fmt_of("bfloat16", mode)
    bm = float(fmt.smallest_normal)
    x, y = np.array([1.5 * bm, bm]), np.array([bm, bm])
    P = ops.get("sub")
    out = P.runtime(fmt, x, y)
    b = P.bound(fmt, (x, y), (np.zeros(2), np.zeros(2)))
    assert out[0] == 0 and b[0] >= bm / 2 and b[1] == 0
    assert P.spec(Interval.exact(x), Interval.exact(y)).encloses(out, b).all()


# -- PyTorch on CPU -------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
F = torch.nn.functional
_TORCH_DTYPE = {"bfloat16": torch.bfloat16, "binary16": torch.float16}
_FLUSHING_CPU = torch.backends.mkldnn.is_available() and \
    torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")


def _mode_for(fmt_name: str, onednn: bool) -> str:
    """The format in the mode PyTorch's CPU kernels follow (module docstring)."""
    return f"{fmt_name}:subnormals=ftz+daz" if onednn and fmt_name == "bfloat16" else fmt_name


def _data(rng, fmt: Format, kind: str, role: str, shape) -> np.ndarray:
    """Format values for the operand ``role`` (``x``, ``w`` or the bias ``b``) of kind
    ``normal`` (standard normal), ``tiny`` (positive, about ``√b_min``: products just below
    ``b_min``, binary32's subnormal range for bfloat16; a bias of their size) or ``subnormal``
    (``x`` subnormal, ``w`` about ``2^12``: products well above ``b_min``, so whether ``x`` is
    read as zero decides the result; a bias of their size). Positive where not normal: no
    cancellation hides a flushed term."""
    e = int(np.log2(float(fmt.smallest_normal)))
    u = rng.random(shape) + 0.5
    scale = {"tiny": {"x": e // 2, "w": e // 2, "b": e},
             "subnormal": {"x": e - 1, "w": 12, "b": e + 12}}
    if kind == "normal":
        return _gradual(fmt).round(rng.standard_normal(shape))
    return _gradual(fmt).round(np.ldexp(u, scale[kind][role]))


def _torch_run(op: str, dtype, args, onednn: bool) -> np.ndarray:
    t = [torch.tensor(a, dtype=torch.float64).to(dtype) for a in args]
    with torch.backends.mkldnn.flags(enabled=onednn):
        y = {"matmul": lambda: torch.matmul(*t), "linear": lambda: F.linear(*t),
             "conv2d": lambda: F.conv2d(*t, padding=1)}[op]()
    return y.to(torch.float64).numpy()


def _args(rng, fmt: Format, op: str, kind: str, big: bool):
    """Operands of ``op`` with ``m·n·k`` above oneDNN's threshold 16³ (``big``) or below."""
    n = 17 if big else 6
    if op == "matmul":
        return _data(rng, fmt, kind, "x", (n, n)), _data(rng, fmt, kind, "w", (n, n))
    if op == "linear":
        return (_data(rng, fmt, kind, "x", (n, n)), _data(rng, fmt, kind, "w", (n, n)),
                _data(rng, fmt, kind, "b", (n,)))
    c = 8 if big else 2
    return (_data(rng, fmt, kind, "x", (1, c, 5, 5)), _data(rng, fmt, kind, "w", (c, c, 3, 3)),
            _data(rng, fmt, kind, "b", (c,)))


_NFBOUND_OP = {"matmul": ("matmul", {}), "linear": ("linear", {}),
               "conv2d": ("conv", {"stride": 1, "padding": 1})}


def check_torch(fmt_name: str, op: str, onednn: bool, kind: str, big: bool, seed: int,
                mode: str | None = None) -> None:
    """PyTorch's output lies within nfbound's order-free bound (in the matching mode, or
    ``mode``) of the exact spec, checked in exact rationals."""
    fmt = formats.get(mode or _mode_for(fmt_name, onednn))
    args = _args(np.random.default_rng(seed), fmt, op, kind, big)
    y = _torch_run(op, _TORCH_DTYPE[fmt_name], args, onednn)
    name, params = _NFBOUND_OP[op]
    P = ops.get(name)
    bound = P.bound(fmt, args, tuple(np.zeros(np.shape(a)) for a in args), order_free=True,
                    **params)
    spec = P.spec(*map(Interval.exact, args), **params)
    ok = spec.encloses(y, bound)
    assert ok.all(), (f"torch {op} {fmt_name} oneDNN={onednn} {kind}: distance "
                      f"{spec.distance(y)[~ok][:3]} > bound {np.asarray(bound)[~ok][:3]}")


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize("kind", ["normal", "tiny", "subnormal"])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
@pytest.mark.parametrize("op", ["matmul", "linear", "conv2d"])
@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16"])
def test_torch_cpu_within_order_free_bound(fmt_name, op, onednn, kind, big):
    check_torch(fmt_name, op, onednn, kind, big, seed=11)


@pytest.mark.parametrize("op", ["matmul", "linear", "conv2d"])
@pytest.mark.parametrize("kind", ["tiny", "subnormal"])
def test_torch_without_flushes_is_within_the_ftz_daz_bound_too(op, kind):
    """The ``ftz+daz`` bound also covers a library that does not flush (oneDNN off, or below
    its threshold): each of its per-rounding terms dominates the gradual one."""
    check_torch("bfloat16", op, False, kind, True, seed=12, mode="bfloat16:subnormals=ftz+daz")
    check_torch("bfloat16", op, True, kind, False, seed=13, mode="bfloat16:subnormals=ftz+daz")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", ["normal", "tiny", "subnormal"])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
@pytest.mark.parametrize("op", ["matmul", "linear", "conv2d"])
@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16"])
def test_torch_cpu_within_order_free_bound_sweep(fmt_name, op, onednn, kind, seed):
    check_torch(fmt_name, op, onednn, kind, bool(seed % 2), seed=100 + seed)


@pytest.mark.skipif(not _FLUSHING_CPU, reason="oneDNN's bf16 flushes were measured on AVX512")
def test_torch_flush_behaviour_as_measured():
    """The behaviour the module docstring records (and the modes of the tests above)."""
    a = np.full((17, 17), 2.0 ** -64)
    assert (_torch_run("matmul", torch.bfloat16, (a, a), True) == 0).all()
    assert (_torch_run("linear", torch.bfloat16, (a, a), True) == 0).all()
    assert (_torch_run("matmul", torch.bfloat16, (a, a), False) == 17 * 2.0 ** -128).all()
    small = np.full((4, 4), 2.0 ** -64)
    assert (_torch_run("matmul", torch.bfloat16, (small, small), True) == 2.0 ** -126).all()
    x, w = np.full((1, 2, 4, 4), 2.0 ** -64), np.full((2, 2, 3, 3), 2.0 ** -64)
    assert (_torch_run("conv2d", torch.bfloat16, (x, w), True) == 0).all()
    sub, eye = np.full((17, 17), 2.0 ** -130), np.eye(17) * 2.0 ** 10
    assert (_torch_run("matmul", torch.bfloat16, (sub, eye), True) == 0).all()       # DAZ
    assert (_torch_run("matmul", torch.bfloat16, (sub, eye), False) == 2.0 ** -120).all()
    sub16 = np.full((17, 17), 2.0 ** -20)
    assert (_torch_run("matmul", torch.float16, (sub16, eye), True) == 2.0 ** -10).all()
