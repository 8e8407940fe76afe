"""The bound arithmetic itself: ``bounds.upward``, ``bounds.rounding``, ``bounds.ctx``.

Every result is judged against exact rationals (``gmpy2.mpq``; MPFR/mpmath at several hundred
bits for ``exp``): an upward operation must never return less than the exact value — also for
sums of many subnormal quanta, where plain binary64 loses them, and near overflow, where the
only acceptable answer above ``DBL_MAX`` is ``inf`` (never a finite wrong number).
``rounding_term(RN(z))`` must bound ``|RN(z) − z|`` for exact ``z`` in every kind of format.
"""
from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from gmpy2 import mpq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfbound import formats
from nfbound.bounds.ctx import ctx_add, ctx_add_bound
from nfbound.bounds.rounding import rounding_term
from nfbound.bounds.upward import (add_up, div_up, exact_array_up, exact_up, exp_up, expm1_up,
                                   mul_up, sum_up, up)
from nfbound.formats.reference import round_rational, to_exact
from nfbound.ops.interval import Interval, exact_array

TINY = 5e-324                              # 2^−1074
DBL_MAX = float(np.finfo(np.float64).max)
INF = math.inf


def covers(f, q) -> bool:
    """The float64 ``f`` is an upper bound of the exact rational ``q`` (``inf`` always is)."""
    f = float(f)
    return f == INF or (math.isfinite(f) and mpq(f) >= q)


def Q(v) -> mpq:
    return mpq(float(v))


def exact_sum(values) -> mpq:
    return sum((Q(v) for v in np.asarray(values).reshape(-1)), mpq(0))


# =============================================================================================
# upward.py
# =============================================================================================
def test_up_is_one_step_toward_plus_infinity():
    x = np.array([0.0, -0.0, TINY, -TINY, 1.0, -1.0, 2.0 ** -1022, DBL_MAX, -DBL_MAX, INF])
    with np.errstate(over="ignore"):
        u = up(x)
    assert u[0] == TINY and u[1] == TINY and u[2] == 2 * TINY and u[3] == 0.0
    assert u[7] == INF and u[8] == -np.nextafter(DBL_MAX, 0.0) and u[9] == INF
    assert all(mpq(float(b)) > mpq(float(a)) for a, b in zip(x[:9], u[:9]) if math.isfinite(b))


def test_sum_of_many_subnormal_quanta():
    """10^5 terms 2^−1074: every partial sum is exact in binary64, and ``sum_up`` still never
    drops below it (each step rounds up: at most twice the exact sum)."""
    n = 10 ** 5
    s = sum_up(np.full(n, TINY))
    exact = n * mpq(2) ** -1074
    assert covers(s, exact) and mpq(float(s)) <= 2 * exact
    assert add_up(*([TINY] * 1000)) >= 1000 * TINY


def test_tiny_terms_after_a_normal_one_are_not_lost():
    """``1 + 10^5·2^−1074`` (and ``1 + 100·2^−60``, ``1 + 777·2^−1022``): NumPy's sum returns
    exactly 1, *below* the exact sum; the upward sum covers it, in either order and along any
    axis."""
    for tiny, n in ((TINY, 10 ** 5), (2.0 ** -60, 100), (2.0 ** -1022, 777)):
        terms = np.concatenate([[1.0], np.full(n, tiny)])
        exact = 1 + n * Q(tiny)
        assert mpq(float(np.sum(terms))) < exact               # what upward rounding prevents
        assert covers(sum_up(terms), exact)
        if n > 1000:
            continue
        assert covers(sum_up(terms[::-1]), exact)
        two = np.stack([terms, terms[::-1]])
        assert all(covers(v, exact) for v in sum_up(two, axis=1))
        assert covers(sum_up(two), 2 * exact)
        cols = sum_up(two.T, axis=0)
        assert cols.shape == (2,) and all(covers(v, exact) for v in cols)


def test_subnormals_mixed_with_normals_property():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(1, 60))
        mant = rng.integers(1, 2 ** 20, size=k).astype(np.float64)
        exps = rng.choice([-1074, -1060, -1030, -1000, -60, 0, 40], size=k)
        terms = np.ldexp(mant, exps)
        exact = exact_sum(terms)
        assert covers(sum_up(terms), exact)
        assert covers(add_up(*terms), exact)


def test_near_overflow_sums_become_inf_never_a_finite_wrong_number():
    half = DBL_MAX / 2
    assert add_up(DBL_MAX, DBL_MAX) == INF
    assert add_up(DBL_MAX, 2.0 ** 970) == INF     # RN(DBL_MAX + 2^970) = DBL_MAX < exact sum
    assert sum_up(np.full(3, half)) == INF
    assert sum_up(np.array([DBL_MAX, 2.0 ** 960, 2.0 ** 960])) == INF
    assert mul_up(1e200, 1e200) == INF and mul_up(DBL_MAX, 1 + 2.0 ** -52) == INF
    assert div_up(DBL_MAX, 0.5) == INF and div_up(1.0, TINY) == INF
    assert exp_up(710.0) == INF and expm1_up(710.0) == INF
    rng = np.random.default_rng(1)
    a = np.ldexp(rng.uniform(1, 2, 2000), rng.integers(1015, 1024, 2000))
    b = np.ldexp(rng.uniform(1, 2, 2000), rng.integers(900, 1024, 2000))
    for f, exact in ((add_up, lambda x, y: Q(x) + Q(y)), (mul_up, lambda x, y: Q(x) * Q(y)),
                     (div_up, lambda x, y: Q(x) / Q(y))):
        r = f(a, b) if f is not div_up else f(a, 1.0 / b)
        for x, y, v in zip(a, b if f is not div_up else 1.0 / b, r):
            e = exact(x, y)
            assert covers(v, e)
            if e > mpq(DBL_MAX):
                assert v == INF


def test_mul_and_div_with_zeros_and_subnormal_results():
    assert mul_up(0.0, INF) == 0.0 and mul_up(INF, 0.0) == 0.0     # an exact zero factor
    assert mul_up(2.0 ** -600, 2.0 ** -600) == TINY                # 2^−1200 > 0 rounds up
    assert covers(div_up(TINY, 3.0), mpq(2) ** -1074 / 3) and div_up(TINY, 3.0) > 0
    assert div_up(0.0, 3.0) == 0.0 and div_up(0.0, 0.0) == INF
    assert div_up(1.0, 0.0) == INF and div_up(1.0, -2.0) == INF    # b ≤ 0: no finite bound
    rng = np.random.default_rng(2)
    a = np.ldexp(rng.uniform(0.5, 1, 500), rng.integers(-1074, 1000, 500))
    b = np.ldexp(rng.uniform(0.5, 1, 500), rng.integers(-1074, 1000, 500))
    for x, y, p, q in zip(a, b, mul_up(a, b), div_up(a, b)):
        assert covers(p, Q(x) * Q(y)) and covers(q, Q(x) / Q(y))


def test_add_up_exact_zero_takes_no_step():
    x = np.array([1.0, TINY, 0.0, 3.5])
    np.testing.assert_array_equal(add_up(x, 0.0), x)
    np.testing.assert_array_equal(add_up(0.0, x, 0.0), x)
    assert add_up(1.0, 1.0) == np.nextafter(2.0, INF)             # exact sums still step


def test_exact_up_is_the_smallest_float_above():
    rng = np.random.default_rng(3)
    qs = [mpq(int(rng.integers(-10 ** 12, 10 ** 12)), int(rng.integers(1, 10 ** 12)))
          * mpq(2) ** int(rng.integers(-1100, 1030)) for _ in range(2000)]
    qs += [mpq(0), mpq(1, 3), -mpq(1, 3), mpq(2) ** -1075, -mpq(2) ** -1075, mpq(2) ** -1080,
           mpq(DBL_MAX), -mpq(DBL_MAX), mpq(DBL_MAX) * (1 + mpq(1, 2 ** 54)),
           -mpq(DBL_MAX) * (1 + mpq(1, 2 ** 54)), mpq(10) ** 385, -mpq(10) ** 385]
    for q in qs:
        f = exact_up(q)
        assert covers(f, q), q
        if f == INF:
            assert q > mpq(DBL_MAX)
        else:
            with np.errstate(over="ignore"):
                below = float(np.nextafter(f, -INF))
            assert below == -INF or mpq(below) < q, q       # the smallest such float
    # the lower bounds −exact_up(−q) used throughout the rules stay lower bounds past DBL_MAX
    # (decimal64 values reach 10^385); this used to give +inf
    assert -exact_up(-mpq(10) ** 385) == DBL_MAX
    assert exact_up(2.5) == 2.5 and exact_up(-INF) == -INF


def test_exact_array_up():
    a = np.array([mpq(1, 3), mpq(-1, 3), mpq(10) ** 400, INF, mpq(0)], dtype=object)
    r = exact_array_up(a)
    assert r.dtype == np.float64 and r.shape == (5,)
    assert all(covers(f, q if not isinstance(q, float) else mpq(0)) for f, q in zip(r, a))
    assert r[2] == INF and r[3] == INF and r[4] == 0.0
    assert exact_array_up(np.empty((0, 2), dtype=object)).shape == (0, 2)


def _mp_exp(x: float, minus_one: bool = False):
    with mpmath.workprec(400):
        v = mpmath.expm1(mpmath.mpf(x)) if minus_one else mpmath.exp(mpmath.mpf(x))
        return v


def _mp_covers(f, v) -> bool:
    return f == INF or mpmath.mpf(float(f)) >= v


def test_exp_up_and_expm1_up_against_mpmath():
    rng = np.random.default_rng(4)
    xs = np.concatenate([rng.uniform(-800, 720, 400), rng.standard_normal(200) * 3,
                         [0.0, -0.0, 1e-300, TINY, -745.13, -744.44, 709.78, 709.79, 1.0]])
    with mpmath.workprec(400):
        for x, f in zip(xs, exp_up(xs)):
            assert _mp_covers(f, _mp_exp(x)), x
        pos = np.abs(xs)
        for x, f in zip(pos, expm1_up(pos)):
            assert _mp_covers(f, _mp_exp(x, minus_one=True)), x


# -- hypothesis ---------------------------------------------------------------------------------
nonneg = st.floats(min_value=0.0, max_value=DBL_MAX, allow_nan=False, allow_infinity=False,
                   allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(nonneg, min_size=1, max_size=40))
def test_property_sums_are_upper_bounds(terms):
    exact = exact_sum(terms)
    assert covers(add_up(*terms), exact)
    assert covers(sum_up(np.array(terms)), exact)
    if exact > mpq(DBL_MAX):
        assert sum_up(np.array(terms)) == INF


@settings(max_examples=300, deadline=None)
@given(nonneg, nonneg)
def test_property_products_and_quotients_are_upper_bounds(a, b):
    assert covers(mul_up(a, b), Q(a) * Q(b))
    if b > 0:
        assert covers(div_up(a, b), Q(a) / Q(b))
    else:
        assert div_up(a, b) == INF


@settings(max_examples=300, deadline=None)
@given(st.fractions())
def test_property_exact_up(q):
    q = mpq(q.numerator, q.denominator)
    f = exact_up(q)
    assert covers(f, q) and (f == INF or f == -DBL_MAX or mpq(float(np.nextafter(f, -INF))) < q)


# =============================================================================================
# rounding.py
# =============================================================================================
RT_FORMATS = formats.names() + [
    "float8_e4m3fn:overflow=saturate", "float8_e5m2:overflow=saturate", "bfloat16:rounding=up",
    "bfloat16:rounding=zero", "binary16:rounding=down", "bfloat16:rounding=away",
    "decimal32:rounding=zero", "flt:radix=10,p=3,emin=-12,emax=6",
    "flt:p=5,emin=-10,emax=6,rounding=zero", "fix:emin=-6,max=10", "flx:p=6"]


def _exact_points(rng, fmt, n: int) -> list:
    """Exact rationals around the whole range of ``fmt``: random non-dyadic values at every
    scale from below the smallest positive value to beyond the largest finite, format values,
    midpoints (ties), neighbours of the overflow threshold, and 0."""
    beta = mpq(fmt.radix)
    lo = (fmt.emin if fmt.emin is not None else -40) - 3
    M = fmt.max_finite
    hi = (int(math.log(float(M), fmt.radix)) + 3) if M is not None and M < 10 ** 300 else \
        (400 if M is not None else 40)
    pts = []
    for _ in range(n):
        m = mpq(int(rng.integers(1, 10 ** 9)), int(rng.integers(1, 10 ** 9)))
        v = m * beta ** int(rng.integers(lo, hi))
        pts.append(v if rng.random() < 0.5 else -v)
    vals = [to_exact(round_rational(p, fmt)) for p in pts[:n // 4]]
    vals = [v for v in vals if not isinstance(v, float)]
    pts += vals
    if fmt.precision is not None:                                   # ties
        pts += [v + to_exact(fmt.ulp(np.array([v], dtype=object))[0]) / 2 for v in vals[:n // 8]]
    if M is not None:
        pts += [M, -M, M * (1 + mpq(1, 10 ** 12)), M * 2, -M * 3, M - mpq(1, 10 ** 6)]
    pts += [mpq(0)]
    if fmt.emin is not None:
        pts += [beta ** fmt.emin / 3, -beta ** fmt.emin / 2, beta ** fmt.emin * mpq(3, 4)]
    return pts


def _runtime_repr(fmt, values) -> np.ndarray:
    if fmt.fits_binary64:
        return np.array([float(v) for v in values], dtype=np.float64)
    return np.array(values, dtype=object)


@pytest.mark.parametrize("fmt_name", RT_FORMATS)
def test_rounding_term_bounds_the_error_of_every_rounding(fmt_name):
    """``rounding_term(RN(z)) ≥ |RN(z) − z|`` for exact ``z``; ``inf`` for ±inf/NaN results and
    for results at ±max_finite in formats where they may stand for a larger ``z``
    (saturation, IEEE directed rounding); at most one ulp otherwise."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(len(fmt_name))
    zs = _exact_points(rng, fmt, 400)
    outs = [round_rational(z, fmt) for z in zs]
    h = rounding_term(fmt, _runtime_repr(fmt, outs))
    assert h.shape == (len(zs),) and h.dtype == np.float64
    saturating = fmt.overflow == "saturate" or (fmt.overflow == "ieee" and not fmt.is_nearest)
    for z, o, b in zip(zs, outs, h):
        if isinstance(o, float):                                     # ±inf or NaN
            assert b == INF, (z, o)
            continue
        assert covers(b, abs(o - z)), (fmt_name, z, o, b)
        if saturating and fmt.max_finite is not None and abs(o) == fmt.max_finite:
            assert b == INF, (fmt_name, z)
        elif fmt.precision is not None and b != INF and o != 0:       # and not loose
            ulp = to_exact(fmt.ulp(np.array([o], dtype=object))[0])
            assert mpq(float(b)) <= max(2 * ulp, mpq(TINY))
    # the exact flag: no rounding happened
    assert (rounding_term(fmt, _runtime_repr(fmt, outs), np.ones(len(zs), dtype=bool)) == 0).all()


@pytest.mark.parametrize("fmt_name", ["binary64", "binary16", "float8_e4m3fn:overflow=saturate",
                                      "bfloat16:rounding=up"])
def test_rounding_term_of_exact_values_in_a_binary_format(fmt_name):
    """A format fitting binary64 may receive exact (object) runtime values: the term is the same
    as for the float64 values — in particular ``2^−1074`` (not 0) for binary64's subnormal
    quantum, whose half underflows in binary64."""
    fmt = formats.get(fmt_name)
    v = fmt.round(np.array([TINY, 0.0, 1.0, 3.0, -2.0 ** -20, 100.0, 448.0, 1e300]))
    v = v[np.isfinite(v)]
    h_float = rounding_term(fmt, v)
    h_exact = rounding_term(fmt, np.array([mpq(float(x)) for x in v], dtype=object))
    np.testing.assert_array_equal(h_float, h_exact)
    if fmt_name == "binary64":
        assert h_exact[0] == TINY and h_exact[1] == TINY


def test_rounding_term_saturating_fp8_at_max_is_inf():
    sat = formats.get("float8_e4m3fn:overflow=saturate")
    assert sat.round(np.array([1e6]))[0] == 448.0
    h = rounding_term(sat, np.array([448.0, -448.0, 416.0]))
    assert h[0] == INF and h[1] == INF and h[2] == 16.0
    nan = formats.get("float8_e4m3fn")                  # overflow gives NaN: charged inf
    assert rounding_term(nan, np.array([np.nan, 448.0]))[0] == INF
    assert rounding_term(nan, np.array([448.0]))[0] == 16.0   # 448 is a true value here
    ieee = formats.get("float8_e5m2")
    assert rounding_term(ieee, np.array([INF, -INF, 57344.0])).tolist() == [INF, INF, 4096.0]
    assert rounding_term(formats.get("float8_e5m2:rounding=zero"), np.array([57344.0]))[0] == INF


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(z=st.fractions(min_value=Fraction(-10 ** 40), max_value=Fraction(10 ** 40)),
       fmt_name=st.sampled_from(RT_FORMATS))
def test_property_rounding_term(z, fmt_name):
    fmt = formats.get(fmt_name)
    z = mpq(z.numerator, z.denominator)
    o = round_rational(z, fmt)
    h = rounding_term(fmt, _runtime_repr(fmt, [o]))[0]
    assert h == INF if isinstance(o, float) else covers(h, abs(o - z))


# =============================================================================================
# ctx.py
# =============================================================================================
@pytest.mark.parametrize("fmt_name", ["bfloat16", "float8_e4m3fn", "float8_e5m2:rounding=up",
                                      "decimal32", "decimal64"])
def test_ctx_add_encloses_the_sum_of_two_contributions(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(5)
    n = 60
    xd, yd = rng.standard_normal(n) * 8, rng.standard_normal(n) * 8
    xd[:4] = 0.0                                         # exact operands
    yd[4:8] = -xd[4:8] * (1 + 2.0 ** -12)                # cancellation
    x, y = fmt.round(xd), fmt.round(yd)
    ex = exact_array_up(np.abs(exact_array(x))) * 2.0 ** -7
    ey = exact_array_up(np.abs(exact_array(y))) * 2.0 ** -7
    sign = lambda: np.where(rng.random(n) < 0.5, -1, 1)  # noqa: E731
    xs = Interval.exact(exact_array(x) + exact_array(ex) * sign())
    ys = Interval.exact(exact_array(y) + exact_array(ey) * sign())
    s, b = ctx_add(fmt, x, ex, y, ey)
    assert b.dtype == np.float64 and b.shape == (n,)
    assert (xs + ys).encloses(s, b).all()
    np.testing.assert_array_equal(ctx_add_bound(fmt, x, ex, y, ey), b)
    np.testing.assert_array_equal(ctx_add_bound(fmt, x, ex, y, ey, out=s), b)
    # an exact 0 operand charges no rounding
    np.testing.assert_array_equal(b[:4], add_up(ex[:4], ey[:4]))
    # exact spec (no input error): the bound covers the rounding alone
    s0, b0 = ctx_add(fmt, x, 0.0, y, 0.0)
    assert (Interval.exact(x) + Interval.exact(y)).encloses(s0, b0).all()


def test_ctx_add_overflow_and_shapes():
    for name, big in (("binary16", 65504.0), ("float8_e4m3fn", 448.0),
                      ("float8_e4m3fn:overflow=saturate", 448.0), ("bfloat16:rounding=zero",
                                                                   float(formats.get("bfloat16").max_finite))):
        fmt = formats.get(name)
        x = np.array([big, 1.0])
        s, b = ctx_add(fmt, x, np.zeros(2), x, np.zeros(2))
        assert b[0] == INF, name                 # inf, NaN or a saturated max: never finite
        assert s[1] == 2.0 and b[1] <= float(fmt.u) * 2 * 2
    with pytest.raises(ValueError, match="same shape"):
        ctx_add(formats.get("bfloat16"), np.ones(2), 0.0, np.ones(3), 0.0)
