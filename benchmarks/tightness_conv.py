"""Tightness of the conv2d replay bounds: bound / observed error, forward and the three VJPs.

For each format: spec = float64 data (exact), runtime = the data rounded to the format, input
error bounds eps = |RN(data) − data| (exact, rounded upward); the forward conv2d and the three
gradients (input, kernel, bias; output gradient likewise float64 data vs its rounding) are
computed on the runtime path with their bounds and compared with the exact spec. Reported per
output tensor: median and max of bound / |runtime − spec| over the entries with a nonzero
observed error, the min (≥ 1 is soundness), and the share of entries whose error is 0.

    python benchmarks/tightness_conv.py [--size 12] [--channels 8] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

from nfbound import formats  # noqa: E402
from nfbound.bounds.upward import exact_array_up  # noqa: E402
from nfbound.ops import conv as C  # noqa: E402
from nfbound.ops.interval import Interval  # noqa: E402

FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "binary32"]


def leaf(fmt, data):
    rt = fmt.round(data)
    return rt, exact_array_up(Interval.exact(data).distance(rt)).reshape(data.shape)


def ratios(spec: Interval, runtime, bound):
    """bound / exact observed error on entries with a nonzero error (exact division, rounded
    to float64 for display)."""
    dist = spec.distance(runtime).reshape(-1)
    b = np.asarray(bound, dtype=np.float64).reshape(-1)
    r = np.array([float(bb / d) if d != 0 else np.nan for bb, d in
                  zip((Interval.exact(b).lo), dist)])
    nz = ~np.isnan(r)
    return r[nz], 1 - nz.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12, help="input height = width")
    ap.add_argument("--channels", type=int, default=8, help="input and output channels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    c, s = args.channels, args.size
    params = {"stride": (1, 1), "padding": (1, 1)}
    data = (rng.standard_normal((2, c, s, s)), rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c),
            rng.standard_normal(c) * 0.1)
    gdata = rng.standard_normal((2, c, s, s))
    spec_y = C.conv_spec(*data, **params)
    spec_g = C.conv_vjp_spec(data, gdata, **params)
    print(f"conv2d: input 2x{c}x{s}x{s}, {c} output channels, 3x3, padding 1; "
          f"eps = input rounding errors")
    print(f"{'format':<14} {'tensor':<14} {'median':>8} {'max':>9} {'min':>7} {'exact':>6}")
    for name in FORMATS:
        fmt = formats.get(name)
        rt, eps = zip(*(leaf(fmt, a) for a in data))
        y, ey = C.conv_forward(fmt, *rt, eps=eps, **params)
        g, eg = leaf(fmt, gdata)
        grads, bounds = C.conv_backward(fmt, rt, g, eps, eg, **params)
        rows = [("forward", spec_y, y, ey)] + [
            (f"grad {n}", sg, gr, gb) for n, sg, gr, gb in zip(("input", "kernel", "bias"), spec_g, grads, bounds)]
        for label, sp, r, b in rows:
            rr, zero = ratios(sp, r, b)
            assert rr.size == 0 or rr.min() >= 1, f"unsound bound for {label} in {name}"
            med, mx, mn = (np.median(rr), rr.max(), rr.min()) if rr.size else (np.nan,) * 3
            print(f"{name:<14} {label:<14} {med:8.1f} {mx:9.1f} {mn:7.2f} {zero:6.1%}")


if __name__ == "__main__":
    main()
