"""Tightness of the arithmetic presets on real library outputs: bound ÷ true error.

PyTorch CPU ``matmul`` (16³, 64³, 256³, 64×4096×64), ``F.linear``, ``F.conv1d/2d/3d`` and
``F.conv_transpose2d`` in float32, bfloat16 and float16, with oneDNN on and off, and NumPy's
float32 ``matmul`` (OpenBLAS), run on storage values of three kinds:

* ``normal``: N(0, 1) entries (biases scaled by 0.1);
* ``cancel``: along a reduction axis (the input channels for the convs), the first operand
  repeats its first half
  (``x_{j+h} = x_j``) and the second negates it up to a factor ``1 + {0, 1}·2^−6``
  (``w_{j+h} = −w_j(1 + δ_j)``), so every output is ``−Σ δ_j x_j w_j``, small against
  ``Σ |x_j w_j|`` (biases scaled by ``2^−6``);
* ``wide``: N(0, 1) times ``2^U``, ``U`` uniform over ±20 (±4 for float16: a quarter of its
  range).

The true error ``|ŷ − y|`` of every output entry is exact: ``y`` is the exact spec, the
library's rational spec (:attr:`Primitive.spec`) for the convs and, for ``matmul`` and
``linear``, an exact integer product of the scaled mantissas (:func:`exact_matmul`; checked
against the rational spec at 64³ in every run). Reported per row, over the entries with a
nonzero true error, the median / 90th percentile / max of ``bound ÷ true error`` for

* ``preset``: the bound of the matching arithmetic (``torch-cpu-float32/bfloat16/float16``;
  NumPy: ``store=binary32,order=any``, gradual underflow), which must hold for the library's
  output — ``viol`` counts the entries where it does not (exact rational test, must be 0);
* ``NF``: the old order-free bound of TorchLean's semantics in the storage format
  (``runtime_and_bound(formats.get(storage), xs, eps, order_free=True)``, every step rounded to
  storage) for the same output, shown for scale only: it is not a bound for a binary32
  accumulator, but it is the bound nfbound offered before arithmetics (``inf`` once
  ``(n + 1)·u ≥ 1``: bfloat16 from ``n = 255``);

``exact``, the share of entries whose true error is 0 (left out of the ratios), and ``acc``,
the median share of the preset's bound that is the binary32 accumulator's order-free error
(:func:`accumulator_share`; the rest is the conversion to storage). Targets (median):
``torch-cpu-bfloat16`` ≤ 10×, ``torch-cpu-float32`` ≤ 20× on matmul, linear, conv. A second
table (:func:`growth`) shows how the float32 libraries' error grows with the reduction length
against the ``γ_{n+1}·Σ|t|`` of the bound.

    python benchmarks/tightness_hardware.py [--seed 0] [--only conv] [--dtypes bfloat16]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from gmpy2 import mpq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

import nfbound.ops as ops  # noqa: E402
from nfbound import arith, formats  # noqa: E402
from nfbound.formats import Format  # noqa: E402
from nfbound.ops.interval import Interval  # noqa: E402

F = torch.nn.functional
warnings.filterwarnings("ignore", "TF32 acceleration on top of oneDNN")
DTYPES = {"float32": (torch.float32, "torch-cpu-float32"),
          "bfloat16": (torch.bfloat16, "torch-cpu-bfloat16"),
          "float16": (torch.float16, "torch-cpu-float16")}
NUMPY_PRESET = "store=binary32,order=any"
KINDS = ("normal", "cancel", "wide")
TARGETS = {"torch-cpu-bfloat16": 10.0, "torch-cpu-float32": 20.0}


# -- exact spec of a matrix product ---------------------------------------------------------------
def scaled_integers(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``(M, s)`` with ``a = M·2^−s`` exactly: ``M`` an object array of Python integers
    (``frexp``: ``a = m·2^e`` with ``m·2^53`` an integer)."""
    m, e = np.frexp(np.asarray(a, dtype=np.float64))
    mant = (m * 2.0 ** 53).astype(np.int64)
    e = e.astype(np.int64) - 53
    nonzero = mant != 0
    s = -int(e[nonzero].min()) if nonzero.any() else 0
    ints = [int(v) << int(k + s) if v else 0 for v, k in zip(mant.ravel(), e.ravel())]
    return np.array(ints, dtype=object).reshape(a.shape), s


def _limbs(M: np.ndarray, bits: int) -> list[np.ndarray]:
    """int64 arrays ``M_i`` with ``M = Σ_i M_i·2^(i·bits)`` and ``|M_i| < 2^bits``
    (each limb carries the sign of ``M``)."""
    sign = np.sign(M)
    mag = np.abs(M)
    width = max((int(v).bit_length() for v in mag.ravel()), default=0)
    mask = (1 << bits) - 1
    return [(((mag >> (i * bits)) & mask) * sign).astype(np.int64)
            for i in range(max(1, -(-width // bits)))]


def exact_matmul(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``X @ Y`` of two float64 matrices, exactly (object array of ``mpq``).

    The scaled mantissas are split into signed limbs of ``L = ⌊(63 − bitlen(n))/2⌋`` bits and
    multiplied in int64: every partial sum of a limb product is at most
    ``n·(2^L − 1)² < 2^63`` in magnitude, so the int64 matmul is exact whatever its order;
    the limb products are recombined in Python integers."""
    n = X.shape[1]
    bits = (63 - n.bit_length()) // 2
    (MX, sx), (MY, sy) = scaled_integers(X), scaled_integers(Y)
    Z = np.zeros((X.shape[0], Y.shape[1]), dtype=np.int64).astype(object)
    for i, xi in enumerate(_limbs(MX, bits)):
        for j, yj in enumerate(_limbs(MY, bits)):
            Z = Z + (np.matmul(xi, yj).astype(object) << ((i + j) * bits))
    return Z * (mpq(2) ** -(sx + sy))


def exact_spec(op: str, xs: tuple, params: dict) -> Interval:
    """The exact spec of ``op`` on exact inputs: :func:`exact_matmul` for matmul and linear,
    the library's rational spec otherwise."""
    if op == "matmul":
        return Interval.exact(exact_matmul(*xs))
    if op == "linear":
        x, w, b = xs
        return Interval.exact(exact_matmul(x, w.T) + Interval.exact(b).lo)
    return ops.get(op).spec(*(Interval.exact(x) for x in xs), **params)


# -- data ----------------------------------------------------------------------------------------
def _pairs(a: np.ndarray, axis: int, rng, negate: bool) -> np.ndarray:
    """``a`` with the second half along ``axis`` a copy of the first (``negate``: times
    ``−(1 + {0, 1}·2^−6)``)."""
    a = np.moveaxis(a.copy(), axis, 0)
    h = a.shape[0] // 2
    a[h:2 * h] = a[:h]
    if negate:
        a[h:2 * h] *= -(1 + rng.integers(0, 2, size=a[:h].shape) * 2.0 ** -6)
    return np.moveaxis(a, 0, axis)


def operands(rng, case: "Case", kind: str, S: Format) -> tuple[np.ndarray, ...]:
    """Storage values ``(x, w[, b])`` of ``case`` of one data kind (float64 arrays)."""
    x, w = rng.standard_normal(case.x_shape), rng.standard_normal(case.w_shape)
    b = None if case.b_shape is None else rng.standard_normal(case.b_shape) * 0.1
    if kind == "cancel":
        x = _pairs(x, case.axes[0], rng, negate=False)
        w = _pairs(w, case.axes[1], rng, negate=True)
        b = None if b is None else b * 2.0 ** -6 / 0.1
    elif kind == "wide":
        spread = min(20, int(S.max_finite).bit_length() // 4)
        x, w = (v * 2.0 ** rng.integers(-spread, spread + 1, size=v.shape) for v in (x, w))
    return tuple(np.asarray(S.round(v), dtype=np.float64) for v in (x, w, b) if v is not None)


# -- cases ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One op at one size: operand shapes, the reduction axis of ``x`` and of ``w``, the
    nfbound primitive and its parameters, and the PyTorch function."""
    label: str
    op: str
    x_shape: tuple
    w_shape: tuple
    b_shape: tuple | None
    axes: tuple[int, int]
    torch_fn: Callable
    params: dict = field(default_factory=dict)


def _conv(d: int, n: int, c: int, co: int, size: int) -> Case:
    f = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    return Case(f"conv{d}d {n}x{c}x{size}^{d}>{co}", "conv", (n, c) + (size,) * d,
                (co, c) + (3,) * d, (co,), (1, 1),
                lambda x, w, b, **p: f(x, w, b, **p), {"stride": 1, "padding": 1})


def _matmul(m: int, n: int, k: int) -> Case:
    return Case(f"matmul {m}x{n}x{k}", "matmul", (m, n), (n, k), None, (1, 0),
                lambda x, w: torch.matmul(x, w))


CASES = [
    _matmul(16, 16, 16), _matmul(64, 64, 64), _matmul(256, 256, 256), _matmul(64, 4096, 64),
    Case("linear 32x256>128", "linear", (32, 256), (128, 256), (128,), (1, 1),
         lambda x, w, b: F.linear(x, w, b)),
    _conv(1, 4, 32, 32, 64),
    _conv(2, 2, 16, 16, 16),
    _conv(2, 1, 64, 64, 16),
    _conv(3, 2, 8, 16, 8),
    Case("convT2d 2x32x8^2>16 s2", "conv_transpose", (2, 32, 8, 8), (32, 16, 3, 3), (16,),
         (1, 0), lambda x, w, b, **p: F.conv_transpose2d(x, w, b, **p),
         {"stride": 2, "padding": 1}),
]


# -- measurements --------------------------------------------------------------------------------
def _bound(op: str, A, xs: tuple, params: dict, **extra) -> np.ndarray:
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    return np.asarray(ops.get(op).runtime_and_bound(A, xs, eps, **params, **extra)[1],
                      dtype=np.float64)


def ratios(dist: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, int]:
    """``bound ÷ error`` (rounded to float64) over the entries with a nonzero exact error
    ``dist`` (flat object array), and the number of entries with ``error > bound`` (exact)."""
    r, bad = [], 0
    for d, b in zip(dist, bound.reshape(-1)):
        q = mpq(float(b)) if np.isfinite(b) else np.inf
        bad += d > q
        if d != 0:
            r.append(float(q / d) if np.isfinite(b) else np.inf)
    return np.array(r), bad


def _stats(r: np.ndarray) -> tuple[float, float, float]:
    if r.size == 0:
        return (np.nan,) * 3
    return (float(np.median(r)), float(np.percentile(r, 90, method="inverted_cdf")),
            float(r.max()))


def _library_outputs(case: Case, dtype, xs: tuple, with_numpy: bool) -> dict[str, np.ndarray]:
    """The library outputs (float64) per library: PyTorch with oneDNN on and off; NumPy."""
    ts = [torch.tensor(x, dtype=torch.float64).to(dtype) for x in xs]
    for t, x in zip(ts, xs):
        assert np.array_equal(t.to(torch.float64).numpy(), x), "storage values convert exactly"
    out = {}
    for name, enabled in (("oneDNN", True), ("native", False)):
        with torch.backends.mkldnn.flags(enabled=enabled):
            out[name] = case.torch_fn(*ts, **case.params).to(torch.float64).numpy()
    if with_numpy:
        out["numpy"] = np.matmul(*(x.astype(np.float32) for x in xs)).astype(np.float64)
    return out


def rows(case: Case, dtype_name: str, kind: str, rng) -> list[tuple]:
    dtype, preset = DTYPES[dtype_name]
    A = arith.get(preset)
    S = A.storage
    xs = operands(rng, case, kind, S)
    spec = exact_spec(case.op, xs, case.params)
    nf_bound = _bound(case.op, S, xs, case.params, order_free=True)
    with_numpy = case.op == "matmul" and dtype_name == "float32"
    presets = {"oneDNN": preset, "native": preset, "numpy": NUMPY_PRESET}
    bounds = {p: _bound(case.op, arith.get(p), xs, case.params) for p in set(presets.values())}
    share = {p: accumulator_share(case, arith.get(p), xs, b) for p, b in bounds.items()}
    out = []
    for lib, y in _library_outputs(case, dtype, xs, with_numpy).items():
        dist = spec.distance(y).reshape(-1)
        r_pre, viol = ratios(dist, bounds[presets[lib]])
        r_nf, _ = ratios(dist, nf_bound)
        exact = float(np.mean([d == 0 for d in dist]))
        out.append((case.label, dtype_name, kind, lib, presets[lib], exact, viol,
                    share[presets[lib]], *_stats(r_pre), *_stats(r_nf)))
    return out


def accumulator_share(case: Case, A: arith.Arithmetic, xs: tuple, bound: np.ndarray) -> float:
    """Median over entries of ``e_W ÷ bound``: the share of the preset's bound that is the
    accumulator's order-free error ``e_W`` (about ``γ_{n+1}·Σ|t|`` in binary32); the rest is
    the conversion to storage (``u_S·M + τ_S``). 1 when storage holds the accumulator
    (binary32); small where the rule charges storage roundings (``storage_sums``)."""
    if arith.contains(A.storage, A.accumulator):
        return 1.0
    e_w = _bound(case.op, A.accumulator, xs, case.params, order_free=True)
    ok = np.isfinite(bound) & (bound > 0)
    return float(np.median(e_w[ok] / bound[ok])) if ok.any() else np.nan


def growth(rng, lengths=(16, 64, 256, 1024, 4096), m: int = 32) -> None:
    """The float32 library error against the order-free bound as ``n`` grows: ``m×n×m``
    matmuls of N(0, 1) binary32 data, medians over entries of ``error ÷ (u·Σ|t|)`` for
    PyTorch, NumPy and nfbound's binary32 runtime (sequential order), and of
    ``bound ÷ (u·Σ|t|)`` (≈ ``n + 1``: ``γ_{n+1}``); ``Σ|t|`` in binary64 (display only)."""
    S = formats.get("binary32")
    A = arith.get("torch-cpu-float32")
    print(f"\nfloat32 matmul {m}xnx{m}, N(0,1): median of error ÷ (u·Σ|t|), u = 2^-24, and of "
          "the torch-cpu-float32 bound ÷ (u·Σ|t|)")
    print(f"{'n':>6}{'torch':>9}{'numpy':>9}{'seq':>9}{'bound':>9}{'bound÷err (torch)':>19}")
    for n in lengths:
        X, Y = S.round(rng.standard_normal((m, n))), S.round(rng.standard_normal((n, m)))
        spec = Interval.exact(exact_matmul(X, Y))
        unit = S.u * (np.abs(X) @ np.abs(Y))
        outs = {"torch": torch.matmul(*(torch.tensor(v, dtype=torch.float32) for v in (X, Y))
                                      ).to(torch.float64).numpy(),
                "numpy": (X.astype(np.float32) @ Y.astype(np.float32)).astype(np.float64),
                "seq": ops.get("matmul").runtime(S, X, Y)}
        errs = {k: np.array([float(d) for d in spec.distance(y).reshape(-1)]).reshape(unit.shape)
                for k, y in outs.items()}
        bound = _bound("matmul", A, (X, Y), {})
        print(f"{n:>6}" + "".join(_fmt(np.median(e / unit)) for e in errs.values())
              + _fmt(np.median(bound / unit)) + f"{np.median(bound / errs['torch']):>19.3g}")


def check_exact_matmul(rng) -> None:
    """:func:`exact_matmul` equals the library's rational spec (64³, wide-range binary32)."""
    X, Y = (formats.get("binary32").round(rng.standard_normal((64, 64)) *
                                          2.0 ** rng.integers(-20, 21, (64, 64)))
            for _ in range(2))
    ref = ops.get("matmul").spec(Interval.exact(X), Interval.exact(Y)).lo
    assert np.array_equal(exact_matmul(X, Y), ref), "exact_matmul differs from the spec"


def _fmt(v: float) -> str:
    return f"{v:>9.3g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="run the cases whose label contains this")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    check_exact_matmul(rng)
    t0 = time.perf_counter()
    print("bound ÷ true error over output entries with a nonzero error (exact rationals); "
          "exact = share of entries with error 0;")
    print("viol = entries where the preset bound fails (must be 0); NF = the order-free bound "
          "with every step rounded to storage (for scale)")
    print("acc = median share of the preset bound that is the binary32 accumulator's error "
          "(the rest: conversion to storage)")
    head = f"{'case':<24}{'dtype':<9}{'data':<7}{'library':<8}{'exact':>6}{'viol':>5}{'acc':>5}"
    head += "".join(f"{h:>9}" for h in ("med", "p90", "max", "NF med", "NF p90", "NF max"))
    print(head + "  target")
    violations = 0
    for case in CASES:
        if args.only not in case.label:
            continue
        for dtype_name in args.dtypes:
            for kind in KINDS:
                for (label, dt, kd, lib, preset, exact, viol, acc, *st) in rows(
                        case, dtype_name, kind, rng):
                    violations += viol
                    target = TARGETS.get(preset)
                    mark = "-" if target is None or lib == "numpy" else \
                        ("ok" if st[0] <= target else f"miss>{target:g}")
                    print(f"{label:<24}{dt:<9}{kd:<7}{lib:<8}{exact:>6.0%}{viol:>5}{acc:>5.0%}"
                          + "".join(_fmt(v) for v in st) + f"  {mark}", flush=True)
    if "float32" in args.dtypes and not args.only:
        growth(rng)
    print(f"({time.perf_counter() - t0:.0f} s; {violations} violations)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
