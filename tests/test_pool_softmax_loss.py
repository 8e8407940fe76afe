"""reshape, flatten, max_pool, avg_pool, softmax, mse_loss, cross_entropy.

* spec == PyTorch float64 (values and autograd gradients) to float64 accuracy;
* forward and VJP enclosure ``|runtime − spec| ≤ bound`` in every preset (fp8, tf32, binary64
  and the decimals included), with zero and nonzero input errors (spec = exact data, runtime = data
  rounded to the format, eps = |rounding error| upward; or spec = a box around the runtime);
* adversarial inputs: ties in max-pool windows (runtime and spec argmax differ), near-equal and
  huge logits, overflow (the bound becomes inf, never a finite wrong number);
* runtime bit-exact against a scalar replay on exact rationals with the reference rounding
  (and MPFR-based correctly rounded exp/log);
* bad shapes/parameters raise ValueError; hypothesis over shapes.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gmpy2 import mpq
from hypothesis import given, settings
from hypothesis import strategies as st

from nfbound import formats
from nfbound.bounds.upward import exact_array_up
from nfbound.formats import reference
from nfbound.ops import loss, pool, shape, softmax  # noqa: F401  (registers the primitives)
from nfbound.ops.accumulate import accumulate
from nfbound.ops.interval import Interval
from nfbound.ops.primitive import get
from nfbound.ops.transcendental import correctly_rounded

FORMATS = formats.names()     # every preset: fp8, tf32, binary64 and the decimals included
FAST_FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "binary32"]
OPS = ["reshape", "flatten", "max_pool", "avg_pool", "softmax", "mse_loss", "cross_entropy"]


# =============================================================================================
# helpers
# =============================================================================================
def _q(v):
    """A runtime scalar as an exact rational (floats: ±inf/NaN stay floats)."""
    if isinstance(v, (float, np.floating)):
        return float(v) if not math.isfinite(v) else mpq(float(v))
    return v


def _exact(a) -> np.ndarray:
    a = np.asarray(a)
    out = np.empty(a.shape, dtype=object)
    for i, v in np.ndenumerate(a):
        out[i] = _q(v)
    return out


def _same(a, b) -> bool:
    """Bit-level agreement of two runtime arrays (values equal, NaN with NaN)."""
    A, B = _exact(a), _exact(b)
    if A.shape != B.shape:
        return False
    for u, v in zip(A.reshape(-1), B.reshape(-1)):
        if isinstance(u, float) or isinstance(v, float):
            if not (isinstance(u, float) and isinstance(v, float)
                    and (u == v or (math.isnan(u) and math.isnan(v)))):
                return False
        elif u != v:
            return False
    return True


def _rounded(fmt, data):
    """Runtime ``RN(data)``, its error bound ``|RN(data) − data|`` (upward), spec = data."""
    data = np.asarray(data, dtype=np.float64)
    rt = fmt.round(data)
    err = np.abs(_exact(rt) - _exact(data)) if data.size else np.zeros(data.shape, dtype=object)
    return rt, exact_array_up(err).reshape(data.shape), Interval.exact(data)


def _input(fmt, data, perturb: bool):
    """``(runtime, eps, spec)``; labels (integer arrays) are exact. With ``perturb`` the spec is
    the exact data and the runtime its rounding; otherwise both are the rounded data."""
    a = np.asarray(data)
    if a.dtype.kind in "iu":
        return a, np.zeros(a.shape), Interval.exact(a.astype(np.float64))
    if perturb:
        return _rounded(fmt, a)
    rt = fmt.round(np.asarray(a, dtype=np.float64))
    return rt, np.zeros(a.shape), Interval.exact(rt)


def check_enclosure(name, fmt, datas, params, rng, perturb=True, g_scale=1.0):
    """Forward and VJP enclosure of primitive ``name``; returns the runtime output and bound."""
    P = get(name)
    rts, eps, specs = zip(*(_input(fmt, d, perturb) for d in datas))
    out = P.runtime(fmt, *rts, **params)
    sp = P.spec(*specs, **params)
    b = P.bound(fmt, rts, eps, **params)
    assert np.shape(b) == np.shape(out)
    assert np.all(np.asarray(b) >= 0)
    ok = sp.encloses(out, b)
    assert ok.all(), f"{name} forward in {fmt}: distance {sp.distance(out)[~ok]} > bound {np.asarray(b)[~ok]}"
    g_data = np.asarray(rng.standard_normal(np.shape(out)) * g_scale)
    g_rt, eg, g_sp = _input(fmt, g_data, perturb)
    grads = P.vjp_runtime(fmt, rts, g_rt, **params)
    gspec = P.vjp_spec(specs, g_sp, **params)
    gb = P.vjp_bound(fmt, rts, eps, g_rt, eg, **params)
    assert len(grads) == len(gspec) == len(gb) == len(rts)
    for i, (gr, gs, bb) in enumerate(zip(grads, gspec, gb)):
        if gr is None:
            assert gs is None and bb is None
            continue
        assert np.shape(gr) == np.shape(rts[i]) == np.shape(bb)
        ok = gs.encloses(gr, bb)
        assert ok.all(), (f"{name} VJP[{i}] in {fmt}: distance {gs.distance(gr)[~ok]} "
                          f"> bound {np.asarray(bb)[~ok]}")
    return out, b, sp, grads, gb


def _pool_params(rng, d):
    k = tuple(int(v) for v in rng.integers(1, 4, size=d))
    s = tuple(int(v) for v in rng.integers(1, 3, size=d))
    p = tuple(int(rng.integers(0, ki // 2 + 1)) for ki in k)
    L = tuple(int(max(ki, rng.integers(2, 5))) for ki in k)
    return L, {"kernel_size": k, "stride": s, "padding": p}


# =============================================================================================
# spec == torch float64
# =============================================================================================
def _close(a, b, rtol=1e-13, atol=1e-15):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 1, 1), (3, 2, 1), (2, 1, 1), (3, 3, 1)])
def test_pool_spec_equals_torch(d, k, s, p):
    rng = np.random.default_rng(d * 100 + (s or 0))
    x = np.round(rng.standard_normal((2, 2) + (5,) * d) * 2)      # integers: many ties
    g = rng.standard_normal
    params = {"kernel_size": k, "stride": s, "padding": p}
    for kind in ("max", "avg"):
        tx = torch.tensor(x, requires_grad=True)
        ty = getattr(F, f"{kind}_pool{d}d")(tx, k, s, p)
        P = get(f"{kind}_pool")
        y = P.spec(Interval.exact(x), **params)
        _close(y.to_float(), ty.detach().numpy())
        gy = g(ty.shape)
        ty.backward(torch.tensor(gy))
        gx = P.vjp_spec((Interval.exact(x),), Interval.exact(gy), **params)[0]
        assert gx.is_exact
        _close(gx.to_float(), tx.grad.numpy())


def test_max_pool_runtime_equals_torch_with_ties():
    fmt = formats.get("binary32")
    rng = np.random.default_rng(1)
    x = fmt.round(np.round(rng.standard_normal((2, 3, 6, 7))))
    tx = torch.tensor(x, requires_grad=True)
    ty = F.max_pool2d(tx, 3, 2, 1)
    y = get("max_pool").runtime(fmt, x, kernel_size=3, stride=2, padding=1)
    assert np.array_equal(y, ty.detach().numpy())
    g = fmt.round(rng.standard_normal(y.shape))
    ty.backward(torch.tensor(g))
    gx = get("max_pool").vjp_runtime(fmt, (x,), g, kernel_size=3, stride=2, padding=1)[0]
    _close(gx, tx.grad.numpy(), rtol=2e-7, atol=1e-6)   # same routing; binary32 accumulation


@pytest.mark.parametrize("shape,dim", [((4,), -1), ((3, 5), 1), ((3, 5), 0), ((2, 3, 4), 1)])
def test_softmax_spec_equals_torch(shape, dim):
    rng = np.random.default_rng(len(shape) + dim)
    x = rng.standard_normal(shape) * 4
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.softmax(tx, dim)
    y = get("softmax").spec(Interval.exact(x), dim=dim)
    _close(y.to_float(), ty.detach().numpy())
    g = rng.standard_normal(shape)
    ty.backward(torch.tensor(g))
    gx = get("softmax").vjp_spec((Interval.exact(x),), Interval.exact(g), dim=dim)[0]
    _close(gx.to_float(), tx.grad.numpy(), atol=1e-14)
    # the enclosure is tight (MPFR at 200 bits)
    assert all(float(h - l) < 1e-50 for l, h in zip(y.lo.reshape(-1), y.hi.reshape(-1)))


def test_softmax_spec_unshifted_huge_logits():
    """Logits whose exp overflows binary64: the spec still encloses the mathematical value."""
    x = np.array([[1000.0, 999.0, -5000.0], [3e38, 3e38, 0.0]])
    y = get("softmax").spec(Interval.exact(x))
    e = math.e
    _close(y.to_float()[0], [e / (e + 1), 1 / (e + 1), 0.0])
    _close(y.to_float()[1], [0.5, 0.5, 0.0])
    assert all(v >= 0 for v in y.lo.reshape(-1))


def test_losses_spec_equal_torch():
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    tx = torch.tensor(x, requires_grad=True)
    L = F.mse_loss(tx, torch.tensor(t))
    L.backward()
    P = get("mse_loss")
    _close(P.spec(Interval.exact(x), Interval.exact(t)).to_float(), L.item())
    gx, gt = P.vjp_spec((Interval.exact(x), Interval.exact(t)), Interval.exact(np.array(1.0)))
    assert gt is None
    _close(gx.to_float(), tx.grad.numpy())

    logits = rng.standard_normal((5, 4)) * 3
    labels = rng.integers(0, 4, size=5)
    tx = torch.tensor(logits, requires_grad=True)
    L = F.cross_entropy(tx, torch.tensor(labels))
    L.backward()
    P = get("cross_entropy")
    spec = P.spec(Interval.exact(logits), labels)
    _close(spec.to_float(), L.item())
    assert float(spec.hi - spec.lo) < 1e-50
    gx, gt = P.vjp_spec((Interval.exact(logits), labels), Interval.exact(np.array(1.0)))
    assert gt is None
    _close(gx.to_float(), tx.grad.numpy(), atol=1e-16)


def test_shape_ops_equal_torch():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert np.array_equal(get("reshape").runtime(formats.get("binary32"), x, shape=(4, -1)),
                          torch.tensor(x).reshape(4, -1).numpy())
    for s, e in [(1, -1), (0, -1), (0, 1), (1, 1), (-2, -1)]:
        y = get("flatten").runtime(formats.get("binary32"), x, start_dim=s, end_dim=e)
        assert y.shape == tuple(torch.flatten(torch.tensor(x), s, e).shape)
        assert np.array_equal(y.reshape(-1), x.reshape(-1))
    assert get("flatten").runtime(formats.get("binary32"), np.array(3.0), start_dim=0).shape == (1,)


# =============================================================================================
# enclosure in every format
# =============================================================================================
def _cases(rng, fmt_name):
    small = fmt_name.startswith("decimal")
    cases = []
    x = rng.standard_normal((2, 3, 4)) * 3
    cases.append(("reshape", [x], {"shape": (4, -1)}))
    cases.append(("flatten", [x], {"start_dim": 1, "end_dim": -1}))
    for d in ((1, 2) if small else (1, 2, 3)):
        L, params = _pool_params(rng, d)
        xp = rng.standard_normal((1, 2) + L) * 3
        cases.append(("max_pool", [np.round(xp)], params))        # ties
        cases.append(("max_pool", [xp], params))
        cases.append(("avg_pool", [xp], params))
    cases.append(("avg_pool", [rng.standard_normal((1, 1, 5, 5))], {"kernel_size": 3, "stride": 1,
                                                                   "padding": 1, "order": "pairwise"}))
    cases.append(("softmax", [rng.standard_normal((2, 5)) * 4], {"dim": -1}))
    cases.append(("softmax", [rng.standard_normal((3, 2, 2)) * 2], {"dim": 0, "order": "reversed"}))
    cases.append(("mse_loss", [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))], {}))
    cases.append(("cross_entropy", [rng.standard_normal((3, 4)) * 3, rng.integers(0, 4, size=3)], {}))
    return cases


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_enclosure_every_op(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(abs(hash(fmt_name)) % 2**32)
    seen = set()
    for name, datas, params in _cases(rng, fmt_name):
        for perturb in (False, True):
            check_enclosure(name, fmt, datas, params, rng, perturb=perturb)
        seen.add(name)
    assert seen == set(OPS)


@pytest.mark.parametrize("fmt_name", FAST_FORMATS)
def test_pool_enclosure_with_box_spec(fmt_name):
    """Spec = a box around the runtime (Interval.between): the pool specs are exact images."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(7)
    for d in (1, 2, 3):
        L, params = _pool_params(rng, d)
        x = fmt.round(np.round(rng.standard_normal((1, 2) + L) * 2))
        e = np.where(rng.random(x.shape) < 0.5, 0.0, 0.75)
        spec = Interval.between(x - e, x + e)
        for name in ("max_pool", "avg_pool"):
            P = get(name)
            out = P.runtime(fmt, x, **params)
            assert P.spec(spec, **params).encloses(out, P.bound(fmt, (x,), (e,), **params)).all()
            g = fmt.round(rng.standard_normal(out.shape))
            eg = np.full(g.shape, 0.25)
            gs = P.vjp_spec((spec,), Interval.between(g - eg, g + eg), **params)[0]
            gr = P.vjp_runtime(fmt, (x,), g, **params)[0]
            assert gs.encloses(gr, P.vjp_bound(fmt, (x,), (e,), g, eg, **params)[0]).all()


# =============================================================================================
# adversarial
# =============================================================================================
def test_max_pool_tie_where_spec_and_runtime_argmax_differ():
    fmt = formats.get("bfloat16")
    P = get("max_pool")
    x = np.array([[[1.0, 1.0, -3.0, 2.0]]])           # window (1, 1): tie, runtime picks index 0
    e = np.array([[[2.0 ** -8, 2.0 ** -8, 0.0, 0.0]]])
    spec = Interval.exact(np.array([[[1.0 - 2.0 ** -9, 1.0 + 2.0 ** -9, -3.0, 2.0]]]))
    g = np.array([[[0.5, 1.25]]])
    params = {"kernel_size": 2}
    gr = P.vjp_runtime(fmt, (x,), g, **params)[0]
    gs = P.vjp_spec((spec,), Interval.exact(g), **params)[0]
    assert np.array_equal(gr, [[[0.5, 0.0, 0.0, 1.25]]])
    assert np.array_equal(gs.to_float(), [[[0.0, 0.5, 0.0, 1.25]]])   # routed elsewhere
    gb = P.vjp_bound(fmt, (x,), (e,), g, np.zeros(g.shape), **params)[0]
    assert gs.encloses(gr, gb).all()
    # |ĝ| at both candidates, ~0 where the argmax is sure (bound sums step up by binary64 ulps)
    assert np.all((gb[..., :2] >= 0.5) & (gb[..., :2] < 0.5 + 1e-15)) and np.all(gb[..., 2:] < 1e-300)
    fb = P.bound(fmt, (x,), (e,), **params)
    assert np.array_equal(fb, [[[2.0 ** -8, 0.0]]])
    # with no input error the tie is resolved alike (first max) and the bound is (about) 0
    gb0 = P.vjp_bound(fmt, (x,), (np.zeros(x.shape),), g, np.zeros(g.shape), **params)[0]
    assert np.all(gb0 < 1e-300)


def test_max_pool_overlapping_windows_accumulate_with_rounding():
    fmt = formats.get("float8_e4m3fn")
    P = get("max_pool")
    x = np.zeros((1, 1, 5))
    x[0, 0, 2] = 4.0                                      # the max of three overlapping windows
    g = fmt.round(np.array([[[1.0, 1.125, 0.125]]]))
    # windows covering position 2: w = 1, 2, 3 (w = 1 has max at 2, w = 2 at 2, w = 3 at 2)
    gr = P.vjp_runtime(fmt, (x,), g, kernel_size=3, stride=1, padding=0)[0]
    # RN(RN(1 + 1.125) + 0.125): 2.125 → 2 (e4m3: spacing 0.25 in [2, 4)), then 2.125 → 2
    assert gr[0, 0, 2] == 2.0
    gs = P.vjp_spec((Interval.exact(x),), Interval.exact(g), kernel_size=3, stride=1, padding=0)[0]
    gb = P.vjp_bound(fmt, (x,), (np.zeros(x.shape),), g, np.zeros(g.shape), kernel_size=3,
                     stride=1, padding=0)[0]
    assert float(gs.distance(gr)[0, 0, 2]) == 0.25
    assert gs.encloses(gr, gb).all() and 0.25 <= gb[0, 0, 2] <= 0.5


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_softmax_adversarial_logits(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(11)
    M = float(fmt.max_finite) if fmt.fits_binary64 else 1e90
    rows = [
        [1.0, 1.0 + 2.0 ** -6, 1.0 - 2.0 ** -6, 1.0],          # near-equal
        [M / 2, M / 2, 0.0, -M / 4],                              # huge (exp(x) overflows)
        [M, -M, 0.0, M],                                         # x − m overflows in IEEE
        [0.0, -30.0, -60.0, -100.0],                              # exp underflows
    ]
    for r in rows:
        x = np.array([r])
        for perturb in (False, True):
            out, b, sp, _, _ = check_enclosure("softmax", fmt, [x], {}, rng, perturb=perturb)
            assert np.all(b <= 1.0) or not np.all(np.isfinite(np.asarray(out, dtype=float)))
            if r[0] == M / 2 and not perturb:      # the stable form never evaluates exp(M/2)
                assert np.array_equal(np.asarray(out, dtype=float), [[0.5, 0.5, 0.0, 0.0]])
                assert np.all(b[0, :2] < 4 * fmt.u) and np.all(b[0, 2:] < 1e-30)
            check_enclosure("cross_entropy", fmt, [x, np.array([1])], {}, rng, perturb=perturb)


def test_softmax_near_overflow_bound_is_inf_or_sound():
    """binary16: m̂ − x̂ = 120000 overflows to −inf; exp(−inf) = 0 and the bound stays sound."""
    fmt = formats.get("binary16")
    x = np.array([[60000.0, -60000.0, 0.0]])
    y = get("softmax").runtime(fmt, x)
    assert np.array_equal(y, [[1.0, 0.0, 0.0]])
    b = get("softmax").bound(fmt, (x,), (np.zeros(x.shape),))
    assert np.all(b <= 1.0)
    assert get("softmax").spec(Interval.exact(x)).encloses(y, b).all()
    # float8_e4m3fn: the difference overflows to NaN; the output is NaN and the bound inf
    f8 = formats.get("float8_e4m3fn")
    x8 = np.array([[448.0, -448.0]])
    y8 = get("softmax").runtime(f8, x8)
    b8 = get("softmax").bound(f8, (x8,), (np.zeros(x8.shape),))
    assert np.all(np.isnan(y8)) and np.all(np.isinf(b8))


def test_losses_overflow_give_inf_bound():
    fmt = formats.get("binary16")
    x, t = np.array([300.0, 1.0]), np.array([-300.0, 1.0])   # 600² overflows binary16
    L = get("mse_loss").runtime(fmt, x, t)
    assert np.isinf(L)
    assert np.isinf(get("mse_loss").bound(fmt, (x, t), (np.zeros(2), np.zeros(2))))
    z = np.array([[60000.0, -60000.0]])                        # d_t = −120000 overflows to −inf
    CE = get("cross_entropy")
    assert np.isinf(CE.runtime(fmt, z, np.array([1])))
    assert np.isinf(CE.bound(fmt, (z, np.array([1])), (np.zeros(z.shape), None)))
    f8 = formats.get("float8_e4m3fn")
    z8 = np.array([[448.0, -448.0]])                           # the difference is NaN in e4m3fn
    assert np.isnan(CE.runtime(f8, z8, np.array([0])))
    assert np.isinf(CE.bound(f8, (z8, np.array([0])), (np.zeros(z8.shape), None)))


def test_cross_entropy_stagnating_sum_stays_sound():
    """e4m3fn: Σ of 40 ones stagnates at 16 (16 + 1 rounds back to 16), so the runtime loss is
    RN(log 16) = 2.75 while the exact one is log 40 = 3.69: the bound must cover the gap."""
    f8 = formats.get("float8_e4m3fn")
    z = np.zeros((1, 40))
    CE = get("cross_entropy")
    L = CE.runtime(f8, z, np.array([0]))
    assert L == 2.75
    b = CE.bound(f8, (z, np.array([0])), (np.zeros(z.shape), None))
    spec = CE.spec(Interval.exact(z), np.array([0]))
    assert 0.9 < float(spec.distance(L)) <= b
    sm = get("softmax")
    assert sm.spec(Interval.exact(z)).encloses(sm.runtime(f8, z), sm.bound(f8, (z,), (np.zeros(z.shape),))).all()


def test_avg_pool_near_overflow():
    fmt = formats.get("binary16")
    x = np.full((1, 1, 4), 40000.0)
    y = get("avg_pool").runtime(fmt, x, kernel_size=2)
    assert np.all(np.isinf(y))                               # 80000 overflows before the division
    b = get("avg_pool").bound(fmt, (x,), (np.zeros(x.shape),), kernel_size=2)
    assert np.all(np.isinf(b))


def test_softmax_lipschitz_bound_beats_composition_on_dominant_entry():
    """The Lipschitz bound (B) is what keeps the dominant entry's bound small."""
    fmt = formats.get("bfloat16")
    x = fmt.round(np.array([[8.0, 0.0, -1.0, 0.5]]))
    e = np.full(x.shape, 2.0 ** -6)
    y, A = softmax._softmax_composed(fmt, x, e, "sequential")
    b = get("softmax").bound(fmt, (x,), (e,))
    assert b[0, 0] < A[0, 0] / 2      # y_0 ≈ 0.999: κ ≈ 1 − y_0; what is left is rounding
    assert np.all(b <= A)
    spec = Interval.between(x - e, x + e)
    assert get("softmax").spec(spec).encloses(get("softmax").runtime(fmt, x), b).all()


@pytest.mark.parametrize("fmt_name", ["decimal32", "binary32", "bfloat16"])
def test_softmax_huge_input_error_far_below_the_max(fmt_name):
    """Input errors of 10^20 on logits of 10^30: the two leaders may be in any ratio (bound
    capped at max(ŷ, 1 − ŷ) = 1/2), while the entries 10^30 below keep a negligible bound
    (the box factor H ≈ e^(−10^30) of bound B; bound A is inf there)."""
    fmt = formats.get(fmt_name)
    x = fmt.round(np.array([[1e30, 1e30, 0.0, -5e29]]))
    e = np.array([[1e20, 1e20, 0.0, 0.0]])
    b = get("softmax").bound(fmt, (x,), (e,))
    assert np.all(b[0, :2] == 0.5) and np.all(b[0, 2:] < 1e-300)
    xf = np.asarray(x, dtype=float)
    spec = Interval.between(xf - e, xf + e)
    assert get("softmax").spec(spec).encloses(get("softmax").runtime(fmt, x), b).all()
    lab = np.array([2])
    L = get("cross_entropy").runtime(fmt, x, lab)
    bL = get("cross_entropy").bound(fmt, (x, lab), (e, None))
    assert get("cross_entropy").spec(spec, lab).encloses(L, bL) and bL < 0.02 * abs(float(L))


def test_softmax_single_entry_is_exact_one():
    fmt = formats.get("float8_e4m3fn")
    x = np.array([[3.0], [-2.0]])
    y = get("softmax").runtime(fmt, x)
    assert np.array_equal(y, np.ones((2, 1)))
    sp = get("softmax").spec(Interval.exact(x))
    assert sp.is_exact and np.array_equal(sp.to_float(), np.ones((2, 1)))


def test_divide_by_count_is_one_rounding_of_the_exact_quotient():
    """``RN(s/n)`` with ``n`` outside the format (27 is not an e4m3 value) equals the reference
    rounding of the exact quotient, for every value of small formats."""
    for name in ("float8_e4m3fn", "float8_e5m2", "bfloat16"):
        fmt = formats.get(name)
        vals = np.unique(fmt.round(np.concatenate([np.linspace(-400, 400, 4001),
                                                   np.geomspace(1e-5, 300, 2000)])))
        for n in (3, 9, 25, 27, 49, 125, 1000):
            got = pool.divide_by_count(fmt, vals, n)
            want = [reference.round_rational(mpq(float(v)) / n, fmt) for v in vals]
            assert all(float(w) == g for w, g in zip(want, got)), (name, n)
    d32 = formats.get("decimal32")
    v = d32.round(np.array([1.0, 2.0, 1234567.0]))
    assert list(pool.divide_by_count(d32, v, 3)) == [reference.round_rational(mpq(u) / 3, d32) for u in v]


@pytest.mark.parametrize("fmt_name", FAST_FORMATS + ["float8_e5m2", "binary64",
                                                     "float8_e4m3fn:overflow=saturate",
                                                     "bfloat16:rounding=down"])
def test_compiled_sequential_sum_is_accumulate(fmt_name):
    """``pool.sequential_sum`` (compiled) returns exactly ``accumulate``'s sums and bounds,
    including zeros (exact additions), overflow (inf / NaN / saturation) and both orders."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(17)
    M = float(fmt.max_finite)
    for trial in range(16):
        shp = tuple(int(v) for v in rng.integers(1, 6, size=rng.integers(1, 4)))
        x = rng.standard_normal(shp) * [1.0, 1e-3, M / 4, 1e3][trial % 4]
        x = fmt.round(np.where(rng.random(shp) < 0.25, 0.0, x))
        e = np.abs(rng.standard_normal(shp)) * 1e-3
        ax = int(rng.integers(-len(shp), len(shp)))
        for order in ("sequential", "reversed"):
            a, ea = accumulate(fmt, x, e, order=order, axis=ax)
            b, eb = pool.sequential_sum(fmt, x, e, order=order, axis=ax)
            assert np.array_equal(a, b, equal_nan=True) and np.array_equal(ea, eb)
            assert np.array_equal(pool.sequential_sum(fmt, x, None, order=order, axis=ax)[0], a,
                                  equal_nan=True)


# =============================================================================================
# bit-exact runtime vs scalar replay on exact rationals
# =============================================================================================
def _rn(fmt, q):
    return reference.round_rational(q, fmt) if not isinstance(q, float) else q


def _replay_pool(fmt, kind, x, g, k, s, p):
    X = _exact(x)
    N, C = X.shape[:2]
    L = X.shape[2:]
    out_sp = tuple((li + 2 * pi - ki) // si + 1 for li, pi, ki, si in zip(L, p, k, s))
    Y = np.empty((N, C) + out_sp, dtype=object)
    Gpad = np.full((N, C) + tuple(li + 2 * pi for li, pi in zip(L, p)), mpq(0), dtype=object)
    n = int(np.prod(k))
    G = _exact(g)
    for nc in itertools.product(range(N), range(C)):
        for w in itertools.product(*(range(o) for o in out_sp)):
            best, arg, acc = None, None, mpq(0)
            for off in itertools.product(*(range(ki) for ki in k)):
                pos = tuple(wi * si + oi for wi, si, oi in zip(w, s, off))
                inside = all(pi <= q < pi + li for q, pi, li in zip(pos, p, L))
                v = X[nc + tuple(q - pi for q, pi in zip(pos, p))] if inside else None
                if kind == "max":
                    if inside and (best is None or v > best):
                        best, arg = v, pos
                else:
                    acc = _rn(fmt, acc + (v if inside else mpq(0)))
            if kind == "max":
                Y[nc + w] = best
                Gpad[nc + arg] = _rn(fmt, Gpad[nc + arg] + G[nc + w])
            else:
                Y[nc + w] = _rn(fmt, acc / n)
                qg = _rn(fmt, G[nc + w] / n)
                for off in itertools.product(*(range(ki) for ki in k)):
                    pos = tuple(wi * si + oi for wi, si, oi in zip(w, s, off))
                    Gpad[nc + pos] = _rn(fmt, Gpad[nc + pos] + qg)
    crop = (Ellipsis,) + tuple(slice(pi, pi + li) for pi, li in zip(p, L))
    return Y, Gpad[crop]


def _replay_softmax_rows(fmt, X, G=None):
    """Rows of ``X`` (exact); returns (d, s, y, grad)."""
    Y = np.empty(X.shape, dtype=object)
    D = np.empty(X.shape, dtype=object)
    S = []
    GX = np.empty(X.shape, dtype=object)
    for r in range(X.shape[0]):
        m = max(X[r])
        d = [_rn(fmt, v - m) for v in X[r]]
        e = [correctly_rounded("exp", fmt, v) for v in d]
        s = e[0]
        for v in e[1:]:
            s = _rn(fmt, s + v)
        y = [_rn(fmt, v / s) for v in e]
        D[r], Y[r] = d, y
        S.append(s)
        if G is not None:
            p = [_rn(fmt, a * b) for a, b in zip(G[r], y)]
            c = p[0]
            for v in p[1:]:
                c = _rn(fmt, c + v)
            GX[r] = [_rn(fmt, yi * _rn(fmt, gi - c)) for yi, gi in zip(y, G[r])]
    return D, S, Y, GX


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_runtime_bit_exact_against_scalar_replay(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(3)
    # pools
    for d in ((1, 2) if fmt_name.startswith("decimal") else (1, 2, 3)):
        L, params = _pool_params(rng, d)
        params["stride"] = tuple(1 for _ in L)          # overlapping windows
        x = fmt.round(np.round(rng.standard_normal((1, 2) + L) * 3, 1))
        k, s, p = params["kernel_size"], params["stride"], params["padding"]
        for kind in ("max", "avg"):
            P = get(f"{kind}_pool")
            y = P.runtime(fmt, x, **params)
            g = fmt.round(rng.standard_normal(np.shape(y)) * 3)
            Y, GX = _replay_pool(fmt, kind, x, g, k, s, p)
            assert _same(y, Y), (kind, params)
            assert _same(P.vjp_runtime(fmt, (x,), g, **params)[0], GX), (kind, params)
    # softmax (dim=0 to exercise the axis move)
    x = fmt.round(rng.standard_normal((4, 3)) * 5)
    g = fmt.round(rng.standard_normal((4, 3)))
    _, _, Y, GX = _replay_softmax_rows(fmt, _exact(x).T, _exact(g).T)
    assert _same(get("softmax").runtime(fmt, x, dim=0), Y.T)
    assert _same(get("softmax").vjp_runtime(fmt, (x,), g, dim=0)[0], GX.T)
    # mse_loss
    a, t = fmt.round(rng.standard_normal(7) * 3), fmt.round(rng.standard_normal(7))
    A, T = _exact(a), _exact(t)
    dd = [_rn(fmt, u - v) for u, v in zip(A, T)]
    acc = _rn(fmt, dd[0] * dd[0])
    for v in dd[1:]:
        acc = _rn(fmt, acc + _rn(fmt, v * v))
    assert _same(get("mse_loss").runtime(fmt, a, t), np.array(_rn(fmt, acc / 7), dtype=object))
    g0 = fmt.round(np.array(0.75))
    h = _rn(fmt, _rn(fmt, 2 * _q(g0.item() if g0.dtype != object else g0.reshape(-1)[0])) / 7)
    assert _same(get("mse_loss").vjp_runtime(fmt, (a, t), g0)[0],
                 np.array([_rn(fmt, v * h) for v in dd], dtype=object))
    # cross_entropy
    z = fmt.round(rng.standard_normal((3, 4)) * 4)
    lab = np.array([0, 3, 1])
    D, S, Y, _ = _replay_softmax_rows(fmt, _exact(z))
    rows = [_rn(fmt, correctly_rounded("log", fmt, S[r]) - D[r][lab[r]]) for r in range(3)]
    tot = rows[0]
    for v in rows[1:]:
        tot = _rn(fmt, tot + v)
    assert _same(get("cross_entropy").runtime(fmt, z, lab), np.array(_rn(fmt, tot / 3), dtype=object))
    kq = _rn(fmt, _exact(g0).reshape(-1)[0] / 3)
    want = np.array([[_rn(fmt, _rn(fmt, Y[r][c] - (1 if c == lab[r] else 0)) * kq) for c in range(4)]
                     for r in range(3)], dtype=object)
    assert _same(get("cross_entropy").vjp_runtime(fmt, (z, lab), g0)[0], want)


# =============================================================================================
# bad input
# =============================================================================================
def test_bad_parameters_raise_value_error():
    fmt = formats.get("bfloat16")
    x4 = np.zeros((1, 1, 4, 4))
    bad_pool = [
        dict(kernel_size=2, x=np.zeros((4, 4))),              # no (N, C)
        dict(kernel_size=(2, 2), x=np.zeros((1, 1, 4))),     # kernel rank ≠ spatial rank
        dict(kernel_size=5, x=x4),                           # larger than the input
        dict(kernel_size=2, padding=2, x=x4),                # padding > k/2
        dict(kernel_size=2, stride=0, x=x4),
        dict(kernel_size=0, x=x4),
        dict(kernel_size=True, x=x4),
        dict(kernel_size=2, padding=-1, x=x4),
        dict(kernel_size=(2, 2, 2, 2), x=np.zeros((1, 1, 2, 2, 2, 2))),
        dict(kernel_size=2.0, x=x4),
    ]
    for kind in ("max_pool", "avg_pool"):
        P = get(kind)
        for case in bad_pool:
            case = dict(case)
            x = case.pop("x")
            with pytest.raises(ValueError):
                P.runtime(fmt, x, **case)
        with pytest.raises(ValueError):
            P.vjp_runtime(fmt, (x4,), np.zeros((1, 1, 3, 3)), kernel_size=2)   # g shape
        with pytest.raises(ValueError):
            P.runtime(fmt, np.full((1, 1, 2), np.nan), kernel_size=2)
    with pytest.raises(ValueError):
        get("avg_pool").runtime(fmt, x4, kernel_size=2, order="random")
    with pytest.raises(ValueError):
        get("reshape").runtime(fmt, np.zeros(6), shape=(4, -1))
    with pytest.raises(ValueError):
        get("reshape").runtime(fmt, np.zeros(6), shape=(-1, -1))
    with pytest.raises(ValueError):
        get("reshape").runtime(fmt, np.zeros(6), shape=(2, 2))
    with pytest.raises(ValueError):
        get("reshape").vjp_runtime(fmt, (np.zeros(6),), np.zeros(5), shape=(6,))
    with pytest.raises(ValueError):
        get("flatten").runtime(fmt, np.zeros((2, 3)), start_dim=1, end_dim=0)
    with pytest.raises(ValueError):
        get("flatten").runtime(fmt, np.zeros((2, 3)), start_dim=2)
    with pytest.raises(ValueError):
        get("softmax").runtime(fmt, np.zeros((2, 3)), dim=2)
    with pytest.raises(ValueError):
        get("softmax").runtime(fmt, np.array(1.0))
    with pytest.raises(ValueError):
        get("mse_loss").runtime(fmt, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        get("mse_loss").runtime(fmt, np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError):
        get("mse_loss").vjp_runtime(fmt, (np.zeros(3), np.zeros(3)), np.zeros(3))
    CE = get("cross_entropy")
    z = np.zeros((2, 3))
    for lab in (np.array([0, 3]), np.array([0]), np.array([0.5, 1.0]), np.array([-1, 0])):
        with pytest.raises(ValueError):
            CE.runtime(fmt, z, lab)
    with pytest.raises(ValueError):
        CE.runtime(fmt, np.zeros(3), np.array([0]))
    with pytest.raises(ValueError):
        CE.bound(fmt, (z, np.array([0, 1])), (np.zeros(z.shape), np.ones(2)))
    with pytest.raises(ValueError):
        CE.spec(Interval.between(np.zeros((2, 3)), np.ones((2, 3))),
                Interval.between(np.zeros(2), np.ones(2)))
    assert np.array_equal(CE.runtime(fmt, z, np.array([0.0, 2.0])), CE.runtime(fmt, z, np.array([0, 2])))


@pytest.mark.parametrize("name", OPS)
def test_upstream_gradient_must_have_the_output_shape(name):
    """Both VJP rules refuse a ``g`` whose shape is not the output's — also one with the right
    number of elements (reshape used to accept any) or a broadcastable one."""
    fmt = formats.get("bfloat16")
    P = get(name)
    rng = np.random.default_rng(OPS.index(name))
    xs, params = P.sample(rng, fmt)
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    shape = np.shape(P.runtime(fmt, *xs, **params))
    size = int(np.prod(shape))
    bads = {shape + (1,), (1,) + shape, (size + 1,), tuple(reversed(shape)) + (1, 1)}
    if len(shape) != 1:
        bads.add((size,))
    for bad in sorted(bads - {shape}):
        g = np.ones(bad)
        with pytest.raises(ValueError, match="^g "):
            P.vjp_runtime(fmt, xs, g, **params)
        with pytest.raises(ValueError, match="^g "):
            P.vjp_bound(fmt, xs, eps, g, np.zeros(bad), **params)


# =============================================================================================
# hypothesis over shapes
# =============================================================================================
@st.composite
def pool_cases(draw):
    d = draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(d))
    s = tuple(draw(st.integers(1, 3)) for _ in range(d))
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    L = tuple(max(ki, draw(st.integers(1, 5))) for ki in k)
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    return (N, C) + L, {"kernel_size": k, "stride": s, "padding": p}


@settings(max_examples=25, deadline=None)
@given(case=pool_cases(), seed=st.integers(0, 2**31), fmt_name=st.sampled_from(["bfloat16", "float8_e4m3fn"]),
       coarse=st.booleans())
def test_hypothesis_pools(case, seed, fmt_name, coarse):
    shp, params = case
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shp) * 3
    if coarse:
        x = np.round(x)
    for name in ("max_pool", "avg_pool"):
        out = check_enclosure(name, fmt, [x], params, rng, perturb=True)[0]
        ref = getattr(F, f"{name[:3]}_pool{len(shp) - 2}d")(
            torch.tensor(np.asarray(fmt.round(x))), params["kernel_size"], params["stride"],
            params["padding"])
        assert out.shape == tuple(ref.shape)
        if name == "max_pool":
            assert np.array_equal(out, ref.numpy())


@settings(max_examples=25, deadline=None)
@given(shp=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**31),
       fmt_name=st.sampled_from(["bfloat16", "binary16", "float8_e4m3fn"]), data=st.data())
def test_hypothesis_softmax_shape_ops_losses(shp, seed, fmt_name, data):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    shp = tuple(shp)
    x = rng.standard_normal(shp) * data.draw(st.sampled_from([0.01, 1.0, 8.0]))
    dim = data.draw(st.integers(-len(shp), len(shp) - 1))
    check_enclosure("softmax", fmt, [x], {"dim": dim}, rng)
    check_enclosure("flatten", fmt, [x], {"start_dim": 0, "end_dim": dim}, rng)
    check_enclosure("reshape", fmt, [x], {"shape": (-1,)}, rng)
    check_enclosure("mse_loss", fmt, [x, rng.standard_normal(shp)], {}, rng)
    x2 = x.reshape(shp[0], -1)
    check_enclosure("cross_entropy", fmt, [x2, rng.integers(0, x2.shape[1], size=shp[0])], {}, rng)


# =============================================================================================
# slow sweep
# =============================================================================================
@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2",
                                      "binary32", "tf32", "decimal32"])
def test_sweep_sample_instances(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(2024)
    half_max = float(fmt.max_finite) / 2 if fmt.fits_binary64 else 1e90
    for name in OPS:
        P = get(name)
        for _ in range(8 if fmt_name == "decimal32" else 50):
            xs, params = P.sample(rng, fmt)
            scale = float(rng.choice([1e-3, 1.0, 30.0, 1e4]))
            datas = [x if np.asarray(x).dtype.kind in "iu"
                     else np.clip(np.asarray(x, dtype=float) * scale, -half_max, half_max)
                     for x in xs]
            check_enclosure(name, fmt, datas, params, rng, perturb=bool(rng.integers(2)))
