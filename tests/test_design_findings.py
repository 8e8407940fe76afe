"""Gaps found while deriving ``docs/design.md`` (§11): each test states a premise a bound rule
relies on and an input where the code once broke it.

Each class is fixed (issue 11): §11.1–2 by a rounding term sound for every valid exponent
function and a checked custom precision, §11.3 by seeding reverse mode as a leaf and refusing
cross-entropy in formats without 1, §11.4 by the shared overflow guard; the tests are their
regressions.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from gmpy2 import mpq

from nfbound import formats
from nfbound.formats import Format, custom
from nfbound.graph import Graph
from nfbound.ops import elementwise, loss, reduce
from nfbound.ops.interval import Interval


def _encloses(spec: Interval, runtime, bound) -> bool:
    return bool(np.asarray(spec.encloses(runtime, bound)).all())


# -- §11.1: rounding_term needs Monotone_exp -------------------------------------------------
def _non_monotone():
    """``fexp(k) = k − 3`` (k even), ``k − 5`` (k odd): Flocq ``Valid_exp`` holds (``fexp(k) < k``
    and ``fexp(k + 1) ≤ k`` for every ``k``), ``Monotone_exp`` does not (``fexp(−1) = −6 <
    fexp(0) = −3 > fexp(1) = −4``)."""
    return Format(2, custom(lambda k: k - 3 if k % 2 == 0 else k - 5, window=range(-40, 41)))


def test_add_bound_in_a_non_monotone_custom_format():
    """``15/32 + 15/32 = 15/16`` rounds (tie, quantum ``1/8`` in ``[1/2, 1)``) to 1, an error
    of ``1/16``; ``rounding_term(1) = ulp(1)/2 = 2^−5``. Sweep: every pair of positive values
    of the binades ``[1/4, 1)``."""
    f = _non_monotone()
    vals = [mpq(m, 2 ** 6) for m in range(16, 32)] + [mpq(m, 2 ** 3) for m in range(4, 8)]
    pairs = list(itertools.product(vals, repeat=2))
    x = np.array([a for a, _ in pairs], dtype=object)
    y = np.array([b for _, b in pairs], dtype=object)
    assert f.is_representable(x).all()
    z = elementwise.add_runtime(f, x, y)
    b = elementwise.add_bound(f, (x, y), (np.zeros(x.shape), np.zeros(y.shape)))
    assert _encloses(elementwise.add_spec(Interval.exact(x), Interval.exact(y)), z, b)


# -- §11.2: a declared precision is a premise of the order-free bounds ------------------------
@pytest.mark.parametrize("digits", [3, 8])
def test_order_free_sum_with_an_overstated_precision(digits):
    """``fexp(e) = e − digits`` declared with ``precision=24``: ``1 + 2^−digits + 2^−digits``
    rounds to 1 (two ties to even), an error of ``2^(1−digits)``; the order-free bound is
    ``≈ 2^−22``."""
    with pytest.raises(ValueError, match="precision"):
        custom(lambda e: e - digits, precision=24, window=range(-60, 61))
    f = Format(2, custom(lambda e: e - digits, precision=digits, window=range(-60, 61)))
    x = np.array([mpq(1), mpq(1, 2 ** digits), mpq(1, 2 ** digits)], dtype=object)
    s, e = reduce.sum_error(f, x, np.zeros(3), order_free=True)
    assert _encloses(reduce.sum_spec(Interval.exact(x)), s, e)


# -- §11.3: rules that take 1 to be a value of the format -------------------------------------
ONE_OFF_GRID = ["fix:emin=1,emax=10", "flt:p=4,emin=1,emax=12"]


@pytest.mark.parametrize("fmt_name", ONE_OFF_GRID)
def test_reverse_seed_where_one_is_not_a_format_value(fmt_name):
    fmt = formats.get(fmt_name)
    g = Graph()
    g.input("x")
    g.output(g.op("sum", "x", name="loss"))
    res = g.forward(fmt, inputs={"x": np.array([2.0, 4.0])})
    back = g.backward(fmt, res, loss="loss")
    assert back.holds
    assert np.all(np.asarray(back.value("x").eps) >= 1)   # |RN(1) − 1| = 1 in both formats


@pytest.mark.parametrize("fmt_name", ONE_OFF_GRID)
def test_cross_entropy_where_one_is_not_a_format_value(fmt_name):
    fmt = formats.get(fmt_name)
    x, t = np.array([[0.0, 2.0]]), np.array([1])
    with pytest.raises(ValueError, match="needs 1"):   # the rules' premise, refused by name
        loss.cross_entropy_fused(fmt, (x, t), (np.zeros((1, 2)), None))


# -- §11.4: an exact zero factor does not make 0·inf exact -------------------------------------
@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "binary32"])
def test_div_vjp_bound_of_a_nan_gradient(fmt_name):
    """Runtime divisor ``ŷ = 0`` (a spec ``y = 2^−200`` that underflowed: the spec enclosure
    excludes 0), upstream ``ĝ = 0``: ``g_y = RN(−0 · RN(RN(1/0)/0)) = NaN``."""
    fmt = formats.get(fmt_name)
    x, y, g = np.array([1.0]), np.array([0.0]), np.array([0.0])
    ey = np.array([2.0 ** -200])
    grads = elementwise.div_vjp_runtime(fmt, (x, y), g)
    bounds = elementwise.div_vjp_bound(fmt, (x, y), (np.zeros(1), ey), g, np.zeros(1))
    spec = elementwise.div_vjp_spec((Interval.exact(x), Interval.exact(ey)), Interval.exact(g))
    assert all(_encloses(s, r, b) for s, r, b in zip(spec, grads, bounds))


def test_safe_div_vjp_bound_of_a_nan_gradient():
    fmt = formats.get("binary32")
    c = 2.0 ** -20
    x, y, g = fmt.round(np.array([3e38])), np.array([2.0 ** -19]), np.array([0.0])
    zeros = (np.zeros(1), np.zeros(1))
    grads = elementwise.safe_div_vjp_runtime(fmt, (x, y), g, c=c)
    bounds = elementwise.safe_div_vjp_bound(fmt, (x, y), zeros, g, np.zeros(1), c=c)
    spec = elementwise.safe_div_vjp_spec((Interval.exact(x), Interval.exact(y)),
                                         Interval.exact(g), c=c)
    assert all(_encloses(s, r, b) for s, r, b in zip(spec, grads, bounds))
