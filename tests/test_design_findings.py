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


# -- §11.6: Hauser's lemma (F4) needs every value to be a multiple of β^emin -----------------
def _fine_binade_above_emin() -> Format:
    """``fexp(k) = 0`` for ``k ≤ 1`` (``emin = 0``), ``−5`` in the binade ``[2, 4)``, ``0`` in
    ``[4, 8)``, ``max(k − 10, 0)`` above: ``Valid_exp`` holds and the declared precision 10 is
    checked (``fexp(k) ≤ max(k − 10, 0)`` for every ``k``), but ``fexp`` is not monotone and the
    values of ``[2, 4)`` are multiples of ``2^−5``, not of ``β^emin = 1``."""
    table = {2: -5, 3: 0}
    return Format(2, custom(lambda k: table.get(k, max(k - 10, 0)), precision=10,
                            window=range(-60, 61)))


def test_order_free_sum_where_additions_underflow_in_a_non_monotone_format():
    """``1 + Σ (79/32 − 2)``: every ``ŝ + 79/32`` lies in ``[2, 4)`` (exact), every ``− 2`` lands
    in ``[1, 2)``, whose quantum is 1: ``47/32`` rounds to 1, a θ of ``15/32`` per pair. Five
    pairs err by ``75/32``; the order-free bound (one θ of ``η = 1/2``) is ``0.76``."""
    f = _fine_binade_above_emin()
    x = np.array([mpq(1)] + [mpq(79, 32), mpq(-2)] * 5, dtype=object)
    assert f.is_representable(x).all()
    s, e = reduce.sum_error(f, x, np.zeros(x.shape), order_free=True)
    assert _encloses(reduce.sum_spec(Interval.exact(x)), s, e)


# -- §11.7: the cross-entropy VJP's Sterbenz shortcut needs Monotone_exp -----------------------
@pytest.mark.parametrize("c", [mpq(1, 2), mpq(5, 8), mpq(11, 16)])
def test_cross_entropy_vjp_where_sterbenz_fails(c):
    """``fexp(k) = k − 20`` for ``k ≥ 0``, ``k − 2`` below: ``[1/2, 1)`` has quantum ``2^−20``,
    ``[1/4, 1/2)`` quantum ``1/8``. Logits ``(0, −c)``, target 0: ``ŷ_0 ≈ 0.62`` and
    ``ŷ_0 − 1 ≈ −0.38`` rounds to ``−3/8``; with ``ĝ = 2`` the product ``−3/4`` is exact in the
    fine binade, so nothing else charges that rounding: error ``≈ 5·10^−3``, bound ``3·10^−6``."""
    f = Format(2, custom(lambda k: k - 20 if k >= 0 else k - 2, window=range(-80, 81)))
    x, t = np.array([[mpq(0), -c]], dtype=object), np.array([0])
    g = np.array(mpq(2), dtype=object)
    (out, _), (bound, _) = loss.cross_entropy_vjp_fused(f, (x, t), (np.zeros((1, 2)), None),
                                                        g, np.zeros(()))
    spec = loss.cross_entropy_vjp_spec((Interval.exact(x), Interval.exact(t)), Interval.exact(g))
    assert _encloses(spec[0], out, bound)


# -- §11.8: partial sums in storage (storage_sums) under order=any -----------------------------
def _conv_transpose_case(A, x, w):
    import nfbound.ops as ops
    P, b = ops.get("conv_transpose"), np.zeros(w.shape[1])
    xs = (x, w, b)
    y, bound = P.runtime_and_bound(A, xs, tuple(np.zeros(v.shape) for v in xs), stride=1,
                                   padding=0)
    return y, bound, P.spec(*(Interval.exact(v) for v in xs), stride=1, padding=0)


def test_storage_sums_bound_with_an_accumulator_flushing_above_storage_b_min():
    """Accumulator ``FLT(24, −140)`` with ``ftz+daz`` (``b_min = 2^−117``) for bfloat16 storage
    (``b_min = 2^−126``): products ``2^−118`` are flushed, so nfbound's own runtime is 0 against
    ``n·2^−118``; the bound, computed in bfloat16 ``ftz+daz``, charges ``2n·2^−126``."""
    from nfbound import arith
    A = arith.get("store=bfloat16,acc=[flt:p=24,emin=-140,emax=128],compute=binary32,"
                  "order=any,subnormals=ftz+daz,storage_sums=conv_transpose")
    with pytest.raises(ValueError, match="storage_sums"):   # refused: the premise fails
        _conv_transpose_case(A, np.full((1, 4, 3, 3), 2.0 ** -59), np.full((4, 1, 2, 2), 2.0 ** -59))


def test_storage_sums_bound_against_a_col2im_evaluation():
    """binary16 storage, gradual accumulator ``FLT(24, −25)``; ``conv_transpose`` with one input
    channel and a ``1×8`` kernel, so the middle output sums 8 columns of one product each. The
    library evaluation the storage-sums bound claims to cover (``ops/arithmetic.py``): each
    column ``RN_S(RN_W(x·w))``, the columns added in storage. ``x·w = (3/2 − 2^−10)·2^−25``
    rounds to ``2^−25`` in ``W`` and then (a tie) to 0 in binary16: the library returns 0
    against ``8·x·w ≈ 12·2^−25``; the bound is ``(n + 2)·η = 10·2^−25``."""
    from nfbound import arith
    A = arith.get("store=binary16,acc=[flt:p=24,emin=-25,emax=16],compute=binary32,"
                  "order=any,storage_sums=conv_transpose")
    S, W = A.storage, A.accumulator
    x, w = np.full((1, 1, 1, 8), 2.0 ** -12 * (1.5 - 2.0 ** -10)), np.full((1, 1, 1, 8), 2.0 ** -13)
    _, bound, spec = _conv_transpose_case(A, x, w)
    column = S.round(W.round(np.array([mpq(x[0, 0, 0, 0]) * mpq(w[0, 0, 0, 0])], dtype=object)))
    library = np.zeros(1)
    for _ in range(8):   # the middle output: 8 overlapping columns, added in storage
        library = S.add(library, np.asarray(column, dtype=np.float64))
    assert library[0] == 0
    middle = (Ellipsis, slice(7, 8))
    assert _encloses(Interval(spec.lo[middle], spec.hi[middle]), library.reshape(1, 1, 1, 1),
                     bound[middle])
