"""Tightness of the conv2d bounds: bound / observed error, forward and the three VJPs, for
nfbound's replay rule, its order-free rule and TorchLean's rules.

For each format: spec = float64 data (exact), runtime = the data rounded to the format, input
error bounds eps = |RN(data) − data| (exact, rounded upward); the forward conv2d and the three
gradients (input, kernel, bias; output gradient likewise float64 data vs its rounding) are
computed on the runtime path (TorchLean's order) and compared with the exact spec. Reported
per output tensor: median and max over the entries with a nonzero observed error of
bound / |runtime − spec| for

* ours: the replay bound (mul rule ``|x̂|ε_w + |ŵ|ε_x + ε_xε_w + r``, padding and other
  structural zeros not charged, ``r`` from the runtime result);
* free: the order-free bound (``order_free=True``: any order, blocking, FMA; ``inf`` once
  ``N·u ≥ 1``, e.g. float8_e4m3fn here);
* TL: TorchLean's rules, replayed here on the same runtime: mul ``(|x̂|+ε_x)ε_w +
  (|ŵ|+ε_w)ε_x + h(x̂ŵ)``; every conv fold starts from ``(0, 0)`` and charges ``h`` of the
  exact partial sum at every addition, including the additions of padding zeros (forward and
  kernel gradient: ``0·w`` through the mul rule, ``h(0) = η``) and of the zero terms of the
  input gradient, which runs over all ``(o, oi, oj, di, dj)``; ``h = ulp/2`` of the exact
  value. Orders: forward ``in_ch → di → dj`` then ``+ bias``; bias gradient ``n → oi → oj``;
  kernel gradient ``n → oi → oj``; input gradient ``o → oi → oj → di → dj``;

and TL/ours, the median over entries of TL's bound / ours; the min ratio of every rule must be
≥ 1 (soundness, asserted), and ``exact`` is the share of entries whose error is 0.

    python benchmarks/tightness_conv.py [--size 12] [--channels 8] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nfbound import formats  # noqa: E402
from nfbound.bounds.upward import add_up, exact_array_up, mul_up  # noqa: E402
from nfbound.ops import conv as C  # noqa: E402
from nfbound.ops.interval import Interval  # noqa: E402
from tightness_dot import _two_sum, h_exact  # noqa: E402

FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2", "binary32"]
PAD = 1


def leaf(fmt, data):
    rt = fmt.round(data)
    return rt, exact_array_up(Interval.exact(data).distance(rt)).reshape(data.shape)


def ratios(spec: Interval, runtime, bound):
    """bound / exact observed error on entries with a nonzero error (exact division, rounded
    to float64 for display), and the share of entries with a zero error."""
    dist = spec.distance(runtime).reshape(-1)
    b = np.asarray(bound, dtype=np.float64).reshape(-1)
    bq = Interval.exact(np.where(np.isinf(b), 0.0, b)).lo
    r = np.array([np.nan if d == 0 else np.inf if np.isinf(bb) else float(q / d)
                  for bb, q, d in zip(b, bq, dist)])
    nz = ~np.isnan(r)
    return r[nz], 1 - nz.mean()


# -- TorchLean's rules (independent of nfbound's kernels) ------------------------------------------
def tl_mul(fmt, a, ea, w, ew):
    """``RN(a·w)`` and TorchLean's mul bound ``(|a|+ε_a)ε_w + (|w|+ε_w)ε_a + h(a·w)`` (the
    binary64 product of two values of these formats is exact)."""
    a, ea, w, ew = np.broadcast_arrays(a, ea, w, ew)
    return fmt.mul(a, w), add_up(mul_up(add_up(np.abs(a), ea), ew),
                                 mul_up(add_up(np.abs(w), ew), ea),
                                 h_exact(fmt, a * w, np.zeros(a.shape)))


def tl_add(fmt, s, e, t, et):
    """``RN(s + t)`` and ``e + ε_t + h(s + t)``, ``h`` of the exact sum (even when ``t = 0``)."""
    s, t = np.broadcast_arrays(s, t)
    z, rho = _two_sum(s, t)
    return fmt.add(s, t), add_up(e, et, h_exact(fmt, z, rho))


def tl_conv2d(fmt, x, ex, w, ew, b, eb, d, ed):
    """TorchLean's forward and backward folds for a stride-1 conv2d with padding ``PAD``
    (runtime and bound of each): ``((y, ey), (gX, egX), (gK, egK), (gB, egB))``."""
    N, Cin, H, W = x.shape
    Co, _, kh, kw = w.shape
    Ho, Wo = H + 2 * PAD - kh + 1, W + 2 * PAD - kw + 1
    pad = ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD))
    xp, exp_ = np.pad(x, pad), np.pad(ex, pad)
    y, ey = np.zeros((N, Co, Ho, Wo)), np.zeros((N, Co, Ho, Wo))
    for ic in range(Cin):                               # in_ch → di → dj, padding included
        for di in range(kh):
            for dj in range(kw):
                t, et = tl_mul(fmt, xp[:, None, ic, di:di + Ho, dj:dj + Wo],
                               exp_[:, None, ic, di:di + Ho, dj:dj + Wo],
                               w[None, :, ic, di, dj, None, None],
                               ew[None, :, ic, di, dj, None, None])
                y, ey = tl_add(fmt, y, ey, t, et)
    y, ey = tl_add(fmt, y, ey, b[None, :, None, None], eb[None, :, None, None])
    gB, egB = np.zeros(Co), np.zeros(Co)
    gK, egK = np.zeros(w.shape), np.zeros(w.shape)
    for n in range(N):                                  # n → oi → oj
        for oi in range(Ho):
            for oj in range(Wo):
                gB, egB = tl_add(fmt, gB, egB, d[n, :, oi, oj], ed[n, :, oi, oj])
                t, et = tl_mul(fmt, xp[n, None, :, oi:oi + kh, oj:oj + kw],
                               exp_[n, None, :, oi:oi + kh, oj:oj + kw],
                               d[n, :, oi, oj, None, None, None],
                               ed[n, :, oi, oj, None, None, None])
                gK, egK = tl_add(fmt, gK, egK, t, et)
    gX, egX = np.zeros(x.shape), np.zeros(x.shape)
    for oc in range(Co):                                # o → oi → oj → di → dj, all positions
        for oi in range(Ho):
            for oj in range(Wo):
                for di in range(kh):
                    for dj in range(kw):
                        t, et = np.zeros(x.shape), np.zeros(x.shape)
                        i, j = oi + di - PAD, oj + dj - PAD
                        if 0 <= i < H and 0 <= j < W:
                            t[:, :, i, j], et[:, :, i, j] = tl_mul(
                                fmt, d[:, oc, oi, oj, None], ed[:, oc, oi, oj, None],
                                w[None, oc, :, di, dj], ew[None, oc, :, di, dj])
                        gX, egX = tl_add(fmt, gX, egX, t, et)
    return (y, ey), (gX, egX), (gK, egK), (gB, egB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12, help="input height = width")
    ap.add_argument("--channels", type=int, default=8, help="input and output channels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    c, s = args.channels, args.size
    params = {"stride": (1, 1), "padding": (PAD, PAD)}
    data = (rng.standard_normal((2, c, s, s)), rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c),
            rng.standard_normal(c) * 0.1)
    gdata = rng.standard_normal((2, c, s, s))
    spec_y = C.conv_spec(*data, **params)
    spec_g = C.conv_vjp_spec(data, gdata, **params)
    print(f"conv2d: input 2x{c}x{s}x{s}, {c} output channels, 3x3, padding {PAD}; "
          f"eps = input rounding errors")
    print("bound / observed error (median and max over entries with a nonzero error); "
          "free = order-free; TL = TorchLean's rules; TL/ours = median of TL bound / ours")
    head = ("ours med", "ours max", "free med", "free max", "TL med", "TL max", "TL/ours")
    print(f"{'format':<14}{'tensor':<13}" + "".join(f"{h:>10}" for h in head) + f"{'exact':>7}")
    t0 = time.perf_counter()
    for name in FORMATS:
        fmt = formats.get(name)
        rt, eps = zip(*(leaf(fmt, a) for a in data))
        g, eg = leaf(fmt, gdata)
        y, ey = C.conv_forward(fmt, *rt, eps=eps, **params)
        _, eyf = C.conv_forward(fmt, *rt, eps=eps, order_free=True, **params)
        grads, bounds = C.conv_backward(fmt, rt, g, eps, eg, **params)
        _, bounds_f = C.conv_backward(fmt, rt, g, eps, eg, order_free=True, **params)
        tl = tl_conv2d(fmt, rt[0], eps[0], rt[1], eps[1], rt[2], eps[2], g, eg)
        rows = zip(("forward", "grad input", "grad kernel", "grad bias"), (spec_y, *spec_g),
                   (y, *grads), (ey, *bounds), (eyf, *bounds_f), tl)
        for label, sp, r, b, bf, (r_tl, b_tl) in rows:
            assert np.array_equal(r, r_tl), f"TL replay of {label} sees another runtime in {name}"
            cols, zero = [], 0.0
            for bound in (b, bf, b_tl):
                rr, zero = ratios(sp, r, bound)
                assert rr.size == 0 or rr.min() >= 1, f"unsound bound for {label} in {name}"
                cols += [np.median(rr), rr.max()] if rr.size else [np.nan, np.nan]
            ok = np.isfinite(b_tl) & (b > 0)
            cols.append(np.median(b_tl[ok] / b[ok]) if ok.any() else np.nan)
            print(f"{name:<14}{label:<13}" + "".join(f"{v:>10.3g}" for v in cols) + f"{zero:>7.1%}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
