"""dot, matvec, matmul, linear: spec vs PyTorch float64, runtime vs a scalar replay with the
reference engine, fused kernel vs generic path, enclosure (forward and VJP) on every preset,
adversarial inputs, order-free bounds vs every order, vs NumPy/BLAS and PyTorch float32 and vs
evaluations adding linear's bias anywhere, shape errors and off-grid runtime values."""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
import torch
from gmpy2 import mpq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfbound import formats
from nfbound.bounds.upward import exact_array_up
from nfbound.formats import reference
from nfbound.ops import linalg as L
from nfbound.ops.accumulate import accumulate
from nfbound.ops.interval import Interval
from nfbound.ops.reduce import stream_reduce

PRESETS = ["bfloat16", "binary16", "tf32", "binary32", "float8_e4m3fn", "float8_e5m2", "binary64",
           "decimal32"]
FAST = ["bfloat16", "binary16", "binary32", "float8_e4m3fn", "float8_e5m2", "binary64",
        "flt:p=7,emin=-20,emax=15,rounding=down", "flt:p=30,emin=-60,emax=40",
        "float8_e4m3fn:overflow=saturate", "flt:p=5,emin=-12,emax=6,rounding=zero"]
ORDERS = ["sequential", "reversed", "pairwise", "blocked:3"]


# -- helpers ----------------------------------------------------------------------------------
def seed_of(key) -> int:
    """A seed that is the same in every process (``hash`` of a str is salted per process)."""
    return zlib.crc32(repr(key).encode())


def runtime_and_eps(fmt, data):
    """Runtime = data rounded to the format, spec = the exact float64 data, eps = |r − data|
    rounded upward."""
    data = np.asarray(data, dtype=np.float64)
    r = fmt.round(data)
    diff = np.vectorize(lambda a, b: abs(mpq(a) - mpq(b)), otypes=[object])(
        np.asarray(r, dtype=object), data)
    return r, exact_array_up(diff), Interval.exact(data)


def between(x, e):
    """A non-degenerate enclosure around the runtime x of half-width e/2 (exact)."""
    xs = np.asarray(x, dtype=object)
    h = np.vectorize(lambda v: mpq(v) / 2, otypes=[object])(np.asarray(e, dtype=np.float64))
    return Interval(np.asarray(xs - h, dtype=object), np.asarray(xs + h, dtype=object))


def tree_sum(vals, order, add):
    """Scalar reference of the four orders (independent of the library's code)."""
    n = len(vals)
    if n == 0:
        return mpq(0)
    if order == "reversed":
        return tree_sum(vals[::-1], "sequential", add)
    if order == "sequential":
        s = vals[0]
        for v in vals[1:]:
            s = add(s, v)
        return s
    if order == "pairwise":
        level = list(vals)
        while len(level) > 1:
            nxt = [add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return level[0]
    B = int(order.split(":")[1])
    return tree_sum([tree_sum(vals[i:i + B], "sequential", add) for i in range(0, n, B)],
                    "sequential", add)


def ref_ops(fmt):
    def add(a, b):
        return reference.apply("add", fmt, reference.to_exact(a), reference.to_exact(b))

    def mul(a, b):
        return reference.apply("mul", fmt, reference.to_exact(a), reference.to_exact(b))
    return add, mul


def same(a, b) -> bool:
    """Bitwise-equal runtimes (exact values; NaN positions equal)."""
    fa = np.asarray(a, dtype=object).reshape(-1)
    fb = np.asarray(b, dtype=object).reshape(-1)
    if fa.shape != fb.shape:
        return False
    for u, v in zip(fa, fb):
        nu = isinstance(u, float) and u != u
        nv = isinstance(v, float) and v != v
        if nu or nv:
            if not (nu and nv):
                return False
        elif isinstance(u, float) and np.isinf(u) or isinstance(v, float) and np.isinf(v):
            if u != v:
                return False
        elif mpq(u) != mpq(v):
            return False
    return True


def ref_matmul(fmt, A, B, order):
    """Scalar reference of torch.matmul for ≥2-D A, B with equal batch shapes."""
    add, mul = ref_ops(fmt)
    A, B = np.asarray(A, dtype=object), np.asarray(B, dtype=object)
    out = np.empty(A.shape[:-1] + (B.shape[-1],), dtype=object)
    for idx in np.ndindex(out.shape):
        *b, i, k = idx
        b = tuple(b)
        terms = [mul(A[b + (i, j)], B[b + (j, k)]) for j in range(A.shape[-1])]
        out[idx] = tree_sum(terms, order, add)
    return out


# -- spec vs PyTorch float64 ----------------------------------------------------------------------
@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 2)), ((4,), (4,)),
                                   ((3, 4), (4,)), ((4,), (2, 4, 3)), ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_spec_and_vjp_spec_match_torch_float64(sa, sb):
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal(sa), rng.standard_normal(sb)
    At = torch.tensor(A, requires_grad=True)
    Bt = torch.tensor(B, requires_grad=True)
    Ct = torch.matmul(At, Bt)
    g = rng.standard_normal(tuple(Ct.shape))
    Ct.backward(torch.tensor(g))
    C = L.matmul_spec(Interval.exact(A), Interval.exact(B))
    np.testing.assert_allclose(C.to_float(), Ct.detach().numpy(), rtol=1e-12, atol=1e-12)
    dA, dB = L.matmul_vjp_spec((Interval.exact(A), Interval.exact(B)), Interval.exact(g))
    assert dA.shape == sa and dB.shape == sb
    np.testing.assert_allclose(dA.to_float(), At.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dB.to_float(), Bt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_spec_and_vjp_spec_match_torch_float64(lead, with_bias):
    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal(lead + (5,)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    xt, Wt, bt = (torch.tensor(v, requires_grad=True) for v in (x, W, b))
    yt = torch.nn.functional.linear(xt, Wt, bt if with_bias else None)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    xs = (Interval.exact(x), Interval.exact(W)) + ((Interval.exact(b),) if with_bias else ())
    y = L.linear_spec(*xs)
    np.testing.assert_allclose(y.to_float(), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    grads = L.linear_vjp_spec(xs, Interval.exact(g))
    expected = [xt.grad, Wt.grad] + ([bt.grad] if with_bias else [])
    assert len(grads) == len(expected)
    for gs, ge in zip(grads, expected):
        np.testing.assert_allclose(gs.to_float(), ge.numpy(), rtol=1e-12, atol=1e-12)


# -- runtime: bit-exact against a scalar replay ---------------------------------------------------
@pytest.mark.parametrize("fmt_name", formats.names() + ["flt:p=7,emin=-20,emax=15,rounding=down"])
@pytest.mark.parametrize("order", ORDERS)
def test_matmul_runtime_equals_scalar_replay(fmt_name, order):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(3)
    A = fmt.round(rng.standard_normal((2, 3, 7)) * 3)
    B = fmt.round(rng.standard_normal((2, 7, 2)) * 3)
    assert same(L.matmul_runtime(fmt, A, B, order=order), ref_matmul(fmt, A, B, order))


@pytest.mark.parametrize("fmt_name", formats.names())
def test_linear_and_its_vjp_equal_scalar_replay(fmt_name):
    """Bias last; d_weight and d_bias sum over (batch, row) in row-major order."""
    fmt = formats.get(fmt_name)
    add, mul = ref_ops(fmt)
    rng = np.random.default_rng(4)
    x = fmt.round(rng.standard_normal((2, 3, 5)))
    W = fmt.round(rng.standard_normal((4, 5)))
    b = fmt.round(rng.standard_normal(4))
    y = L.linear_runtime(fmt, x, W, b)
    xo, Wo, bo = (np.asarray(v, dtype=object) for v in (x, W, b))
    exp = np.empty((2, 3, 4), dtype=object)
    for p, q, o in np.ndindex(2, 3, 4):
        s = tree_sum([mul(xo[p, q, j], Wo[o, j]) for j in range(5)], "sequential", add)
        exp[p, q, o] = add(s, bo[o])
    assert same(y, exp)
    g = fmt.round(rng.standard_normal((2, 3, 4)))
    go = np.asarray(g, dtype=object)
    dx, dW, db = L.linear_vjp_runtime(fmt, (x, W, b), g)
    rows = list(np.ndindex(2, 3))                                    # batch outer, then rows
    edW = np.empty((4, 5), dtype=object)
    for o, i in np.ndindex(4, 5):
        edW[o, i] = tree_sum([mul(go[r + (o,)], xo[r + (i,)]) for r in rows], "sequential", add)
    edb = np.array([tree_sum([go[r + (o,)] for r in rows], "sequential", add) for o in range(4)],
                   dtype=object)
    edx = np.empty((2, 3, 5), dtype=object)
    for p, q, i in np.ndindex(2, 3, 5):
        edx[p, q, i] = tree_sum([mul(go[p, q, o], Wo[o, i]) for o in range(4)], "sequential", add)
    assert same(dW, edW) and same(db, edb) and same(dx, edx)


def test_matmul_vjp_with_broadcast_batch_equals_scalar_replay():
    """dB of a 2-D B against a batched A sums over (batch, row), batch outer."""
    fmt = formats.get("bfloat16")
    add, mul = ref_ops(fmt)
    rng = np.random.default_rng(5)
    A = fmt.round(rng.standard_normal((3, 2, 4)))
    B = fmt.round(rng.standard_normal((4, 5)))
    g = fmt.round(rng.standard_normal((3, 2, 5)))
    dA, dB = L.matmul_vjp_runtime(fmt, (A, B), g, order="sequential")
    Ao, Bo, go = (np.asarray(v, dtype=object) for v in (A, B, g))
    edB = np.empty((4, 5), dtype=object)
    for j, k in np.ndindex(4, 5):
        edB[j, k] = tree_sum([mul(Ao[b, i, j], go[b, i, k]) for b in range(3) for i in range(2)],
                             "sequential", add)
    edA = np.empty((3, 2, 4), dtype=object)
    for b, i, j in np.ndindex(3, 2, 4):
        edA[b, i, j] = tree_sum([mul(go[b, i, k], Bo[j, k]) for k in range(5)], "sequential", add)
    assert same(dB, edB) and same(dA, edA)


# -- fused kernel vs generic path ---------------------------------------------------------------
def _adversarial_operands(fmt, rng, shape_a, shape_b):
    A = rng.standard_normal(shape_a) * 3
    B = rng.standard_normal(shape_b) * 3
    A.flat[::5] = 0.0                                               # exact products, exact adds
    B.flat[::7] = -0.0
    if fmt.max_finite is not None:
        A.flat[1::9] = float(fmt.max_finite) * 0.75                 # overflow / saturation
    if fmt.emin is not None and fmt.emin > -1074:   # binary64: see test_binary64_underflow_*
        A.flat[2::11] = 2.0 ** (fmt.emin + 3)                       # subnormal products
    return fmt.round(A), fmt.round(B)


@pytest.mark.parametrize("fmt_name", FAST)
@pytest.mark.parametrize("order", ["sequential", "reversed", "blocked:4"])
def test_fused_kernel_equals_generic_path_bit_for_bit(fmt_name, order):
    fmt = formats.get(fmt_name)
    assert fmt.fast_ops
    rng = np.random.default_rng(6)
    A, B = _adversarial_operands(fmt, rng, (2, 5, 13), (2, 13, 4))
    EA = np.abs(A) * 2.0 ** -9
    EB = np.abs(B) * 2.0 ** -7
    EA.flat[3] = np.inf
    EB.flat[::6] = 0.0
    Ck, Ek = L._mm3(fmt, A, EA, B, EB, order, kernel=True)
    Cg, Eg = L._mm3(fmt, A, EA, B, EB, order, kernel=False)
    np.testing.assert_array_equal(Ck, Cg)                          # NaN == NaN here
    assert np.array_equal(np.signbit(Ck), np.signbit(Cg))
    np.testing.assert_array_equal(Ek, Eg)
    Cr, _ = L._mm3(fmt, A, None, B, None, order, need_bound=False)
    np.testing.assert_array_equal(Cr, Ck)
    if fmt.max_finite is not None:
        assert (~np.isfinite(Ck) | (np.abs(Ck) == float(fmt.max_finite))).any()  # hit overflow


def _underflowing_binary64_dot():
    fmt = formats.get("binary64")
    x, y = np.array([2.0 ** -600, 2.0 ** -530]), np.array([3 * 2.0 ** -500, -5 * 2.0 ** -547])
    return fmt, x, y, L.dot.spec(Interval.exact(x), Interval.exact(y))


def test_binary64_underflow_fused_kernel_is_sound():
    """Products below binary64's smallest subnormal round to 0 (or a subnormal): the rounding
    term is ulp/2 = 2^−1075, not a binary64 number; the kernel charges 2^−1074."""
    fmt, x, y, spec = _underflowing_binary64_dot()
    out = L.dot.runtime(fmt, x, y)
    assert abs(out) <= 2.0 ** -1073 and spec.lo[()] != mpq(float(out))
    b = L.dot.bound(fmt, (x, y), (0.0, 0.0))
    assert b > 0 and spec.encloses(out, b).all()


def test_binary64_underflow_generic_path_is_sound():
    """Regression: half of binary64's quantum 2^-1074 underflows; the rounding term is 2^-1074."""
    fmt, x, y, spec = _underflowing_binary64_dot()
    out = L.dot.runtime(fmt, x, y, order="pairwise")
    b = L.dot.bound(fmt, (x, y), (0.0, 0.0), order="pairwise")
    assert spec.encloses(out, b).all()


@pytest.mark.parametrize("order", ORDERS + ["blocked:1", "blocked:64"])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_streamed_reduction_equals_accumulate(order, n):
    """The streaming engine (used by every product reduction) is accumulate, bit for bit."""
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(n)
    A = fmt.round(rng.standard_normal((1, 3, n)))
    B = fmt.round(rng.standard_normal((1, n, 2)))
    EA, EB = np.abs(A) * 1e-3, np.full(B.shape, 1e-4)
    from nfbound.ops.elementwise import mul_error
    t, e = mul_error(fmt, A[0, :, None, :], EA[0, :, None, :], np.swapaxes(B[0], 0, 1)[None],
                     np.swapaxes(EB[0], 0, 1)[None])
    s_ref, b_ref = accumulate(fmt, t, e, order, axis=-1)
    s, b = L._mm3(fmt, A, EA, B, EB, order, kernel=False)
    np.testing.assert_array_equal(s[0], s_ref)
    np.testing.assert_array_equal(b[0], b_ref)
    s2, b2 = stream_reduce(fmt, n, lambda j: (t[..., j], e[..., j]), order)
    np.testing.assert_array_equal(s2, s_ref)
    np.testing.assert_array_equal(b2, b_ref)


# -- enclosure ---------------------------------------------------------------------------------
def _check_forward_and_vjp(P, fmt, xs_rt, eps, xs_spec, params, rng):
    out = P.runtime(fmt, *xs_rt, **params)
    bound = P.bound(fmt, xs_rt, eps, **params)
    assert np.shape(bound) == np.shape(out)
    spec = P.spec(*xs_spec, **params)
    assert spec.encloses(out, bound).all(), f"{P.name} forward"
    gdata = rng.standard_normal(np.shape(out))
    g, eg, gspec = runtime_and_eps(fmt, gdata)
    grads = P.vjp_runtime(fmt, xs_rt, g, **params)
    gb = P.vjp_bound(fmt, xs_rt, eps, g, eg, **params)
    gs = P.vjp_spec(xs_spec, gspec, **params)
    assert len(grads) == len(gb) == len(gs) == len(xs_rt)
    for i, (r, b, s) in enumerate(zip(grads, gb, gs)):
        assert np.shape(r) == np.shape(xs_rt[i]) == np.shape(b)
        assert s.encloses(r, b).all(), f"{P.name} VJP input {i}"
    return out, bound


CASES = [(L.dot, [(9,), (9,)]), (L.matvec, [(4, 6), (6,)]), (L.matmul, [(2, 3, 5), (2, 5, 4)]),
         (L.matmul, [(2, 1, 3, 5), (3, 5, 2)]), (L.matmul, [(5,), (5, 3)]),
         (L.linear, [(2, 3, 6), (4, 6), (4,)]), (L.linear, [(6,), (4, 6)])]


@pytest.mark.parametrize("fmt_name", PRESETS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("order_free", [False, True])
def test_enclosure_spec_data_runtime_rounded(fmt_name, case, order_free):
    """Spec = float64 data, runtime = data rounded to the format, eps = rounding error."""
    fmt = formats.get(fmt_name)
    P, shapes = CASES[case]
    if fmt_name == "decimal32" and (case in (2, 3, 5)) and order_free:
        pytest.skip("object path: keep the default run fast")
    rng = np.random.default_rng(case)
    trip = [runtime_and_eps(fmt, rng.standard_normal(s) * 2) for s in shapes]
    xs, eps, spec = zip(*trip)
    order = ORDERS[case % 4]
    _check_forward_and_vjp(P, fmt, xs, eps, spec, {"order": order, "order_free": order_free}, rng)


@pytest.mark.parametrize("fmt_name", ["bfloat16", "float8_e5m2", "binary32", "decimal32"])
@pytest.mark.parametrize("case", [0, 2, 5])
def test_enclosure_interval_spec(fmt_name, case):
    """Non-degenerate spec enclosures of half-width eps/2 around the runtime inputs."""
    fmt = formats.get(fmt_name)
    P, shapes = CASES[case]
    rng = np.random.default_rng(10 + case)
    xs = [fmt.round(rng.standard_normal(s)) for s in shapes]
    eps = [np.abs(np.asarray(x, dtype=np.float64)) * 2.0 ** -6 + 2.0 ** -12 for x in xs]
    spec = [between(x, e) for x, e in zip(xs, eps)]
    _check_forward_and_vjp(P, fmt, tuple(xs), tuple(eps), tuple(spec), {"order": "pairwise"}, rng)


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2",
                                      "binary32", "float8_e4m3fn:overflow=saturate"])
@pytest.mark.parametrize("order_free", [False, True])
def test_adversarial_cancellation_subnormal_overflow(fmt_name, order_free):
    fmt = formats.get(fmt_name)
    big = float(fmt.max_finite) / 2
    tiny = 2.0 ** fmt.emin
    rows = [
        [big / 2, -big / 2, 1.0, 0.5],            # catastrophic cancellation
        [1.0, big / 2, -big / 2, 3.0],
        [tiny * 8, tiny * 2, -tiny * 4, tiny],    # subnormal products against y below
        [big, big, big, big],                     # overflow → inf / NaN / saturation
        [0.0, -0.0, 0.0, 0.0],
    ]
    A = fmt.round(np.array(rows))
    x = fmt.round(np.array([1.0, 1.0, 1.0, 0.75]))
    x2 = fmt.round(np.array([0.5, 0.25, 1.5, 2.0 ** -3]))
    for xv in (x, x2):
        for order in ORDERS:
            ex = np.abs(xv) * 2.0 ** -20
            EA = np.zeros(A.shape)
            P = L.matvec
            out = P.runtime(fmt, A, xv, order=order)
            b = P.bound(fmt, (A, xv), (EA, ex), order=order, order_free=order_free)
            spec = P.spec(Interval.exact(A), between(xv, 2 * ex))
            assert spec.encloses(out, b).all()
            bad = ~np.isfinite(out) | (np.abs(out) >= float(fmt.max_finite))
            assert np.isinf(b[bad]).all(), "an overflowed/saturated entry must have an inf bound"
            assert bad[3] and np.isinf(b[3])
            assert np.isfinite(b[2]) and b[4] <= 16 * fmt.eta   # N·η·(1 + γ), N = 5
            if not order_free:
                assert np.isfinite(b[:3]).all() and b[4] < 1e-300


def test_subnormal_products_charge_underflow():
    """Products far below the smallest subnormal round to 0: the bound must still cover them."""
    fmt = formats.get("bfloat16")
    x = fmt.round(np.array([2.0 ** -70, 3 * 2.0 ** -80, 2.0 ** -66]))
    y = fmt.round(np.array([2.0 ** -70, 2.0 ** -60, 3 * 2.0 ** -70]))
    for order_free in (False, True):
        out = L.dot.runtime(fmt, x, y)
        b = L.dot.bound(fmt, (x, y), (0.0, 0.0), order_free=order_free)
        assert L.dot.spec(Interval.exact(x), Interval.exact(y)).encloses(out, b).all()
        assert b > 0


# -- order-free bounds -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e5m2", "binary32",
                                      "decimal32"])
def test_order_free_bound_encloses_every_order(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(20)
    n = 12 if fmt_name == "decimal32" else 40
    A, EA, As = runtime_and_eps(fmt, rng.standard_normal((3, n)))
    B, EB, Bs = runtime_and_eps(fmt, rng.standard_normal((n, 2)))
    spec = L.matmul_spec(As, Bs)
    bound = L.matmul_bound(fmt, (A, B), (EA, EB), order_free=True)
    for order in ORDERS + ["blocked:1", "blocked:7"]:
        out = L.matmul_runtime(fmt, A, B, order=order)
        assert spec.encloses(out, bound).all(), order
        replay = L.matmul_bound(fmt, (A, B), (EA, EB), order=order)
        assert spec.encloses(out, replay).all(), order
    # a random summation tree with FMA (exact products, one rounding per fused add)
    add, _ = ref_ops(fmt)
    Ao, Bo = np.asarray(A, dtype=object), np.asarray(B, dtype=object)
    for i, k in np.ndindex(3, 2):
        prods = [mpq(Ao[i, j]) * mpq(Bo[j, k]) for j in rng.permutation(n)]
        s = mpq(0)
        for p in prods:
            s = reference.round_rational(mpq(s) + p, fmt)
        assert spec[i:i + 1, k:k + 1].encloses(np.array([[s]], dtype=object),
                                              bound[i:i + 1, k:k + 1]).all()


@pytest.mark.parametrize("n", [16, 256, 2048])
def test_order_free_bound_encloses_numpy_blas_float32(n):
    """NumPy's float32 matmul (BLAS, unknown order, FMA) lies within the order-free bound of
    the exact product of the same binary32 inputs (and of float64 data they round)."""
    fmt = formats.get("binary32")
    rng = np.random.default_rng(n)
    data_a, data_b = rng.standard_normal((8, n)), rng.standard_normal((n, 6))
    A, EA, As = runtime_and_eps(fmt, data_a)
    B, EB, Bs = runtime_and_eps(fmt, data_b)
    blas = (A.astype(np.float32) @ B.astype(np.float32)).astype(np.float64)
    exact = L.matmul_spec(Interval.exact(A), Interval.exact(B))
    b0 = L.matmul_bound(fmt, (A, B), (0.0, 0.0), order_free=True)
    assert exact.encloses(blas, b0).all()
    b1 = L.matmul_bound(fmt, (A, B), (EA, EB), order_free=True)
    assert L.matmul_spec(As, Bs).encloses(blas, b1).all()
    # the bound is not vacuous: within a small factor of γ_n·Σ|ab|
    S = np.abs(A) @ np.abs(B)
    assert (b0 <= 2.5 * n * 2.0 ** -24 * S + 1e-30).all()
    # the BLAS result differs from our sequential runtime somewhere for long sums (it is a
    # different order) — the order-free bound is what covers it
    if n >= 256:
        assert (blas != L.matmul_runtime(fmt, A, B)).any()


def _rn(fmt, q):
    return reference.round_rational(mpq(q), fmt)


@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e5m2", "binary32",
                                      "decimal32", "decimal64"])
def test_order_free_linear_covers_the_bias_anywhere(fmt_name):
    """Order-free linear: the bias is one more term, so the bound covers evaluations that add it
    first (BLAS ``gemm`` with ``β = 1``), inside an FMA chain, or at a random place of a random
    tree — reference engine, exact spec, nonzero input errors — besides every nfbound order."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed_of(fmt_name))
    n = 4 if fmt.precision < 8 else 9       # e5m2: γ_N finite for N = n + 2 < 8
    x, ex, xs = runtime_and_eps(fmt, rng.standard_normal((3, n)))
    W, eW, Ws = runtime_and_eps(fmt, rng.standard_normal((4, n)))
    b, eb, bs = runtime_and_eps(fmt, rng.standard_normal(4) * 4)
    y, bound = L.linear_error(fmt, x, ex, W, eW, b, eb, order_free=True)
    assert np.isfinite(bound).all()
    spec = L.linear_spec(xs, Ws, bs)
    for order in ORDERS:
        out = L.linear_runtime(fmt, x, W, b, order=order)
        assert spec.encloses(out, bound).all(), order
        assert spec.encloses(out, L.linear_error(fmt, x, ex, W, eW, b, eb, order)[1]).all()
    xo, Wo, bo = (np.asarray(v, dtype=object) for v in (x, W, b))
    differ = False
    for how in ("bias first", "fma", "tree"):
        got = np.empty((3, 4), dtype=object)
        for r, o in np.ndindex(3, 4):
            prods = [mpq(xo[r, j]) * mpq(Wo[o, j]) for j in rng.permutation(n)]
            if how == "tree":
                items = [_rn(fmt, p) for p in prods] + [bo[o]]
                while len(items) > 1:
                    i, j = sorted(rng.choice(len(items), 2, replace=False))
                    v = items.pop(j)
                    items.append(_rn(fmt, mpq(items.pop(i)) + mpq(v)))
                got[r, o] = items[0]
                continue
            s = bo[o]
            for p in prods:
                s = _rn(fmt, mpq(s) + (p if how == "fma" else mpq(_rn(fmt, p))))
            got[r, o] = s
        assert spec.encloses(got, bound).all(), how
        differ |= not same(got, y)
    assert differ


def test_order_free_linear_bias_is_a_term_not_a_last_addition():
    """bfloat16, bias 1 added first, then four products 0.75·ulp(1): each addition rounds up by
    ulp/4, an error of ulp(1) = 2^−7 — more than the order-free bound of the products' sum plus
    one bias rounding (ulp/2) allows; the bound with the bias as a fifth term covers it."""
    fmt = formats.get("bfloat16")
    x, W, b = np.ones((1, 4)), np.full((1, 4), 3 * 2.0 ** -9), np.array([1.0])
    s = mpq(1)
    for _ in range(4):
        s = _rn(fmt, s + mpq(3 * 2.0 ** -9))
    err = abs(s - (1 + mpq(12 * 2.0 ** -9)))
    assert err == mpq(2) ** -7
    sum_only = L.linear_error(fmt, x, 0.0, W, 0.0, order_free=True)[1][0, 0]
    assert err > mpq(sum_only) + mpq(2) ** -8
    bound = L.linear_error(fmt, x, 0.0, W, 0.0, b, 0.0, order_free=True)[1]
    spec = L.linear_spec(Interval.exact(x), Interval.exact(W), Interval.exact(b))
    assert spec.encloses(np.array([[s]], dtype=object), bound).all()


@pytest.mark.parametrize("n", [16, 512])
def test_order_free_linear_encloses_torch_float32(n):
    """``torch.nn.functional.linear`` in float32 (``addmm``: MKL sgemm from the bias, any order,
    FMA) and its gradients lie within the binary32 order-free bounds."""
    fmt = formats.get("binary32")
    rng = np.random.default_rng(n)
    x, ex, xs = runtime_and_eps(fmt, rng.standard_normal((5, n)))
    W, eW, Ws = runtime_and_eps(fmt, rng.standard_normal((7, n)) / np.sqrt(n))
    b, eb, bs = runtime_and_eps(fmt, rng.standard_normal(7))
    g, eg, gs = runtime_and_eps(fmt, rng.standard_normal((5, 7)))
    X, Wt, B = (torch.tensor(np.asarray(v, dtype=np.float32), requires_grad=True)
                for v in (x, W, b))
    Y = torch.nn.functional.linear(X, Wt, B)
    tg = torch.autograd.grad(Y, (X, Wt, B), torch.tensor(np.asarray(g, dtype=np.float32)))
    torch_out = [t.detach().numpy().astype(np.float64) for t in (Y, *tg)]
    params = {"order_free": True}
    bounds = [L.linear.bound(fmt, (x, W, b), (ex, eW, eb), **params)] + \
        list(L.linear.vjp_bound(fmt, (x, W, b), (ex, eW, eb), g, eg, **params))
    specs = [L.linear.spec(xs, Ws, bs)] + list(L.linear.vjp_spec((xs, Ws, bs), gs))
    for t, s, e in zip(torch_out, specs, bounds):
        assert s.encloses(t, e).all()
    if n >= 512:
        assert not same(torch_out[0], L.linear.runtime(fmt, x, W, b))


# -- runtime values must be format values -----------------------------------------------------
LINALG_CASES = {"dot": (L.dot, [(5,), (5,)], ("x", "y")),
                "matvec": (L.matvec, [(3, 5), (5,)], ("A", "x")),
                "matmul": (L.matmul, [(2, 3, 5), (5, 2)], ("A", "B")),
                "linear": (L.linear, [(2, 5), (3, 5), (3,)], ("input", "weight", "bias"))}


def _rule_calls(P, fmt, xs, g, params):
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    eg = np.zeros(np.shape(g))
    calls = [("runtime", lambda xs, g: P.runtime(fmt, *xs, **params)),
             ("bound", lambda xs, g: P.bound(fmt, xs, eps, **params)),
             ("vjp_runtime", lambda xs, g: P.vjp_runtime(fmt, xs, g, **params)),
             ("vjp_bound", lambda xs, g: P.vjp_bound(fmt, xs, eps, g, eg, **params))]
    if P.fused is not None:
        calls += [("fused", lambda xs, g: P.fused(fmt, xs, eps, **params)),
                  ("vjp_fused", lambda xs, g: P.vjp_fused(fmt, xs, eps, g, eg, **params))]
    return calls


def _case(name, fmt):
    P, shapes, names = LINALG_CASES[name]
    rng = np.random.default_rng(0)
    xs = tuple(fmt.round(rng.standard_normal(s)) for s in shapes)
    g = fmt.round(np.ones(np.shape(P.runtime(fmt, *xs))))
    return P, xs, g, names


@pytest.mark.parametrize("order_free", [False, True])
@pytest.mark.parametrize("name", sorted(LINALG_CASES))
def test_off_grid_runtime_values_are_refused(name, order_free):
    """Every rule refuses runtime operands (and output gradients) that are not values of the
    format, naming the argument."""
    fmt = formats.get("bfloat16")
    P, xs, g, names = _case(name, fmt)
    params = {"order_free": order_free}

    def off(a):
        a = np.array(a, dtype=np.float64)
        a.flat[0] = (float(a.flat[0]) or 1.0) * (1 + 2.0 ** -9)
        assert not fmt.is_representable(a).all()
        return a
    for rule, call in _rule_calls(P, fmt, xs, g, params):
        call(xs, g)
        for i, arg in enumerate(names):
            bad = tuple(off(x) if j == i else x for j, x in enumerate(xs))
            with pytest.raises(ValueError, match=f"^{arg} holds values that are not bfloat16"):
                call(bad, g)
        if rule.startswith("vjp"):
            with pytest.raises(ValueError, match="^g holds values that are not bfloat16"):
                call(xs, off(g))


def test_each_runtime_value_is_checked_once_per_call(format_value_calls):
    seen = format_value_calls
    fmt = formats.get("binary16")
    for name in LINALG_CASES:
        P, xs, g, names = _case(name, fmt)
        for order_free in (False, True):
            for rule, call in _rule_calls(P, fmt, xs, g, {"order_free": order_free}):
                seen.clear()
                call(xs, g)
                expected = list(names) + (["g"] if rule.startswith("vjp") else [])
                assert sorted(seen) == sorted(expected), (name, rule, seen)


def test_order_free_guard_makes_bound_infinite_near_overflow():
    fmt = formats.get("float8_e4m3fn:overflow=saturate")
    x = fmt.round(np.array([256.0, 256.0, -256.0]))
    y = fmt.round(np.array([1.0, 1.0, 1.0]))
    # sequential: 256+256 saturates to 448, then −256 → 192: finite but wrong by 64
    out = L.dot.runtime(fmt, x, y)
    assert out == 192.0
    b = L.dot.bound(fmt, (x, y), (0.0, 0.0), order_free=True)
    assert np.isinf(b)
    assert np.isinf(L.dot.bound(fmt, (x, y), (0.0, 0.0)))


# -- errors ------------------------------------------------------------------------------------
def test_bad_shapes_and_params_raise_naming_the_argument():
    fmt = formats.get("bfloat16")
    a3, a4 = np.ones(3), np.ones(4)
    M = np.ones((3, 4))
    with pytest.raises(ValueError, match="x and y"):
        L.dot.runtime(fmt, a3, a4)
    with pytest.raises(ValueError, match="x must be 1-D"):
        L.dot.runtime(fmt, M, a4)
    with pytest.raises(ValueError, match="A has 4 columns but x has length 3"):
        L.matvec.runtime(fmt, M, a3)
    with pytest.raises(ValueError, match="A must be 2-D"):
        L.matvec.runtime(fmt, a3, a3)
    with pytest.raises(ValueError, match="A and B do not contract"):
        L.matmul.runtime(fmt, M, M)
    with pytest.raises(ValueError, match="batch dimensions"):
        L.matmul.runtime(fmt, np.ones((2, 3, 4)), np.ones((3, 4, 2)))
    with pytest.raises(ValueError, match="A must have at least one dimension"):
        L.matmul.runtime(fmt, np.float64(1.0), a3)
    with pytest.raises(ValueError, match="bias must have shape"):
        L.linear.runtime(fmt, M, np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        L.linear.runtime(fmt, M, a4)
    with pytest.raises(ValueError, match="input has 4 features"):
        L.linear.runtime(fmt, M, np.ones((2, 3)))
    with pytest.raises(ValueError, match="order"):
        L.matmul.runtime(fmt, M, M.T, order="random")
    with pytest.raises(ValueError, match="order_free"):
        L.matmul.bound(fmt, (M, M.T), (0.0, 0.0), order_free="yes")
    with pytest.raises(ValueError, match="eps_B"):
        L.matmul.bound(fmt, (M, M.T), (0.0, np.ones(5)))
    with pytest.raises(ValueError, match="eps_A"):
        L.matmul.bound(fmt, (M, M.T), (-np.ones(4), 0.0))
    with pytest.raises(ValueError, match="A contains NaN"):
        L.matmul.runtime(fmt, np.full((3, 4), np.nan), M.T)
    with pytest.raises(ValueError, match="g has shape"):
        L.matmul.vjp_runtime(fmt, (M, M.T), np.ones((4, 4)))


# -- property tests ----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt_name=st.sampled_from(["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2"]),
       m=st.integers(1, 4), n=st.integers(0, 9), k=st.integers(1, 4),
       batch=st.sampled_from([(), (2,), (1, 2)]), order=st.sampled_from(ORDERS),
       scale=st.sampled_from([1.0, 2.0 ** -8, 64.0]), seed=st.integers(0, 2 ** 16))
def test_property_matmul_enclosure_and_replay(fmt_name, m, n, k, batch, order, scale, seed):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    A, EA, As = runtime_and_eps(fmt, rng.standard_normal(batch + (m, n)) * scale)
    B, EB, Bs = runtime_and_eps(fmt, rng.standard_normal((n, k)) * scale)
    P = L.matmul
    for order_free in (False, True):
        _check_forward_and_vjp(P, fmt, (A, B), (EA, EB), (As, Bs),
                               {"order": order, "order_free": order_free}, rng)
    if batch == ():
        assert same(P.runtime(fmt, A, B, order=order), ref_matmul(fmt, A, B, order))


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", PRESETS)
def test_slow_sweep_enclosure_all_cases_orders(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(99)
    for (P, shapes), order, of in itertools.product(CASES, ORDERS, (False, True)):
        scale = float(rng.choice([1.0, 2.0 ** -10, 30.0]))
        trip = [runtime_and_eps(fmt, rng.standard_normal(s) * scale) for s in shapes]
        xs, eps, spec = zip(*trip)
        _check_forward_and_vjp(P, fmt, xs, eps, spec, {"order": order, "order_free": of}, rng)


@pytest.mark.slow
def test_slow_fused_kernel_equals_generic_random_sweep():
    """Many random formats (all modes, overflow rules), shapes, eps patterns and orders."""
    rng = np.random.default_rng(123)
    specs = FAST + ["flt:p=11,emin=-24,emax=16,rounding=away", "flt:p=3,emin=-8,emax=4",
                    "flt:p=20,emin=-100,emax=60,rounding=up", "float8_e5m2:overflow=saturate",
                    "flt:p=51,emin=-400,emax=300"]
    for trial in range(400):
        fmt = formats.get(specs[trial % len(specs)])
        nb, m, n, k = (int(v) for v in rng.integers(1, 6, size=4))
        n = int(rng.integers(1, 40))
        A, B = _adversarial_operands(fmt, rng, (nb, m, n), (nb, n, k))
        with np.errstate(over="ignore"):
            A = fmt.round(A * float(rng.choice([1.0, 2.0 ** -20, 2.0 ** 10])))
        A = np.where(np.isfinite(A), A, 0.0)          # inputs are finite format values
        EA = np.abs(A) * float(rng.choice([0.0, 2.0 ** -12, 1.0]))
        EB = rng.uniform(0, 1e-3, B.shape) * (rng.random(B.shape) < 0.7)
        if trial % 7 == 0:
            EB.flat[0] = np.inf
        order = ["sequential", "reversed", f"blocked:{int(rng.integers(1, 9))}"][trial % 3]
        Ck, Ek = L._mm3(fmt, A, EA, B, EB, order, kernel=True)
        Cg, Eg = L._mm3(fmt, A, EA, B, EB, order, kernel=False)
        np.testing.assert_array_equal(Ck, Cg)
        assert np.array_equal(np.signbit(Ck), np.signbit(Cg))
        np.testing.assert_array_equal(Ek, Eg)


@pytest.mark.slow
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt_name=st.sampled_from(["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2",
                                 "binary32", "float8_e4m3fn:overflow=saturate",
                                 "flt:p=5,emin=-10,emax=6,rounding=zero"]),
       which=st.integers(0, len(CASES) - 1), order=st.sampled_from(ORDERS + ["blocked:1"]),
       order_free=st.booleans(), scale=st.sampled_from([1.0, 2.0 ** -9, 2.0 ** 6, 2.0 ** 12]),
       seed=st.integers(0, 2 ** 16))
def test_slow_property_all_cases(fmt_name, which, order, order_free, scale, seed):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    P, shapes = CASES[which]
    M = float(fmt.max_finite) / 4
    trip = [runtime_and_eps(fmt, np.clip(rng.standard_normal(s) * scale, -M, M)) for s in shapes]
    xs, eps, spec = zip(*trip)
    _check_forward_and_vjp(P, fmt, xs, eps, spec, {"order": order, "order_free": order_free}, rng)


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2",
                                      "binary32", "tf32"])
def test_slow_long_dot_products_enclosure(fmt_name):
    """Long reductions (n = 3000) in every order, replay and order-free, exact spec."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(7)
    A, EA, As = runtime_and_eps(fmt, rng.standard_normal((4, 3000)))
    x, ex, xs = runtime_and_eps(fmt, rng.standard_normal(3000))
    spec = L.matvec.spec(As, xs)
    for order in ORDERS + ["blocked:64"]:
        out = L.matvec.runtime(fmt, A, x, order=order)
        for of in (False, True):
            b = L.matvec.bound(fmt, (A, x), (EA, ex), order=order, order_free=of)
            assert spec.encloses(out, b).all(), (order, of)
