"""conv / conv_transpose: spec against PyTorch, enclosure of runtime by spec ± bound (forward and
the three VJPs), compiled kernels against the NumPy path and an independent scalar replay in
TorchLean's order, the exact adjointness identity, argument errors."""
from __future__ import annotations

import math
import time
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gmpy2 import mpq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfbound import formats
from nfbound.bounds.upward import exact_array_up
from nfbound.ops import conv as C
from nfbound.ops.accumulate import accumulate, rounded_add
from nfbound.ops.elementwise import mul_error
from nfbound.ops.interval import Interval

TORCH = {(1, False): F.conv1d, (2, False): F.conv2d, (3, False): F.conv3d,
         (1, True): F.conv_transpose1d, (2, True): F.conv_transpose2d, (3, True): F.conv_transpose3d}
ENCLOSURE_FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "binary32"]
FAST_FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2", "binary32", "binary64",
                "bfloat16:rounding=toward_zero", "binary16:rounding=downward",
                "binary32:rounding=nearest_away", "float8_e4m3fn:overflow=saturate",
                "flt:p=30,emin=-200,emax=100", "flt:p=40,emin=-300,emax=200,rounding=upward"]


# -- helpers ------------------------------------------------------------------------------------
def seed_of(key) -> int:
    """A seed that is the same in every process (``hash`` of a str is salted per process)."""
    return zlib.crc32(repr(key).encode())


def fns(transpose: bool):
    if transpose:
        return (C.conv_transpose_forward, C.conv_transpose_backward, C.conv_transpose_spec,
                C.conv_transpose_vjp_spec)
    return C.conv_forward, C.conv_backward, C.conv_spec, C.conv_vjp_spec


def random_geometry(rng, d: int, transpose: bool, big: bool = False):
    """Random shapes and hyper-parameters (kernel may exceed stride, padding up to kernel)."""
    N, Cin, Co = (int(v) for v in rng.integers(1, 4 if big else 3, size=3))
    kernel = tuple(int(v) for v in rng.integers(1, 4, size=d))
    stride = tuple(int(v) for v in rng.integers(1, 4, size=d))
    padding = tuple(int(v) for v in rng.integers(0, 3, size=d))
    hi = {1: 9, 2: 7, 3: 5}[d] + (2 if big else 0)
    spatial = []
    for k, s, p in zip(kernel, stride, padding):
        if transpose:
            lo = max(1, -(-(2 * p - k + 1) // s) + 1)       # output (i−1)s − 2p + k ≥ 1
            spatial.append(int(rng.integers(lo, max(lo, hi) + 1)))
        else:
            spatial.append(int(rng.integers(max(1, k - 2 * p), hi + 1)))
    wshape = (Cin, Co) + kernel if transpose else (Co, Cin) + kernel
    return (N, Cin) + tuple(spatial), wshape, Co, {"stride": stride, "padding": padding}


def torch_all(x, w, b, g, params, transpose):
    """PyTorch float64 forward and the three gradients (autograd)."""
    d = x.ndim - 2
    X, W, B = (torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in (x, w, b))
    Y = TORCH[(d, transpose)](X, W, B, stride=params["stride"], padding=params["padding"])
    if g is None:
        return Y.detach().numpy(), None
    grads = torch.autograd.grad(Y, (X, W, B), torch.tensor(g, dtype=torch.float64))
    return Y.detach().numpy(), [t.numpy() for t in grads]


def leaf(fmt, data):
    """Runtime value RN(data) of exact float64 data and eps = |RN(data) − data| (upward)."""
    rt = fmt.round(data)
    return rt, exact_array_up(Interval.exact(data).distance(rt)).reshape(np.shape(data))


def as_float(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object:
        return np.array([float(v) for v in a.reshape(-1)]).reshape(a.shape)
    return a


def same(a, b) -> bool:
    """Bit-for-bit equality up to the sign of zero (NaN equal to NaN)."""
    return np.array_equal(as_float(a), as_float(b), equal_nan=True)


def bites(spec: Interval, runtime, bound) -> bool:
    """Where some runtime entry differs from its spec, the bound divided by 2^10 must fail to
    enclose somewhere (the enclosure check is not vacuous)."""
    if not any(d != 0 for d in spec.distance(runtime).reshape(-1)):
        return True
    return not spec.encloses(runtime, np.asarray(bound) / 1024).all()


def check_enclosures(fmt, data, params, transpose, spec_inputs=None, rt_inputs=None, eps=None,
                     gdata=None, sharp=False):
    """Run forward + VJPs on (RN(data), eps) and assert spec encloses runtime within bound
    (with ``sharp``, also that the bound divided by 2^10 fails somewhere: the check bites)."""
    fwd, bwd, spec, vspec = fns(transpose)
    if rt_inputs is None:
        rt_inputs, eps = zip(*(leaf(fmt, a) for a in data))
        spec_inputs = tuple(Interval.exact(a) for a in data)
    y, ey = fwd(fmt, *rt_inputs, eps=eps, **params)
    ys = spec(*spec_inputs, **params)
    assert ys.encloses(y, ey).all(), f"forward enclosure failed in {fmt}"
    assert np.all(np.isinf(ey[~np.isfinite(as_float(y))])), "a non-finite runtime needs an inf bound"
    assert not sharp or bites(ys, y, ey)
    g_rt, eg = leaf(fmt, gdata)
    grads, bounds = bwd(fmt, rt_inputs, g_rt, eps, eg, **params)
    grads_spec = vspec(spec_inputs, Interval.exact(gdata), **params)
    for name, gr, gb, gs in zip(("input", "weight", "bias"), grads, bounds, grads_spec):
        assert gr.shape == gb.shape == gs.shape
        assert gs.encloses(gr, gb).all(), f"VJP enclosure failed for {name} in {fmt}"
        assert np.all(np.isinf(gb[~np.isfinite(as_float(gr))]))
        assert not sharp or bites(gs, gr, gb)
    return y, ey, grads, bounds


# -- spec against PyTorch -------------------------------------------------------------------------
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_spec_equals_torch(d, transpose):
    """Exact rational spec == torch float64 (exactly, on small-integer data where every float64
    operation is exact; to 1e-12 on Gaussian data)."""
    rng = np.random.default_rng(10 * d + transpose)
    _, _, spec, vspec = fns(transpose)
    for trial in range(4):
        xs, ws, co, params = random_geometry(rng, d, transpose)
        integer = trial % 2 == 0
        draw = (lambda s: rng.integers(-9, 10, size=s).astype(float)) if integer else rng.standard_normal
        x, w, b = draw(xs), draw(ws), draw((co,))
        y_t, _ = torch_all(x, w, b, None, params, transpose)
        g = draw(y_t.shape)
        y_t, grads_t = torch_all(x, w, b, g, params, transpose)
        y = spec(x, w, b, **params)
        grads = vspec((x, w, b), g, **params)
        for got, want in zip((y, *grads), (y_t, *grads_t)):
            assert got.shape == want.shape
            if integer:
                assert np.array_equal(got.to_float(), want)
            else:
                np.testing.assert_allclose(got.to_float(), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 3), transpose=st.booleans())
def test_spec_equals_torch_property(seed, d, transpose):
    rng = np.random.default_rng(seed)
    _, _, spec, vspec = fns(transpose)
    xs, ws, co, params = random_geometry(rng, d, transpose)
    x, w, b = (rng.integers(-5, 6, size=s).astype(float) for s in (xs, ws, (co,)))
    y_t, _ = torch_all(x, w, b, None, params, transpose)
    g = rng.integers(-5, 6, size=y_t.shape).astype(float)
    y_t, grads_t = torch_all(x, w, b, g, params, transpose)
    assert np.array_equal(spec(x, w, b, **params).to_float(), y_t)
    for got, want in zip(vspec((x, w, b), g, **params), grads_t):
        assert np.array_equal(got.to_float(), want)


def test_spec_without_bias_and_interval_inputs():
    """No bias; interval inputs (midpoint–radius) enclose every point conv of their members."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((3, 2, 2, 3))
    r = 2.0 ** -6
    X, W = Interval.between(x - r, x + r), Interval.between(w - r, w + r)
    Y = C.conv_spec(X, W, stride=(2, 1), padding=(1, 1))
    for _ in range(5):
        xp = x + rng.uniform(-r, r, x.shape)
        wp = w + rng.uniform(-r, r, w.shape)
        yp = C.conv_spec(xp, wp, stride=(2, 1), padding=(1, 1))
        assert np.all(Y.lo <= yp.lo) and np.all(yp.hi <= Y.hi)
    ys = C.conv_spec(x, w, stride=(2, 1), padding=(1, 1))
    assert np.all(Y.lo < ys.lo) and np.all(ys.hi < Y.hi)


def test_spec_speed():
    """The spec of a 1×16×16×16 input, 16 output channels, 3×3 kernel: a few seconds."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((1, 16, 16, 16)), rng.standard_normal((16, 16, 3, 3)), rng.standard_normal(16)
    t = time.perf_counter()
    y = C.conv_spec(x, w, b, padding=1)
    elapsed = time.perf_counter() - t
    assert y.shape == (1, 16, 16, 16)
    assert elapsed < 15, f"spec took {elapsed:.1f} s"


# -- adjointness (seed BackwardDot), exactly in rationals --------------------------------------
def _dot(a: Interval, b: Interval):
    assert a.is_exact and b.is_exact
    return sum((a.lo * b.lo).reshape(-1), mpq(0))


@pytest.mark.parametrize("transpose", [False, True])
def test_adjointness_exact(transpose):
    """⟨JVP(dK, dB, dX), δ⟩ = ⟨dK, gK⟩ + ⟨dB, gB⟩ + ⟨dX, gX⟩ with JVP = op(dX, W) + op(X, dK) + dB,
    exactly, on random shapes, strides and paddings."""
    _, _, spec, vspec = fns(transpose)
    rng = np.random.default_rng(42 + transpose)
    for trial in range(6):
        d = 1 + trial % 3
        xs, ws, co, params = random_geometry(rng, d, transpose)
        X, dX = rng.standard_normal(xs), rng.standard_normal(xs)
        W, dK = rng.standard_normal(ws), rng.standard_normal(ws)
        B, dB = rng.standard_normal(co), rng.standard_normal(co)
        jvp = spec(dX, W, dB, **params) + spec(X, dK, **params)
        delta = Interval.exact(rng.standard_normal(jvp.shape))
        gX, gK, gB = vspec((X, W, B), delta, **params)
        lhs = _dot(jvp, delta)
        rhs = (_dot(Interval.exact(dK), gK) + _dot(Interval.exact(dB), gB)
               + _dot(Interval.exact(dX), gX))
        assert lhs == rhs


# -- enclosure: forward and the three VJPs -----------------------------------------------------
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("fmt_name", ENCLOSURE_FORMATS)
def test_enclosure_random(fmt_name, transpose):
    """Spec = exact float64 data, runtime = RN(data), eps = |RN(data) − data| (nonzero)."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed_of((fmt_name, transpose)))
    for trial in range(3):
        d = 1 + trial % 3
        xs, ws, co, params = random_geometry(rng, d, transpose)
        data = (rng.standard_normal(xs) * 2, rng.standard_normal(ws), rng.standard_normal(co))
        y = fns(transpose)[0](fmt, *(fmt.round(a) for a in data), **params)[0]
        check_enclosures(fmt, data, params, transpose, gdata=rng.standard_normal(y.shape),
                         sharp=True)


@pytest.mark.parametrize("fmt_name", ENCLOSURE_FORMATS)
def test_enclosure_interval_inputs(fmt_name):
    """Spec inputs are intervals around the runtime values (every point within eps)."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(7)
    xs, ws, co, params = (1, 2, 6, 5), (3, 2, 3, 3), 3, {"stride": (2, 1), "padding": (1, 2)}
    rt = tuple(fmt.round(rng.standard_normal(s)) for s in (xs, ws, (co,)))
    eps = tuple(np.abs(a) * 2.0 ** -6 + 2.0 ** -20 for a in rt)
    spec_in = tuple(Interval.between(a - e, a + e) for a, e in zip(rt, eps))
    g = rng.standard_normal((1, 3, 3, 7))
    check_enclosures(fmt, None, params, False, spec_in, rt, eps, g)


def test_enclosure_decimal32_tiny():
    """The object path (decimal32: exact rational runtime values)."""
    fmt = formats.get("decimal32")
    rng = np.random.default_rng(5)
    for transpose in (False, True):
        xs, ws = (1, 2, 3, 3), ((2, 2, 2, 2) if transpose else (2, 2, 2, 2))
        params = {"stride": (1, 2), "padding": (1, 0)} if not transpose else {"stride": (2, 1), "padding": (0, 1)}
        data = (rng.standard_normal(xs) / 3, rng.standard_normal(ws) / 7, rng.standard_normal(2) / 9)
        y = fns(transpose)[0](fmt, *(fmt.round(a) for a in data), **params)[0]
        assert y.dtype == object
        _, ey, _, _ = check_enclosures(fmt, data, params, transpose,
                                       gdata=rng.standard_normal(y.shape) / 11)
        assert np.all(ey > 0)


def adversarial_cases(fmt, rng):
    """Named (data, params) with ties, cancellation, underflow and overflow (2-D conv)."""
    mx = float(fmt.max_finite)
    tiny = float(fmt.smallest_subnormal)
    p = fmt.precision
    cases = {}
    # ties: small integers times a power of two, so sums hit midpoints of the grid
    s = 2.0 ** (p - 4)
    cases["ties"] = (rng.integers(-(2 ** 4), 2 ** 4, size=(1, 3, 5, 5)) * s,
                     rng.integers(-3, 4, size=(2, 3, 3, 3)).astype(float),
                     rng.integers(-3, 4, size=2) * s)
    # cancellation: kernel [M, 1, −M] on a constant input: the exact result is the input,
    # sequential rounding drops the 1 once M ≥ 2^p
    M = 2.0 ** (p + 1)
    w = np.zeros((1, 1, 1, 3))
    w[0, 0, 0] = [M, 1.0, -M]
    cases["cancellation"] = (np.ones((1, 1, 2, 6)), w, np.zeros(1))
    # underflow: products below the smallest normal, some below half the smallest subnormal
    lo = math.sqrt(tiny)
    cases["underflow"] = (rng.standard_normal((1, 2, 4, 4)) * lo * 4,
                          rng.standard_normal((2, 2, 2, 2)) * lo, np.full(2, tiny))
    # overflow: products and sums beyond the largest finite value
    big = math.sqrt(mx)
    cases["overflow"] = (rng.standard_normal((1, 2, 4, 4)) * big,
                         rng.standard_normal((2, 2, 3, 3)) * big / 2, np.array([mx, -mx]) / 2)
    return cases


@pytest.mark.parametrize("fmt_name", ENCLOSURE_FORMATS + ["float8_e4m3fn:overflow=saturate",
                                                          "bfloat16:rounding=toward_zero"])
def test_enclosure_adversarial(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(11)
    params = {"stride": (1, 1), "padding": (1, 1)}
    for name, data in adversarial_cases(fmt, rng).items():
        y_rt = C.conv_forward(fmt, *(fmt.round(a) for a in data), **params)[0]
        g = rng.standard_normal(y_rt.shape) * (float(fmt.max_finite) ** 0.5 if name == "overflow" else 1)
        y, ey, grads, bounds = check_enclosures(fmt, data, params, False, gdata=g)
        if name == "overflow":
            assert np.isinf(ey).any(), f"overflow in {fmt_name} must give an infinite bound"
        if name == "cancellation" and fmt_name in ("binary16", "binary32", "bfloat16"):
            assert y[0, 0, 1, 2] == 0 and ey[0, 0, 1, 2] >= 1   # the lost 1 is covered


def test_bound_is_zero_free_for_exact_zero_padding():
    """Padding terms are exact zeros: a 1×1 output seeing only padding has bias value and bound
    of the bias alone; an all-zero input gives an exact 0 with a zero bound."""
    fmt = formats.get("bfloat16")
    x, w = np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    y, e = C.conv_forward(fmt, x, w, np.array([3.0]), eps=(0.0, 0.0, 0.25), padding=1)
    assert y[0, 0, 0, 0] == 3.0 and e[0, 0, 0, 0] == 0.25     # corner: padding only
    assert y[0, 0, 1, 1] == 4.0 and e[0, 0, 1, 1] >= 0.25
    y, e = C.conv_forward(fmt, np.zeros((1, 2, 3, 3)), np.ones((1, 2, 3, 3)), eps=(0.0, 0.0), padding=1)
    assert np.all(y == 0) and np.all(e == 0)


# -- compiled kernels == NumPy path == scalar replay ---------------------------------------------
def _both_engines(fmt, transpose, rt, eps, g, eg, params, order="sequential"):
    fwd, bwd, _, _ = fns(transpose)
    out = {}
    for engine in ("compiled", "generic"):
        y, ey = fwd(fmt, *rt, eps=eps, engine=engine, order=order, **params)
        grads, bounds = bwd(fmt, rt, g, eps, eg, engine=engine, order=order, **params)
        yr = fwd(fmt, *rt, engine=engine, order=order, **params)[0]
        gr = bwd(fmt, rt, g, engine=engine, order=order, **params)[0]
        out[engine] = (y, ey, grads, bounds, yr, gr)
    return out


@pytest.mark.parametrize("fmt_name", FAST_FORMATS)
def test_compiled_equals_generic(fmt_name):
    """Runtime and bounds of the compiled kernels equal the NumPy path bit for bit (random and
    adversarial data, conv and conv_transpose, 1-D to 3-D, with and without bounds)."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed_of(fmt_name))
    cases = []
    for trial in range(4):
        transpose = trial % 2 == 1
        xs, ws, co, params = random_geometry(rng, 1 + trial % 3, transpose, big=True)
        cases.append((transpose, (rng.standard_normal(xs) * 3, rng.standard_normal(ws),
                                  rng.standard_normal(co)), params))
    for data in adversarial_cases(fmt, rng).values():
        cases.append((False, data, {"stride": (1, 2), "padding": (1, 1)}))
    for transpose, data, params in cases:
        rt, eps = zip(*(leaf(fmt, a) for a in data))
        y = fns(transpose)[0](fmt, *rt, **params)[0]
        g, eg = leaf(fmt, rng.standard_normal(y.shape))
        res = _both_engines(fmt, transpose, rt, eps, g, eg, params)
        a, b = res["compiled"], res["generic"]
        assert same(a[0], b[0]) and same(a[1], b[1]) and same(a[4], b[4]) and same(a[0], a[4])
        for i in range(3):
            assert same(a[2][i], b[2][i]) and same(a[3][i], b[3][i]) and same(a[5][i], b[5][i])
            assert same(a[2][i], a[5][i])


@pytest.mark.parametrize("fmt_name", ["bfloat16", "float8_e4m3fn", "binary16:rounding=downward",
                                      "flt:p=30,emin=-200,emax=100"])
def test_compiled_equals_exact_reference_replay(fmt_name):
    """The NumPy path on exact rational inputs runs the reference rounding engine (one exact
    rounding per operation): it must give the compiled kernels' runtime and bounds."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(2)
    data = (rng.standard_normal((1, 2, 4, 3)) * 3, rng.standard_normal((2, 2, 2, 2)), rng.standard_normal(2))
    params = {"stride": (1, 2), "padding": (1, 1)}
    rt, eps = zip(*(leaf(fmt, a) for a in data))
    y, ey = C.conv_forward(fmt, *rt, eps=eps, **params)
    g, eg = leaf(fmt, rng.standard_normal(y.shape))
    grads, bounds = C.conv_backward(fmt, rt, g, eps, eg, **params)
    obj = tuple(Interval.exact(a).lo for a in rt)
    y2, ey2 = C.conv_forward(fmt, *obj, eps=eps, **params)
    assert y2.dtype == object
    assert same(y, y2) and same(ey, ey2)
    grads2, bounds2 = C.conv_backward(fmt, obj, Interval.exact(g).lo, eps, eg, **params)
    for i in range(3):
        assert same(grads[i], grads2[i]) and same(bounds[i], bounds2[i])


# An independent scalar replay: TorchLean's sequences written as plain loops over the math, then
# the shared ``accumulate`` (any order) on the live terms; bias last (copied when no term).
def _terms_reduce(fmt, terms, order):
    if not terms:
        return 0.0, 0.0
    t = np.array([v for v, _ in terms])
    e = np.array([v for _, v in terms])
    s, b = accumulate(fmt, t, e, order)
    return float(s), float(b)


def _term(fmt, a, ea, w, ew):
    z, e = mul_error(fmt, np.array([a]), np.array([ea]), np.array([w]), np.array([ew]))
    return float(z[0]), float(e[0])


def _with_bias(fmt, se, has_terms, b, eb):
    if not has_terms:
        return b, eb
    s, e = rounded_add(fmt, np.array([se[0]]), np.array([se[1]]), np.array([b]), np.array([eb]))
    return float(s[0]), float(e[0])


def naive_conv2d(fmt, x, ex, w, ew, b, eb, d, ed, stride, padding, order):
    N, Cin, H, Wd = x.shape
    Co, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (Wd + 2 * pw - kw) // sw + 1
    y, ey = np.zeros((N, Co, Ho, Wo)), np.zeros((N, Co, Ho, Wo))
    for n in range(N):
        for oc in range(Co):
            for oi in range(Ho):
                for oj in range(Wo):
                    terms = []
                    for ic in range(Cin):
                        for ki in range(kh):
                            for kj in range(kw):
                                i, j = oi * sh + ki - ph, oj * sw + kj - pw
                                if 0 <= i < H and 0 <= j < Wd:
                                    terms.append(_term(fmt, x[n, ic, i, j], ex[n, ic, i, j],
                                                       w[oc, ic, ki, kj], ew[oc, ic, ki, kj]))
                    y[n, oc, oi, oj], ey[n, oc, oi, oj] = _with_bias(
                        fmt, _terms_reduce(fmt, terms, order), bool(terms), b[oc], eb[oc])
    gB = [_terms_reduce(fmt, [(d[n, oc, oi, oj], ed[n, oc, oi, oj]) for n in range(N)
                              for oi in range(Ho) for oj in range(Wo)], order) for oc in range(Co)]
    gK = np.zeros(w.shape + (2,))
    for oc in range(Co):
        for ic in range(Cin):
            for ki in range(kh):
                for kj in range(kw):
                    terms = []
                    for n in range(N):
                        for oi in range(Ho):
                            for oj in range(Wo):
                                i, j = oi * sh + ki - ph, oj * sw + kj - pw
                                if 0 <= i < H and 0 <= j < Wd:
                                    terms.append(_term(fmt, x[n, ic, i, j], ex[n, ic, i, j],
                                                       d[n, oc, oi, oj], ed[n, oc, oi, oj]))
                    gK[oc, ic, ki, kj] = _terms_reduce(fmt, terms, order)
    gX = np.zeros(x.shape + (2,))
    for n in range(N):
        for ic in range(Cin):
            for i in range(H):
                for j in range(Wd):
                    terms = []
                    for oc in range(Co):          # TorchLean: oc → oi → oj → ki → kj
                        for oi in range(Ho):
                            for oj in range(Wo):
                                for ki in range(kh):
                                    for kj in range(kw):
                                        if oi * sh + ki - ph == i and oj * sw + kj - pw == j:
                                            terms.append(_term(fmt, d[n, oc, oi, oj], ed[n, oc, oi, oj],
                                                               w[oc, ic, ki, kj], ew[oc, ic, ki, kj]))
                    gX[n, ic, i, j] = _terms_reduce(fmt, terms, order)
    return (y, ey), (gX[..., 0], gX[..., 1]), (gK[..., 0], gK[..., 1]), \
        (np.array([v[0] for v in gB]), np.array([v[1] for v in gB]))


def naive_conv_transpose2d(fmt, x, ex, w, ew, b, eb, d, ed, stride, padding, order):
    N, Cin, H, Wd = x.shape
    _, Co, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = (H - 1) * sh - 2 * ph + kh, (Wd - 1) * sw - 2 * pw + kw
    y, ey = np.zeros((N, Co, Ho, Wo)), np.zeros((N, Co, Ho, Wo))
    for n in range(N):
        for oc in range(Co):
            for oi in range(Ho):
                for oj in range(Wo):
                    terms = []
                    for ic in range(Cin):          # ic → ki → kj
                        for ki in range(kh):
                            for kj in range(kw):
                                ni, nj = oi + ph - ki, oj + pw - kj
                                if ni % sh == 0 and nj % sw == 0 and 0 <= ni // sh < H and 0 <= nj // sw < Wd \
                                        and ni >= 0 and nj >= 0:
                                    i, j = ni // sh, nj // sw
                                    terms.append(_term(fmt, x[n, ic, i, j], ex[n, ic, i, j],
                                                       w[ic, oc, ki, kj], ew[ic, oc, ki, kj]))
                    y[n, oc, oi, oj], ey[n, oc, oi, oj] = _with_bias(
                        fmt, _terms_reduce(fmt, terms, order), bool(terms), b[oc], eb[oc])
    gX = np.zeros(x.shape + (2,))
    for n in range(N):
        for ic in range(Cin):
            for i in range(H):
                for j in range(Wd):
                    terms = []
                    for oc in range(Co):           # a conv of δ with W: oc → ki → kj
                        for ki in range(kh):
                            for kj in range(kw):
                                oi, oj = i * sh + ki - ph, j * sw + kj - pw
                                if 0 <= oi < Ho and 0 <= oj < Wo:
                                    terms.append(_term(fmt, d[n, oc, oi, oj], ed[n, oc, oi, oj],
                                                       w[ic, oc, ki, kj], ew[ic, oc, ki, kj]))
                    gX[n, ic, i, j] = _terms_reduce(fmt, terms, order)
    gW = np.zeros(w.shape + (2,))
    for ic in range(Cin):
        for oc in range(Co):
            for ki in range(kh):
                for kj in range(kw):
                    terms = []
                    for n in range(N):             # n → i → j (input positions)
                        for i in range(H):
                            for j in range(Wd):
                                oi, oj = i * sh + ki - ph, j * sw + kj - pw
                                if 0 <= oi < Ho and 0 <= oj < Wo:
                                    terms.append(_term(fmt, x[n, ic, i, j], ex[n, ic, i, j],
                                                       d[n, oc, oi, oj], ed[n, oc, oi, oj]))
                    gW[ic, oc, ki, kj] = _terms_reduce(fmt, terms, order)
    gB = [_terms_reduce(fmt, [(d[n, oc, oi, oj], ed[n, oc, oi, oj]) for n in range(N)
                              for oi in range(Ho) for oj in range(Wo)], order) for oc in range(Co)]
    return (y, ey), (gX[..., 0], gX[..., 1]), (gW[..., 0], gW[..., 1]), \
        (np.array([v[0] for v in gB]), np.array([v[1] for v in gB]))


@pytest.mark.parametrize("order", ["sequential", "reversed", "pairwise", "blocked:3"])
@pytest.mark.parametrize("transpose", [False, True])
def test_scalar_replay_in_torchlean_order(transpose, order):
    """Runtime and bounds equal a plain-loop replay of TorchLean's sequences (the index tables,
    the compaction of structural zeros and every order are checked against the math)."""
    fmt = formats.get("binary16")
    rng = np.random.default_rng(100 + transpose)
    for stride, padding in [((2, 1), (1, 0)), ((1, 3), (2, 1))]:
        xs, ws = (2, 2, 5, 4), ((2, 3, 3, 2) if transpose else (3, 2, 3, 2))
        data = (rng.integers(-40, 40, size=xs) / 8, rng.integers(-40, 40, size=ws) / 16,
                rng.standard_normal(3))
        rt, eps = zip(*(leaf(fmt, a) for a in data))
        eps = tuple(e + 2.0 ** -12 for e in eps)
        params = {"stride": stride, "padding": padding}
        fwd, bwd, _, _ = fns(transpose)
        y, ey = fwd(fmt, *rt, eps=eps, order=order, **params)
        g, eg = leaf(fmt, rng.standard_normal(y.shape) * 4)
        grads, bounds = bwd(fmt, rt, g, eps, eg, order=order, **params)
        naive = naive_conv_transpose2d if transpose else naive_conv2d
        (yn, eyn), *gn = naive(fmt, rt[0], eps[0], rt[1], eps[1], rt[2], eps[2], g, eg,
                               stride, padding, order)
        assert same(y, yn) and same(ey, eyn)
        for i in range(3):
            assert same(grads[i], gn[i][0]) and same(bounds[i], gn[i][1]), (order, i)


def test_orders_differ_and_all_enclose():
    """Summation order changes the runtime value (binary16: one big term then many small
    ones); every order is enclosed by its own bound."""
    fmt = formats.get("binary16")
    x = np.ones((1, 1, 1, 17))
    w = np.full((1, 1, 1, 17), 2.0 ** -11)
    w[0, 0, 0, 0] = 1.0
    spec = C.conv_spec(x, w)
    results = {}
    for order in ("sequential", "reversed", "pairwise", "blocked:4"):
        y, e = C.conv_forward(fmt, x, w, eps=(0.0, 0.0), order=order)
        assert spec.encloses(y, e).all()
        results[order] = float(y.reshape(-1)[0])
    assert results["sequential"] == 1.0          # each 2^-11 is a tie, rounded to even
    assert results["reversed"] == 1.0 + 2.0 ** -7  # the small terms first add up exactly
    assert len(set(results.values())) >= 2


def test_primitive_rules_on_samples():
    """The registered primitives' rules (as the graph calls them) on their own samples."""
    for P in (C.conv, C.conv_transpose):
        for name in ("bfloat16", "float8_e5m2"):
            fmt = formats.get(name)
            rng = np.random.default_rng(9)
            for _ in range(3):
                xs, params = P.sample(rng, fmt)
                assert all(fmt.is_representable(a).all() for a in xs)
                out = P.runtime(fmt, *xs, **params)
                eps = tuple(np.abs(a) * 2.0 ** -10 for a in xs)
                spec_in = tuple(Interval.between(a - e, a + e) for a, e in zip(xs, eps))
                assert P.spec(*spec_in, **params).encloses(out, P.bound(fmt, xs, eps, **params)).all()
                g = fmt.round(rng.standard_normal(out.shape))
                eg = np.abs(g) * 2.0 ** -9
                gs = P.vjp_spec(spec_in, Interval.between(g - eg, g + eg), **params)
                gr = P.vjp_runtime(fmt, xs, g, **params)
                gb = P.vjp_bound(fmt, xs, eps, g, eg, **params)
                assert len(gr) == len(gs) == len(gb) == 3
                for a, s, b in zip(gr, gs, gb):
                    assert s.encloses(a, b).all()
                # without bias: two inputs, two gradients
                gr2 = P.vjp_runtime(fmt, xs[:2], g, **params)
                assert len(gr2) == 2 and same(gr2[0], gr[0]) and same(gr2[1], gr[1])


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 1, 3, 3))), "input channels"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4)), np.ones((3, 2, 3, 3))), "weight must have shape"),
    (lambda f: C.conv.runtime(f, np.ones((2, 4)), np.ones((3, 2, 3))), "input must have shape"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 2, 2)), np.ones((3, 2, 3, 3))), "weight: kernel size"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), stride=0), "stride"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), padding=-1), "padding"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), stride=(1, 1, 1)), "stride"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), stride=1.5), "stride"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), np.ones(2)), "bias"),
    (lambda f: C.conv.runtime(f, np.full((1, 2, 4, 4), np.nan), np.ones((3, 2, 3, 3))), "input"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.full((3, 2, 3, 3), np.inf)), "weight"),
    (lambda f: C.conv.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), order="random"), "order"),
    (lambda f: C.conv_forward(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), engine="gpu"), "engine"),
    (lambda f: C.conv_forward(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)), order="pairwise",
                              engine="compiled"), "compiled"),
    (lambda f: C.conv.bound(f, (np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))), (np.ones((1, 2, 4, 4)),)), "eps"),
    (lambda f: C.conv.bound(f, (np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))),
                            (-np.ones((1, 2, 4, 4)), 0.0)), "eps"),
    (lambda f: C.conv.vjp_runtime(f, (np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))), np.ones((1, 3, 3, 3))), "g"),
    (lambda f: C.conv.vjp_runtime(f, (np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))),
                                  np.full((1, 3, 2, 2), np.nan)), "g"),
    (lambda f: C.conv_transpose.runtime(f, np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))), "input channels"),
    (lambda f: C.conv_transpose.runtime(f, np.ones((1, 2, 1, 1)), np.ones((2, 2, 1, 1)), padding=1), "padding"),
    (lambda f: C.conv.spec(np.ones((1, 2, 4, 4)), np.ones((3, 1, 3, 3))), "input channels"),
    (lambda f: C.conv.spec(np.full((1, 2, 4, 4), np.inf), np.ones((3, 2, 3, 3))), "input"),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(formats.get("bfloat16"))


# -- slow sweeps ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", ENCLOSURE_FORMATS + ["float8_e5m2", "binary16:rounding=upward"])
def test_enclosure_sweep(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed_of(("sweep", fmt_name)))
    for trial in range(12):
        transpose = trial % 2 == 1
        xs, ws, co, params = random_geometry(rng, 1 + trial % 3, transpose, big=True)
        scale = min(2.0 ** rng.integers(-8, 9), float(fmt.max_finite) / 64)
        data = (rng.standard_normal(xs) * scale, rng.standard_normal(ws), rng.standard_normal(co))
        rt, eps = zip(*(leaf(fmt, a) for a in data))
        y = fns(transpose)[0](fmt, *rt, **params)[0]
        check_enclosures(fmt, data, params, transpose, gdata=rng.standard_normal(y.shape))
        res = _both_engines(fmt, transpose, rt, eps, *leaf(fmt, rng.standard_normal(y.shape)), params)
        assert same(res["compiled"][1], res["generic"][1])
        for i in range(3):
            assert same(res["compiled"][3][i], res["generic"][3][i])


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 3), transpose=st.booleans(),
       fmt_name=st.sampled_from(FAST_FORMATS))
def test_compiled_equals_generic_property(seed, d, transpose, fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    xs, ws, co, params = random_geometry(rng, d, transpose, big=True)
    scale = min(2.0 ** rng.integers(-6, 7), float(fmt.max_finite) / 64)
    data = (rng.standard_normal(xs) * scale, rng.standard_normal(ws), rng.standard_normal(co))
    rt, eps = zip(*(leaf(fmt, a) for a in data))
    y = fns(transpose)[0](fmt, *rt, **params)[0]
    res = _both_engines(fmt, transpose, rt, eps, *leaf(fmt, rng.standard_normal(y.shape)), params)
    a, b = res["compiled"], res["generic"]
    assert same(a[0], b[0]) and same(a[1], b[1])
    for i in range(3):
        assert same(a[2][i], b[2][i]) and same(a[3][i], b[3][i])
