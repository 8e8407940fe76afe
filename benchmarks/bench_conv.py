"""Speed of the emulated conv2d against a native float32 conv, and the cost of its bound.

conv2d: input 1×64×32×32, 64 output channels, 3×3 kernel, padding 1 (37.7·10^6 multiply-adds,
each product and each partial sum rounded to the format in TorchLean's order). Native baseline:
NumPy float32 im2col + matmul (BLAS), measured in the same run. Target: emulated runtime ≤ 100×
the native float32 time. Also timed: runtime together with its certified bound (one pass of
the compiled kernel), and the three VJPs (runtime, and with bounds).

    python benchmarks/bench_conv.py [--repeat 3] [--formats bfloat16 binary32] [--no-vjp]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

from nfbound import formats  # noqa: E402
from nfbound.ops import conv as C  # noqa: E402

N, C_IN, H, W, C_OUT, K, PAD = 1, 64, 32, 32, 64, 3, 1


def best(f, repeat: int) -> float:
    """Best wall time of ``repeat`` calls (seconds)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def native_conv_f32(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 conv2d (stride 1): im2col with a strided view, then one BLAS matmul."""
    xp = np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (K, K), axis=(2, 3))   # N, C, H, W, K, K
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(N * H * W, C_IN * K * K)
    y = cols @ w.reshape(C_OUT, -1).T + b
    return y.reshape(N, H, W, C_OUT).transpose(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--formats", nargs="+", default=["bfloat16", "binary32"])
    ap.add_argument("--no-vjp", action="store_true", help="skip the VJP timings")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((N, C_IN, H, W))
    w0 = rng.standard_normal((C_OUT, C_IN, K, K)) / np.sqrt(C_IN * K * K)
    b0 = rng.standard_normal(C_OUT) * 0.1
    x32, w32, b32 = (a.astype(np.float32) for a in (x0, w0, b0))
    native_conv_f32(x32, w32, b32)
    t_native = best(lambda: native_conv_f32(x32, w32, b32), max(20, args.repeat))
    ref = native_conv_f32(x32, w32, b32)
    print(f"conv2d {N}x{C_IN}x{H}x{W} -> {C_OUT} channels, {K}x{K}, padding {PAD}: "
          f"{N * C_OUT * H * W * C_IN * K * K / 1e6:.1f}e6 multiply-adds")
    print(f"native float32 (im2col + BLAS matmul): {t_native * 1e3:9.2f} ms")
    print(f"{'format':<10} {'runtime':>11} {'ratio':>8} {'runtime+bound':>14} {'bound cost':>11}"
          + ("" if args.no_vjp else f" {'VJPs':>9} {'VJPs+bounds':>12}"))
    for name in args.formats:
        fmt = formats.get(name)
        x, w, b = fmt.round(x0), fmt.round(w0), fmt.round(b0)
        eps = (np.abs(x - x0), np.abs(w - w0), np.abs(b - b0))   # exact differences of binary64 values
        y = C.conv_forward(fmt, x, w, b, padding=PAD)[0]           # warm-up (compilation)
        C.conv_forward(fmt, x, w, b, eps=eps, padding=PAD)
        if name == "binary32":
            assert np.max(np.abs(y - ref)) < 1e-4, "emulated binary32 far from the native result"
        t_rt = best(lambda: C.conv_forward(fmt, x, w, b, padding=PAD), args.repeat)
        t_bd = best(lambda: C.conv_forward(fmt, x, w, b, eps=eps, padding=PAD), args.repeat)
        line = (f"{name:<10} {t_rt * 1e3:8.1f} ms {t_rt / t_native:7.1f}x {t_bd * 1e3:11.1f} ms "
                f"{t_bd / t_rt:10.2f}x")
        if not args.no_vjp:
            g = fmt.round(rng.standard_normal(y.shape))
            eg = np.zeros(g.shape)
            C.conv_backward(fmt, (x, w, b), g, padding=PAD)
            C.conv_backward(fmt, (x, w, b), g, eps, eg, padding=PAD)
            t_v = best(lambda: C.conv_backward(fmt, (x, w, b), g, padding=PAD), args.repeat)
            t_vb = best(lambda: C.conv_backward(fmt, (x, w, b), g, eps, eg, padding=PAD), args.repeat)
            line += f" {t_v * 1e3:6.1f} ms {t_vb * 1e3:9.1f} ms"
        print(line)
    print("target: runtime ratio ≤ 100x native float32")


if __name__ == "__main__":
    main()
