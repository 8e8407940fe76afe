"""Throughput of rounding float64 arrays to low-precision formats: nfbound vs the usual tools.

    python benchmarks/bench_rounding.py [--n 10000000] [--repeat 5]

Rounds the same 10^7 float64 values (normal(0, 1) scaled by 2^U{-8..7}) to bfloat16, binary16
and a 7-bit format (FLT(7, −20), 5 exponent bits: pychop's exp_bits=5, sig_bits=6) with
- nfbound ``Format.round`` (compiled engine; parallel over Numba's threads, also into a
  preallocated ``out=``, and on one thread),
- ml_dtypes ``astype(bfloat16)`` (ml_dtypes has no float16; one way, and round trip to float64),
- NumPy's ``astype(float16)``,
- pychop ``Chop(exp_bits, sig_bits, rmode=1, chunk_size=10**6)`` (NumPy backend; timed once),
- a NumPy frexp/rint/ldexp baseline (no subnormals, no overflow).
Prints M values/s (best of ``--repeat``), the ratio to ml_dtypes' bfloat16 cast, and how many
results differ from nfbound's (which the test suite checks bit for bit against MPFR).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nfbound.formats import fast, get  # noqa: E402


def best_time(fn, repeat: int) -> float:
    fn()  # warm up (JIT compilation, page faults)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def frexp_rint_ldexp(x: np.ndarray, p: int) -> np.ndarray:
    m, e = np.frexp(x)
    return np.ldexp(np.rint(np.ldexp(m, p)), e - p)


def mismatches(y: np.ndarray, ref: np.ndarray) -> int:
    y = np.asarray(y, dtype=np.float64)
    same = (y == ref) | (np.isnan(y) & np.isnan(ref))
    return int((~same).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10**7)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.n) * np.exp2(rng.integers(-8, 8, args.n))
    out = np.empty_like(x)

    formats = {"bfloat16": get("bfloat16"), "binary16": get("binary16"),
               "p=7": get("flt:p=7,emin=-20,emax=16")}
    rows = []   # (format, tool, seconds, mismatches or None)

    def add(fmt_name, tool, fn, result=None):
        rows.append((fmt_name, tool, best_time(fn, args.repeat),
                     None if result is None else mismatches(result(), refs[fmt_name])))

    refs = {k: f.round(x) for k, f in formats.items()}
    try:
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    try:
        import pychop
        pychop.backend("numpy")
    except Exception:   # noqa: BLE001 (optional dependency)
        pychop = None

    for name, f in formats.items():
        p, emin, mx, rnd, ovf, _ = f.kernel_params
        add(name, "nfbound Format.round", lambda: f.round(x), lambda: f.round(x))
        add(name, "nfbound Format.round(out=)", lambda: f.round(x, out=out))
        add(name, "nfbound, one thread", lambda: fast._round_flat(x, out, p, emin, mx, rnd, ovf))
        if name == "bfloat16" and ml_dtypes is not None:
            add(name, "ml_dtypes astype", lambda: x.astype(ml_dtypes.bfloat16),
                lambda: x.astype(ml_dtypes.bfloat16))
            add(name, "ml_dtypes astype + back", lambda: x.astype(ml_dtypes.bfloat16).astype(np.float64))
        if name == "binary16":
            add(name, "numpy astype(float16)", lambda: x.astype(np.float16), lambda: x.astype(np.float16))
        if pychop is not None:
            eb, sb = {"bfloat16": (8, 7), "binary16": (5, 10), "p=7": (5, 6)}[name]
            # chunk_size: Dask's block size; the default 800 runs at ~0.5 M values/s
            ch = pychop.Chop(exp_bits=eb, sig_bits=sb, rmode=1, chunk_size=10**6)
            rows.append((name, "pychop Chop (numpy)", best_time(lambda: ch(x), 1),
                         mismatches(ch(x), refs[name])))
        add(name, "frexp/rint/ldexp", lambda: frexp_rint_ldexp(x, f.precision),
            lambda: frexp_rint_ldexp(x, f.precision))

    ref_t = next((t for fm, tool, t, _ in rows if tool == "ml_dtypes astype"), None)
    import numba
    print(f"{args.n:.0e} float64 values, best of {args.repeat}; numba threads: "
          f"{numba.get_num_threads()}, CPUs: {os.cpu_count()}")
    print(f"{'format':<9} {'tool':<28} {'M values/s':>11} {'vs ml_dtypes':>13} {'≠ nfbound':>10}")
    for fm, tool, t, bad in rows:
        ratio = f"{ref_t / t:.2f}×" if ref_t else "-"
        print(f"{fm:<9} {tool:<28} {args.n / t / 1e6:>11.1f} {ratio:>13} "
              f"{'-' if bad is None else bad:>10}")


if __name__ == "__main__":
    main()
