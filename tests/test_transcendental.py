"""Transcendental primitives: correct rounding of the runtime, enclosure of every rule, tightness.

Oracle for the runtime (nothing of nfbound computes an expected value but the reference
rounding of an exact rational, ``reference.round_rational``, the judge of the format engines):
mpmath — a library independent of the MPFR enclosures the runtime uses — evaluates ``f(x)`` at
300+ bits (more for tiny ``|x|``, whose ``tanh x ≈ x`` sits next to a boundary, and for large
``|x|``, where ``1 − tanh x`` matters to directed modes); the exact rational of that value is
rounded by the reference engine. Values beyond the format's reach are replaced by ``±β^emin/8``
or ``±4·max`` (same rounding as the value: all of ``(0, β^emin/2)`` rounds alike, every value
beyond ``2·max`` overflows alike).
"""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from gmpy2 import mpq
from hypothesis import given, settings
from hypothesis import strategies as st

import nfbound.ops.transcendental as T
from nfbound import formats
from nfbound.bounds.rounding import rounding_term
from nfbound.bounds.upward import add_up, div_up, exp_up, mul_up, up
from nfbound.formats.reference import round_rational
from nfbound.ops import primitive
from nfbound.ops.interval import Interval

NAMES = ["exp", "tanh", "sigmoid", "softplus", "log"]
OPS = ["exp", "tanh", "sigmoid", "softplus", "safe_log"]
BINARY = ["bfloat16", "binary16", "tf32", "binary32", "float8_e4m3fn", "float8_e5m2", "binary64"]
DIRECTED = ["bfloat16:rounding=down", "bfloat16:rounding=up", "binary16:rounding=zero",
            "bfloat16:rounding=away", "float8_e4m3fn:overflow=saturate"]
ALL_FORMATS = BINARY + ["decimal32", "decimal64"]      # every preset


# ---------------------------------------------------------------------------------------------
# the oracle
# ---------------------------------------------------------------------------------------------
_MP = {"exp": mpmath.exp, "tanh": mpmath.tanh, "log": mpmath.log,
       "sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
       "softplus": lambda x: mpmath.log1p(mpmath.exp(x))}


def _mpf_to_mpq(v) -> mpq:
    sign, man, exp, _ = v._mpf_
    q = mpq(int(man)) * (mpq(2) ** exp if exp >= 0 else mpq(1, 2 ** (-exp)))
    return -q if sign else q


def oracle(name: str, fmt, x) -> object:
    """``RN(f(x))`` in ``fmt`` from mpmath (see the module docstring)."""
    x = mpq(x)
    if name == "log" and x == 1 or name in ("exp", "sigmoid") and x == 0 or name == "tanh" and x == 0:
        exact = {"exp": mpq(1), "sigmoid": mpq(1, 2), "tanh": mpq(0), "log": mpq(0)}[name]
        return round_rational(exact, fmt)
    ax = abs(float(x)) if x != 0 else 0.0
    prec = 300 + int(3 * max(0.0, -math.log2(ax))) if ax > 0 else 300
    prec += int(3 * min(ax, 3000.0))
    with mpmath.workprec(prec):
        xm = mpmath.mpf(int(x.numerator)) / int(x.denominator)
        v = _MP[name](xm)
        tiny = mpmath.mpf(fmt.radix) ** fmt.emin / 8 if fmt.emin is not None else None
        huge = 4 * mpmath.mpf(int(fmt.max_finite.numerator)) / int(fmt.max_finite.denominator) \
            if fmt.max_finite is not None else None
        if v != 0 and tiny is not None and abs(v) < tiny:
            q = mpq(fmt.radix) ** fmt.emin / 8 * (1 if v > 0 else -1)
        elif huge is not None and abs(v) > huge:
            q = 4 * fmt.max_finite * (1 if v > 0 else -1)
        else:
            q = _mpf_to_mpq(v)
            # mpmath may return the limit itself; the true value is strictly inside (x ≠ 0):
            # tanh x, σ(x) < 1, softplus(x) > x (then within 2^−prec of it, far below a spacing)
            if name in ("tanh", "sigmoid") and abs(q) == 1:
                q -= (1 if q > 0 else -1) * mpq(1, 2 ** (prec + 4))
            elif name == "softplus" and q == x:
                q += abs(x) / 2 ** (prec + 4)
    return round_rational(q, fmt)


def same_value(a, b) -> bool:
    fa = isinstance(a, float) or isinstance(a, np.floating)
    fb = isinstance(b, float) or isinstance(b, np.floating)
    if fa and math.isnan(a) or fb and math.isnan(b):
        return (fa and math.isnan(a)) and (fb and math.isnan(b))
    if fa and math.isinf(a) or fb and math.isinf(b):
        return a == b
    return mpq(a) == mpq(b)


def runtime(name: str, fmt, x):
    if name == "log":
        return T.safe_log_runtime(fmt, x, c=2.0 ** -1074)
    return getattr(T, name + "_runtime")(fmt, x)


def check_against_oracle(name: str, fmt, x):
    out = np.asarray(runtime(name, fmt, x)).reshape(-1)
    xs = np.asarray(x).reshape(-1)
    bad = []
    for xi, oi in zip(xs, out):
        arg = mpq(xi) if name != "log" else max(mpq(xi), mpq(2) ** -1074)
        want = oracle(name, fmt, arg)
        if not same_value(oi, want):
            bad.append((xi, oi, want))
    assert not bad, f"{name} in {fmt}: {len(bad)} wrong, e.g. {bad[:3]}"
    return out


# ---------------------------------------------------------------------------------------------
# inputs: random, extreme, and near rounding boundaries
# ---------------------------------------------------------------------------------------------
def _domain(name: str, fmt, x: np.ndarray) -> np.ndarray:
    return np.abs(x) if name == "log" else x


def extreme_values(fmt) -> np.ndarray:
    """Format values at the ends of the range and around the thresholds of the functions."""
    mx = float(fmt.max_finite)
    tiny = 2.0 ** fmt.emin
    raw = [0.0, -0.0, tiny, -tiny, 3 * tiny, mx, -mx, 1.0, -1.0, 0.5, 2.0 ** -10, -2.0 ** -10,
           math.log(mx), math.log(mx) * 0.999, math.log(mx) * 1.001, -math.log(mx),
           math.log(tiny), math.log(tiny) - 1, math.log(tiny) + 1, math.log(tiny) - 0.6931,
           20.0, -20.0, 40.0, 90.0, -90.0, 100.0, -100.0, 700.0, -700.0, 745.0, -745.0,
           -746.0, 800.0]
    return np.unique(fmt.round(np.array(raw)))


def all_values(fmt) -> np.ndarray:
    """Every finite value of a binary FLT format: ``m·2^e`` with ``0 ≤ m < 2^p``, ``e ≥ emin``,
    up to the largest finite, and their negatives."""
    p, emin = fmt.precision, fmt.emin
    mx = float(fmt.max_finite)
    top = math.frexp(mx)[1] - p
    m = np.arange(2 ** p, dtype=np.float64)
    v = np.unique(np.concatenate([np.ldexp(m, e) for e in range(emin, top + 1)]))
    v = v[v <= mx]
    return np.concatenate([-v[:0:-1], v])


def near_boundary(name: str, fmt, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates whose binary64 ``f(x)`` is closest (in ulps) to a rounding boundary
    of ``fmt`` (a midpoint for the nearest modes, a format value for directed ones): the hard
    cases of correct rounding (the generalisation of ``x = RN(log m)`` for midpoints ``m``)."""
    x = _domain(name, fmt, candidates)
    with np.errstate(all="ignore"):
        y = T.F64[name](np.where(x == 0, 1.0, x) if name == "log" else x)
        r = fmt.round(y)
        ok = np.isfinite(y) & np.isfinite(r)
        u = fmt.ulp(np.where(ok, r, 1.0))
        if fmt.is_nearest:
            d = np.minimum(np.abs(y - (r + u / 2)), np.abs(y - (r - u / 2))) / u
        else:
            d = np.abs(y - r) / u
    d = np.where(ok, d, np.inf)
    return x[np.argsort(d, kind="stable")[:k]]


def sample_values(rng, fmt, n: int) -> np.ndarray:
    """Random format values over several scales plus the extremes."""
    parts = [rng.standard_normal(n // 2) * 4, rng.standard_normal(n // 4) * 40,
             np.exp(rng.uniform(-30, 6, n // 4)) * rng.choice([-1, 1], n // 4)]
    x = fmt.round(np.concatenate(parts))
    x = x[np.isfinite(x)]
    return np.concatenate([x, extreme_values(fmt)])


def test_values_helpers_are_format_values():
    f = formats.get("float8_e4m3fn")
    v = all_values(f)
    assert f.is_representable(v).all() and len(v) == 2 * 126 + 1      # 126 positive values
    grid = np.concatenate([np.linspace(-448, 448, 100001), np.linspace(-0.5, 0.5, 100001)])
    assert np.array_equal(np.unique(f.round(grid) + 0.0), v)


# ---------------------------------------------------------------------------------------------
# 1. assumption A on NumPy's binary64 functions
# ---------------------------------------------------------------------------------------------
def _assumption_inputs(rng, name: str, n: int) -> np.ndarray:
    k = n // 6
    with np.errstate(all="ignore"):
        return _assumption_inputs_raw(rng, name, n, k)


def _assumption_inputs_raw(rng, name: str, n: int, k: int) -> np.ndarray:
    x = np.concatenate([
        rng.standard_normal(k) * 3, rng.standard_normal(k) * 300,
        np.exp(rng.uniform(-745, 709, k)) * rng.choice([-1, 1], k),            # all magnitudes
        rng.uniform(-750, 720, k),                                              # exp's range
        rng.uniform(-1e-12, 1e-12, k),                                          # near 0
        np.frombuffer(rng.integers(0, 2**63 - 1, k, dtype=np.int64).tobytes(), np.float64)
        * rng.choice([-1, 1], k),                                               # random patterns
        np.array([5e-324, 1e-310, 2.2e-308, 1e308, 1.79e308, 709.78, 709.79, -745.1, -745.2,
                  -708.4, 36.7, 37.0, -37.0, 1 + 2**-52, 1 - 2**-53, 0.5, 2.0, 18.0, 19.0]),
    ])
    x = x[np.isfinite(x)]
    if name == "log":
        x = np.abs(x)
        x = np.concatenate([x[x > 0], 1 + rng.uniform(-1e-6, 1e-6, k)])
    return x


@pytest.mark.parametrize("name", NAMES)
def test_numpy_accuracy_assumption(name):
    """``|y − f(x)| ≤ 2^−40|y| + 2^−1000`` (checked exactly against the 200-bit enclosure)."""
    rng = np.random.default_rng(NAMES.index(name))
    check_assumption(name, _assumption_inputs(rng, name, 10_000))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_numpy_accuracy_assumption_slow(name):
    rng = np.random.default_rng(100 + NAMES.index(name))
    check_assumption(name, _assumption_inputs(rng, name, 100_000))


def check_assumption(name: str, x: np.ndarray) -> None:
    with np.errstate(all="ignore"):
        y = T.F64[name](x)
    keep = np.isfinite(y)
    worst = 0.0
    rel, absolute = mpq(T.REL_ERR_F64), mpq(T.ABS_ERR_F64)
    for xi, yi in zip(x[keep].tolist(), y[keep].tolist()):
        lo, hi = T.enclose(name, mpq(xi))
        yq = mpq(yi)
        err = max(abs(yq - lo), abs(yq - hi))
        assert err <= abs(yq) * rel + absolute, f"NumPy {name}({xi!r}) = {yi!r} violates assumption A"
        if abs(yi) > 1e-290:
            worst = max(worst, float(err) / abs(yi))
    assert keep.sum() > 0.9 * len(x) or name == "exp"
    assert worst < 2.0 ** -48   # NumPy is in fact within a few ulps: a 2^8-fold margin at least


# ---------------------------------------------------------------------------------------------
# 2. correct rounding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt_name", ["float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("name", NAMES)
def test_correct_rounding_exhaustive_fp8(name, fmt_name):
    fmt = formats.get(fmt_name)
    check_against_oracle(name, fmt, _domain(name, fmt, all_values(fmt)))


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "tf32", "binary32", "binary64"])
@pytest.mark.parametrize("name", NAMES)
def test_correct_rounding_random_and_hard(name, fmt_name):
    """Random values, extremes, and the values nearest to rounding boundaries (the filter must
    send those to the slow path: at least one is checked to have gone there)."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(hash((name, fmt_name)) % 2**32)
    n = 200 if fmt_name == "binary64" else 800
    pool = fmt.round(np.concatenate([rng.standard_normal(200_000) * 8,
                                     np.exp(rng.uniform(-20, 5, 100_000))]))
    pool = pool[np.isfinite(pool)]
    hard = near_boundary(name, fmt, pool, 200)
    x = np.concatenate([_domain(name, fmt, sample_values(rng, fmt, n)), hard])
    check_against_oracle(name, fmt, x)
    if fmt_name == "binary32":   # coarser formats have no value within 2^−40 of a boundary
        arg = np.where(hard == 0, 1.0, hard) if name == "log" else hard
        with np.errstate(all="ignore"):
            lo, hi = T.filter_enclosure(name, arg, T.F64[name](arg))
        flagged = fmt.round(lo) != fmt.round(hi)
        assert flagged.any(), "the hard cases should exercise the slow path"


@pytest.mark.parametrize("fmt_name", DIRECTED)
@pytest.mark.parametrize("name", NAMES)
def test_correct_rounding_other_modes(name, fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(hash((name, fmt_name, 1)) % 2**32)
    pool = fmt.round(rng.standard_normal(100_000) * 8)
    x = np.concatenate([_domain(name, fmt, sample_values(rng, fmt, 600)),
                        near_boundary(name, fmt, pool, 200),
                        _domain(name, fmt, fmt.round(np.array([30.0, 200.0, 1e4, -1e4, 1e30])))])
    check_against_oracle(name, fmt, x)


@pytest.mark.parametrize("fmt_name", ["decimal32", "decimal64"])
@pytest.mark.parametrize("name", NAMES)
def test_correct_rounding_decimal(name, fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(7 + NAMES.index(name))
    x = fmt.round(np.concatenate([rng.standard_normal(60) * 4, [0.0, 1.0, -1.0, 1e-90, 250.0,
                                                                 -250.0, 1e30, 0.1, 1e96]]))
    x = _domain(name, fmt, x)
    out = check_against_oracle(name, fmt, x)
    assert out.dtype == object


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16"])
@pytest.mark.parametrize("name", NAMES)
def test_correct_rounding_exhaustive_16bit(name, fmt_name):
    fmt = formats.get(fmt_name)
    v = all_values(fmt)
    if fmt_name == "bfloat16":   # 65k values: every one with |x| ≤ 2^12 and a sample beyond
        rng = np.random.default_rng(3)
        v = np.concatenate([v[np.abs(v) <= 4096], rng.choice(v[np.abs(v) > 4096], 2000)])
    check_against_oracle(name, fmt, _domain(name, fmt, v))


def test_overflow_underflow_and_special_values():
    bf, e4, e4s, h = (formats.get(n) for n in ("bfloat16", "float8_e4m3fn",
                                                "float8_e4m3fn:overflow=saturate", "binary16"))
    assert T.exp_runtime(bf, np.array([100.0]))[0] == np.inf
    assert np.isnan(T.exp_runtime(e4, np.array([96.0]))[0])    # 96 = RN(100) in e4m3
    assert T.exp_runtime(e4s, np.array([96.0]))[0] == 448.0
    for f in (bf, e4, e4s, h):
        b = T.exp_bound(f, (f.round(np.array([100.0, 0.0])),), (np.array([0.0, 0.0]),))
        assert b[0] == np.inf and b[1] == 0.0   # overflow → inf; e^0 = 1 exactly → 0
    # subnormal result: e^-90 ≈ 2^-129.8 (bfloat16 subnormals lie in [2^-133, 2^-126));
    # e^-100 ≈ 2^-144.3 is below half the smallest subnormal: 0 (its bound is η)
    y = T.exp_runtime(bf, np.array([-90.0, -100.0]))
    assert 2.0 ** -133 <= y[0] < 2.0 ** -126 and same_value(y[0], oracle("exp", bf, mpq(-90)))
    assert y[1] == 0.0 and same_value(y[1], oracle("exp", bf, mpq(-100)))
    assert T.exp_bound(bf, (np.array([-100.0]),), (np.zeros(1),))[0] == 2.0 ** -134
    big = bf.round(np.array([1e30]))
    assert T.exp_runtime(bf, -big)[0] == 0.0
    assert T.exp_runtime(formats.get("bfloat16:rounding=up"), -big)[0] == 2.0 ** -133
    assert T.exp_runtime(formats.get("bfloat16:rounding=down"), big)[0] == float(bf.max_finite)
    b64 = formats.get("binary64")
    assert T.exp_runtime(b64, np.array([1e300, -1e300, 710.0]))[[0, 1, 2]].tolist() == [np.inf, 0, np.inf]
    # exact cases and signs of zero
    assert T.tanh_runtime(bf, np.array([-0.0]))[0] == 0 and np.signbit(T.tanh_runtime(bf, np.array([-0.0]))[0])
    assert np.signbit(T.tanh_runtime(bf, np.array([-2.0 ** -133]))[0]) or \
        T.tanh_runtime(bf, np.array([-2.0 ** -133]))[0] == -2.0 ** -133
    assert T.sigmoid_runtime(bf, np.array([0.0]))[0] == 0.5
    assert T.safe_log_runtime(bf, np.array([1.0, 0.0]), c=1.0).tolist() == [0.0, 0.0]
    # guards of the slow path in directed modes
    down = formats.get("binary64:rounding=down")
    assert T.tanh_runtime(down, np.array([50.0, 1e300]))[0] == 1 - 2.0 ** -53
    assert T.tanh_runtime(down, np.array([1e300]))[0] == 1 - 2.0 ** -53
    assert T.sigmoid_runtime(down, np.array([1e300]))[0] == 1 - 2.0 ** -53
    upw = formats.get("binary32:rounding=up")
    x = np.float64(np.float32(1e30))
    assert T.softplus_runtime(upw, np.array([x]))[0] == np.nextafter(np.float32(x), np.float32(np.inf))
    assert T.softplus_runtime(formats.get("binary32"), np.array([x]))[0] == x


def test_fast_path_equals_scalar_slow_path_bit_for_bit():
    """The vectorised runtime equals the per-element slow path (with signed zeros)."""
    rng = np.random.default_rng(11)
    for fmt_name in ("bfloat16", "binary16", "float8_e5m2", "bfloat16:rounding=down"):
        fmt = formats.get(fmt_name)
        x = sample_values(rng, fmt, 400)
        for name in NAMES:
            xx = np.abs(x) + (0.5 if name == "log" else 0) if name == "log" else x
            xx = fmt.round(xx)
            out = runtime(name, fmt, xx)
            for xi, oi in zip(xx, out):
                arg = mpq(float(xi))
                r = T.correctly_rounded(name, fmt, max(arg, mpq(2) ** -1074) if name == "log" else arg)
                r = float(r)
                if r == 0 and ((name == "tanh" and np.signbit(xi)) or (name == "log" and xi < 1)):
                    r = -0.0
                assert (np.isnan(oi) and np.isnan(r)) or (oi == r and np.signbit(oi) == np.signbit(r)), \
                    (name, fmt_name, xi, oi, r)


# ---------------------------------------------------------------------------------------------
# 3. enclosures: forward and VJP, every op, every preset
# ---------------------------------------------------------------------------------------------
def _inputs(op: str, fmt, rng, n: int):
    if op == "safe_log":
        base = np.concatenate([np.abs(rng.standard_normal(n)) * 3, [0.0, 1.0, 1e-12, 1e-3, 0.25]])
    else:
        base = np.concatenate([rng.standard_normal(n) * 3, [0.0, 1.0, -1.0, 12.0, -12.0, 30.0,
                                                            -30.0, 90.0, -90.0]])
    return fmt.round(base)


def _spec_with_eps(rng, fmt, x, rel: float, mode: str):
    """A spec input within ``eps`` of the runtime ``x``: an interval ``[x − e/2, x + e/2]`` or a
    point inside it; ``eps`` a float64 upper bound."""
    xq = np.array([mpq(v) for v in np.asarray(x).reshape(-1)], dtype=object)
    e = np.array([abs(float(v)) * rel + (1e-5 if rel else 0.0) for v in xq])
    half = np.array([mpq(v) / 2 for v in e], dtype=object)
    if mode == "interval":
        spec = Interval(xq - half, xq + half)
    else:
        t = np.array([mpq(int(s), 1000) for s in rng.integers(-1000, 1001, xq.size)], dtype=object)
        pts = xq + half * t
        spec = Interval(pts, pts)
    shape = np.shape(x)
    spec = spec.map_exact(lambda a: a.reshape(shape))
    return spec, e.reshape(shape)


def check_enclosure(op: str, fmt, x, spec, eps, params, rng, eg_rel: float = 0.0):
    P = primitive.get(op)
    out = P.runtime(fmt, x, **params)
    bound = P.bound(fmt, (x,), (eps,), **params)
    assert np.shape(bound) == np.shape(out) and np.all(bound >= 0)
    ok = P.spec(spec, **params).encloses(out, bound)
    assert ok.all(), f"{op} forward in {fmt}: x = {np.asarray(x)[~ok][:3]}"
    g = fmt.round(rng.standard_normal(np.shape(out)) * 2)
    eg = np.array([abs(float(v)) * eg_rel for v in np.asarray(g).reshape(-1)]).reshape(np.shape(g))
    gq = np.array([mpq(v) + mpq(e) / 3 for v, e in zip(np.asarray(g).reshape(-1), eg.reshape(-1))],
                  dtype=object).reshape(np.shape(g))
    (gr,) = P.vjp_runtime(fmt, (x,), g, **params)
    (gs,) = P.vjp_spec((spec,), Interval(gq, gq), **params)
    (gb,) = P.vjp_bound(fmt, (x,), (eps,), g, eg, **params)
    ok = gs.encloses(gr, gb)
    assert ok.all(), f"{op} VJP in {fmt}: x = {np.asarray(x)[~ok][:3]}"
    return out, bound, gr, gb


@pytest.mark.parametrize("fmt_name", ALL_FORMATS + DIRECTED)
@pytest.mark.parametrize("op", OPS)
def test_enclosure_forward_and_vjp(op, fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(hash((op, fmt_name, 2)) % 2**32)
    n = 10 if fmt_name in ("decimal32", "decimal64", "binary64") else 30
    x = _inputs(op, fmt, rng, n)
    params = {"c": [1e-12, 0.1, 0.5][int(rng.integers(3))]} if op == "safe_log" else {}
    for rel, mode, eg_rel in [(0.0, "point", 0.0), (2.0 ** -8, "interval", 2.0 ** -9),
                              (2.0 ** -3, "point", 0.0), (0.5, "interval", 0.1)]:
        spec, eps = _spec_with_eps(rng, fmt, x, rel, mode)
        check_enclosure(op, fmt, x, spec, eps, params, rng, eg_rel)


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e4m3fn", "binary32"])
@pytest.mark.parametrize("op", OPS)
def test_enclosure_with_rounded_data(op, fmt_name):
    """Spec = exact binary64 data, runtime = its rounding, eps = |RN(data) − data| (upward)."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(hash((op, fmt_name, 3)) % 2**32)
    data = rng.standard_normal(200) * 3
    if op == "safe_log":
        data = np.abs(data)
    x = fmt.round(data)
    keep = np.isfinite(x)
    data, x = data[keep], x[keep]
    eps = up(np.abs(x - data))
    params = {"c": 0.01} if op == "safe_log" else {}
    check_enclosure(op, fmt, x, Interval.exact(data), eps, params, rng, 0.0)


@pytest.mark.parametrize("op", OPS)
def test_enclosure_adversarial(op):
    """Near overflow, deep underflow, huge arguments, the kink of safe_log, tiny arguments."""
    rng = np.random.default_rng(5)
    for fmt_name in ("bfloat16", "float8_e4m3fn", "binary16", "float8_e5m2",
                     "float8_e4m3fn:overflow=saturate", "binary16:rounding=up"):
        fmt = formats.get(fmt_name)
        mx = float(fmt.max_finite)
        raw = [math.log(mx), math.log(mx) * 0.99, math.log(mx) * 1.01, -math.log(mx),
               math.log(2.0 ** fmt.emin), 2.0 ** fmt.emin, -2.0 ** fmt.emin, 2.0 ** -12, mx, -mx,
               1e4, -1e4, 0.0, 0.01, 0.1, 1.0]
        x = fmt.round(np.array(raw))
        x = x[np.isfinite(x)]
        if op == "safe_log":
            x = np.abs(x)
        if op == "exp" and (x > 2 ** 20).any():   # e^x has no enclosure there: the spec refuses
            with pytest.raises(ValueError, match="exceeds 2\\^20"):
                T.exp_spec(Interval.exact(x[x > 2 ** 20]))
        x = x[x <= 2 ** 20] if op == "exp" else x
        params = {"c": float(fmt.round(np.array([0.1]))[0])} if op == "safe_log" else {}
        for rel in (0.0, 2.0 ** -10, 1.0):
            spec, eps = _spec_with_eps(rng, fmt, x, rel, "interval")
            check_enclosure(op, fmt, x, spec, eps, params, rng, rel)


def test_safe_log_kink_cases():
    """Spec inputs on both sides of ``c`` while the runtime is on one side."""
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(9)
    c = 0.25
    x = fmt.round(np.array([0.25, 0.2421875, 0.2578125, 0.0, 1.0, 0.5, 0.125]))
    for e in (0.0, 2.0 ** -9, 0.01, 0.3):
        eps = np.full(x.shape, e)
        spec = Interval.between(np.maximum(x - e, -10), x + e)
        check_enclosure("safe_log", fmt, x, spec, eps, {"c": c}, rng, 0.01)
    # x̂ < c with every spec input below c: runtime and spec gradients are both exactly 0
    (gb,) = T.safe_log_vjp_bound(fmt, (np.array([0.0]),), (np.array([0.1]),), np.array([1.0]),
                                 np.array([0.0]), c=c)
    assert gb[0] == 0.0
    # a non-representable c is taken exactly (0.1 is not a bfloat16 value)
    y = T.safe_log_runtime(fmt, np.array([0.0]), c=0.1)[0]
    assert same_value(y, oracle("log", fmt, mpq(0.1)))


@settings(max_examples=25, deadline=None)
@given(op=st.sampled_from(OPS), fmt_name=st.sampled_from(["bfloat16", "binary16", "float8_e5m2",
                                                          "float8_e4m3fn", "tf32"]),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       scale=st.sampled_from([0.01, 1.0, 8.0, 100.0]), rel=st.sampled_from([0.0, 2.0 ** -6, 1.0]),
       seed=st.integers(0, 2**31))
def test_enclosure_property(op, fmt_name, shape, scale, rel, seed):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    x = fmt.round(rng.standard_normal(tuple(shape)) * scale)
    x = np.where(np.isfinite(x), x, 0.0)
    if op == "safe_log":
        x = np.abs(x)
    spec, eps = _spec_with_eps(rng, fmt, x, rel, "interval" if seed % 2 else "point")
    params = {"c": 1e-3} if op == "safe_log" else {}
    check_enclosure(op, fmt, x, spec, eps, params, rng, rel)


def test_spec_exact_points_and_errors():
    z = Interval.exact(np.array([0.0]))
    assert T.exp_spec(z).is_exact and T.exp_spec(z).lo[0] == 1
    assert T.tanh_spec(z).lo[0] == 0 and T.tanh_spec(z).is_exact
    assert T.sigmoid_spec(z).lo[0] == mpq(1, 2) and T.sigmoid_spec(z).is_exact
    assert T.safe_log_spec(Interval.exact(np.array([1.0]))).lo[0] == 0
    s = T.exp_spec(Interval.exact(np.array([1.0])))
    assert mpq(2718281828459045235360, 10**21) < s.lo[0] < s.hi[0] < mpq(2718281828459045235361, 10**21)
    assert s.hi[0] - s.lo[0] < mpq(2) ** -190
    with pytest.raises(ValueError, match="c must be"):
        T.safe_log_runtime(formats.get("bfloat16"), np.array([1.0]), c=0.0)
    with pytest.raises(ValueError, match="c must be"):
        T.safe_log_spec(z, c=-1.0)
    with pytest.raises(ValueError, match="x contains NaN"):
        T.exp_runtime(formats.get("bfloat16"), np.array([np.nan]))
    with pytest.raises(ValueError, match="exceeds 2\\^20"):
        T.exp_spec(Interval.exact(np.array([2.0 ** 21])))
    flx = formats.get("flx:p=8")
    with pytest.raises(ValueError, match="too large"):
        T.exp_runtime(flx, np.array([mpq(-(2 ** 21))], dtype=object))
    with pytest.raises(ValueError, match="same shape"):
        T.exp_vjp_runtime(formats.get("bfloat16"), (np.ones(2),), np.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_enclosures_of_non_dyadic_rationals_are_rigorous(name):
    """``enclose`` at non-dyadic rationals (decimal runtime values, spec endpoints such as
    ``x/3``) against mpmath at 800 bits. Regression: the sigmoid and softplus ends negated an
    ``mpfr``, which rounds to 53 bits, so their "enclosures" missed ``f(x)`` by ~2^−55·|f|."""
    rng = np.random.default_rng(NAMES.index(name))
    xs = [mpq(int(rng.integers(-40 * 10 ** 15, 40 * 10 ** 15)), 10 ** 15) for _ in range(40)]
    xs += [mpq(int(k), 3) for k in rng.integers(-90, 90, 10)] + [mpq(1, 7), mpq(-22, 7)]
    if name == "log":
        xs = [abs(x) + mpq(1, 10 ** 9) for x in xs]
    with mpmath.workprec(800):
        for x in xs:
            lo, hi = T.enclose(name, x)
            v = _MP[name](mpmath.mpf(int(x.numerator)) / int(x.denominator))
            tol = abs(v) * mpmath.mpf(2) ** -700
            lo_m = mpmath.mpf(int(lo.numerator)) / int(lo.denominator)
            hi_m = mpmath.mpf(int(hi.numerator)) / int(hi.denominator)
            assert lo_m <= v + tol and v - tol <= hi_m, (name, x)
            assert hi_m - lo_m <= abs(v) * mpmath.mpf(2) ** -180 + mpmath.mpf(2) ** -190


@pytest.mark.parametrize("op", OPS)
def test_vjp_rules_refuse_a_bad_upstream_gradient(op):
    """``g`` must have the output's shape (no broadcasting of a (1,) gradient) and hold finite
    values of the format; the error names ``g``."""
    fmt = formats.get("bfloat16")
    P = primitive.get(op)
    x = fmt.round(np.array([0.5, 1.5, 3.0]))
    params = {"c": 0.25} if op == "safe_log" else {}
    for g, msg in [(np.ones(1), "^g and x must have the same shape"),
                   (np.ones((3, 1)), "^g and x must have the same shape"),
                   (np.array([1.0, np.inf, 1.0]), "^g contains"),
                   (np.array([1.0, 1.0 + 2.0 ** -10, 1.0]), "^g holds values that are not")]:
        with pytest.raises(ValueError, match=msg):
            P.vjp_runtime(fmt, (x,), g, **params)
        with pytest.raises(ValueError, match=msg):
            P.vjp_bound(fmt, (x,), (np.zeros(3),), g, np.zeros(np.shape(g)), **params)


def test_huge_arguments_spec_and_runtime_agree():
    """|x| > 2^20: asymptotic enclosures; the runtime's guards decide the rounding."""
    fmt = formats.get("binary32")
    x = fmt.round(np.array([3e30, -3e30, 2.0 ** 21, -(2.0 ** 21)]))
    rng = np.random.default_rng(0)
    for op in ("tanh", "sigmoid", "softplus"):
        check_enclosure(op, fmt, x, Interval.exact(x), np.zeros(4), {}, rng)
    check_enclosure("exp", fmt, -np.abs(x), Interval.exact(-np.abs(x)), np.zeros(4), {}, rng)


# ---------------------------------------------------------------------------------------------
# 4. tightness: never looser than TorchLean, and not far from the observed error
# ---------------------------------------------------------------------------------------------
def torchlean_bound(op: str, fmt, x, eps, c=None):
    """TorchLean's rules (docs/design.md §4), evaluated with the same upward arithmetic."""
    y = T.safe_log_runtime(fmt, x, c=c) if op == "safe_log" else getattr(T, op + "_runtime")(fmt, x)
    r = rounding_term(fmt, y)
    if op == "exp":
        return add_up(mul_up(exp_up(up(x + eps)), eps), r)
    if op == "tanh":
        return add_up(2.0, r)
    if op == "sigmoid":
        return add_up(1.0, r)
    if op == "softplus":
        return add_up(eps, r)
    den = np.nextafter(np.maximum(x, c) - eps, -np.inf)
    return add_up(div_up(eps, den), r)


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "binary32", "float8_e4m3fn"])
@pytest.mark.parametrize("op", OPS)
def test_never_looser_than_torchlean(op, fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(hash((op, fmt_name, 4)) % 2**32)
    x = fmt.round(rng.standard_normal(2000) * 4)
    c = 2.0 ** -6
    if op == "safe_log":
        x = np.abs(x)
    for rel in (0.0, 2.0 ** -20, 2.0 ** -8, 2.0 ** -2, 2.0):
        eps = np.abs(x) * rel + rel * 1e-3
        params = {"c": c} if op == "safe_log" else {}
        ours = primitive.get(op).bound(fmt, (x,), (eps,), **params)
        tl = torchlean_bound(op, fmt, x, eps, c)
        if op == "safe_log":   # TorchLean's rule exists where max(x, c) − ε > 0
            valid = np.maximum(x, c) - eps > 0
            ours, tl = ours[valid], tl[valid]
        assert np.all(ours <= tl * (1 + 2.0 ** -40)), (op, rel, np.max(ours / tl))
        if op in ("tanh", "sigmoid") and 0 < rel < 1:
            assert np.median(ours / tl) < 0.5   # uses ε, not the range


def test_tightness_against_observed_error():
    """Bound / observed error on random data with input perturbations (reported, and sane)."""
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(12)
    x = fmt.round(rng.standard_normal(300) * 3)
    for op in OPS:
        xx = np.abs(x) + 0.5 if op == "safe_log" else x
        xx = fmt.round(xx)
        eps = np.abs(xx) * 2.0 ** -8
        spec_x = Interval.exact(xx + eps * 0.999)
        P = primitive.get(op)
        out = P.runtime(fmt, xx)
        bound = P.bound(fmt, (xx,), (eps,))
        d = np.array([float(v) for v in P.spec(spec_x).distance(out)])
        assert np.all(d <= bound)
        ratio = np.median(bound / np.maximum(d, 1e-300))
        assert ratio < 8, (op, ratio)


def test_vjp_runtime_orders():
    """The documented order of rounded operations, replayed with the format's own ops."""
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(2)
    x = fmt.round(rng.standard_normal(50) * 2)
    g = fmt.round(rng.standard_normal(50))
    one = np.ones(50)
    y = T.tanh_runtime(fmt, x)
    assert np.array_equal(T.tanh_vjp_runtime(fmt, (x,), g)[0],
                          fmt.mul(g, fmt.sub(one, fmt.mul(y, y))))
    s = T.sigmoid_runtime(fmt, x)
    assert np.array_equal(T.sigmoid_vjp_runtime(fmt, (x,), g)[0],
                          fmt.mul(g, fmt.mul(s, fmt.sub(one, s))))
    assert np.array_equal(T.softplus_vjp_runtime(fmt, (x,), g)[0], fmt.mul(g, s))
    assert np.array_equal(T.exp_vjp_runtime(fmt, (x,), g)[0], fmt.mul(g, T.exp_runtime(fmt, x)))
    xa = np.abs(x)
    q = T.safe_log_vjp_runtime(fmt, (xa,), g, c=0.5)[0]
    assert np.array_equal(q, np.where(xa >= 0.5, fmt.div(g, np.where(xa >= 0.5, xa, 1.0)), 0.0))


def test_registered_with_all_rules():
    for op in OPS:
        P = primitive.get(op)
        xs, params = P.sample(np.random.default_rng(0), formats.get("bfloat16"))
        assert formats.get("bfloat16").is_representable(xs[0]).all()
