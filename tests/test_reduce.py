"""sum, mean, max: spec vs PyTorch float64, runtime vs scalar replay, enclosure (forward and VJP)
on every preset, adversarial inputs (cancellation, overflow, ties, argmax flips), order-free
bounds, errors."""
from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest
import torch
from gmpy2 import mpq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nfbound.ops as ops
from nfbound import formats
from nfbound.bounds.upward import exact_array_up
from nfbound.formats import reference
from nfbound.ops import reduce as R
from nfbound.ops.accumulate import accumulate
from nfbound.ops.interval import Interval, exact_array

from test_linalg import ORDERS, between, ref_ops, runtime_and_eps, same, tree_sum

PRESETS = formats.names()          # every preset, decimal64 included
OPS = [R.sum, R.mean, R.max]


def _params(P, axis, keepdims, order):
    p = {"axis": axis, "keepdims": keepdims}
    if P is not R.max:
        p["order"] = order
    return p


def _check(P, fmt, x, ex, xspec, params, rng):
    out = P.runtime(fmt, x, **params)
    b = P.bound(fmt, (x,), (ex,), **params)
    assert np.shape(b) == np.shape(out)
    spec = P.spec(xspec, **params)
    assert spec.shape == np.shape(out)
    assert spec.encloses(out, b).all(), f"{P.name} forward"
    g, eg, gs = runtime_and_eps(fmt, rng.standard_normal(np.shape(out)))
    (dx,) = P.vjp_runtime(fmt, (x,), g, **params)
    (edx,) = P.vjp_bound(fmt, (x,), (ex,), g, eg, **params)
    (sdx,) = P.vjp_spec((xspec,), gs, **params)
    assert np.shape(dx) == np.shape(x) == np.shape(edx) == sdx.shape
    assert sdx.encloses(dx, edx).all(), f"{P.name} VJP"
    return out, b


# -- spec vs PyTorch float64 ----------------------------------------------------------------------
@pytest.mark.parametrize("axis,keepdims", [(0, False), (1, True), (-1, False), (None, False),
                                           (None, True)])
def test_spec_and_vjp_spec_match_torch_float64(axis, keepdims):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5))
    for P, tf in [(R.sum, torch.sum), (R.mean, torch.mean), (R.max, None)]:
        xt = torch.tensor(x, requires_grad=True)
        if P is R.max:
            yt = torch.max(xt) if axis is None else torch.max(xt, dim=axis, keepdim=keepdims)[0]
            if axis is None and keepdims:
                yt = yt.reshape((1, 1, 1))
        elif axis is None:
            yt = tf(xt).reshape((1, 1, 1)) if keepdims else tf(xt)
        else:
            yt = tf(xt, dim=axis, keepdim=keepdims)
        g = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(g))
        params = {"axis": axis, "keepdims": keepdims}
        y = P.spec(Interval.exact(x), **params)
        np.testing.assert_allclose(y.to_float(), yt.detach().numpy(), rtol=1e-13, atol=1e-13)
        (dx,) = P.vjp_spec((Interval.exact(x),), Interval.exact(g), **params)
        assert dx.is_exact
        np.testing.assert_allclose(dx.to_float(), xt.grad.numpy(), rtol=1e-13, atol=1e-13)


# -- runtime ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt_name", formats.names() + ["flt:p=6,emin=-14,emax=8,rounding=up",
                                                        "bfloat16:rounding=zero"])
@pytest.mark.parametrize("order", ORDERS)
def test_sum_and_mean_runtime_equal_scalar_replay(fmt_name, order):
    fmt = formats.get(fmt_name)
    add, _ = ref_ops(fmt)
    rng = np.random.default_rng(1)
    x = fmt.round(rng.standard_normal((3, 11)) * 5)
    s = R.sum.runtime(fmt, x, axis=1, order=order)
    xo = np.asarray(x, dtype=object)
    exp = [tree_sum(list(xo[i]), order, add) for i in range(3)]
    assert same(s, np.array(exp, dtype=object))
    m = R.mean.runtime(fmt, x, axis=1, order=order)
    expm = [reference.apply("div", fmt, reference.to_exact(v), mpq(11)) for v in exp]
    assert same(m, np.array(expm, dtype=object))


@pytest.mark.parametrize("fmt_name,n", [("float8_e4m3fn", 300), ("bfloat16", 1000),
                                        ("binary16", 4097), ("binary32", 3 * 2 ** 25 + 1),
                                        ("binary64", 7), ("flt:p=9,emin=-30,emax=12,rounding=zero",
                                                          777)])
def test_division_by_a_count_that_is_not_a_format_value(fmt_name, n):
    """RN(s/n) is correctly rounded even when n itself is not representable in the format."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(n)
    s = fmt.round(rng.standard_normal(400) * 50)
    q = R.div_by_count(fmt, s, n)
    exp = [reference.apply("div", fmt, mpq(v), mpq(n)) for v in s]
    assert same(q, np.array(exp, dtype=object))


@pytest.mark.parametrize("order", ORDERS + ["blocked:1"])
def test_sum_error_is_accumulate(order):
    fmt = formats.get("binary16")
    rng = np.random.default_rng(2)
    x = fmt.round(rng.standard_normal((4, 3, 9)))
    e = np.abs(x) * 1e-3
    s, b = R.sum_error(fmt, x, e, axis=1, order=order)
    s2, b2 = accumulate(fmt, x, e, order, axis=1)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(b, b2)


# -- enclosure -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt_name", PRESETS)
@pytest.mark.parametrize("P", OPS, ids=lambda P: P.name)
def test_enclosure_every_preset(fmt_name, P):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(3)
    shape = (3, 5) if fmt_name.startswith("decimal") else (4, 6, 7)
    for trial, (axis, keepdims, order) in enumerate([(0, False, "sequential"),
                                                     (-1, True, "pairwise"),
                                                     (None, False, "blocked:4"),
                                                     (1, False, "reversed")]):
        x, ex, xs = runtime_and_eps(fmt, rng.standard_normal(shape) * 3)
        _check(P, fmt, x, ex, xs, _params(P, axis, keepdims, order), rng)
        e2 = np.abs(np.asarray(x, dtype=np.float64)) * 2.0 ** -5 + 2.0 ** -20
        _check(P, fmt, x, e2, between(x, e2), _params(P, axis, keepdims, order), rng)
        if P is not R.max:
            p = _params(P, axis, keepdims, order) | {"order_free": True}
            _check(P, fmt, x, ex, xs, p, rng)


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2",
                                      "float8_e4m3fn:overflow=saturate"])
@pytest.mark.parametrize("order_free", [False, True])
def test_adversarial_sums(fmt_name, order_free):
    fmt = formats.get(fmt_name)
    big = float(fmt.max_finite)
    tiny = 2.0 ** fmt.emin
    x = fmt.round(np.array([
        [big / 8, -big / 8, 1.0, 2.0 ** -3, 0.0],      # cancellation
        [1.0, big / 8, -big / 8, 3.0, -1.0],
        [tiny, tiny, -tiny, tiny * 3, 0.0],           # subnormal sums are exact
        [big, big / 2, big / 2, -big / 4, big / 4],   # overflow / saturation in every order
        [0.0, -0.0, 0.0, 0.0, 0.0],
    ]))
    ex = np.zeros(x.shape)
    ex[1, 3] = 2.0 ** -4
    for order in ORDERS:
        for P in (R.sum, R.mean):
            p = {"axis": 1, "order": order, "order_free": order_free}
            out = P.runtime(fmt, x, **p)
            b = P.bound(fmt, (x,), (ex,), **p)
            assert P.spec(between(x, 2 * ex), **p).encloses(out, b).all()
            bad = ~np.isfinite(out) | (np.abs(out) >= big)
            assert np.isinf(b[bad]).all()
            assert np.isinf(b[3]), "a sum that may overflow gets an infinite bound"
            assert np.isfinite(b[[0, 1, 2, 4]]).all() and b[4] <= 8 * fmt.eta
            if not order_free:
                assert b[4] < 1e-300
            if P is R.sum and not order_free:
                assert b[2] <= 4 * fmt.eta, "subnormal additions are charged at most η each"


def test_max_bound_is_exact_op_and_tighter_than_max_eps():
    fmt = formats.get("bfloat16")
    x = np.array([[1.0, 5.0, 2.0], [3.0, 3.0, -1.0]])
    ex = np.array([[4.0, 0.25, 0.5], [0.0, 0.0, 0.0]])
    m, b = R.max_error(fmt, x, ex, axis=1)
    np.testing.assert_array_equal(m, [5.0, 3.0])
    # row 0: max(ε_k̂ = 0.25, (1 + 4) − 5 = 0) = 0.25 < max ε = 4; row 1: exact, 0
    np.testing.assert_array_equal(b, [0.25, 0.0])
    spec = Interval.between(x - ex, x + ex)
    assert R.max.spec(spec, axis=1).encloses(m, b).all()
    x2 = np.array([[1.0, 5.0]])
    e2 = np.array([[4.5, 0.25]])                 # 1 + 4.5 > 5: the other entry may win by 0.5
    m2, b2 = R.max_error(fmt, x2, e2, axis=1)
    assert b2[0] == 0.5 and R.max.spec(Interval.between(x2 - e2, x2 + e2), axis=1).encloses(
        m2, b2).all()


def test_max_vjp_when_argmax_flips():
    """Runtime argmax (first on ties) and spec argmax differ: bound covers both placements."""
    fmt = formats.get("bfloat16")
    # runtime: tie between positions 1 and 2 → first (1); spec: position 2 is larger
    data = np.array([[0.0, 1.0 + 2.0 ** -10, 1.0 + 2.0 ** -9, -3.0]])
    x, ex, xs = runtime_and_eps(fmt, data)
    assert x[0, 1] == x[0, 2] == 1.0
    g = np.array([2.0])
    eg = np.array([0.0])
    (dx,) = R.max.vjp_runtime(fmt, (x,), g, axis=1)
    np.testing.assert_array_equal(dx, [[0.0, 2.0, 0.0, 0.0]])
    (b,) = R.max.vjp_bound(fmt, (x,), (ex,), g, eg, axis=1)
    (s,) = R.max.vjp_spec((xs,), Interval.exact(g), axis=1)
    np.testing.assert_array_equal(s.to_float(), [[0.0, 0.0, 2.0, 0.0]])
    assert s.encloses(dx, b).all()
    np.testing.assert_array_equal(b, [[0.0, 2.0, 2.0, 0.0]])   # candidates only
    # a clear winner: the gap exceeds both errors → gradient error only ε_g at the argmax
    x2 = np.array([[0.0, 4.0, 1.0]])
    (b2,) = R.max.vjp_bound(fmt, (x2,), (np.array([[0.5, 0.5, 1.0]]),), g, np.array([0.125]),
                            axis=1)
    np.testing.assert_array_equal(b2, [[0.0, 0.125, 0.0]])
    # the second runtime value has a small eps but the third a large one: not certain
    x3 = np.array([[4.0, 3.0, 1.0]])
    e3 = np.array([[0.25, 0.25, 3.0]])
    (b3,) = R.max.vjp_bound(fmt, (x3,), (e3,), g, np.array([0.0]), axis=1)
    np.testing.assert_array_equal(b3, [[2.0, 0.0, 2.0]])
    s3 = Interval.between(x3 - e3, x3 + e3)
    (r3,) = R.max.vjp_runtime(fmt, (x3,), g, axis=1)
    (sv3,) = R.max.vjp_spec((s3,), Interval.exact(g), axis=1)
    assert sv3.encloses(r3, b3).all()
    # a realisation where entry 2 wins
    real = Interval.exact(np.array([[3.75, 3.0, 4.0]]))
    (sr,) = R.max.vjp_spec((real,), Interval.exact(g), axis=1)
    assert sr.encloses(r3, b3).all()


def test_max_ties_first_index_like_torch():
    fmt = formats.get("binary32")
    x = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    g = np.array([1.5, -2.0])
    (dx,) = R.max.vjp_runtime(fmt, (x,), g, axis=1)
    xt = torch.tensor(x, requires_grad=True)
    torch.max(xt, dim=1)[0].backward(torch.tensor(g))
    np.testing.assert_array_equal(dx, xt.grad.numpy())


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary32", "binary16", "decimal64"])
def test_order_free_sum_encloses_every_order_and_numpy(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(5)
    n = 300 if fmt_name == "decimal64" else 3000      # decimals: exact reference engine
    x, ex, xs = runtime_and_eps(fmt, rng.standard_normal((4, n)))
    b = R.sum.bound(fmt, (x,), (ex,), axis=1, order_free=True)
    spec = R.sum.spec(xs, axis=1)
    for order in ORDERS + ["blocked:128"]:
        assert spec.encloses(R.sum.runtime(fmt, x, axis=1, order=order), b).all()
    if fmt_name == "binary32":   # NumPy's own pairwise/SIMD float32 sum
        npsum = np.sum(x.astype(np.float32), axis=1).astype(np.float64)
        assert spec.encloses(npsum, b).all()
        b0 = R.sum.bound(fmt, (x,), (0.0,), axis=1, order_free=True)
        assert R.sum.spec(Interval.exact(x), axis=1).encloses(npsum, b0).all()


def test_overflow_guard_at_the_largest_finite_value_of_every_preset():
    """The guard keeps a bound exactly where the magnitude is ``≤ max_finite``. decimal64's
    ``max_finite ≈ 10^385`` is beyond binary64's range: every finite float64 magnitude is below
    it and only ``inf`` is not (``float(max_finite)`` used to raise OverflowError, breaking every
    order-free bound in decimal64)."""
    for name in formats.names():
        fmt = formats.get(name)
        M = fmt.max_finite
        f = float(M) if M < mpq(np.finfo(np.float64).max) else np.finfo(np.float64).max
        with np.errstate(over="ignore"):
            mags = np.array([0.0, np.nextafter(f, 0.0), f, np.nextafter(f, np.inf), np.inf])
        got = R.overflow_guard(fmt, mags, np.full(5, 0.5))
        want = [0.5 if np.isfinite(m) and mpq(m) <= M else np.inf for m in mags]
        assert got.tolist() == want, name


ORDER_FREE_OPS = sorted(n for n, P in ops.REGISTRY.items()
                        if "order_free" in inspect.signature(P.runtime).parameters)


@pytest.mark.parametrize("op_name", ORDER_FREE_OPS)
def test_order_free_bounds_in_decimal64(op_name):
    """Every primitive with an order-free bound (sums, products, softmax, pools, losses) in
    decimal64: finite for moderate inputs, and enclosing the runtime in every order, forward
    and VJP, with nonzero input errors."""
    fmt = formats.get("decimal64")
    P = ops.get(op_name)
    rng = np.random.default_rng(zlib.crc32(op_name.encode()))
    for _ in range(2):
        xs, params = P.sample(rng, fmt)
        params = dict(params, order_free=True)
        eps = tuple(np.zeros(np.shape(x)) if np.asarray(x).dtype.kind in "iu"   # class labels
                    else exact_array_up(np.abs(exact_array(x))) * 2.0 ** -30 + 2.0 ** -60
                    for x in xs)
        spec = tuple(Interval.exact(exact_array(x) + exact_array(e) / 2) for x, e in zip(xs, eps))
        b = P.bound(fmt, xs, eps, **params)
        assert np.isfinite(b).all()
        S = P.spec(*spec, **params)
        for order in ORDERS:
            assert S.encloses(P.runtime(fmt, *xs, **dict(params, order=order)), b).all(), order
        out = P.runtime(fmt, *xs, **params)
        g = fmt.round(rng.standard_normal(np.shape(out)))
        eg = np.full(np.shape(out), 2.0 ** -40)
        gs = Interval.exact(exact_array(g) - exact_array(eg))
        for gr, gsp, gb in zip(P.vjp_runtime(fmt, xs, g, **params), P.vjp_spec(spec, gs, **params),
                               P.vjp_bound(fmt, xs, eps, g, eg, **params)):
            if gr is None:   # no gradient (labels)
                continue
            assert np.isfinite(gb).all() and gsp.encloses(gr, gb).all()


@pytest.mark.parametrize("P", OPS, ids=lambda P: P.name)
def test_upstream_gradient_must_have_the_output_shape(P):
    """``g`` of another shape — in particular the shape with(out) the kept axis, or a
    broadcastable one — is refused by both VJP rules."""
    fmt = formats.get("bfloat16")
    x = fmt.round(np.random.default_rng(0).standard_normal((2, 3, 4)))
    for axis, keepdims, good, bads in [(1, False, (2, 4), [(2, 1, 4), (1, 4), (4,), (2, 3, 4)]),
                                       (1, True, (2, 1, 4), [(2, 4), (1, 1, 4), (2, 3, 4)]),
                                       (None, False, (), [(1, 1, 1), (1,)]),
                                       (None, True, (1, 1, 1), [(), (1,)])]:
        p = _params(P, axis, keepdims, "sequential")
        assert np.shape(P.runtime(fmt, x, **p)) == good
        assert np.shape(P.vjp_runtime(fmt, (x,), np.ones(good), **p)[0]) == x.shape
        for shape in bads:
            with pytest.raises(ValueError, match="^g has shape"):
                P.vjp_runtime(fmt, (x,), np.ones(shape), **p)
            with pytest.raises(ValueError, match="^g has shape"):
                P.vjp_bound(fmt, (x,), (0.0,), np.ones(shape), 0.0, **p)


# -- errors ----------------------------------------------------------------------------------
def test_errors_name_the_argument():
    fmt = formats.get("bfloat16")
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        R.sum.runtime(fmt, x, axis=2)
    with pytest.raises(ValueError, match="axis must be an int"):
        R.sum.runtime(fmt, x, axis=1.0)
    with pytest.raises(ValueError, match="empty axis"):
        R.mean.runtime(fmt, np.ones((2, 0)), axis=1)
    with pytest.raises(ValueError, match="empty axis"):
        R.max.runtime(fmt, np.ones((2, 0)), axis=1)
    with pytest.raises(ValueError, match="order"):
        R.sum.runtime(fmt, x, axis=1, order="fast")
    with pytest.raises(ValueError, match="x contains NaN"):
        R.sum.runtime(fmt, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="eps"):
        R.sum.bound(fmt, (x,), (np.ones(4),), axis=1)
    with pytest.raises(ValueError, match="g has shape"):
        R.sum.vjp_runtime(fmt, (x,), np.ones(3), axis=1)
    with pytest.raises(ValueError, match="order_free"):
        R.sum.bound(fmt, (x,), (0.0,), axis=1, order_free=1)
    # an empty sum is exactly 0 (torch.sum convention)
    s = R.sum.runtime(fmt, np.ones((2, 0)), axis=1)
    np.testing.assert_array_equal(s, [0.0, 0.0])
    np.testing.assert_array_equal(R.sum.bound(fmt, (np.ones((2, 0)),), (0.0,), axis=1), [0, 0])


# -- property test ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt_name=st.sampled_from(["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2"]),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       axis_pick=st.integers(-4, 3), keepdims=st.booleans(), order=st.sampled_from(ORDERS),
       op=st.sampled_from(OPS), scale=st.sampled_from([1.0, 2.0 ** -12, 100.0]),
       integers=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_reductions(fmt_name, shape, axis_pick, keepdims, order, op, scale, integers,
                             seed):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    axis = None if axis_pick < -len(shape) or axis_pick >= len(shape) else axis_pick
    data = rng.standard_normal(shape) * scale
    if integers:                                   # ties for max, exact sums
        data = np.round(data)
    x, ex, xs = runtime_and_eps(fmt, data)
    _check(op, fmt, x, ex, xs, _params(op, axis, keepdims, order), rng)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt_name=st.sampled_from(["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2",
                                 "binary32", "decimal32", "float8_e4m3fn:overflow=saturate",
                                 "flt:p=6,emin=-14,emax=8,rounding=up"]),
       shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
       axis_pick=st.integers(-4, 3), keepdims=st.booleans(),
       order=st.sampled_from(ORDERS + ["blocked:1", "blocked:2"]), order_free=st.booleans(),
       op=st.sampled_from(OPS), scale=st.sampled_from([1.0, 2.0 ** -12, 100.0, 2.0 ** 14]),
       integers=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_slow_property_reductions(fmt_name, shape, axis_pick, keepdims, order, order_free, op,
                                  scale, integers, seed):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    axis = None if axis_pick < -len(shape) or axis_pick >= len(shape) else axis_pick
    M = float(fmt.max_finite) / 4           # finite runtime inputs (overflow in the op is fine)
    data = np.clip(rng.standard_normal(shape) * scale, -M, M)
    if integers:
        data = np.round(data)
    x, ex, xs = runtime_and_eps(fmt, data)
    params = _params(op, axis, keepdims, order)
    if op is not R.max:
        params["order_free"] = order_free
    _check(op, fmt, x, ex, xs, params, rng)
    e2 = np.abs(np.asarray(x, dtype=np.float64)) * 2.0 ** -6
    _check(op, fmt, x, e2, between(x, e2), params, rng)
