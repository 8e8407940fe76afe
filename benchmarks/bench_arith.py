"""Speed of nfbound in bfloat16 — per-op format and ``torch-cpu-bfloat16`` — against PyTorch.

Two contractions, one run, side by side:

* conv2d: input 1×64×32×32, 64 output channels, 3×3, padding 1 (37.7·10^6 multiply-adds);
* matmul 256×256×256 (16.8·10^6 multiply-adds).

Configurations (inputs: N(0, 1) data rounded to bfloat16; bounds with ``ε`` = the input
rounding errors):

* ``torch float32``: the native forward on the data in float32 — the baseline;
* ``torch bf16 per-op loop``: the per-op semantics in PyTorch, the reduction index in a Python
  loop (``acc = acc + x_j·w_j`` on bfloat16 tensors, PyTorch rounding every product and every
  sum to bfloat16; the conv in the order in_ch → di → dj, bias last), reported with the number
  of entries where it differs from nfbound's bfloat16 runtime (PyTorch adds in binary32 and
  rounds to bfloat16: a double rounding that may differ in rare cases);
* nfbound runtime alone and runtime + bound (``runtime_and_bound``), for the per-op format
  ``formats.get("bfloat16")`` (TorchLean's semantics, replay bound) and for the arithmetic
  ``arith.get("torch-cpu-bfloat16")`` (binary32 accumulator, order ``any``: order-free bound).

Times are the median of ``--repeat`` calls after one warm-up call (Numba compiles on the
first); ratios are against torch float32, and ``bound ÷ rt`` is runtime + bound over runtime
alone. No timed asserts. PyTorch and Numba run on ``--threads`` threads (default 1: on a
shared machine, thread pools that spin at barriers make multi-threaded timings swing by 100×).
``--profile`` adds a cProfile of the slowest nfbound configuration.

    python benchmarks/bench_arith.py [--repeat 5] [--threads 1] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

import nfbound.ops as ops  # noqa: E402
from nfbound import arith, formats  # noqa: E402

F = torch.nn.functional
BF16 = formats.get("bfloat16")
PRESET = "torch-cpu-bfloat16"


def median_time(f: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``f`` after one warm-up call (seconds)."""
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bf16(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64).to(torch.bfloat16)


def torch_conv_per_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """conv2d (stride 1, padding 1) with every product and sum rounded to ``x.dtype``: the
    reduction over (in_ch, di, dj) in a Python loop, the bias added last."""
    _, c_in, h, wd = x.shape
    k = w.shape[-1]
    xp = F.pad(x, (1, 1, 1, 1))
    acc = torch.zeros((x.shape[0], w.shape[0], h, wd), dtype=x.dtype)
    for c in range(c_in):
        for di in range(k):
            for dj in range(k):
                tap = w[None, :, c, di, dj, None, None]
                acc = acc + xp[:, c:c + 1, di:di + h, dj:dj + wd] * tap
    return acc + b[None, :, None, None]


def torch_matmul_per_op(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y`` with every product and sum rounded to ``x.dtype``, sequential order."""
    acc = torch.zeros((x.shape[0], y.shape[1]), dtype=x.dtype)
    for j in range(x.shape[1]):
        acc = acc + x[:, j:j + 1] * y[j:j + 1, :]
    return acc


def cases(rng) -> list[tuple]:
    """``(label, op, data, params, torch float32 forward, per-op loop)`` per contraction."""
    conv = (rng.standard_normal((1, 64, 32, 32)), rng.standard_normal((64, 64, 3, 3)) / 24,
            rng.standard_normal(64) * 0.1)
    mm = (rng.standard_normal((256, 256)), rng.standard_normal((256, 256)))
    return [("conv 1x64x32x32>64 3x3", "conv", conv, {"stride": 1, "padding": 1},
             lambda x, w, b: F.conv2d(x, w, b, padding=1), torch_conv_per_op),
            ("matmul 256^3", "matmul", mm, {}, torch.matmul, torch_matmul_per_op)]


def run_case(label, op, data, params, native, per_op, repeat: int) -> list[tuple]:
    """Rows ``(config, seconds, note, runtime seconds or None, call)`` of one contraction."""
    P = ops.get(op)
    xs = tuple(BF16.round(d) for d in data)
    eps = tuple(np.abs(x - d) for x, d in zip(xs, data))   # exact: binary64 values within 2^-8
    f32 = [torch.tensor(d, dtype=torch.float32) for d in data]
    b16 = [_bf16(x) for x in xs]
    loop_out = per_op(*b16).to(torch.float64).numpy()
    differ = int(np.sum(loop_out != P.runtime(BF16, *xs, **params)))
    rows = [("torch float32", median_time(lambda: native(*f32), repeat), "", None, None),
            ("torch bf16 per-op loop", median_time(lambda: per_op(*b16), repeat),
             f"{differ} entries ≠ nfbound", None, None)]
    for name, A in (("bfloat16", BF16), (PRESET, arith.get(PRESET))):
        runtime = lambda A=A: P.runtime(A, *xs, **params)                 # noqa: E731
        both = lambda A=A: P.runtime_and_bound(A, xs, eps, **params)      # noqa: E731
        t_rt = median_time(runtime, repeat)
        rows += [(f"nfbound {name} runtime", t_rt, "", None, runtime),
                 (f"nfbound {name} runtime+bound", median_time(both, repeat), "", t_rt, both)]
    return rows


def profile(call: Callable[[], object], top: int = 14) -> None:
    """cProfile of one call (compiled and warm already), the ``top`` functions by own time."""
    prof = cProfile.Profile()
    prof.runcall(call)
    pstats.Stats(prof).strip_dirs().sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch and Numba threads")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the slowest nfbound configuration")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}; "
          f"median of {args.repeat} after a warm-up")
    print(f"{'case':<24}{'configuration':<38}{'time':>11}{'÷ f32':>9}{'bound ÷ rt':>12}  note")
    slowest = (0.0, "", None)
    for label, op, data, params, native, per_op in cases(rng):
        rows = run_case(label, op, data, params, native, per_op, args.repeat)
        t_native = rows[0][1]
        for config, t, note, t_rt, call in rows:
            cost = "" if t_rt is None else f"{t / t_rt:.2f}x"
            print(f"{label:<24}{config:<38}{t * 1e3:>8.1f} ms{t / t_native:>8.0f}x{cost:>12}"
                  f"  {note}", flush=True)
            if config.startswith("nfbound") and t > slowest[0]:
                slowest = (t, f"{label}: {config}", call)
    if args.profile:
        print(f"\ncProfile of the slowest nfbound configuration, {slowest[1]}")
        profile(slowest[2])


if __name__ == "__main__":
    main()
