"""Arithmetics: presets, spec strings, orders, validation; a Format means TorchLean's NF."""
from __future__ import annotations

import numpy as np
import pytest

import nfbound.ops as ops
from nfbound import arith, formats
from nfbound.arith import Arithmetic, Order


def test_order_parse_and_str_round_trip():
    for text in ("sequential", "reversed", "pairwise", "blocked:64", "any"):
        assert str(Order.parse(text)) == text
    assert Order.parse("any").stated == Order("sequential")
    assert Order.parse("blocked:8").stated == Order("blocked", 8)


@pytest.mark.parametrize("bad", ["blocked", "blocked:0", "blocked:x", "any:3", "random", "", 3])
def test_bad_orders_are_refused_naming_order(bad):
    with pytest.raises(ValueError, match="order"):
        Order.parse(bad)


def test_presets_exist_with_their_facts():
    A = arith.get("torch-cpu-bfloat16")
    assert A.storage == formats.get("bfloat16")
    assert A.accumulator.subnormals == "ftz+daz" and A.accumulator.precision == 24
    assert A.compute == formats.get("binary32") and A.order.is_any and not A.is_nf
    assert arith.get("tf32").operands == formats.get("tf32")
    assert set(arith.names()) >= {"torch-cpu-float32", "torch-cpu-bfloat16", "torch-cpu-float16",
                                   "amp-bfloat16", "amp-float16", "tf32", "fp8-e4m3", "fp8-e5m2"}


def test_a_format_is_torchlean_nf():
    A = arith.get("bfloat16")
    assert A.is_nf and A.order == Order("sequential") and A.storage == formats.get("bfloat16")
    assert arith.get(formats.get("binary16")).is_nf


def test_spec_strings():
    A = arith.get("store=bfloat16,acc=binary32,order=any,subnormals=ftz+daz")
    assert A.storage == formats.get("bfloat16") and A.order.is_any
    assert A.accumulator.subnormals == "ftz+daz" and A.compute == formats.get("bfloat16")
    B = arith.get("fp8-e4m3:acc=[flt:p=14,emin=-149,emax=128]")
    assert B.accumulator.precision == 14 and B.storage == formats.get("float8_e4m3fn")
    assert arith.get(A.spec) == A
    assert arith.get("torch-cpu-bfloat16:order=blocked:32").order == Order("blocked", 32)


@pytest.mark.parametrize("bad, word", [
    ("store=bfloat16,acc=binary16", "acc"),            # binary16 cannot hold bfloat16's range
    ("store=binary32,acc=bfloat16", "acc"),            # fewer digits
    ("store=bfloat16,colour=red", "colour"),
    ("store=bfloat16,store=binary32", "twice"),
    ("acc=binary32", "store"),
    ("store=[flt:p=8,emin=-133", "unbalanced"),
    ("torch-cpu-bfloat16:order=sometimes", "order"),
    ("nonsense", "unknown arithmetic"),
])
def test_bad_specs_are_refused_naming_the_key(bad, word):
    with pytest.raises(ValueError, match=word):
        arith.get(bad)


def test_every_rule_accepts_an_nf_arithmetic_bit_for_bit():
    """``arith.get(fmt)`` and ``fmt`` give identical results for every primitive."""
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(0)
    for name, P in sorted(ops.REGISTRY.items()):
        xs, params = P.sample(rng, fmt)
        eps = tuple(np.zeros(np.shape(x)) for x in xs)
        if params.get("order_free"):   # order=any: the runtime is the sequential order
            params["order"] = "sequential"
        a = P.runtime_and_bound(fmt, xs, eps, **params)
        order = "any" if params.pop("order_free", False) else params.pop("order", "sequential")
        b = P.runtime_and_bound(arith.nf(fmt, order), xs, eps, **params)
        for u, v in zip(a, b):
            assert np.array_equal(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64),
                                  equal_nan=True), name
