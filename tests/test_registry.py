"""One test over every registered primitive: forward and VJP enclosure ``|runtime − spec| ≤ bound``.

Each primitive supplies ``sample(rng, fmt)``; spec inputs are taken with a nonzero input error
(the runtime inputs perturbed within ``eps``), so the propagated part of every rule is exercised
as well as the rounding part. A new op is covered the moment it is registered.
"""
from __future__ import annotations

import numpy as np
import pytest
from gmpy2 import mpq

import nfbound.ops as ops
from nfbound import formats
from nfbound.ops.interval import Interval

FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2", "binary32"]


def _perturbed_spec(rng, fmt, x, rel: float):
    """A spec input at distance ≤ eps from the runtime input ``x``, and that eps."""
    if np.asarray(x).dtype.kind in "iu":  # labels are exact
        return Interval.exact(np.asarray(x, dtype=np.float64)), np.zeros(np.shape(x))
    xf = np.asarray(x, dtype=np.float64)
    eps = np.abs(xf) * rel + 1e-6
    shift = eps * rng.uniform(-1, 1, size=xf.shape) * 0.5
    return Interval.exact(xf + shift), eps


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_forward_and_vjp_enclosure(op_name, fmt_name):
    fmt = formats.get(fmt_name)
    P = ops.get(op_name)
    rng = np.random.default_rng(abs(hash((op_name, fmt_name))) % 2**32)
    for trial in range(3):
        xs, params = P.sample(rng, fmt)
        rel = 0.0 if trial == 0 else 2.0 ** -10
        spec_in, eps = zip(*(_perturbed_spec(rng, fmt, x, rel) for x in xs))
        out = P.runtime(fmt, *xs, **params)
        try:
            spec_out = P.spec(*spec_in, **params)
        except ValueError:
            continue  # a spec domain error (e.g. log of an enclosure reaching 0) is a clear refusal
        bound = P.bound(fmt, xs, eps, **params)
        assert np.shape(bound) == np.shape(out)
        assert spec_out.encloses(out, bound).all(), f"{op_name} forward enclosure failed in {fmt_name}"

        g = fmt.round(rng.standard_normal(np.shape(out)))
        eg = np.abs(g) * rel
        g_spec = Interval.exact(np.asarray(g, dtype=np.float64) + eg * 0.25)
        grads = P.vjp_runtime(fmt, xs, g, **params)
        grads_spec = P.vjp_spec(spec_in, g_spec, **params)
        grads_bound = P.vjp_bound(fmt, xs, eps, g, eg, **params)
        for i, (gr, gs, gb) in enumerate(zip(grads, grads_spec, grads_bound)):
            if gr is None:
                continue
            assert gs.encloses(gr, gb).all(), f"{op_name} VJP enclosure failed for input {i} in {fmt_name}"


def test_every_primitive_has_a_sample_that_is_in_the_format():
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(0)
    for name, P in ops.REGISTRY.items():
        xs, _ = P.sample(rng, fmt)
        for x in xs:
            a = np.asarray(x)
            if a.dtype.kind == "f":
                assert fmt.is_representable(a).all(), f"{name}.sample gave values outside bfloat16"


def _same(a, b) -> bool:
    """Bit-for-bit equality of two rule results (arrays, tuples of arrays, ``None``)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype == object or y.dtype == object:
        return x.shape == y.shape and all(u == v or (u != u and v != v)
                                          for u, v in zip(x.reshape(-1), y.reshape(-1)))
    return x.shape == y.shape and np.array_equal(x, y, equal_nan=True) \
        and np.array_equal(np.signbit(x), np.signbit(y))


FUSED = sorted(n for n, P in ops.REGISTRY.items() if P.fused is not None or P.vjp_fused is not None)


@pytest.mark.parametrize("fmt_name", FORMATS + ["decimal32"])
@pytest.mark.parametrize("op_name", FUSED)
def test_fused_rules_equal_separate_rules(op_name, fmt_name):
    """``fused`` = ``(runtime, bound)`` and ``vjp_fused`` = ``(vjp_runtime, vjp_bound)``, bit for
    bit (values, signs of zeros, bounds), with nonzero input and gradient errors."""
    fmt = formats.get(fmt_name)
    P = ops.get(op_name)
    rng = np.random.default_rng(abs(hash((op_name, fmt_name, "fused"))) % 2**32)
    for _ in range(4):
        xs, params = P.sample(rng, fmt)
        eps = tuple(np.zeros(np.shape(x)) if np.asarray(x).dtype.kind in "iu"
                    else np.abs(np.asarray(x, dtype=np.float64)) * 2.0 ** -9 for x in xs)
        out = P.runtime(fmt, *xs, **params)
        if P.fused is not None:
            assert _same(P.fused(fmt, xs, eps, **params),
                         (out, P.bound(fmt, xs, eps, **params))), f"{op_name} fused ≠ separate"
        g = fmt.round(rng.standard_normal(np.shape(out)))
        eg = np.abs(np.asarray(g, dtype=np.float64)) * 2.0 ** -9
        if P.vjp_fused is not None:
            assert _same(P.vjp_fused(fmt, xs, eps, g, eg, **params),
                         (P.vjp_runtime(fmt, xs, g, **params),
                          P.vjp_bound(fmt, xs, eps, g, eg, **params))), f"{op_name} vjp_fused ≠ separate"


def test_some_primitives_have_fused_rules():
    assert {"conv", "conv_transpose", "linear", "matmul", "cross_entropy"} <= set(FUSED)
