"""A runtime result that overflows gets the bound ``inf`` (README, "Inputs, overflow and domain
errors": ±inf, NaN, or a value saturated at ±max_finite).

* regressions: the audit's cases (issue 11, hole 2: ``0·inf = NaN`` in the VJPs of div,
  safe_div and mse_loss reported with the bound 0) and the cases of the same class the
  adversarial registry sweep found (a saturated ``±max_finite`` passed on with a finite
  bound by an exact op, an exact addition of 0, a bias added to an exact 0);
* the guard itself (``bounds.rounding.guard_nonfinite``), judged against this file's own
  statement of "overflowed";
* a hypothesis property over the helpers that compose rules, ``(value, bound)`` pairs fed
  with overflowed intermediates and zeros.

The registry-wide sweep (every op, every rule, every preset) is
``tests/test_registry.py::test_overflow_gets_an_infinite_bound*``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from gmpy2 import mpq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfbound import formats
from nfbound.bounds.rounding import guard_nonfinite, overflowed, rounding_term
from nfbound.formats.reference import to_exact
from nfbound.ops import accumulate, elementwise, pool
from nfbound.ops.interval import Interval
from nfbound.ops.primitive import get

INF = math.inf


def expected_overflowed(fmt, values) -> np.ndarray:
    """±inf or NaN, or ±max_finite where the format saturates (``overflow=saturate``, or IEEE
    with a directed rounding toward the largest finite value): stated here, independently of
    the library's ``bounds.rounding.overflowed``."""
    flat = np.asarray(values, dtype=object).reshape(-1)
    nonfinite = [isinstance(v, (float, np.floating)) and not math.isfinite(v) for v in flat]
    saturates = fmt.overflow == "saturate" or (fmt.overflow == "ieee" and not fmt.is_nearest)
    at_max = [saturates and not bad and abs(to_exact(v)) == fmt.max_finite
              for v, bad in zip(flat, nonfinite)]
    return (np.array(nonfinite, dtype=bool) | np.array(at_max, dtype=bool)).reshape(
        np.shape(values))


def assert_inf_where_overflowed(fmt, values, bound, what: str = "a rule") -> None:
    """The bound is ``inf`` wherever the runtime value overflowed (:func:`expected_overflowed`)
    and never NaN."""
    b = np.asarray(bound, dtype=np.float64)
    bad = (expected_overflowed(fmt, values) & (b != INF)) | np.isnan(b)
    if bad.any():
        i = np.flatnonzero(bad.reshape(-1))[0]
        raise AssertionError(f"{what} in {fmt}: runtime {np.asarray(values).reshape(-1)[i]!r} "
                             f"with bound {b.reshape(-1)[i]!r} (must be inf)")


def zeros(n: int):
    return (np.zeros(n),) * 2


# ---------------------------------------------------------------------------------------------
# the audit's cases: 0 · inf = NaN in a composed VJP
# ---------------------------------------------------------------------------------------------
def test_div_vjp_zero_gradient_times_overflowed_quotient():
    """binary16, ``x = 1000``, ``y = RN(0.001)``, ``g = 0``: ``x/y`` overflows, ``g_y =
    RN(−0·RN(inf/y)) = NaN``; the bound was 0 (the product's rounding term is 0 for the zero
    factor, and ``mul_up(0, inf) = 0``)."""
    fmt = formats.get("binary16")
    xs = (np.array([1000.0]), fmt.round(np.array([0.001])))
    g = np.zeros(1)
    P = get("div")
    gx, gy = P.vjp_runtime(fmt, xs, g)
    assert np.isnan(gy[0]) and gx[0] == 0
    bx, by = P.vjp_bound(fmt, xs, zeros(1), g, np.zeros(1))
    assert by[0] == INF and bx[0] == 0


def test_safe_div_vjp_zero_gradient_times_overflowed_quotient():
    """The same through the clamped denominator ``max(y, c)`` with ``y ≥ c`` (the indicator
    passes the NaN on)."""
    fmt = formats.get("binary16")
    xs = (np.array([1000.0]), fmt.round(np.array([0.001])))
    g = np.zeros(1)
    P = get("safe_div")
    _, gy = P.vjp_runtime(fmt, xs, g, c=2.0 ** -11)
    assert np.isnan(gy[0])
    assert P.vjp_bound(fmt, xs, zeros(1), g, np.zeros(1), c=2.0 ** -11)[1][0] == INF


@pytest.mark.parametrize("fmt_name", ["binary16", "float8_e4m3fn", "bfloat16"])
def test_mse_loss_vjp_zero_gradient_times_overflowed_difference(fmt_name):
    """``d̂ = RN(x̂ − t̂)`` overflows (inf, or NaN in e4m3fn) and ``ĝ = 0``: the gradient
    ``RN(d̂·0)`` is NaN; the bound was 0."""
    fmt = formats.get(fmt_name)
    M = float(fmt.max_finite)
    xs = (np.array([M, 1.0]), np.array([-M, 0.5]))
    P = get("mse_loss")
    gx, _ = P.vjp_runtime(fmt, xs, np.array(0.0))
    assert np.isnan(gx[0])
    bx, _ = P.vjp_bound(fmt, xs, zeros(2), np.array(0.0), np.array(0.0))
    assert bx[0] == INF


# ---------------------------------------------------------------------------------------------
# the same class, found by the adversarial registry sweep: ±max_finite passed on exactly
# ---------------------------------------------------------------------------------------------
SATURATING = ["float8_e4m3fn:overflow=saturate", "bfloat16:rounding=zero", "binary16:rounding=up"]


@pytest.mark.parametrize("fmt_name", SATURATING)
@pytest.mark.parametrize("op", ["neg", "abs", "relu"])
def test_exact_op_passes_a_saturated_value_with_an_infinite_bound(op, fmt_name):
    """An exact op returning ``±max_finite`` of a saturating format returned its input's
    bound (0 here); that value may be a saturated overflow, so it gets ``inf``."""
    fmt = formats.get(fmt_name)
    x = np.array([float(fmt.max_finite), 1.0])
    b = get(op).bound(fmt, (x,), (np.zeros(2),))
    assert b[0] == INF and b[1] == 0


@pytest.mark.parametrize("fmt_name", SATURATING)
def test_exact_addition_of_zero_to_a_saturated_value(fmt_name):
    """``max + 0`` is exact (rounding term 0), so the sum's replay bound was the terms' (0)."""
    fmt = formats.get(fmt_name)
    x = np.array([float(fmt.max_finite), 0.0])
    assert get("sum").bound(fmt, (x,), (np.zeros(2),))[()] == INF
    assert get("add").bound(fmt, (x[:1], x[1:]), zeros(1))[0] == INF


@pytest.mark.parametrize("fmt_name", SATURATING)
def test_bias_added_to_an_exact_zero_sum(fmt_name):
    """linear with a zero input row: ``RN(0 + b)`` is exact and passed ``ε_b`` on."""
    fmt = formats.get(fmt_name)
    x, W, b = np.zeros((1, 2)), np.ones((1, 2)), np.array([float(fmt.max_finite)])
    y, e = get("linear").fused(fmt, (x, W, b), (np.zeros((1, 2)),) * 2 + (np.zeros(1),))
    assert y[0, 0] == float(fmt.max_finite) and e[0, 0] == INF


@pytest.mark.parametrize("fmt_name", ["binary64", "decimal64"])
def test_exp_spec_beyond_binary64_is_a_value_error(fmt_name):
    """The refusal of ``e^x`` for ``x > 2^20`` formatted ``x`` with ``float()``, an
    ``OverflowError`` for ``x`` beyond binary64 (a spec input just above binary64's largest
    finite value, decimal64's ``10^385``)."""
    M = formats.get(fmt_name).max_finite
    with pytest.raises(ValueError, match="exceeds 2"):
        get("exp").spec(Interval.exact(np.array([2 * M], dtype=object)))


# ---------------------------------------------------------------------------------------------
# the guard
# ---------------------------------------------------------------------------------------------
GUARD_FORMATS = ["bfloat16", "binary16:rounding=up", "bfloat16:rounding=zero",
                 "float8_e4m3fn", "float8_e4m3fn:overflow=saturate", "decimal32",
                 "decimal32:rounding=down", "flt:radix=10,p=3,emin=-12,emax=6,overflow=saturate"]


def _specials(fmt) -> np.ndarray:
    """±max_finite, ±inf, NaN, 0, 1 and the largest value below max, in the runtime
    representation of ``fmt`` (float64, or objects: ``mpq`` with ±inf/NaN floats)."""
    M = fmt.max_finite
    below = fmt.round(np.array([M * (1 - mpq(1, 10 ** 6))], dtype=object))[0]
    finite = [M, -M, mpq(0), mpq(1), to_exact(below)]
    if fmt.fits_binary64:
        return np.array([float(v) for v in finite] + [INF, -INF, math.nan])
    return np.array(finite + [INF, -INF, math.nan], dtype=object)


@pytest.mark.parametrize("fmt_name", GUARD_FORMATS)
def test_guard_marks_exactly_the_overflowed_values(fmt_name):
    fmt = formats.get(fmt_name)
    v = _specials(fmt)
    want = expected_overflowed(fmt, v)
    assert np.array_equal(overflowed(fmt, v), want)
    b = guard_nonfinite(fmt, v, np.full(v.shape, 0.5))
    assert np.array_equal(b == INF, want) and (b[~want] == 0.5).all()
    # one fact in one place: the rounding term is inf exactly there too
    assert np.array_equal(rounding_term(fmt, v) == INF, want)


def test_guard_turns_a_nan_bound_into_inf_and_keeps_shapes():
    fmt = formats.get("bfloat16")
    b = guard_nonfinite(fmt, np.ones((2, 1)), np.array([[math.nan], [0.25]]))
    assert b.shape == (2, 1) and b[0, 0] == INF and b[1, 0] == 0.25
    assert guard_nonfinite(fmt, np.float64(1.0), 0.0).shape == ()


# ---------------------------------------------------------------------------------------------
# property: every (value, bound) helper, fed overflowed intermediates and zeros
# ---------------------------------------------------------------------------------------------
HELPER_FORMATS = ["binary16", "bfloat16:rounding=zero", "float8_e4m3fn",
                  "float8_e4m3fn:overflow=saturate", "decimal32"]
KINDS = ["max", "-max", "inf", "-inf", "nan", "zero", "one", "two", "tiny", "normal"]


def _value(fmt, kind: str, rng):
    """One runtime value (or overflowed intermediate) of ``fmt`` of the given kind."""
    M = fmt.max_finite
    exact = {"max": M, "-max": -M, "zero": mpq(0), "one": mpq(1), "two": mpq(2),
             "tiny": mpq(fmt.radix) ** fmt.emin,
             "normal": to_exact(float(rng.standard_normal() * 4))}
    if kind in exact:
        v = fmt.round(np.array([exact[kind]], dtype=object))[0]
        return float(v) if fmt.fits_binary64 else v
    return {"inf": INF, "-inf": -INF, "nan": math.nan}[kind]


def _array(fmt, kinds, rng) -> np.ndarray:
    vals = [_value(fmt, k, rng) for k in kinds]
    return np.array(vals, dtype=np.float64 if fmt.fits_binary64 else object)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt_name=st.sampled_from(HELPER_FORMATS),
       kx=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6), data=st.data(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_property_helpers_give_inf_where_their_value_overflowed(fmt_name, kx, data, seed):
    """``mul_error``, ``div_error``, ``scale_error``, ``divide_by_count_error`` and
    ``accumulate`` on operands holding the largest finite values, ±inf, NaN and zeros (an
    overflowed intermediate meeting a zero factor), with zero, small or infinite input bounds:
    the bound is ``inf`` wherever the returned value overflowed, and never NaN."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    n = len(kx)
    ky = data.draw(st.lists(st.sampled_from(KINDS), min_size=n, max_size=n))
    x, y = _array(fmt, kx, rng), _array(fmt, ky, rng)
    ex, ey = (np.array(data.draw(st.lists(st.sampled_from([0.0, 2.0 ** -8, INF]),
                                          min_size=n, max_size=n))) for _ in range(2))
    with np.errstate(all="ignore"):
        for z, b in (elementwise.mul_error(fmt, x, ex, y, ey),
                     elementwise.div_error(fmt, x, ex, y, ey),
                     elementwise.scale_error(fmt, mpq(data.draw(st.sampled_from([0, 3, 1]))),
                                             x, ex),
                     elementwise.scale_error(fmt, mpq(1, 3), x, ex),
                     pool.divide_by_count_error(fmt, x, ex, data.draw(st.integers(1, 7))),
                     accumulate.accumulate(fmt, np.stack([x, y]), np.stack([ex, ey]), axis=0),
                     pool.sequential_sum(fmt, np.stack([x, y]), np.stack([ex, ey]), axis=0)):
            assert_inf_where_overflowed(fmt, z, b)
