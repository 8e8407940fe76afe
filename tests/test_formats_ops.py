"""Formats: ``add, sub, mul, div, sqrt`` on format values == one correct rounding, bit for bit.

The oracle computes each op in MPFR in the subnormalizing context of the format (one rounding
of the exact result, MPFR deciding overflow for the IEEE-style presets; see ``test_formats.py``),
and Python's ``decimal`` for radix 10. Operands are format values (checked independently of
nfbound: ``x = s·2^c`` with ``s`` an integer, by exact NumPy scalings): random over every binade
and near 1, and adversarial sets per op (cancellation, results that are ties, subnormal results,
overflow, products just below a power of two, square roots next to midpoints, Priest's √ family
by construction). Every preset (binary64 included) is checked on ≥ 10^6 operand pairs per op in
the default run and ≥ 10^7 under ``-m slow``; the compiled engine also for every mode and for
precisions 26..51 (residual / round-to-odd path), and the exact reference engine (``p = 52, 53``,
a small emax, ties-away, wide exponent range, radix 10) on smaller samples.
"""
from __future__ import annotations

import decimal
import math

import numpy as np
import pytest
from gmpy2 import mpq

from nfbound.formats import Format, get
from test_formats import (BINARY_PRESETS, MODES, MpfrOracle, assert_bits_equal, dec_to_exact,
                          decimal_context, format_values, midpoints, snap, top_binade,
                          values_in_binades)

OPS = ["add", "sub", "mul", "div", "sqrt"]
N_PRESET = 10**6          # operand pairs per preset and op (default run)
N_PRESET_SLOW = 10**7     # per preset and op (-m slow)
N_MODE = 10**5            # per mode and op on bfloat16
N_WIDE_P = 15000          # per precision, mode and op for p = 26..51
SLOW = 10                 # the other slow sweeps use SLOW× as many values
OP_CHUNK = 2 * 10**6      # operand pairs generated and checked at a time (bounded memory)


# ---------------------------------------------------------------------------------------------
# Operands
# ---------------------------------------------------------------------------------------------
def exact_mask(fmt: Format, x) -> np.ndarray:
    """Which entries are values of ``FLT(p, emin)`` within ±max, decided without nfbound:
    ``x = s·2^c`` with ``c = max(mag(x) − p, emin)`` and ``s`` an integer. ``s = ldexp(x, −c)``
    is exact: for ``emin ≤ 0`` it scales down only to ``[2^(p−1), 2^p)`` (``c = mag − p``,
    ``p ≤ 53``), otherwise it scales up."""
    assert fmt.emin <= 0
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    xf = np.where(finite, x, 0.0)
    c = np.maximum(np.frexp(xf)[1] - fmt.precision, fmt.emin)
    s = np.ldexp(xf, -c)
    return finite & (s == np.rint(s)) & (np.abs(xf) <= float(fmt.max_finite))


def _split(n: int, parts: int) -> int:
    return max(n // parts, 1)


def _signs(rng, n):
    return np.where(rng.random(n) < 0.5, -1.0, 1.0)


def operands(fmt: Format, op: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At least ``n`` operand pairs of format values for ``op`` (``b`` unused for sqrt): the
    adversarial sets, topped up with random values over every binade."""
    rng = np.random.default_rng(seed)
    p, emin, top = fmt.precision, fmt.emin, top_binade(fmt)
    mx = float(fmt.max_finite)
    q = _split(n, 8)
    A, B = [format_values(fmt, q, rng)], [format_values(fmt, q, rng)]           # every binade
    A.append(format_values(fmt, q, rng, -3, 3))                                 # near 1
    B.append(format_values(fmt, q, rng, -3, 3))
    if op in ("add", "sub"):
        a, b = _sum_cases(fmt, 6 * q, rng)
        A.append(a)
        B.append(b if op == "add" else -b)       # the exact sum a + b either way
    elif op == "mul":
        a, b = _mul_cases(fmt, 6 * q, rng)
        A.append(a)
        B.append(b)
    elif op == "div":
        a, b = _div_cases(fmt, 6 * q, rng)
        A.append(a)
        B.append(b)
    else:
        a = _sqrt_cases(fmt, 6 * q, rng)
        A.append(a)
        B.append(a)
    specials = np.array([0.0, -0.0, mx, -mx, 2.0 ** emin, -(2.0 ** emin), 1.0, -1.0,
                         2.0 ** (emin + p - 1), 3.0 if p > 1 else 4.0])
    sa, sb = np.meshgrid(specials, specials)
    A.append(sa.ravel())
    B.append(sb.ravel())
    rest = n - sum(x.size for x in A)
    if rest > 0:
        if op == "sqrt":
            A.append(np.abs(format_values(fmt, rest, rng)))
            B.append(A[-1])
        else:
            A.append(format_values(fmt, rest, rng))
            B.append(format_values(fmt, rest, rng))
    return np.concatenate(A), np.concatenate(B)


def _sum_cases(fmt, n, rng):
    p, emin, top = fmt.precision, fmt.emin, top_binade(fmt)
    mx = float(fmt.max_finite)
    q = _split(n, 6)
    out_a, out_b = [], []
    # cancellation and partial cancellation: b ≈ −a·t, t log-uniform in [2^−(p+3), 2^(p+3)]
    a = format_values(fmt, q, rng)
    t = np.exp2(rng.uniform(-(p + 3), p + 3, q))
    t = np.where(rng.random(q) < 0.3, 1 + rng.integers(-4, 5, q) * 2.0 ** -p, t)
    out_a.append(a)
    out_b.append(-snap(fmt, a * t))
    # ties: a = m·2^c and b = ±(2i + 1)·2^(c−1) (representable), a + b = (m ± (i + 1/2))·2^c
    k = rng.integers(emin + p, top + 1, q)
    a = values_in_binades(fmt, k, rng)
    c = np.maximum(k + 1 - p, emin)
    i = rng.integers(0, min(8, 1 << max(p - 1, 0)), q)
    b = np.ldexp((2 * i + 1).astype(np.float64), c - 1) * _signs(rng, q)
    out_a.append(a)
    out_b.append(b)
    # subnormal results and the subnormal/normal boundary
    out_a.append(format_values(fmt, q, rng, emin, emin + p + 1))
    out_b.append(format_values(fmt, q, rng, emin, emin + p + 1))
    # overflow: the top binades, same sign, and max + ulp/2 (ties at the threshold)
    a = format_values(fmt, q, rng, top - 1, top, signed=False)
    s = _signs(rng, q)
    out_a.append(a * s)
    out_b.append(format_values(fmt, q, rng, top - p - 2, top, signed=False) * s)
    ulp_top = 2.0 ** (top + 1 - p)
    out_a.append(np.array([mx, mx, -mx, mx, mx]))
    out_b.append(np.array([ulp_top / 2, ulp_top, -ulp_top / 2, ulp_top / 4, -mx]))
    # a power of two and a far smaller operand: the exact sum is just off 2^k (sticky bits)
    k = rng.integers(emin + p, top + 1, q)
    a = np.ldexp(1.0, k) * _signs(rng, q)
    b = values_in_binades(fmt, k - rng.integers(p + 1, p + 60, q), rng)
    out_a.append(a)
    out_b.append(b)
    return np.concatenate(out_a), np.concatenate(out_b)


def _mul_cases(fmt, n, rng):
    p, emin, top = fmt.precision, fmt.emin, top_binade(fmt)
    q = _split(n, 5)
    out_a, out_b = [], []
    # ties: odd s1·s2 with exactly p + 1 bits, scaled into the normal and subnormal range
    if p <= 51:
        k1 = rng.integers(1, p + 1, 4 * q)
        k2 = p + 1 - k1 + rng.integers(0, 2, 4 * q)
        k2 = np.clip(k2, 1, p)
        s1 = rng.integers(np.left_shift(1, k1 - 1), np.left_shift(1, k1)) | 1
        s2 = rng.integers(np.left_shift(1, k2 - 1), np.left_shift(1, k2)) | 1
        prod = s1 * s2
        keep = np.frexp(prod.astype(np.float64))[1] == p + 1
        s1, s2 = s1[keep][:q], s2[keep][:q]
        m = s1.size
        T = rng.integers(emin - 1, top + 1, m)                 # binade of the product
        e = T - p                                              # product = s1·s2·2^e
        e1 = e // 2 + rng.integers(-4, 5, m)
        a = np.ldexp(s1.astype(np.float64), e1)
        b = np.ldexp(s2.astype(np.float64), e - e1)
        ok = exact_mask(fmt, a) & exact_mask(fmt, b)
        out_a.append(a[ok] * _signs(rng, ok.sum()))
        out_b.append(b[ok])
    # subnormal and underflowing products; overflowing products
    for lo, hi in ((emin - p - 2, emin + p), (top - 2, top + 2)):
        t = rng.integers(lo, hi + 1, q)
        ka = rng.integers(np.maximum(emin, t - top), np.minimum(top, t - emin) + 1)
        out_a.append(values_in_binades(fmt, ka, rng))
        out_b.append(values_in_binades(fmt, t - ka, rng))
    # products just below / above a power of two: (1 − i·2^−p)(1 + j·2^(1−p))·2^k with i ≈ 2j
    if p >= 3:
        j = rng.integers(1, 1 << min(p - 2, 20), q)
        i = np.clip(2 * j + rng.integers(-1, 2, q), 1, (1 << (p - 1)) - 1)
        a = 1 - np.ldexp(i.astype(np.float64), -p)
        k = rng.integers(emin, top + 1, q)
        b = np.ldexp(1 + np.ldexp(j.astype(np.float64), 1 - p), k)
        ok = exact_mask(fmt, b)
        out_a.append(a[ok] * _signs(rng, ok.sum()))
        out_b.append(b[ok])
    return np.concatenate(out_a), np.concatenate(out_b)


def _div_cases(fmt, n, rng):
    p, emin, top = fmt.precision, fmt.emin, top_binade(fmt)
    q = _split(n, 4)
    out_a, out_b = [], []
    # subnormal ties: (2i + 1)·2^(emin + s) / 2^(s + 1) = (i + 1/2)·2^emin
    i = rng.integers(0, 1 << min(p - 1, 20), q) if p > 1 else np.zeros(q, dtype=np.int64)
    s = rng.integers(0, max(top - emin - p, 1), q)
    a = np.ldexp((2 * i + 1).astype(np.float64), emin + s)
    b = np.ldexp(1.0, s + 1)
    ok = exact_mask(fmt, a) & exact_mask(fmt, b)
    out_a.append(a[ok] * _signs(rng, ok.sum()))
    out_b.append(b[ok])
    # underflowing and overflowing quotients
    for lo, hi in ((emin - p - 2, emin + p), (top - 2, top + 2)):
        t = rng.integers(lo, hi + 1, q)
        ka = rng.integers(np.maximum(emin, t + emin), np.minimum(top, t + top) + 1)
        out_a.append(values_in_binades(fmt, ka, rng))
        out_b.append(values_in_binades(fmt, ka - t, rng))
    # divisors next to 1 and to powers of two
    out_a.append(format_values(fmt, q, rng))
    out_b.append(snap(fmt, np.ldexp(1 + rng.integers(-8, 9, q) * 2.0 ** -p, rng.integers(-8, 9, q))))
    return np.concatenate(out_a), np.concatenate(out_b)


def _sqrt_cases(fmt, n, rng):
    p, emin, top = fmt.precision, fmt.emin, top_binade(fmt)
    q = _split(n, 4)
    out = [np.abs(format_values(fmt, q, rng))]
    # squares of midpoints and their neighbours: √ lands next to a tie
    if p <= 52:
        mid = midpoints(fmt, q, rng)
        mid = mid[(mid > 0) & (mid * mid <= float(fmt.max_finite)) & (mid * mid >= 2.0 ** emin)]
        sq = snap(fmt, mid * mid)
        up, down = snap(fmt, np.nextafter(sq, np.inf) * (1 + 2.0 ** -p)), \
            snap(fmt, sq * (1 - 2.0 ** -p))
        out += [sq, up, down]
    # Priest's family 4^k(1 − 2^−p) and neighbours
    k = np.arange((emin + 2) // 2, top // 2)
    pr = np.ldexp(1 - 2.0 ** -p, 2 * k)
    pr = pr[exact_mask(fmt, pr)]
    out += [pr, snap(fmt, pr * (1 - 2.0 ** -p)), np.ldexp(1.0, 2 * k)]
    out.append(-np.abs(format_values(fmt, 64, rng)))      # NaN
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def check_op(fmt: Format, op: str, n: int, seed: int) -> None:
    """``op`` on ≥ ``n`` operand pairs (in chunks of ``OP_CHUNK``) equals MPFR bit for bit."""
    oracle = MpfrOracle.of(fmt)
    checked = 0
    for i, start in enumerate(range(0, n, OP_CHUNK)):
        with np.errstate(over="ignore"):
            a, b = operands(fmt, op, min(OP_CHUNK, n - start), seed + 1000 * i)
        assert exact_mask(fmt, a).all() and exact_mask(fmt, b).all()
        assert fmt.is_representable(a).all() and fmt.is_representable(b).all()
        if op == "sqrt":
            got, want = fmt.sqrt(a), oracle.op("sqrt", a)
            assert_bits_equal(got, want, a, label=f"sqrt in {fmt}")
        else:
            got, want = getattr(fmt, op)(a, b), oracle.op(op, a, b)
            assert_bits_equal(got, want, a, b, label=f"{op} in {fmt}")
        checked += a.size
    assert checked >= n


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", BINARY_PRESETS)
def test_ops_match_mpfr(name, op):
    check_op(get(name), op, N_PRESET, seed=21)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", [m for m in MODES if m != "nearest_even"])
@pytest.mark.parametrize("name", ["bfloat16", "binary16", "float8_e4m3fn"])
def test_ops_modes_match_mpfr(name, mode, op):
    check_op(get(f"{name}:rounding={mode}"), op, N_MODE if name == "bfloat16" else N_MODE // 5,
             seed=22)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", [26, 27, 28, 31, 37, 44, 51])
def test_ops_residual_path_match_mpfr(p, mode, op):
    fmt = get(f"flt:p={p},emin=-{p + 300},emax=400,rounding={mode}")
    assert fmt.fast_ops
    check_op(fmt, op, N_WIDE_P, seed=23)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("spec", ["flt:p=53,emin=-1074,emax=1024,rounding=away",
                                  "flt:p=52,emin=-1074,emax=1024,rounding=down",
                                  "flt:p=11,emin=-600,emax=600,rounding=up",
                                  "flt:p=53,emin=-1074,emax=500",
                                  "flt:p=53,emin=-1000,emax=500,rounding=zero",
                                  "flt:p=53,emin=-1074,emax=500,overflow=saturate"])
def test_ops_reference_path_match_mpfr(spec, op):
    fmt = get(spec)
    assert fmt.fits_binary64 and not fmt.fast_ops      # float64 in and out, exact engine
    check_op(fmt, op, 4000, seed=24)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("spec", ["bfloat16", "binary32:rounding=zero", "float8_e4m3fn",
                                  "flt:p=40,emin=-300,emax=300,rounding=away"])
def test_ops_reference_engine_matches_fast(spec, op):
    """Object (mpq) operands take the exact engine; its results equal the compiled engine's
    (exact rationals carry no −0, so zeros are compared unsigned)."""
    fmt = get(spec)
    with np.errstate(over="ignore"):
        a, b = operands(fmt, op, 3000, seed=26)
    a, b = a + 0.0, b + 0.0            # −0 → +0 (x/−0 would differ in sign)
    oa, ob = np.array(a.tolist(), dtype=object), np.array(b.tolist(), dtype=object)
    ref = fmt.sqrt(oa) if op == "sqrt" else getattr(fmt, op)(oa, ob)
    assert ref.dtype == object
    fast = fmt.sqrt(a) if op == "sqrt" else getattr(fmt, op)(a, b)
    assert_bits_equal(ref.astype(np.float64) + 0.0, fast + 0.0, a, b, label=f"{op} {spec}")


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", BINARY_PRESETS)
def test_ops_match_mpfr_sweep(name, op):
    check_op(get(name), op, N_PRESET_SLOW, seed=31)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", [m for m in MODES if m != "nearest_even"])
def test_ops_modes_match_mpfr_sweep(mode, op):
    check_op(get(f"bfloat16:rounding={mode}"), op, SLOW * N_MODE, seed=32)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", list(range(26, 52)))
def test_ops_residual_path_match_mpfr_sweep(p, mode, op):
    check_op(get(f"flt:p={p},emin=-{p + 100},emax=480,rounding={mode}"), op, 2 * 10**4, seed=33)


# ---------------------------------------------------------------------------------------------
# Radix 10: reference engine == decimal
# ---------------------------------------------------------------------------------------------
def _decimal_operands(fmt: Format, n: int, rng):
    p, emin = fmt.precision, fmt.emin
    mx = fmt.max_finite
    top = len(str(mx.numerator // mx.denominator)) - 1
    D = decimal.Decimal
    out = []
    for _ in range(n):
        k = int(rng.integers(emin, top + 1)) if rng.random() < 0.3 else int(rng.integers(-4, 5))
        c = max(k + 1 - p, emin)
        m = int(rng.integers(0, 10 ** (k + 1 - c)))
        if rng.random() < 0.2:
            m = m // 10 ** int(rng.integers(0, p)) * 10 ** int(rng.integers(0, p)) + 5
            m = min(m, 10 ** (k + 1 - c) - 1)
        d = D(m).scaleb(c)
        out.append(d.copy_negate() if rng.random() < 0.5 else d)
    M = D(int(mx.numerator))
    out += [M, D(5).scaleb(top - p), D(1).scaleb(emin), D(15).scaleb(emin), D(0)]
    return out


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["decimal32", "decimal64"])
def test_decimal_ops_match_decimal_module(name, mode, op):
    if op == "sqrt" and mode != "nearest_even":
        pytest.skip("decimal's sqrt always rounds half-even")
    fmt = get(f"{name}:rounding={mode}")
    rng = np.random.default_rng(25)
    da = _decimal_operands(fmt, 1500, rng)
    db = list(reversed(_decimal_operands(fmt, len(da) - 5, rng)))
    if op == "sqrt":
        da = [abs(d) for d in da]
    ctx = decimal_context(fmt.precision, fmt.emin, fmt.max_finite, mode)
    qa = np.array([mpq(d) for d in da], dtype=object)
    qb = np.array([mpq(d) for d in db], dtype=object)
    assert fmt.is_representable(qa).all() and fmt.is_representable(qb).all()
    if op == "sqrt":
        got = fmt.sqrt(qa)
        want = [dec_to_exact(ctx.sqrt(d)) for d in da]
    else:
        dec_op = {"add": ctx.add, "sub": ctx.subtract, "mul": ctx.multiply, "div": ctx.divide}[op]
        got = getattr(fmt, op)(qa, qb)
        # x/±0: exact rationals have no signed zero (tested on binary formats)
        want = [dec_to_exact(dec_op(x, y)) if not (op == "div" and y == 0) else None
                for x, y in zip(da, db)]
    bad = [(x, g, w) for x, g, w in zip(da, got, want) if w is not None and not (
        g == w or (isinstance(g, float) and math.isnan(g) and isinstance(w, float) and math.isnan(w)))]
    assert not bad, f"{op} in {name} {mode}: {len(bad)} of {len(got)} mismatch decimal, e.g. {bad[:4]}"


# ---------------------------------------------------------------------------------------------
# By construction
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [24, 25, 26, 27])
@pytest.mark.parametrize("mode", MODES)
def test_priest_sqrt_family(p, mode):
    """√(4^k(1 − 2^−p)) = 2^k·(1 − 2^−(p+1) − 2^−(2p+3) − …): just below the midpoint between
    2^k(1 − 2^−p) and 2^k. Binary64 rounds it onto that midpoint for p ≥ 26 (docs/design.md §7), so
    double rounding through binary64 is wrong there; the residual path is not."""
    fmt = get(f"flt:p={p},emin=-200,emax=200,rounding={mode}")
    assert fmt.fast_ops
    k = np.arange(-80, 90)             # 4^k(1 − 2^−p) is a normal value of the format
    x = np.ldexp(1 - 2.0 ** -p, 2 * k)
    want_up = mode == "upward"
    want = np.ldexp(1.0 if want_up else 1 - 2.0 ** -p, k)
    assert_bits_equal(fmt.sqrt(x), want, x, label=f"Priest p={p}")
    assert_bits_equal(MpfrOracle.of(fmt).op("sqrt", x), want, x, label="oracle")
    assert_bits_equal(fmt.sqrt(np.array(x.tolist(), dtype=object)).astype(np.float64), want, x,
                      label="reference")
    naive = fmt.round(np.sqrt(x))          # binary64 √, then one more rounding
    if p >= 26 and mode == "nearest_even":
        assert (naive != want).all()       # the double-rounding failure the residual avoids
    if p <= 25 and fmt.is_nearest:
        assert_bits_equal(naive, want, x, label="binary64 double rounding is innocuous")


def test_binary32_priest_family():
    f = get("binary32")
    k = np.arange(-60, 60)
    x = np.ldexp(1 - 2.0 ** -24, 2 * k)
    assert_bits_equal(f.sqrt(x), np.ldexp(1 - 2.0 ** -24, k), x)
    assert_bits_equal(f.sqrt(x), np.sqrt(x.astype(np.float32)).astype(np.float64), x)


def test_design_counterexamples():
    """docs/design.md §7: toward zero, 1 − 2^−60 to 8 bits is 0.99609375 (binary64 first gives 1.0)."""
    bz = get("bfloat16:rounding=zero")
    assert bz.sub(np.array([1.0]), np.array([2.0 ** -60]))[0] == 0.99609375
    assert bz.round(np.array([mpq(1) - mpq(2) ** -60], dtype=object))[0] == 0.99609375
    assert bz.round(np.array([1.0 - 2.0 ** -60]))[0] == 1.0   # the binary64 value is already 1.0
    f = get("flt:p=31,emin=-200,emax=200,rounding=zero")     # (1 − 2^−30)(1 + 2^−30) = 1 − 2^−60
    assert f.mul(np.array([1 - 2.0 ** -30]), np.array([1 + 2.0 ** -30]))[0] == 1 - 2.0 ** -31
    assert get("flt:p=31,emin=-200,emax=200,rounding=down").mul(
        np.array([-(1 - 2.0 ** -30)]), np.array([1 + 2.0 ** -30]))[0] == -1.0
    fd = get("bfloat16:rounding=down")
    assert fd.add(np.array([1.0]), np.array([-(2.0 ** -100)]))[0] == 1 - 2.0 ** -8
    assert get("bfloat16:rounding=up").add(np.array([1.0]), np.array([2.0 ** -100]))[0] == 1 + 2.0 ** -7
    assert get("bfloat16:rounding=away").add(np.array([1.0]), np.array([2.0 ** -8]))[0] == 1 + 2.0 ** -7
    assert get("bfloat16").add(np.array([1.0]), np.array([2.0 ** -8]))[0] == 1.0


def test_product_just_below_a_power_of_two_in_the_subnormal_range():
    """Regression: a product rounded by binary64 onto 2^k (k in the format's subnormal range)
    with a negative residual, rounded toward zero, is 2^k − 2^emin (was 2^k − 2^(emin−1),
    not a format value)."""
    f = get("flt:p=30,emin=-100,emax=100,rounding=zero")
    a, b = np.array([1 - 2.0 ** -29]), np.array([2.0 ** -95 * (1 + 2.0 ** -29)])
    r = f.mul(a, b)
    assert r[0] == 31 * 2.0 ** -100 and f.is_representable(r)[0]
    assert_bits_equal(r, MpfrOracle.of(f).op("mul", a, b))


@pytest.mark.parametrize("mode", MODES)
def test_signed_zeros(mode):
    """IEEE 754 §6.3: x − x is +0 but under rounding downward (−0); (−0) + (−0) = −0;
    products and quotients take the sign xor; √−0 = −0. Fast and reference engines."""
    a = np.array([1.0, 0.0, -0.0, 0.0, -0.0, -3.0, 2.0 ** -100])
    b = np.array([1.0, 0.0, -0.0, -0.0, 0.0, 3.0, 2.0 ** -100])
    for spec in (f"bfloat16:rounding={mode}", f"flt:p=40,emin=-200,emax=200,rounding={mode}",
                 f"flt:p=53,emin=-1074,emax=1024,rounding={mode}"):
        f = get(spec)
        o = MpfrOracle.of(f)
        for op in ("add", "sub", "mul", "div"):
            with np.errstate(all="ignore"):
                assert_bits_equal(getattr(f, op)(a, b), o.op(op, a, b), a, b, label=f"{op} {spec}")
        assert_bits_equal(f.sqrt(np.array([-0.0, 0.0])), [-0.0, 0.0])
    down = get("bfloat16:rounding=down")
    assert np.signbit(down.sub(np.array([1.0]), np.array([1.0]))[0])


def test_ops_broadcast_and_shapes():
    f = get("bfloat16")
    a = np.arange(6.0).reshape(2, 3)
    assert f.add(a, 1.0).shape == (2, 3)
    assert f.mul(a, np.array([1.0, 2.0, 3.0])).shape == (2, 3)
    assert f.sqrt(4.0).shape == () and f.sqrt(4.0) == 2.0
    assert f.add(1.0, 2.0 ** -8) == 1.0
