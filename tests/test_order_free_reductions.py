"""Order-free ("any order") bounds of softmax, avg_pool, cross_entropy and mse_loss.

With ``order_free=True`` — what every ``order=any`` arithmetic passes — a rule's bound must
hold for *every* evaluation of the op's internal sums, not only for the one the runtime
emulates. Here libraries are emulated: the same op with every internal sum computed another
way — the stated orders (``accumulate``), random summation trees, SIMD-like lanes, one
rounding of the exact sum, a random tree in a wider format rounded once, and for the sums of
products (softmax's VJP, mse_loss) products fused into the additions (FMA chains in random
order) — and every output must lie within the order-free bound of the exact spec (rational
check), forward and VJP, with exact and perturbed spec inputs. Then the four ops in the
``torch-cpu-*`` presets, against PyTorch's own CPU kernels.
"""
from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import pytest
from gmpy2 import mpq

import nfbound.ops as ops
from nfbound import arith, formats
from nfbound.bounds.upward import exact_array_up
from nfbound.formats.reference import to_exact
from nfbound.ops import loss, pool, softmax
from nfbound.ops.accumulate import accumulate
from nfbound.ops.elementwise import div_error
from nfbound.ops.interval import Interval, exact_array

FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "binary32", "bfloat16:subnormals=ftz+daz",
           "decimal32"]
OPS = ["softmax", "avg_pool", "cross_entropy", "mse_loss"]


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


# =============================================================================================
# Emulated summations: (fmt, 1-D runtime values, rng) -> the sum as a runtime scalar
# =============================================================================================
def _value(fmt, q):
    """``RN(q)`` of an exact rational as a runtime scalar of ``fmt``."""
    return fmt.round(np.array([q], dtype=object))[0]


def _add(fmt, a, b):
    return fmt.add(np.asarray([a]), np.asarray([b]))[0]


def _stated(order: str):
    def total(fmt, t, rng):
        return accumulate(fmt, np.asarray(t), 0.0, order)[0][()]
    return total


def _tree(fmt, t, rng):
    """A random binary summation tree."""
    parts = list(t)
    while len(parts) > 1:
        i, j = sorted(rng.choice(len(parts), 2, replace=False))
        s = _add(fmt, parts[i], parts[j])
        parts = parts[:i] + parts[i + 1:j] + parts[j + 1:] + [s]
    return parts[0]


def _lanes(fmt, t, rng):
    """SIMD-like: ``L`` lanes summing strided terms sequentially, then the lanes pairwise."""
    L = int(rng.integers(2, 9))
    lanes = [accumulate(fmt, np.asarray(t[k::L]), 0.0)[0][()] for k in range(min(L, len(t)))]
    return accumulate(fmt, np.asarray(lanes), 0.0, "pairwise")[0][()]


def _exact_once(fmt, t, rng):
    """An exact accumulator rounded once to the format."""
    return _value(fmt, sum((to_exact(v) for v in t), mpq(0)))


def _wide_tree(fmt, t, rng):
    """A random tree in a wider format (binary64 / decimal64), rounded once to the format."""
    wide = formats.get("decimal64" if fmt.radix == 10 else "binary64")
    return _value(fmt, to_exact(_tree(wide, t, rng)))


SUMS = {"sequential": _stated("sequential"), "reversed": _stated("reversed"),
        "pairwise": _stated("pairwise"), "blocked:3": _stated("blocked:3"), "tree": _tree,
        "lanes": _lanes, "exact": _exact_once, "wide_tree": _wide_tree}


def _products_then(total):
    def dot(fmt, a, b, rng):
        return total(fmt, fmt.mul(np.asarray(a), np.asarray(b)), rng)
    return dot


def _fma_chain(fmt, a, b, rng):
    """``acc = RN(a_i·b_i + acc)`` in a random order, operands read as the format reads them
    (DAZ), one rounding per step."""
    def read(v):
        return to_exact(fmt.daz(np.asarray([v]))[0])
    acc = mpq(0)
    for i in rng.permutation(len(a)):
        acc = to_exact(_value(fmt, read(a[i]) * read(b[i]) + read(_value(fmt, acc))))
    return _value(fmt, acc)


DOTS = {**{name: _products_then(total) for name, total in SUMS.items()}, "fma": _fma_chain}


# =============================================================================================
# Emulated libraries: each op with its sums computed by ``total`` / ``dot``
# =============================================================================================
def _softmax_rows(fmt, x2, total, rng):
    m = np.max(x2, axis=1, keepdims=True)
    e = softmax.exp_safe(fmt, fmt.sub(x2, np.broadcast_to(m, x2.shape)))
    s = np.array([total(fmt, row, rng) for row in e], dtype=e.dtype)
    return fmt.div(e, np.broadcast_to(s[:, None], e.shape))


def _last(a, dim):
    a = np.moveaxis(np.asarray(a), dim, -1)
    return a.reshape(-1, a.shape[-1]), a.shape


def _back(a2, shape, dim):
    return np.moveaxis(np.asarray(a2).reshape(shape), -1, dim)


def lib_softmax(fmt, xs, params, total, dot, rng):
    (x,), dim = xs, params.get("dim", -1)
    x2, shape = _last(x, dim)
    return _back(_softmax_rows(fmt, x2, total, rng), shape, dim)


def lib_softmax_vjp(fmt, xs, g, params, total, dot, rng):
    (x,), dim = xs, params.get("dim", -1)
    x2, shape = _last(x, dim)
    g2, _ = _last(g, dim)
    y = _softmax_rows(fmt, x2, total, rng)
    c = np.array([dot(fmt, gr, yr, rng) for gr, yr in zip(g2, y)], dtype=y.dtype)
    w = fmt.sub(g2, np.broadcast_to(c[:, None], g2.shape))
    return (_back(fmt.mul(y, w), shape, dim),)


def _geometry(x, params):
    return pool.pool_geometry(np.shape(x), params["kernel_size"], params.get("stride"),
                              params.get("padding", 0))


def lib_avg_pool(fmt, xs, params, total, dot, rng):
    (x,) = xs
    k, s, p, out = _geometry(x, params)
    xw = pool.windows(x, k, s, p, out, mpq(0) if x.dtype == object else 0.0)
    sums = np.array([total(fmt, w, rng) for w in xw.reshape(-1, xw.shape[-1])], dtype=x.dtype)
    return pool.divide_by_count(fmt, sums.reshape(xw.shape[:-1]), int(np.prod(k)))


def lib_avg_pool_vjp(fmt, xs, g, params, total, dot, rng):
    """Each input position sums the ``RN(g_w/n)`` of the windows covering it, in ``total``'s
    way (one term: the term itself)."""
    (x,) = xs
    k, s, p, out = _geometry(x, params)
    q = pool.divide_by_count(fmt, g, int(np.prod(k)))
    where = pool.windows(np.arange(x.size).reshape(x.shape), k, s, p, out, -1)
    terms = defaultdict(list)
    for i, j in np.ndenumerate(where):
        if j >= 0:
            terms[int(j)].append(q[i[:-1]])
    grad = np.zeros(x.size, dtype=q.dtype)
    if grad.dtype == object:
        grad[:] = mpq(0)
    for j, ts in terms.items():
        grad[j] = ts[0] if len(ts) == 1 else total(fmt, np.array(ts, dtype=q.dtype), rng)
    return (grad.reshape(x.shape),)


def lib_mse_loss(fmt, xs, params, total, dot, rng):
    x, t = xs
    d = np.reshape(fmt.sub(x, t), -1)
    return pool.divide_by_count(fmt, np.asarray([dot(fmt, d, d, rng)]), d.size).reshape(())


def lib_mse_loss_vjp(fmt, xs, g, params, total, dot, rng):
    return ops.get("mse_loss").vjp_runtime(fmt, xs, g)      # no sum: every library's


def lib_cross_entropy(fmt, xs, params, total, dot, rng):
    x, t = xs
    m = np.max(x, axis=1, keepdims=True)
    d = fmt.sub(x, np.broadcast_to(m, x.shape))
    e = softmax.exp_safe(fmt, d)
    s = np.array([total(fmt, row, rng) for row in e], dtype=e.dtype)
    rows = fmt.sub(loss._log_safe(fmt, s), d[np.arange(len(t)), t])
    return pool.divide_by_count(fmt, np.asarray([total(fmt, rows, rng)]), len(t)).reshape(())


def lib_cross_entropy_vjp(fmt, xs, g, params, total, dot, rng):
    x, t = xs
    y = _softmax_rows(fmt, x, total, rng)
    v = fmt.sub(y, loss._onehot(t, x.shape, y))
    k = pool.divide_by_count(fmt, g, x.shape[0])
    return (fmt.mul(v, np.broadcast_to(k, v.shape)), None)


LIBS = {"softmax": (lib_softmax, lib_softmax_vjp), "avg_pool": (lib_avg_pool, lib_avg_pool_vjp),
        "mse_loss": (lib_mse_loss, lib_mse_loss_vjp),
        "cross_entropy": (lib_cross_entropy, lib_cross_entropy_vjp)}


# =============================================================================================
# Instances: data kinds that make evaluation orders differ
# =============================================================================================
def _data(rng, fmt, shape, kind: str):
    """Values of ``fmt``: ``normal``; ``ties`` (few distinct values: equal terms, stagnating
    sums); ``wide`` (magnitudes spread over a large range: exps underflow, tiny leaves meet
    large ones); ``tiny`` (near the bottom of the range: subnormal results, flushing)."""
    z = rng.standard_normal(shape)
    if kind == "ties":
        z = np.round(z * 2)
    elif kind == "wide":
        z = z * 2.0 ** rng.integers(-6, 7, size=shape)
    elif kind == "tiny" and fmt.radix == 2:
        z = z * float(fmt.smallest_normal) * 4
    elif kind == "tiny":
        z = z * 1e-90
    return fmt.round(z * (4 if kind in ("normal", "ties") else 1))


def _instance(rng, fmt, op: str, kind: str, size: int):
    """``(xs, params)`` of ``op`` with about ``size`` terms per internal sum."""
    if op == "softmax":
        shape = (int(rng.integers(1, 4)), size)
        return (_data(rng, fmt, shape, kind),), {"dim": int(rng.choice([-1, 1]))}
    if op == "cross_entropy":
        N = int(rng.integers(1, size // 2 + 2))
        x = _data(rng, fmt, (N, size), kind)
        return (x, rng.integers(0, size, size=N).astype(np.int64)), {}
    if op == "mse_loss":
        shape = (int(rng.integers(1, 4)), size)
        return (_data(rng, fmt, shape, kind), _data(rng, fmt, shape, kind)), {}
    k = int(rng.integers(2, 5))
    s = int(rng.integers(1, k + 1))
    p = int(rng.integers(0, k // 2 + 1))
    L = k + int(rng.integers(0, 1 + size // 4))
    x = _data(rng, fmt, (1, 1 + size // 16, L, L), kind)
    return (x,), {"kernel_size": (k, k), "stride": (s, s), "padding": (p, p)}


def _spec_inputs(rng, xs, rel: float):
    """Exact spec inputs within ``eps = rel·|x̂| + 2^−30`` of the runtime ones (labels exact)."""
    specs, eps = [], []
    for x in xs:
        if np.asarray(x).dtype.kind in "iu":
            specs.append(x)
            eps.append(np.zeros(np.shape(x)))
            continue
        xq = exact_array(x)
        if rel == 0:
            specs.append(Interval.exact(xq))
            eps.append(np.zeros(np.shape(x)))
            continue
        e = exact_array_up(np.abs(xq)) * rel + 2.0 ** -30
        specs.append(Interval.exact(xq + exact_array(e * rng.uniform(-0.5, 0.5, size=xq.shape))))
        eps.append(e)
    return tuple(specs), tuple(eps)


def check_every_library(op: str, fmt_name: str, kind: str, size: int, rel: float, seed: int):
    """The order-free forward and VJP bounds enclose every emulated library's output."""
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(seed)
    P = ops.get(op)
    xs, params = _instance(rng, fmt, op, kind, size)
    specs, eps = _spec_inputs(rng, xs, rel)
    params = {**params, "order": str(rng.choice(["sequential", "pairwise", "blocked:2"])),
              "order_free": True}
    _, bound = P.runtime_and_bound(fmt, xs, eps, **params)
    spec = P.spec(*specs, **params)
    out_shape = np.shape(bound)
    g = fmt.round(rng.standard_normal(out_shape))
    eg = exact_array_up(np.abs(exact_array(g))) * rel
    g_spec = Interval.exact(exact_array(g) + exact_array(eg) / 3)
    _, gbounds = P.vjp_runtime_and_bound(fmt, xs, eps, g, eg, **params)
    gspecs = P.vjp_spec(specs, g_spec, **params)
    forward, backward = LIBS[op]
    for name in SUMS:
        total, dot = SUMS[name], DOTS[name if rng.random() < 0.7 else "fma"]
        out = forward(fmt, xs, params, total, dot, rng)
        ok = spec.encloses(out, bound)
        assert ok.all(), (f"{op} {fmt_name} {kind}: library '{name}' escapes the order-free bound: "
                          f"distance {spec.distance(out)[~ok][:3]} > bound {bound[~ok][:3]}")
        grads = backward(fmt, xs, g, params, total, dot, rng)
        for i, (gr, gs, gb) in enumerate(zip(grads, gspecs, gbounds)):
            if gr is not None:
                ok = gs.encloses(gr, gb)
                assert ok.all(), (f"{op} VJP {fmt_name} {kind}: library '{name}' escapes the "
                                  f"order-free bound of input {i}: distance "
                                  f"{gs.distance(gr)[~ok][:3]} > bound {np.asarray(gb)[~ok][:3]}")


KINDS = ["normal", "ties", "wide", "tiny"]


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("op", OPS)
def test_order_free_bound_encloses_emulated_libraries(op, fmt_name):
    for i, kind in enumerate(KINDS):
        size = 5 if fmt_name == "decimal32" else 12
        check_every_library(op, fmt_name, kind, size, (0.0, 2.0 ** -9)[i % 2],
                            _seed(op, fmt_name, kind))


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", FORMATS + ["float8_e5m2", "binary16:rounding=up",
                                                "bfloat16:rounding=zero", "binary16:subnormals=ftz",
                                                "binary16:subnormals=daz"])
@pytest.mark.parametrize("op", OPS)
def test_order_free_bound_encloses_emulated_libraries_sweep(op, fmt_name):
    for trial in range(12):
        kind = KINDS[trial % len(KINDS)]
        size = (3, 8, 24, 40)[trial % 4] if fmt_name != "decimal32" else (3, 6, 10)[trial % 3]
        check_every_library(op, fmt_name, kind, size, (0.0, 2.0 ** -9, 2.0 ** -4)[trial % 3],
                            _seed(op, fmt_name, trial, "sweep"))


# =============================================================================================
# Regressions: one evaluation's replay bound is not an order-free bound
# =============================================================================================
@pytest.mark.parametrize("op, x, params", [
    ("avg_pool", [[[1.34375, -1.1640625, -0.138671875, 0.002227783203125]]], {"kernel_size": 4}),
    ("softmax", [[-1.5, -1.0, -1.0, -1.0, 3.0, 0.5]], {}),
])
def test_reversed_sum_escapes_the_sequential_replay_bound_not_the_order_free_one(op, x, params):
    """bfloat16: summed in reverse, this window mean (softmax row) lands outside the replay
    bound of the sequential runtime — so an ``order=any`` arithmetic cannot reuse it — and
    inside the order-free bound. Before, these ops had no ``order_free`` keyword and every
    ``order=any`` arithmetic refused them."""
    fmt = formats.get("bfloat16")
    x = fmt.round(np.array(x))
    P = ops.get(op)
    eps = (np.zeros(x.shape),)
    spec = P.spec(Interval.exact(x), **params)
    library = LIBS[op][0](fmt, (x,), params, SUMS["reversed"], None, None)
    _, replay = P.runtime_and_bound(fmt, (x,), eps, **params)
    _, free = P.runtime_and_bound(fmt, (x,), eps, order_free=True, **params)
    assert not spec.encloses(library, replay).all()
    assert spec.encloses(library, free).all()


def test_a_rounding_after_the_sum_is_bounded_for_every_evaluation():
    """bfloat16 with flushing: the last probability is ``RN(ê/ŝ) = b_min`` after the sequential
    sum and flushes to 0 after the reversed one (``ŝ'`` an ulp larger): an error of about
    ``b_min``. Neither the sequential replay bound nor an order-free sum bound followed by the
    division rule with the *runtime* quotient's rounding term (``2^−134``) covers it; the
    order-free rule bounds the division's rounding for every quotient it may round
    (``pool.any_rounding``: ``γ_1·q + τ``, ``τ = b_min``)."""
    fmt = formats.get("bfloat16:subnormals=ftz+daz")
    P = ops.get("softmax")
    x = fmt.round(np.array([[0.0, -3.21875, -3.21875, -3.765625, -1.578125, -3.71875, -5.875,
                             -2.78125, -4.875, -87.0]]))
    eps = (np.zeros(x.shape),)
    spec = P.spec(Interval.exact(x))
    library = lib_softmax(fmt, (x,), {}, SUMS["reversed"], None, None)
    assert P.runtime(fmt, x)[0, -1] == float(fmt.smallest_normal) and library[0, -1] == 0
    S = softmax.stable_exp_sum_error(fmt, x, eps[0], "sequential", order_free=True)
    _, naive = div_error(fmt, S.e, S.eta, np.broadcast_to(S.s[:, None], x.shape),
                         np.broadcast_to(S.sigma[:, None], x.shape), floor=1.0)
    _, replay = P.runtime_and_bound(fmt, (x,), eps)
    _, free = P.runtime_and_bound(fmt, (x,), eps, order_free=True)
    assert not spec.encloses(library, replay).all()
    assert not spec.encloses(library, naive).all()
    assert spec.encloses(library, free).all()


def test_order_free_must_be_a_bool_in_every_rule():
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(0)
    for op in OPS:
        P = ops.get(op)
        xs, params = _instance(rng, fmt, op, "normal", 4)
        eps = tuple(np.zeros(np.shape(x)) for x in xs)
        g = fmt.round(np.ones(np.shape(P.runtime(fmt, *xs, **params))))
        calls = [lambda p: P.runtime(fmt, *xs, **p), lambda p: P.bound(fmt, xs, eps, **p),
                 lambda p: P.vjp_runtime(fmt, xs, g, **p),
                 lambda p: P.vjp_bound(fmt, xs, eps, g, np.zeros(np.shape(g)), **p)]
        for call in calls:
            with pytest.raises(ValueError, match="order_free"):
                call({**params, "order_free": "yes"})


# =============================================================================================
# The deployment presets (order=any): compute format, any order, one rounding to storage
# =============================================================================================
PRESETS = ["torch-cpu-bfloat16", "torch-cpu-float32"]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("op", OPS)
def test_preset_bounds_enclose_the_spec_and_every_library(op, preset):
    """``P.runtime_and_bound(A, …)`` and ``P.vjp_runtime_and_bound(A, …)`` work for the
    ``order=any`` presets (they refused these ops before) and enclose the exact spec, and so
    does every emulated library computing the op in the compute format, its sums in any way,
    rounded once to storage."""
    A = arith.get(preset)
    S, W = A.storage, A.compute
    P = ops.get(op)
    rng = np.random.default_rng(_seed(op, preset))
    for i, kind in enumerate(("normal", "ties", "wide")):
        xs, params = _instance(rng, S, op, kind, 10)
        specs, eps = _spec_inputs(rng, xs, (0.0, 2.0 ** -9)[i % 2])
        y, bound = P.runtime_and_bound(A, xs, eps, **params)
        spec = P.spec(*specs, **params)
        g = S.round(rng.standard_normal(np.shape(y)))
        eg = np.zeros(np.shape(g))
        grads, gbounds = P.vjp_runtime_and_bound(A, xs, eps, g, eg, **params)
        gspecs = P.vjp_spec(specs, Interval.exact(exact_array(g)), **params)
        forward, backward = LIBS[op]
        for name in ("sequential", "pairwise", "tree", "exact"):
            outs = [y, S.round(forward(W, xs, params, SUMS[name], DOTS[name], rng))]
            for out in outs:
                assert spec.encloses(out, bound).all(), (op, preset, kind, name)
            libs = [S.round(gr) if gr is not None else None
                    for gr in backward(W, xs, g, params, SUMS[name], DOTS[name], rng)]
            for gr_set in (grads, libs):
                for gr, gs, gb in zip(gr_set, gspecs, gbounds):
                    if gr is not None:
                        assert gs.encloses(gr, gb).all(), (op, preset, kind, name, "vjp")


# =============================================================================================
# PyTorch's CPU kernels against the presets
# =============================================================================================
TORCH_DTYPES = {"bfloat16": "torch-cpu-bfloat16", "float16": "torch-cpu-float16",
                "float32": "torch-cpu-float32"}


def _torch_forward(op: str, xs, params, dtype_name: str) -> np.ndarray:
    """PyTorch's CPU output of ``op`` on storage values (float64 out)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    dtype = getattr(torch, dtype_name)

    def tensor(x):
        return torch.tensor(np.asarray(x, dtype=np.float64)).to(dtype)
    if op == "softmax":
        out = torch.softmax(tensor(xs[0]), dim=params.get("dim", -1))
    elif op == "avg_pool":
        out = F.avg_pool2d(tensor(xs[0]), params["kernel_size"], params["stride"],
                           params["padding"])
    elif op == "mse_loss":
        out = F.mse_loss(tensor(xs[0]), tensor(xs[1]))
    else:
        out = F.cross_entropy(tensor(xs[0]), torch.tensor(xs[1]))
    return out.to(torch.float64).numpy()


def check_torch(op: str, dtype_name: str, kinds, sizes, seed: int) -> None:
    """PyTorch's output lies within the preset's bound of the exact spec (rational check)."""
    A = arith.get(TORCH_DTYPES[dtype_name])
    P = ops.get(op)
    rng = np.random.default_rng(seed)
    for kind in kinds:
        for size in sizes:
            xs, params = _instance(rng, A.storage, op, kind, size)
            eps = tuple(np.zeros(np.shape(x)) for x in xs)
            _, bound = P.runtime_and_bound(A, xs, eps, **params)
            spec = P.spec(*(Interval.exact(exact_array(x)) if np.asarray(x).dtype.kind == "f"
                            else x for x in xs), **params)
            out = _torch_forward(op, xs, params, dtype_name)
            ok = spec.encloses(out, bound)
            assert ok.all(), (f"PyTorch {op} ({dtype_name}, {kind}, {size}) escapes the bound of "
                              f"{A}: distance {spec.distance(out)[~ok][:3]} > bound "
                              f"{np.asarray(bound)[~ok][:3]}")


TORCH_CASES = [(op, d) for op in ("softmax", "avg_pool") for d in TORCH_DTYPES] + \
    [("mse_loss", "float32"), ("cross_entropy", "float32")]


@pytest.mark.parametrize("op, dtype_name", TORCH_CASES)
def test_torch_cpu_output_within_preset_bound(op, dtype_name):
    check_torch(op, dtype_name, ("normal", "ties", "wide"), (5, 40), _seed(op, dtype_name))


@pytest.mark.slow
@pytest.mark.parametrize("op, dtype_name", TORCH_CASES)
def test_torch_cpu_output_within_preset_bound_sweep(op, dtype_name):
    for seed in range(8):
        check_torch(op, dtype_name, KINDS, (3, 17, 64, 300), _seed(op, dtype_name, seed))


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_torch_half_precision_mse_loss_is_three_storage_ops(dtype_name):
    """Why PyTorch's bfloat16/float16 ``F.mse_loss`` is *not* the preset's single op (computed
    in binary32, rounded once) and escapes its bound: ``mse_kernel`` evaluates
    ``(a − b)²`` with ``Vectorized<scalar_t>`` operations, each rounding to storage, then
    ``mean``. As ``sub``, ``mul`` and ``mean`` nodes of the preset it lies within the composed
    bound (and the emulation ``RN_S(Σ RN_S(RN_S(x − t)²)/n)`` is bit-exact on these data)."""
    A = arith.get(TORCH_DTYPES[dtype_name])
    S = A.storage
    rng = np.random.default_rng(_seed("mse-composite", dtype_name))
    for kind in ("normal", "ties", "wide"):
        (x, t), _ = _instance(rng, S, "mse_loss", kind, 12)
        zero = np.zeros(x.shape)
        d, ed = ops.get("sub").runtime_and_bound(A, (x, t), (zero, zero))
        q, eq = ops.get("mul").runtime_and_bound(A, (d, d), (ed, ed))
        _, bound = ops.get("mean").runtime_and_bound(A, (q,), (eq,), axis=None)
        spec = ops.get("mse_loss").spec(Interval.exact(exact_array(x)), Interval.exact(exact_array(t)))
        out = _torch_forward("mse_loss", (x, t), {}, dtype_name)
        assert spec.encloses(out, bound)
        assert out == _value(S, sum((to_exact(v) for v in q.reshape(-1)), mpq(0)) / q.size)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_torch_half_precision_cross_entropy_is_log_softmax_then_storage_sums(dtype_name):
    """Why PyTorch's bfloat16/float16 ``F.cross_entropy`` is *not* the preset's single op and
    escapes its bound: it is ``nll_loss(log_softmax(x))`` with the log-probabilities stored in
    the storage format and ``nll_loss_out_frame`` summing the picked ones with ``scalar_t``
    (storage) partial sums — its cascade leaves row 0 for last — then dividing by ``N`` in
    storage: bit-exact here. (float16's ``log_softmax`` also rounds its intermediate steps to
    storage; bfloat16's computes in binary32 and rounds once, so each stored bfloat16 row is
    within the preset's bound of a one-row cross_entropy.)"""
    torch = pytest.importorskip("torch")
    A = arith.get(TORCH_DTYPES[dtype_name])
    S, P = A.storage, ops.get("cross_entropy")
    rng = np.random.default_rng(_seed("ce-composite", dtype_name))
    for kind in ("normal", "ties", "wide"):
        xs, _ = _instance(rng, S, "cross_entropy", kind, 12)
        x, t = xs
        logp = torch.log_softmax(torch.tensor(x).to(getattr(torch, dtype_name)), -1)
        rows = -np.take_along_axis(logp.to(torch.float64).numpy(), t[:, None], 1)[:, 0]
        total = _add(S, accumulate(S, rows[1:], 0.0)[0][()] if len(rows) > 1 else 0.0, rows[0])
        library = S.div(np.asarray([total]), np.asarray([float(len(rows))]))[0]
        assert library == _torch_forward("cross_entropy", xs, {}, dtype_name)
        if dtype_name == "bfloat16":
            for n in range(len(t)):
                one = (x[n:n + 1], t[n:n + 1])
                _, b = P.runtime_and_bound(A, one, (np.zeros((1, x.shape[1])), np.zeros(1)))
                assert P.spec(Interval.exact(exact_array(one[0])), one[1]).encloses(rows[n], b)
