"""Real library outputs against nfbound's arithmetic presets (exact rational checks).

PyTorch CPU ``matmul``, ``F.linear``, ``F.conv1d/2d/3d`` and ``F.conv_transpose2d`` in
float32, bfloat16 and float16 — with oneDNN on (PyTorch's default here: this machine has
AVX512-BF16 and AMX; oneDNN takes bf16 matmuls with ``m·n·k > 16³``) and off — and NumPy's
float32 ``matmul`` (OpenBLAS) are run on storage values, and their outputs must lie within the
bound of the matching preset (``torch-cpu-*``; NumPy: binary32 with gradual underflow, any
order) around the exact spec, checked in rationals. Data: normal, tiny (bf16 entries ``2^−64``
whose products ``2^−128`` are binary32 subnormals: oneDNN flushes them), storage subnormals,
cancellation-heavy (rows of ``t, −t`` pairs), and wide-range (exponents spread over ±20).
The default run checks small instances; ``slow`` checks more and larger ones.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import nfbound.ops as ops
from nfbound import arith
from nfbound.ops.interval import Interval

torch = pytest.importorskip("torch")
from nfbound.models import torch_ops  # noqa: E402  (after the torch check)

pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")

DTYPES = {"bfloat16": (torch.bfloat16, "torch-cpu-bfloat16"),
          "float16": (torch.float16, "torch-cpu-float16"),
          "float32": (torch.float32, "torch-cpu-float32")}
DATA = ("normal", "tiny", "subnormal", "cancellation", "wide")


def _data(rng, shape, kind: str, A: arith.Arithmetic) -> np.ndarray:
    """Storage values of ``A`` of the given kind (float64 array)."""
    S = A.storage
    x = rng.standard_normal(shape)
    if kind == "tiny":
        x = x * 2.0 ** -64 if S.precision <= 8 else x * 2.0 ** -(-S.emin - S.precision - 4)
    elif kind == "subnormal":
        x = rng.integers(-2 ** (S.precision - 1), 2 ** (S.precision - 1), size=shape) * \
            float(S.smallest_subnormal)
    elif kind == "cancellation":
        flat = x.reshape(-1, shape[-1])
        half = shape[-1] // 2
        flat[:, half:2 * half] = -flat[:, :half] * (1 + rng.integers(0, 2, size=(flat.shape[0], half)) * 2.0 ** -6)
        x = flat.reshape(shape)
    elif kind == "wide":   # exponents spread over a quarter of the range each way
        spread = min(20, int(S.max_finite).bit_length() // 4)
        x = x * 2.0 ** rng.integers(-spread, spread + 1, size=shape)
    return np.asarray(S.round(x), dtype=np.float64)


def _torch_run(op: str, xs, params: dict, dtype, mkldnn: bool) -> np.ndarray:
    """PyTorch's output of ``op`` (:mod:`nfbound.models.torch_ops`) with oneDNN on or off."""
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        return torch_ops.run(op, xs, params, dtype)


def _check(op: str, preset: str, xs, params: dict, observed: np.ndarray) -> None:
    """``observed`` (a library output) lies within the preset's bound around the exact spec."""
    A = arith.get(preset)
    P = ops.get(op)
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    _, bound = P.runtime_and_bound(A, xs, eps, **params)
    spec = P.spec(*(Interval.exact(x) for x in xs), **params)
    ok = spec.encloses(observed, bound)
    assert ok.all(), (f"{op} {preset}: library output escapes the bound at "
                      f"{np.flatnonzero(~ok.reshape(-1))[:3]}: distance "
                      f"{spec.distance(observed)[~ok][:3]} > bound {np.asarray(bound)[~ok][:3]}")


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _run_matmul(dtype_name, kind, mkldnn, m, n, k, seed=0):
    dtype, preset = DTYPES[dtype_name]
    rng = np.random.default_rng(_seed("matmul", dtype_name, kind, mkldnn, m, n, k, seed))
    A = arith.get(preset)
    X, Y = _data(rng, (m, n), kind, A), _data(rng, (k, n), kind, A).T.copy()
    _check("matmul", preset, (X, Y), {}, _torch_run("matmul", (X, Y), {}, dtype, mkldnn))


def _run_linear(dtype_name, kind, mkldnn, batch, n_in, n_out, seed=0):
    dtype, preset = DTYPES[dtype_name]
    rng = np.random.default_rng(_seed("linear", dtype_name, kind, mkldnn, batch, n_in, n_out, seed))
    A = arith.get(preset)
    x, W = _data(rng, (batch, n_in), kind, A), _data(rng, (n_out, n_in), kind, A)
    b = _data(rng, (n_out,), "normal", A)
    _check("linear", preset, (x, W, b), {}, _torch_run("linear", (x, W, b), {}, dtype, mkldnn))


def _run_conv(dtype_name, kind, mkldnn, d, transpose=False, c_in=4, c_out=6, size=6, ksz=3,
              stride=1, padding=1, seed=0):
    dtype, preset = DTYPES[dtype_name]
    rng = np.random.default_rng(_seed("conv", dtype_name, kind, mkldnn, d, transpose, c_in, size, seed))
    A = arith.get(preset)
    x = _data(rng, (2, c_in) + (size,) * d, kind, A)
    wshape = ((c_in, c_out) if transpose else (c_out, c_in)) + (ksz,) * d
    w = _data(rng, wshape, kind, A)
    b = _data(rng, (c_out,), "normal", A)
    op = "conv_transpose" if transpose else "conv"
    params = {"stride": stride, "padding": padding}
    _check(op, preset, (x, w, b), params, _torch_run(op, (x, w, b), params, dtype, mkldnn))


@pytest.mark.parametrize("mkldnn", [True, False])
@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_matmul_within_preset_bound(dtype_name, kind, mkldnn):
    _run_matmul(dtype_name, kind, mkldnn, 16, 32, 16)      # m·n·k = 8192 > 16³: oneDNN's path
    _run_matmul(dtype_name, kind, mkldnn, 3, 7, 5)         # below the threshold


@pytest.mark.parametrize("mkldnn", [True, False])
@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_linear_within_preset_bound(dtype_name, kind, mkldnn):
    _run_linear(dtype_name, kind, mkldnn, 8, 40, 24)


@pytest.mark.parametrize("mkldnn", [True, False])
@pytest.mark.parametrize("kind", ["normal", "tiny", "subnormal"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("d", [1, 2, 3])
def test_torch_conv_within_preset_bound(d, dtype_name, kind, mkldnn):
    _run_conv(dtype_name, kind, mkldnn, d, size=5 if d == 3 else 7)


@pytest.mark.parametrize("mkldnn", [True, False])
@pytest.mark.parametrize("kind", ["normal", "tiny"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_conv_transpose2d_within_preset_bound(dtype_name, kind, mkldnn):
    _run_conv(dtype_name, kind, mkldnn, 2, transpose=True, stride=2, padding=1)


def test_audit_17x17_bf16_matmul_of_tiny_entries():
    """oneDNN returns 0 for a 17×17 bf16 matmul of entries ``2^−64`` (exact: ``17·2^−128``):
    binary32 subnormal products are flushed. The preset's bound covers it."""
    X = np.full((17, 17), 2.0 ** -64)
    out = _torch_run("matmul", (X, X), {}, torch.bfloat16, mkldnn=True)
    _check("matmul", "torch-cpu-bfloat16", (X, X), {}, out)


@pytest.mark.parametrize("kind", DATA)
def test_numpy_float32_matmul_within_gradual_any_order_bound(kind):
    A = arith.get("store=binary32,order=any")
    rng = np.random.default_rng(_seed("numpy", kind))
    X, Y = _data(rng, (24, 48), kind, A), _data(rng, (48, 20), kind, A)
    out = np.matmul(X.astype(np.float32), Y.astype(np.float32)).astype(np.float64)
    _check("matmul", A, (X, Y), {}, out)


@pytest.mark.slow
@pytest.mark.parametrize("mkldnn", [True, False])
@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_matmul_within_preset_bound_sweep(dtype_name, kind, mkldnn):
    for seed, (m, n, k) in enumerate([(64, 96, 48), (33, 257, 17), (1, 300, 1), (40, 40, 40)]):
        _run_matmul(dtype_name, kind, mkldnn, m, n, k, seed)


@pytest.mark.slow
@pytest.mark.parametrize("mkldnn", [True, False])
@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_conv2d_within_preset_bound_sweep(dtype_name, kind, mkldnn):
    for seed in range(2):
        _run_conv(dtype_name, kind, mkldnn, 2, c_in=16, c_out=16, size=12, seed=seed)
        _run_conv(dtype_name, kind, mkldnn, 2, c_in=8, c_out=8, size=10, stride=2, seed=seed)


def _check_vjp(op, preset, xs, params, g, observed) -> None:
    A = arith.get(preset)
    P = ops.get(op)
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    _, bounds = P.vjp_runtime_and_bound(A, xs, eps, g, np.zeros(np.shape(g)), **params)
    specs = P.vjp_spec(tuple(Interval.exact(x) for x in xs), Interval.exact(g), **params)
    for i, (s, b, o) in enumerate(zip(specs, bounds, observed)):
        ok = s.encloses(o, b)
        assert ok.all(), (f"{op} VJP of input {i}, {preset}: PyTorch's gradient escapes the "
                          f"bound: distance {s.distance(o)[~ok][:3]} > {np.asarray(b)[~ok][:3]}")


@pytest.mark.parametrize("mkldnn", [True, False])
@pytest.mark.parametrize("kind", ["normal", "tiny", "cancellation"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("op", ["matmul", "linear", "conv", "conv_transpose"])
def test_torch_gradients_within_preset_bound(op, dtype_name, kind, mkldnn):
    """PyTorch autograd's input, weight and bias gradients against the preset's VJP bounds."""
    dtype, preset = DTYPES[dtype_name]
    A = arith.get(preset)
    rng = np.random.default_rng(_seed("vjp", op, dtype_name, kind, mkldnn))
    params = {}
    if op == "matmul":
        xs = (_data(rng, (16, 32), kind, A), _data(rng, (32, 12), kind, A))
    elif op == "linear":
        xs = (_data(rng, (8, 40), kind, A), _data(rng, (24, 40), kind, A),
              _data(rng, (24,), "normal", A))
    else:
        transpose = op == "conv_transpose"
        params = {"stride": 2 if transpose else 1, "padding": 1}
        wshape = (4, 6, 3, 3) if transpose else (6, 4, 3, 3)
        xs = (_data(rng, (2, 4, 7, 7), kind, A), _data(rng, wshape, kind, A),
              _data(rng, (6,), "normal", A))
    out_shape = np.shape(ops.get(op).runtime(A, *xs, **params))
    g = _data(rng, out_shape, "normal", A)
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        observed = torch_ops.run_vjp(op, xs, params, g, dtype)
    _check_vjp(op, preset, xs, params, g, observed)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("op", ["exp", "tanh", "sigmoid", "softplus", "sqrt"])
def test_torch_elementwise_within_preset_bound(op, dtype_name):
    """PyTorch's elementwise functions are not correctly rounded in binary32 (SLEEF-based
    kernels; sigmoid measured up to 2.4 ulps): the presets' ``libm_ulps`` covers them. On
    correctly rounded ``libm_ulps=0`` bounds, binary32 sigmoid and softplus escape."""
    dtype, preset = DTYPES[dtype_name]
    A = arith.get(preset)
    rng = np.random.default_rng(_seed("elementwise", op, dtype_name))
    x = A.storage.round(rng.standard_normal(3000) * 4)
    if op == "sqrt":
        x = np.abs(x)
    _check(op, preset, (x,), {}, torch_ops.run(op, (x,), {}, dtype))


def test_correctly_rounded_bounds_miss_torch_float32_sigmoid():
    """The reason for ``libm_ulps``: with 0 (correct rounding assumed) PyTorch escapes."""
    A = arith.get("torch-cpu-float32:libm_ulps=0")
    rng = np.random.default_rng(1)
    x = A.storage.round(rng.standard_normal(3000) * 4)
    out = torch_ops.run("sigmoid", (x,), {}, torch.float32)
    P = ops.get("sigmoid")
    _, bound = P.runtime_and_bound(A, (x,), (np.zeros(x.shape),))
    assert not P.spec(Interval.exact(x)).encloses(out, bound).all()
