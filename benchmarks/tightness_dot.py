"""Tightness of the dot-product and MLP bounds: nfbound's rules vs TorchLean's.

For each format (bfloat16, binary16, float8_e4m3fn, float8_e5m2, binary32):

* dot products of length n ∈ {16, 64, 256, 1024, 4096} with N(0, 1) inputs;
* an MLP 784-128-10 with ReLU and random (He-initialised) weights on a batch of inputs in
  [0, 1).

Spec = the float64 data (exact rationals), runtime = the data rounded to the format and then
computed with per-operation rounding (sequential order, bias last), input eps = the rounding
error of the data. For every output we report ``bound / observed error`` (median and max over
outputs with a nonzero observed error; the observed error is exact, computed in rationals):

* ours: the replay bound (``mul_error`` terms ``|x̂|ε_y + |ŷ|ε_x + ε_xε_y + r``, no rounding
  charged for exact operations, the rounding term from the runtime result);
* ours, order-free: :func:`nfbound.ops.linalg.order_free_dot_bound` (any order, FMA);
* TL: TorchLean's rules — mul ``(|x̂| + ε_x)ε_y + (|ŷ| + ε_y)ε_x + h(x̂ŷ)``, sums starting at
  ``(0, h(0))`` and charging ``h(exact partial sum)`` at every addition (including the first
  and additions of 0), ``h = ulp/2`` of the exact result; ReLU passes ε unchanged (as ours).

All bound arithmetic is rounded upward for both rule sets.

Run: ``python benchmarks/tightness_dot.py [--samples 200] [--batch 16]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gmpy2 import mpq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

from nfbound import formats  # noqa: E402
from nfbound.bounds.upward import add_up, exact_array_up, mul_up  # noqa: E402
from nfbound.ops import linalg  # noqa: E402

FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2", "binary32"]
LENGTHS = [16, 64, 256, 1024, 4096]

_to_mpq = np.frompyfunc(mpq, 1, 1)


# -- exact spec and observed error -------------------------------------------------------------
def exact_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` of float64 data in exact rationals (object array)."""
    return np.matmul(_to_mpq(A).astype(object), _to_mpq(B).astype(object))


def observed(runtime: np.ndarray, spec: np.ndarray) -> np.ndarray:
    """``|runtime − spec|`` exactly, as float64 (rounded up); inf where the runtime is not
    finite."""
    r = np.asarray(runtime, dtype=np.float64)
    out = np.full(r.shape, np.inf)
    ok = np.isfinite(r)
    d = np.vectorize(lambda a, b: abs(mpq(a) - b), otypes=[object])(np.where(ok, r, 0.0), spec)
    out[ok] = exact_array_up(d)[ok]
    return out


def rounding_eps(fmt, data: np.ndarray):
    """Runtime ``round(data)`` and its exact error rounded up."""
    r = fmt.round(data)
    return r, exact_array_up(np.vectorize(lambda a, b: abs(mpq(a) - mpq(b)),
                                          otypes=[object])(r, data))


# -- TorchLean's rules ----------------------------------------------------------------------------
def h_exact(fmt, z: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``ulp(z + ρ)/2`` for the exact value ``z + ρ`` (``z = RN64(z + ρ)``, ``|ρ|`` at most half
    a binary64 ulp of ``z``): the binade of the exact value differs from ``z``'s only when
    ``z`` is a power of two and ``ρ`` points toward 0."""
    m, e = np.frexp(np.abs(z))
    below = (m == 0.5) & (np.sign(rho) == -np.sign(z)) & (rho != 0)
    zz = np.where(below, np.nextafter(z, 0.0), z)
    return fmt.ulp(zz) * 0.5


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def tl_dot(fmt, A, EA, B, EB):
    """TorchLean's bound for ``A (r, n) @ B (n, k)`` (sequential, runtime replayed here)."""
    r, n = A.shape
    k = B.shape[1]
    s = np.zeros((r, k))
    e = np.full((r, k), fmt.eta)                        # (0, h(0))
    for j in range(n):
        a, b = A[:, j, None], B[None, j, :]
        ea, eb = EA[:, j, None], EB[None, j, :]
        prod = a * b                                    # exact in binary64 for p ≤ 26
        t = fmt.mul(np.broadcast_to(a, prod.shape), np.broadcast_to(b, prod.shape))
        et = add_up(mul_up(add_up(np.abs(a), ea), eb), mul_up(add_up(np.abs(b), eb), ea),
                    h_exact(fmt, prod, np.zeros_like(prod)))
        z, rho = _two_sum(s, t)
        s = fmt.add(s, t)
        e = add_up(e, et, h_exact(fmt, z, rho))
    return s, e


def tl_linear(fmt, X, EX, W, EW, b, eb):
    s, e = tl_dot(fmt, X, EX, W.T, EW.T)
    bb = np.broadcast_to(b, s.shape)
    z, rho = _two_sum(s, bb)
    return fmt.add(s, bb), add_up(e, np.broadcast_to(eb, s.shape), h_exact(fmt, z, rho))


# -- ours ---------------------------------------------------------------------------------------
def ours_linear(fmt, X, EX, W, EW, b, eb, order_free=False):
    return linalg.linear_error(fmt, X, EX, W, EW, b, eb, order_free=order_free)


def ours_dot(fmt, A, EA, B, EB, order_free=False):
    return linalg.matmul_error(fmt, A, EA, B, EB, order_free=order_free)


# -- summary --------------------------------------------------------------------------------------
def ratios(bound: np.ndarray, err: np.ndarray) -> tuple[float, float, int]:
    ok = (err > 0) & np.isfinite(err)
    if not ok.any():
        return float("nan"), float("nan"), 0
    q = bound[ok] / err[ok]
    return float(np.median(q)), float(np.max(q)), int((~ok).sum())


def rel(tl: np.ndarray, ours: np.ndarray) -> float:
    """Median over outputs of TL's bound / ours (finite, nonzero bounds)."""
    ok = np.isfinite(tl) & np.isfinite(ours) & (ours > 0)
    return float(np.median(tl[ok] / ours[ok])) if ok.any() else float("nan")


def dot_rows(fmt_name: str, samples: int, rng) -> list[tuple]:
    fmt = formats.get(fmt_name)
    rows = []
    for n in LENGTHS:
        data_a = rng.standard_normal((samples, n))
        data_b = rng.standard_normal((n, 1))
        spec = exact_matmul(data_a, data_b)
        A, EA = rounding_eps(fmt, data_a)
        B, EB = rounding_eps(fmt, data_b)
        t0 = time.perf_counter()
        y, eo = ours_dot(fmt, A, EA, B, EB)
        t_ours = time.perf_counter() - t0
        _, ef = ours_dot(fmt, A, EA, B, EB, order_free=True)
        yt, et = tl_dot(fmt, A, EA, B, EB)
        assert np.array_equal(y, yt, equal_nan=True), "TL replay must see the same runtime"
        err = observed(y, spec)
        assert (err <= eo).all() and (err <= ef).all() and (err <= et).all(), "unsound bound!"
        rows.append((fmt_name, f"dot n={n}", *ratios(eo, err), *ratios(ef, err)[:2],
                     *ratios(et, err)[:2], rel(et, eo), t_ours))
    return rows


def mlp_rows(fmt_name: str, batch: int, rng, spec_cache: dict) -> list[tuple]:
    fmt = formats.get(fmt_name)
    data = spec_cache["data"]
    X, W1, b1, W2, b2 = (rounding_eps(fmt, d) for d in data)
    t0 = time.perf_counter()
    h, eh = ours_linear(fmt, *X, *W1, *b1)
    h = np.maximum(h, 0.0)                  # relu: exact, ε unchanged (1-Lipschitz)
    y, ey = ours_linear(fmt, h, eh, *W2, *b2)
    t_ours = time.perf_counter() - t0
    hf, ehf = ours_linear(fmt, *X, *W1, *b1, order_free=True)
    _, eyf = ours_linear(fmt, np.maximum(hf, 0.0), ehf, *W2, *b2, order_free=True)
    ht, eht = tl_linear(fmt, *X, *W1, *b1)
    yt, eyt = tl_linear(fmt, np.maximum(ht, 0.0), eht, *W2, *b2)
    assert np.array_equal(y, yt, equal_nan=True)
    err = observed(y, spec_cache["spec"])
    assert (err <= ey).all() and (err <= eyf).all() and (err <= eyt).all(), "unsound bound!"
    return [(fmt_name, "MLP 784-128-10", *ratios(ey, err), *ratios(eyf, err)[:2],
             *ratios(eyt, err)[:2], rel(eyt, ey), t_ours)]


def mlp_data(batch: int, rng) -> dict:
    x = rng.uniform(0.0, 1.0, (batch, 784))
    W1 = rng.standard_normal((128, 784)) * np.sqrt(2 / 784)
    b1 = rng.standard_normal(128) * 0.1
    W2 = rng.standard_normal((10, 128)) * np.sqrt(2 / 128)
    b2 = rng.standard_normal(10) * 0.1
    z1 = exact_matmul(x, W1.T) + _to_mpq(b1).astype(object)
    a1 = np.where(z1 > 0, z1, mpq(0))
    y = np.matmul(a1, _to_mpq(W2.T).astype(object)) + _to_mpq(b2).astype(object)
    return {"data": (x, W1, b1, W2, b2), "spec": y}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=200, help="dot products per length")
    ap.add_argument("--batch", type=int, default=16, help="MLP batch size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    cache = mlp_data(args.batch, rng)
    rows = []
    for name in FORMATS:
        rows += dot_rows(name, args.samples, rng)
        rows += mlp_rows(name, args.batch, rng, cache)
    head = ("format", "case", "ours med", "ours max", "free med", "free max", "TL med",
            "TL max", "TL/ours", "ours s")
    print("bound / observed error (median and max over outputs; zero-error outputs skipped);")
    print("'free' = order-free bound (inf once n·u ≥ 1); 'TL/ours' = median of TL bound / ours;")
    print("'ours s' = seconds for our runtime + replay bound")
    print(f"{head[0]:<14}{head[1]:<16}" + "".join(f"{h:>12}" for h in head[2:]) + f"{'zero':>6}")
    for (fmt_name, case, om, ox, zeros, fm, fx, tm, tx, r, t) in rows:
        vals = (om, ox, fm, fx, tm, tx, r, t)
        print(f"{fmt_name:<14}{case:<16}" + "".join(f"{v:>12.3g}" for v in vals) + f"{zeros:>6}")


if __name__ == "__main__":
    main()
