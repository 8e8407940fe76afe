"""Cost of certified bounds on a small CNN: forward + backward with bounds vs runtime alone.

CNN: conv (C_in→8 channels, 3×3, padding 1) → relu → max_pool 2 → flatten → linear → 10 →
cross_entropy, batch 8. "runtime alone" is ``Graph.forward/backward`` with ``spec=False,
bounds=False``; "with bounds" adds the certified bounds (``bounds=True``, no spec). Target:
the bounds add at most 1× the runtime's own time (ratio ≤ 2).

    python benchmarks/bench_graph.py [--format bfloat16] [--size 8] [--channels 1] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

from nfbound import formats  # noqa: E402
from nfbound.graph import Graph  # noqa: E402


def cnn(rng, c_in: int, hw: int, c_out: int = 8, n_cls: int = 10) -> Graph:
    g = Graph()
    g.input("x")
    g.input("t", kind="label")
    g.param("conv1.weight", rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in))
    g.param("conv1.bias", rng.standard_normal(c_out) * 0.1)
    g.op("conv", "x", "conv1.weight", "conv1.bias", stride=(1, 1), padding=(1, 1), name="conv1")
    g.op("relu", "conv1", name="relu1")
    g.op("max_pool", "relu1", kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), name="pool1")
    g.op("flatten", "pool1", start_dim=1, name="flat")
    feat = c_out * (hw // 2) ** 2
    g.param("fc.weight", rng.standard_normal((n_cls, feat)) / np.sqrt(feat))
    g.param("fc.bias", rng.standard_normal(n_cls) * 0.1)
    g.op("linear", "flat", "fc.weight", "fc.bias", name="fc")
    g.op("cross_entropy", "fc", "t", name="loss")
    g.output("loss")
    return g


def run(g: Graph, fmt, batch: dict, bounds: bool) -> float:
    t0 = time.perf_counter()
    res = g.forward(fmt, batch, spec=False, bounds=bounds, progress=False)
    g.backward(fmt, res, loss="loss", spec=False, bounds=bounds, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", default="bfloat16")
    ap.add_argument("--size", type=int, default=8, help="input height = width")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    fmt = formats.get(args.format)
    rng = np.random.default_rng(0)
    g = cnn(rng, args.channels, args.size)
    batch = {"x": rng.standard_normal((args.batch, args.channels, args.size, args.size)),
             "t": rng.integers(0, 10, size=args.batch)}
    run(g, fmt, batch, True)                     # warm-up (compiled kernels)
    run(g, fmt, batch, False)
    t_rt = [run(g, fmt, batch, False) for _ in range(args.repeat)]
    t_bd = [run(g, fmt, batch, True) for _ in range(args.repeat)]
    rt, bd = statistics.median(t_rt), statistics.median(t_bd)
    print(f"small CNN, batch {args.batch}×{args.channels}×{args.size}×{args.size}, conv 8ch 3×3, "
          f"pool 2, linear→10, cross_entropy, format {fmt}")
    print(f"runtime alone (forward+backward): {rt * 1e3:9.2f} ms  (median of {args.repeat})")
    print(f"runtime + bounds                : {bd * 1e3:9.2f} ms")
    print(f"ratio (with bounds / alone)     : {bd / rt:9.2f}   bounds add {bd / rt - 1:.2f}× "
          f"the runtime's own time (target ≤ 1×)")


if __name__ == "__main__":
    main()
