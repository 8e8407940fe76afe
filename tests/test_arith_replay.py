"""Arithmetics, bit for bit: every preset and stated order against an independent scalar replay.

The replay uses MPFR (gmpy2, ``subnormalize=True``) directly — not nfbound's engines: each
product and partial sum rounded to the working format (operands read as 0 when it treats
subnormals as zero, results flushed when it flushes), in the stated order, then one rounding
to storage; contraction operands first rounded to the ``operands`` format (TF32). Elementwise
ops: one correctly rounded operation in the compute format, then one rounding to storage.
"""
from __future__ import annotations

import math
import zlib

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpfr, mpq

import nfbound.ops as ops
from nfbound import arith

from test_linalg import tree_sum

ORDERS = ["sequential", "reversed", "pairwise", "blocked:3"]
PRESETS = arith.names()


def _round(q, fmt, op=None):
    """``q`` (exact, or an MPFR operation on exact operands) rounded to ``fmt`` by MPFR with
    gradual underflow, then flushed if ``fmt`` flushes results; overflow per ``fmt``."""
    p, emin = fmt.precision, fmt.emin
    with gmpy2.context(precision=p, emin=emin + 1, emax=1 << 20, subnormalize=True,
                       round=gmpy2.RoundToNearest):
        r = op() if op is not None else mpfr(q)
    v = mpq(r)
    if abs(v) > fmt.max_finite:
        return math.nan if fmt.overflow == "nan" else math.copysign(math.inf, v)
    if fmt.subnormals in ("ftz", "ftz+daz") and 0 < abs(v) < fmt.smallest_normal:
        return mpq(0)
    return v


def _read(v, fmt):
    """An operand as the working format reads it (DAZ)."""
    if fmt.subnormals in ("daz", "ftz+daz") and abs(v) < fmt.smallest_normal:
        return mpq(0)
    return v


def _dot(A, a, b, order, bias=None):
    """One output of a contraction in arithmetic ``A`` (the replay described in the module doc)."""
    W = A.accumulator
    if A.operands is not None:
        a = [_round(mpq(v), A.operands) for v in a]
        b = [_round(mpq(v), A.operands) for v in b]
    prods = [_round(_read(mpq(x), W) * _read(mpq(y), W), W) for x, y in zip(a, b)]
    s = tree_sum(prods, order, lambda u, v: _round(_read(u, W) + _read(v, W), W))
    if bias is not None:
        s = _round(_read(s, W) + _read(mpq(bias), W), W)
    return _round(s, A.storage)


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _data(rng, shape, A, scale=3.0):
    return A.storage.round(rng.standard_normal(shape) * scale)


def _same(out, ref) -> bool:
    out = np.asarray(out, dtype=np.float64).reshape(-1)
    ref = [float(r) for r in ref]
    return all((o == r) or (math.isnan(o) and math.isnan(r)) for o, r in zip(out, ref))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("preset", PRESETS)
def test_matmul_and_linear_equal_the_replay(preset, order):
    A = arith.get(f"{preset}:order={order}")
    rng = np.random.default_rng(_seed(preset, order))
    X, Y = _data(rng, (3, 7), A), _data(rng, (7, 4), A)
    out = ops.get("matmul").runtime(A, X, Y)
    ref = [_dot(A, X[i], Y[:, j], order) for i in range(3) for j in range(4)]
    assert _same(out, ref)
    W, b = _data(rng, (5, 7), A), _data(rng, (5,), A)
    out = ops.get("linear").runtime(A, X, W, b)
    ref = [_dot(A, X[i], W[o], order, bias=b[o]) for i in range(3) for o in range(5)]
    assert _same(out, ref)


@pytest.mark.parametrize("preset", PRESETS)
def test_tiny_products_flush_as_the_replay(preset):
    """Entries whose products fall below binary32's normal range (``2^−64·2^−64``)."""
    A = arith.get(f"{preset}:order=sequential")
    S = A.storage
    rng = np.random.default_rng(_seed("tiny", preset))
    X = S.round(rng.standard_normal((2, 17)) * float(S.smallest_normal) ** 0.5 * 4)
    Y = S.round(rng.standard_normal((17, 3)) * float(S.smallest_normal) ** 0.5 * 4)
    out = ops.get("matmul").runtime(A, X, Y)
    assert _same(out, [_dot(A, X[i], Y[:, j], "sequential") for i in range(2) for j in range(3)])


@pytest.mark.parametrize("preset", PRESETS)
def test_conv_equals_the_replay(preset):
    """conv1d, one channel pair at a time: input channel outer, then kernel offset; bias last."""
    A = arith.get(f"{preset}:order=sequential")
    rng = np.random.default_rng(_seed("conv", preset))
    x, w, b = _data(rng, (1, 2, 6), A), _data(rng, (3, 2, 3), A), _data(rng, (3,), A)
    out = ops.get("conv").runtime(A, x, w, b, stride=1, padding=1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    ref = []
    for oc in range(3):
        for i in range(6):
            a = [xp[0, c, i + k] for c in range(2) for k in range(3)]
            ww = [w[oc, c, k] for c in range(2) for k in range(3)]
            ref.append(_dot(A, a, ww, "sequential", bias=b[oc]))
    assert _same(out, ref)


ELEMENTWISE = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
               "sqrt": None, "exp": None}


@pytest.mark.parametrize("op", list(ELEMENTWISE))
@pytest.mark.parametrize("preset", PRESETS)
def test_elementwise_equal_the_replay(preset, op):
    """One correctly rounded operation in the compute format, then one rounding to storage."""
    A = arith.get(preset)
    C, S = A.compute, A.storage
    rng = np.random.default_rng(_seed("ew", preset, op))
    x = np.abs(_data(rng, (40,), A)) + float(S.smallest_normal)
    x = S.round(x)
    y = S.round(np.abs(_data(rng, (40,), A)) + 1)
    if op in ("sqrt", "exp"):
        out = ops.get(op).runtime(A, x)
        f = gmpy2.sqrt if op == "sqrt" else gmpy2.exp
        ref = [_round(_round(None, C, lambda v=v: f(mpfr(mpq(v), 300))), S) for v in x]
    else:
        out = ops.get(op).runtime(A, x, y)
        ref = [_round(_round(ELEMENTWISE[op](mpq(a), mpq(b)), C), S) for a, b in zip(x, y)]
    assert _same(out, ref)
