"""conv / conv_transpose: spec against PyTorch, enclosure of runtime by spec ± bound (forward and
the three VJPs; replay and order-free bounds, every preset, a hypothesis property test), the
order-free bounds against every order, other evaluation orders (bias first, FMA, random trees)
and PyTorch's float32 conv, compiled kernels against the NumPy path and an independent scalar
replay in TorchLean's order on the reference engine (every preset), the exact adjointness
identity, argument errors (off-grid runtime values included)."""
from __future__ import annotations

import itertools
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
from nfbound.formats import reference
from nfbound.ops import conv as C
from nfbound.ops.accumulate import accumulate, rounded_add
from nfbound.ops.elementwise import mul_error
from nfbound.ops.interval import Interval

TORCH = {(1, False): F.conv1d, (2, False): F.conv2d, (3, False): F.conv3d,
         (1, True): F.conv_transpose1d, (2, True): F.conv_transpose2d, (3, True): F.conv_transpose3d}
ENCLOSURE_FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2", "binary32"]
ALL_PRESETS = formats.names()
ORDERS = ["sequential", "reversed", "pairwise", "blocked:3"]
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


def _exact(v):
    """A runtime scalar as an exact rational; ``±inf`` stays a float, NaN becomes ``"nan"``."""
    if isinstance(v, (float, np.floating)) and not math.isfinite(v):
        return "nan" if v != v else float(v)
    return mpq(v)


def same(a, b) -> bool:
    """Equality of the values up to the sign of zero (NaN equal to NaN), exact also for
    object arrays (decimal formats)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype != object and b.dtype != object:
        return np.array_equal(a, b, equal_nan=True)
    return all(_exact(u) == _exact(v) for u, v in zip(a.reshape(-1), b.reshape(-1)))


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


@pytest.mark.parametrize("order_free", [False, True])
@pytest.mark.parametrize("fmt_name", ["decimal32", "decimal64"])
def test_enclosure_decimal_tiny(fmt_name, order_free):
    """The object path (decimal formats: exact rational runtime values), replay and order-free
    bounds, in two orders."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(5)
    for transpose in (False, True):
        xs, ws = (1, 2, 3, 3), (2, 2, 2, 2)
        params = {"stride": (1, 2), "padding": (1, 0)} if not transpose else {"stride": (2, 1), "padding": (0, 1)}
        params.update(order="reversed" if transpose else "sequential", order_free=order_free)
        data = (rng.standard_normal(xs) / 3, rng.standard_normal(ws) / 7, rng.standard_normal(2) / 9)
        y = fns(transpose)[0](fmt, *(fmt.round(a) for a in data), **params)[0]
        assert y.dtype == object
        _, ey, _, _ = check_enclosures(fmt, data, params, transpose,
                                       gdata=rng.standard_normal(y.shape) / 11, sharp=True)
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


# An independent scalar replay: TorchLean's sequences written as plain loops over the math, then
# the shared ``accumulate`` (any order) on the live terms; bias last (copied when no term). On
# exact rational (mpq) inputs every product and sum goes through the reference engine.
def _terms_reduce(fmt, terms, order):
    if not terms:
        return mpq(0), 0.0
    t = np.array([v for v, _ in terms])
    e = np.array([v for _, v in terms])
    s, b = accumulate(fmt, t, e, order)
    return s[()], float(b)


def _term(fmt, a, ea, w, ew):
    z, e = mul_error(fmt, np.array([a]), np.array([ea]), np.array([w]), np.array([ew]))
    return z[0], float(e[0])


def _with_bias(fmt, se, has_terms, b, eb):
    if not has_terms:
        return b, eb
    s, e = rounded_add(fmt, np.array([se[0]]), np.array([se[1]]), np.array([b]), np.array([eb]))
    return s[0], float(e[0])


def _grid(shape):
    """Values (exact objects) and bounds of a naive result."""
    return np.empty(shape, dtype=object), np.zeros(shape)


def naive_conv2d(fmt, x, ex, w, ew, b, eb, d, ed, stride, padding, order):
    N, Cin, H, Wd = x.shape
    Co, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (Wd + 2 * pw - kw) // sw + 1
    y, ey = _grid((N, Co, Ho, Wo))
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
    gB, egB = _grid((Co,))
    for oc in range(Co):
        gB[oc], egB[oc] = _terms_reduce(fmt, [(d[n, oc, oi, oj], ed[n, oc, oi, oj])
                                              for n in range(N) for oi in range(Ho)
                                              for oj in range(Wo)], order)
    gK, egK = _grid(w.shape)
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
                    gK[oc, ic, ki, kj], egK[oc, ic, ki, kj] = _terms_reduce(fmt, terms, order)
    gX, egX = _grid(x.shape)
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
                    gX[n, ic, i, j], egX[n, ic, i, j] = _terms_reduce(fmt, terms, order)
    return (y, ey), (gX, egX), (gK, egK), (gB, egB)


def naive_conv_transpose2d(fmt, x, ex, w, ew, b, eb, d, ed, stride, padding, order):
    N, Cin, H, Wd = x.shape
    _, Co, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = (H - 1) * sh - 2 * ph + kh, (Wd - 1) * sw - 2 * pw + kw
    y, ey = _grid((N, Co, Ho, Wo))
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
    gX, egX = _grid(x.shape)
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
                    gX[n, ic, i, j], egX[n, ic, i, j] = _terms_reduce(fmt, terms, order)
    gW, egW = _grid(w.shape)
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
                    gW[ic, oc, ki, kj], egW[ic, oc, ki, kj] = _terms_reduce(fmt, terms, order)
    gB, egB = _grid((Co,))
    for oc in range(Co):
        gB[oc], egB[oc] = _terms_reduce(fmt, [(d[n, oc, oi, oj], ed[n, oc, oi, oj])
                                              for n in range(N) for oi in range(Ho)
                                              for oj in range(Wo)], order)
    return (y, ey), (gX, egX), (gW, egW), (gB, egB)


def _check_against_naive(fmt, transpose, rt, eps, g, eg, params, order, naive_inputs=None):
    """Runtime and bounds (forward, three VJPs) in ``order`` equal the naive loops run on
    ``naive_inputs`` (``(x, w, b, g)``, default the runtime values themselves)."""
    fwd, bwd, _, _ = fns(transpose)
    y, ey = fwd(fmt, *rt, eps=eps, order=order, **params)
    grads, bounds = bwd(fmt, rt, g, eps, eg, order=order, **params)
    x, w, b, d = naive_inputs if naive_inputs is not None else (*rt, g)
    naive = naive_conv_transpose2d if transpose else naive_conv2d
    (yn, eyn), *gn = naive(fmt, x, eps[0], w, eps[1], b, eps[2], d, eg, params["stride"],
                           params["padding"], order)
    assert same(y, yn) and same(ey, eyn), (order, "forward")
    for i in range(3):
        assert same(grads[i], gn[i][0]) and same(bounds[i], gn[i][1]), (order, i)


def _replay_case(fmt, rng, transpose):
    """Tiny 2-D data (runtime values, eps) with stride and padding; integers over powers of
    two so that sums tie and cancel, scaled into the format's range."""
    params = {"stride": (1, 2), "padding": (1, 1)}
    xs, ws = (1, 2, 4, 3), (2, 2, 2, 2)
    data = (rng.integers(-40, 40, size=xs) / 8, rng.integers(-40, 40, size=ws) / 16,
            rng.standard_normal(2))
    rt, eps = zip(*(leaf(fmt, a) for a in data))
    eps = tuple(e + 2.0 ** -12 for e in eps)
    y = fns(transpose)[0](fmt, *rt, **params)[0]
    g, eg = leaf(fmt, rng.standard_normal(y.shape) * 4)
    return rt, eps, g, eg, params


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("fmt_name", ALL_PRESETS + ["binary16:rounding=downward",
                                                    "flt:p=30,emin=-200,emax=100"])
def test_runtime_and_bounds_equal_reference_engine_replay(fmt_name, transpose):
    """Every preset (fp8 and decimal included): runtime and bounds, forward and the three VJPs,
    equal the naive TorchLean loops on exact rational inputs, where every product and partial
    sum is one rounding of the reference engine. Where the compiled kernels run, those exact
    inputs give their float64 results bit for bit too (values of a format that fits binary64
    are read as the binary64 values they are: ``checks.format_value``)."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed_of(("reference", fmt_name, transpose)))
    rt, eps, g, eg, params = _replay_case(fmt, rng, transpose)
    obj = tuple(Interval.exact(a).lo for a in (*rt, g))
    assert all(a.dtype == object for a in obj)
    _check_against_naive(fmt, transpose, rt, eps, g, eg, params, "sequential", obj)
    if fmt.fast_ops:
        fwd, bwd, _, _ = fns(transpose)
        y, ey = fwd(fmt, *rt, eps=eps, **params)
        y2, ey2 = fwd(fmt, *obj[:3], eps=eps, **params)
        assert y2.dtype == np.float64 and same(y, y2) and same(ey, ey2)
        grads, bounds = bwd(fmt, rt, g, eps, eg, **params)
        grads2, bounds2 = bwd(fmt, obj[:3], obj[3], eps, eg, **params)
        for i in range(3):
            assert same(grads[i], grads2[i]) and same(bounds[i], bounds2[i])


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("fmt_name", ALL_PRESETS)
def test_scalar_replay_in_torchlean_order(fmt_name, transpose):
    """Runtime and bounds equal a plain-loop replay of TorchLean's sequences in every order and
    every preset (the index tables, the compaction of structural zeros and every order are
    checked against the math)."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed_of(("torchlean", fmt_name, transpose)))
    # strides on both axes; on the second, padding = kernel: the first output sees padding only
    xs, ws = (1, 2, 4, 3), (2, 2, 3, 2)
    data = (rng.integers(-40, 40, size=xs) / 8, rng.integers(-40, 40, size=ws) / 16,
            rng.standard_normal(2))
    rt, eps = zip(*(leaf(fmt, a) for a in data))
    eps = tuple(e + 2.0 ** -12 for e in eps)
    params = {"stride": (2, 3), "padding": (1, 2)}
    y = fns(transpose)[0](fmt, *rt, **params)[0]
    g, eg = leaf(fmt, rng.standard_normal(y.shape) * 4)
    for order in ORDERS:
        _check_against_naive(fmt, transpose, rt, eps, g, eg, params, order)


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


# -- order-free bounds -----------------------------------------------------------------------------
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("fmt_name", ENCLOSURE_FORMATS + ["decimal32"])
def test_order_free_bound_encloses_every_order(fmt_name, transpose):
    """One order-free bound per output (forward and the three VJPs) encloses the runtime of every
    order nfbound offers; it does not depend on ``order``; each order's replay bound encloses
    its own runtime too. The tiny 1-D case keeps every sum short enough (``N·u < 1``) for the
    fp8 bounds to be finite; the check must bite there (the bound divided by 2^10 fails)."""
    fmt = formats.get(fmt_name)
    fwd, bwd, spec, vspec = fns(transpose)
    rng = np.random.default_rng(seed_of(("order-free", fmt_name, transpose)))
    cases = [((1, 2, 4), (2, 2, 2), 2, {"stride": 2, "padding": 1})]
    if fmt.precision >= 8:
        cases.append(random_geometry(rng, 2, transpose))
    for case, (xs, ws, co, params) in enumerate(cases):
        data = (rng.standard_normal(xs) * 2, rng.standard_normal(ws), rng.standard_normal(co))
        rt, eps = zip(*(leaf(fmt, a) for a in data))
        ys = spec(*data, **params)
        y0, ey = fwd(fmt, *rt, eps=eps, order_free=True, **params)
        g, eg = leaf(fmt, rng.standard_normal(y0.shape))
        gs = vspec(data, Interval.exact(g), **params)
        _, bounds = bwd(fmt, rt, g, eps, eg, order_free=True, **params)
        if case == 0:
            for sp, r, b in [(ys, y0, ey)] + list(zip(gs, bwd(fmt, rt, g, **params)[0], bounds)):
                assert np.isfinite(b).all() and bites(sp, r, b)
        for order in ORDERS:
            y, ey_o = fwd(fmt, *rt, eps=eps, order=order, order_free=True, **params)
            assert same(ey_o, ey)
            assert ys.encloses(y, ey).all(), order
            assert ys.encloses(y, fwd(fmt, *rt, eps=eps, order=order, **params)[1]).all(), order
            grads, b_o = bwd(fmt, rt, g, eps, eg, order=order, order_free=True, **params)
            replay = bwd(fmt, rt, g, eps, eg, order=order, **params)[1]
            for i in range(3):
                assert same(b_o[i], bounds[i])
                assert gs[i].encloses(grads[i], bounds[i]).all(), (order, i)
                assert gs[i].encloses(grads[i], replay[i]).all(), (order, i)


def _rn(fmt, q):
    return reference.round_rational(mpq(q), fmt)


def _evaluate(fmt, products, extra, how, rng):
    """A sum of exact ``products`` (and the term ``extra``, the bias, if not None) evaluated in
    a way nfbound does not offer, every operation rounded by the reference engine:

    * ``"bias first"``: ``s = b``, then ``s = RN(s + RN(p))`` in a random order;
    * ``"fma"``: ``s = b`` (or 0), then ``s = RN(s + p)`` (fused multiply-add) in a random order;
    * ``"tree"``: rounded products (and the bias) combined two random ones at a time.
    """
    perm = [products[i] for i in rng.permutation(len(products))]
    if how == "tree":
        items = [_rn(fmt, p) for p in perm] + ([] if extra is None else [extra])
        while len(items) > 1:
            i, j = sorted(rng.choice(len(items), 2, replace=False))
            b = items.pop(j)
            a = items.pop(i)
            items.append(_rn(fmt, mpq(a) + mpq(b)))
        return items[0] if items else mpq(0)
    s = mpq(0) if extra is None else extra
    for p in perm:
        s = _rn(fmt, mpq(s) + (p if how == "fma" else mpq(_rn(fmt, p))))
    return s


def _conv2d_sums(x, w, b, d, stride, padding):
    """The exact products of every sum of a 2-D conv (forward, gX, gK) and the terms of gB,
    keyed by output index, as plain loops (independent of the index tables)."""
    N, Cin, H, Wd = x.shape
    Co, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (Wd + 2 * pw - kw) // sw + 1
    fwd = {idx: [] for idx in np.ndindex(N, Co, Ho, Wo)}
    gX = {idx: [] for idx in np.ndindex(x.shape)}
    gK = {idx: [] for idx in np.ndindex(w.shape)}
    for n, oc, oi, oj, ic, ki, kj in itertools.product(range(N), range(Co), range(Ho), range(Wo),
                                                         range(Cin), range(kh), range(kw)):
        i, j = oi * sh + ki - ph, oj * sw + kj - pw
        if 0 <= i < H and 0 <= j < Wd:
            fwd[(n, oc, oi, oj)].append(mpq(x[n, ic, i, j]) * mpq(w[oc, ic, ki, kj]))
            gX[(n, ic, i, j)].append(mpq(d[n, oc, oi, oj]) * mpq(w[oc, ic, ki, kj]))
            gK[(oc, ic, ki, kj)].append(mpq(x[n, ic, i, j]) * mpq(d[n, oc, oi, oj]))
    gB = {(oc,): [mpq(d[n, oc, oi, oj]) for n in range(N) for oi in range(Ho) for oj in range(Wo)]
          for oc in range(Co)}
    return fwd, gX, gK, gB


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e5m2", "binary32",
                                      "decimal32"])
def test_order_free_bound_encloses_other_evaluations(fmt_name):
    """Evaluations no nfbound order produces — the bias added first, an FMA per term, random
    summation trees — lie within the order-free bounds (forward: bias as one more term; the
    three VJPs), against the exact spec of the runtime inputs and with input errors."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed_of(("other", fmt_name)))
    params = {"stride": (2, 1), "padding": (1, 1)}
    small = fmt.precision < 8            # e5m2: sums of at most 5 terms keep γ_N finite
    data = (rng.standard_normal((1, 1 if small else 3, 3 if small else 5, 2 if small else 4)),
            rng.standard_normal((2, 1, 2, 2) if small else (2, 3, 3, 3)) / 3,
            rng.standard_normal(2))
    rt, eps = zip(*(leaf(fmt, a) for a in data))
    y, ey = C.conv_forward(fmt, *rt, eps=eps, order_free=True, **params)
    g, eg = leaf(fmt, rng.standard_normal(y.shape))
    _, gbounds = C.conv_backward(fmt, rt, g, eps, eg, order_free=True, **params)
    specs = (C.conv_spec(*data, **params),) + C.conv_vjp_spec(data, Interval.exact(g), **params)
    shapes = (y.shape, rt[0].shape, rt[1].shape, rt[2].shape)
    sums = _conv2d_sums(*(np.asarray(a, dtype=object) for a in (*rt, g)), **params)
    runtimes = (y,) + C.conv_backward(fmt, rt, g, **params)[0]
    bias = np.asarray(rt[2], dtype=object)
    differ = 0
    for k, (terms, spec, bound, shape) in enumerate(zip(sums, specs, (ey,) + gbounds, shapes)):
        for how in ("bias first", "fma", "tree"):
            got = np.empty(shape, dtype=object)
            for idx, prods in terms.items():
                got[idx] = _evaluate(fmt, prods, bias[idx[1]] if k == 0 else None, how, rng)
            assert np.isfinite(bound).all() and spec.encloses(got, bound).all(), (k, how)
            differ += not same(got, runtimes[k])
    assert differ > 0          # some evaluation is not nfbound's own


def test_order_free_bias_is_a_term_not_a_last_addition():
    """bfloat16, bias 1 added *first*, then four products of 0.75·ulp(1): every addition rounds
    up by ulp/4, an error of 4·2^−9 = ulp(1) — twice what charging the bias as one last
    rounded addition (ulp(1)/2) plus the order-free bound of the products' sum allows. The
    order-free bound, counting the bias as a fifth term, covers it."""
    fmt = formats.get("bfloat16")
    x, w, b = np.ones((1, 4, 1, 1)), np.full((1, 4, 1, 1), 3 * 2.0 ** -9), np.array([1.0])
    s = mpq(1)
    for _ in range(4):
        s = _rn(fmt, s + mpq(3 * 2.0 ** -9))
    err = abs(s - (1 + mpq(12 * 2.0 ** -9)))
    assert err == mpq(2) ** -7
    sum_only = C.conv_forward(fmt, x, w, eps=(0.0, 0.0), order_free=True)[1][0, 0, 0, 0]
    assert err > mpq(sum_only) + mpq(2) ** -8         # the last-addition accounting fails
    y, e = C.conv_forward(fmt, x, w, b, eps=(0.0, 0.0, 0.0), order_free=True)
    assert C.conv_spec(x, w, b).encloses(np.array([[[[s]]]], dtype=object), e).all()
    assert C.conv_spec(x, w, b).encloses(y, e).all()


@pytest.mark.parametrize("order", ORDERS)
def test_order_free_bound_on_worst_case_accumulations(order):
    """bfloat16 sums of one 1 and eight terms 0.75·ulp(1) = 3·2^−9: in the sequential order
    every addition rounds up by ulp/4, an error of 2^−6 — close to the order-free bound's
    ``γ_N·Σ|t|`` (which would not cover it with ``N`` counting the terms of one input channel,
    one batch item or one output channel only). Forward (sum over input channels), gX (over
    output channels), gK and gB (over the batch); replay and order-free bounds in every order."""
    fmt = formats.get("bfloat16")
    t = 3 * 2.0 ** -9
    x = np.ones((9, 9, 1, 1))
    w = np.full((9, 9, 1, 1), t)
    w[:, 0] = 1.0                                   # forward: x·w = 1, t, t, … over channels
    d1 = np.full((9, 9, 1, 1), t)
    d1[:, 0] = 1.0                                  # gX[n, 0] = Σ_oc δ[n, oc]·w[oc, 0]
    d2 = np.full((9, 9, 1, 1), t)
    d2[0] = 1.0                                     # gK, gB: Σ_n over the batch
    spec = C.conv_spec(x, w)
    zero = (0.0, 0.0)
    for order_free in (False, True):
        y, e = C.conv_forward(fmt, x, w, eps=zero, order=order, order_free=order_free)
        assert spec.encloses(y, e).all()
        for dd, which in ((d1, (0,)), (d2, (1, 2))):
            grads, bounds = C.conv_backward(fmt, (x, w, np.zeros(9)), dd, (0.0, 0.0, 0.0), 0.0,
                                            order=order, order_free=order_free)
            gs = C.conv_vjp_spec((x, w, np.zeros(9)), dd)
            for i in which:
                assert gs[i].encloses(grads[i], bounds[i]).all(), (order_free, i)
    if order == "sequential":
        err = spec.distance(y)
        assert all(v == mpq(2) ** -6 for v in err.reshape(-1))
        assert all(v == mpq(2) ** -6 for v in gs[2].distance(grads[2]).reshape(-1))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_order_free_bound_encloses_torch_float32(d, transpose):
    """PyTorch's float32 CPU conv — a library whose order we do not choose (im2col/vol2col +
    MKL sgemm, blocked, FMA, the bias first as gemm's initial C; col2im sums for the input
    gradient) — lies within the binary32 order-free bounds, forward and the three gradients,
    against the exact conv of the binary32 inputs and against float64 data with its rounding
    errors. oneDNN and NNPACK are disabled: they may pick Winograd or FFT algorithms, which do
    not evaluate the sums of products and are outside the bound's model."""
    fmt = formats.get("binary32")
    rng = np.random.default_rng(seed_of(("torch32", d, transpose)))
    xs, ws, co, params = random_geometry(rng, d, transpose, big=True)
    xs = (xs[0], 6) + xs[2:]
    ws = (6,) + ws[1:] if transpose else ws[:1] + (6,) + ws[2:]
    data = (rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(co))
    rt, eps = zip(*(leaf(fmt, a) for a in data))
    fwd, bwd, spec, vspec = fns(transpose)
    y, ey = fwd(fmt, *rt, eps=eps, order_free=True, **params)
    y0, ey0 = fwd(fmt, *rt, eps=(0.0, 0.0, 0.0), order_free=True, **params)
    g, eg = leaf(fmt, rng.standard_normal(y.shape))
    with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
        X, W, B = (torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=True) for a in rt)
        Y = TORCH[(d, transpose)](X, W, B, stride=params["stride"], padding=params["padding"])
        tg = torch.autograd.grad(Y, (X, W, B), torch.tensor(np.asarray(g, dtype=np.float32)))
    torch_out = [t.detach().numpy().astype(np.float64) for t in (Y, *tg)]
    _, b0 = bwd(fmt, rt, g, (0.0, 0.0, 0.0), 0.0, order_free=True, **params)
    _, b1 = bwd(fmt, rt, g, eps, eg, order_free=True, **params)
    exact = [spec(*rt, **params)] + list(vspec(rt, g, **params))
    specs = [spec(*data, **params)] + list(vspec(data, Interval.exact(g), **params))
    ours = [y0] + list(bwd(fmt, rt, g, **params)[0])
    differ = False
    for k, (t, ex, sp, z, e) in enumerate(zip(torch_out, exact, specs, (ey0, *b0), (ey, *b1))):
        assert ex.encloses(t, z).all(), ("exact inputs", k)
        assert sp.encloses(t, e).all(), ("float64 data", k)
        differ |= not same(t, ours[k])
    assert differ, "torch's float32 results equal our sequential runtime: nothing tested"


# -- property test: forward + VJP enclosure -------------------------------------------------------
PROPERTY_FORMATS = ENCLOSURE_FORMATS + ["tf32", "binary64", "float8_e4m3fn:overflow=saturate",
                                        "binary16:rounding=upward", "decimal32"]


def _property_case(draw):
    """Draw a conv or transpose conv (1–3 spatial axes, per-axis kernel, stride, padding),
    a format, an order, replay or order-free bounds, a scale; check the enclosures."""
    d = draw(st.integers(1, 3))
    transpose = draw(st.booleans())
    fmt_name = draw(st.sampled_from(PROPERTY_FORMATS))
    small = d == 3 or fmt_name.startswith("decimal")
    N, Cin, Co = (draw(st.integers(1, 2)) for _ in range(3))
    kernel = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(d))
    hi = {1: 7, 2: 5, 3: 3}[d]
    spatial = []
    for k, s, p in zip(kernel, stride, padding):
        lo = max(1, -(-(2 * p - k + 1) // s) + 1) if transpose else max(1, k - 2 * p)
        spatial.append(draw(st.integers(lo, max(lo, hi))))
    order = draw(st.sampled_from(ORDERS))
    order_free = draw(st.booleans())
    scale = draw(st.sampled_from([1.0, 2.0 ** -6, 2.0 ** 6]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    xs = (N, Cin) + tuple(spatial)
    ws = ((Cin, Co) if transpose else (Co, Cin)) + kernel
    params = {"stride": stride, "padding": padding, "order": order, "order_free": order_free}
    data = (rng.standard_normal(xs) * scale, rng.standard_normal(ws), rng.standard_normal(Co))
    y = fns(transpose)[0](fmt, *(fmt.round(a) for a in data), **params)[0]
    check_enclosures(fmt, data, params, transpose, gdata=rng.standard_normal(y.shape) * scale)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_enclosure(data):
    _property_case(data.draw)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_enclosure_sweep(data):
    _property_case(data.draw)


# -- runtime inputs must be format values ---------------------------------------------------------
def _off_grid(fmt, a):
    """``a`` with one entry moved off the format's grid (halfway to the next value)."""
    a = np.array(a, dtype=np.float64)
    v = float(a.flat[0]) or 1.0
    a.flat[0] = v * (1 + 2.0 ** -(fmt.precision + 1))
    assert not fmt.is_representable(a).all()
    return a


def _rule_calls(P, fmt, xs, g, params):
    """Every entry point of ``P`` taking runtime values, as ``(name, call(xs, g))``."""
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    eg = np.zeros(np.shape(g))
    return [("runtime", lambda xs, g: P.runtime(fmt, *xs, **params)),
            ("bound", lambda xs, g: P.bound(fmt, xs, eps, **params)),
            ("fused", lambda xs, g: P.fused(fmt, xs, eps, **params)),
            ("vjp_runtime", lambda xs, g: P.vjp_runtime(fmt, xs, g, **params)),
            ("vjp_bound", lambda xs, g: P.vjp_bound(fmt, xs, eps, g, eg, **params)),
            ("vjp_fused", lambda xs, g: P.vjp_fused(fmt, xs, eps, g, eg, **params))]


@pytest.mark.parametrize("order_free", [False, True])
@pytest.mark.parametrize("arg", ["input", "weight", "bias", "g"])
@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_off_grid_runtime_values_are_refused(op, arg, order_free):
    """Every rule refuses runtime inputs (and output gradients) that are not values of the
    format, naming the argument: the kernels would round them a second time, unbounded."""
    fmt = formats.get("bfloat16")
    P = C.conv if op == "conv" else C.conv_transpose
    xs, params = P.sample(np.random.default_rng(1), fmt)
    params["order_free"] = order_free
    g = fmt.round(np.ones(np.shape(P.runtime(fmt, *xs, **params))))
    for rule, call in _rule_calls(P, fmt, xs, g, params):
        call(xs, g)                                      # format values: accepted
        if arg == "g":
            if rule.startswith("vjp"):
                with pytest.raises(ValueError, match="^g holds values that are not bfloat16"):
                    call(xs, _off_grid(fmt, g))
            continue
        i = ("input", "weight", "bias").index(arg)
        bad = tuple(_off_grid(fmt, x) if j == i else x for j, x in enumerate(xs))
        with pytest.raises(ValueError, match=f"^{arg} holds values that are not bfloat16"):
            call(bad, g)


def test_off_grid_decimal_input_is_refused():
    """A binary64 number that is not a decimal32 value (0.1 is not 1/10) is refused."""
    fmt = formats.get("decimal32")
    w = fmt.round(np.ones((1, 1, 1, 1)))
    assert C.conv.runtime(fmt, fmt.round(np.full((1, 1, 2, 2), 0.1)), w).dtype == object
    with pytest.raises(ValueError, match="^input holds values that are not decimal32"):
        C.conv.runtime(fmt, np.full((1, 1, 2, 2), 0.1), w)


def test_each_runtime_input_is_checked_once_per_call(format_value_calls):
    """Every rule checks each runtime input (and ``g``) exactly once."""
    seen = format_value_calls
    fmt = formats.get("binary16")
    for P in (C.conv, C.conv_transpose):
        xs, params = P.sample(np.random.default_rng(2), fmt)
        g = fmt.round(np.ones(np.shape(P.runtime(fmt, *xs, **params))))
        for order_free in (False, True):
            for rule, call in _rule_calls(P, fmt, xs, g, {**params, "order_free": order_free}):
                seen.clear()
                call(xs, g)
                expected = ["input", "weight", "bias"] + (["g"] if rule.startswith("vjp") else [])
                assert sorted(seen) == sorted(expected), (P.name, rule, seen)


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
@pytest.mark.parametrize("fmt_name", ENCLOSURE_FORMATS + ["binary16:rounding=upward"])
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
