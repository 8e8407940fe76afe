"""Graphs, reverse mode and training in arithmetics: every preset, per-node maps, conversions
between storage formats (forward and reverse), the order of an arithmetic, report columns.

Enclosures are exact rational tests. The default run covers a small MLP under every preset
and the demo CNN under one; ``slow`` runs the demo CNN (forward, backward, training) under
every preset.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfbound import arith, formats
from nfbound.graph import SGD, AdamW, Graph, Momentum, format_table, train
from nfbound.graph.forward import Value, convert
from nfbound.models import demo_graph, demo_input, demo_labels
from nfbound.ops.interval import Interval

PRESETS = arith.names()


def _mlp(seed: int = 0) -> tuple[Graph, dict]:
    """linear → tanh → linear → (out − t)² → mean: no op without an order-free bound."""
    rng = np.random.default_rng(seed)
    g = Graph()
    g.input("x")
    g.input("t")
    g.param("W1", rng.standard_normal((5, 4)) / 2)
    g.param("b1", rng.standard_normal(5) / 4)
    g.param("W2", rng.standard_normal((3, 5)) / 2)
    g.param("b2", rng.standard_normal(3) / 4)
    h = g.op("tanh", g.op("linear", "x", "W1", "b1", name="fc1"), name="act")
    d = g.op("sub", g.op("linear", h, "W2", "b2", name="fc2"), "t", name="diff")
    g.output(g.op("mean", g.op("mul", d, d, name="sq"), name="loss"))
    return g, {"x": rng.standard_normal((3, 4)), "t": rng.standard_normal((3, 3))}


def _assert_holds_finite(res, back=None):
    assert res.holds, res.failures()
    assert all(np.all(np.isfinite(e)) for e in res.eps.values())
    if back is not None:
        assert back.holds, back.failures()
        assert all(np.all(np.isfinite(e)) for e in back.eps.values())


def _is_storage(A: arith.Arithmetic, x) -> bool:
    return bool(np.all(np.asarray(A.storage.is_representable(np.asarray(x)))))


# -- every preset ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_mlp_forward_backward_every_preset(preset):
    g, batch = _mlp()
    A = arith.get(preset)
    res = g.forward(preset, batch)
    back = g.backward(preset, res, loss="loss")
    _assert_holds_finite(res, back)
    for n in ("x", "W1", "fc1", "act", "loss"):       # leaves and op outputs are storage values
        assert _is_storage(A, res.runtime[n]), n
    for n in ("x", "W1", "b2"):
        assert _is_storage(A, back.runtime[n]), n
    assert {r["arith"] for r in res.report()} == {preset}
    assert res.fmt == A and res.order == "any"


def test_demo_cnn_forward_under_a_preset():
    g = demo_graph()
    res = g.forward("torch-cpu-bfloat16", {"x": demo_input()})
    _assert_holds_finite(res)
    nf = g.forward(formats.get("bfloat16"), {"x": demo_input()})
    # binary32 accumulation: a smaller bound on the last layer than TorchLean's bfloat16 NF
    assert np.max(res.eps["4"]) < np.max(nf.eps["4"])


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_demo_cnn_every_preset_forward_backward_train(preset):
    x, labels = demo_input(), demo_labels()
    res = demo_graph().forward(preset, {"x": x})
    _assert_holds_finite(res)
    g = demo_graph("cross_entropy")
    batch = {"x": x[:2], "target": labels[:2]}
    # any order: every enclosure holds; gradients may be inf where the preset's library may
    # store partial sums (PyTorch CPU's conv weight gradient in bfloat16) or may overflow fp8
    res = g.forward(preset, batch)
    back = g.backward(preset, res, loss="loss")
    assert res.holds and back.holds, (res.failures(), back.failures())
    A = f"{preset}:order=sequential"      # a stated order: every bound finite
    res = g.forward(A, batch)
    back = g.backward(A, res, loss="loss")
    _assert_holds_finite(res, back)
    run = train(g, A, SGD(lr=0.05), batch, loss="loss", steps=2)
    assert run.holds
    assert all(np.all(np.isfinite(v.eps)) for v in run.params.values())


@pytest.mark.parametrize("preset", ["torch-cpu-bfloat16", "fp8-e5m2"])
@pytest.mark.parametrize("opt", [SGD(lr=0.1), Momentum(lr=0.1), AdamW(lr=0.01)],
                         ids=["sgd", "momentum", "adamw"])
def test_mlp_training_in_a_preset(preset, opt):
    if preset.startswith("fp8") and isinstance(opt, AdamW):
        pytest.skip("AdamW's ε = 1e-8 rounds to 0 in fp8 storage")
    g, batch = _mlp(1)
    run = train(g, preset, opt, batch, loss="loss", steps=2)
    assert run.holds
    A = arith.get(preset)
    for v in run.params.values():
        assert _is_storage(A, v.runtime) and np.all(np.isfinite(v.eps))


@pytest.mark.parametrize("preset", PRESETS)
def test_any_order_bounds_every_reduction(preset):
    """softmax, avg_pool and cross_entropy have order-free bounds: under ``order=any`` the
    demo CNN with its loss, and each op alone, certify (and with a stated order too)."""
    g = demo_graph("cross_entropy")
    batch = {"x": demo_input()[:1], "target": demo_labels()[:1]}
    res = g.forward(preset, batch)
    assert res.holds and g.backward(preset, res, loss="loss").holds
    for op, params in (("softmax", {"dim": -1}),
                       ("avg_pool", {"kernel_size": (2,), "stride": (2,), "padding": (0,)})):
        h = Graph()
        h.input("x")
        h.op(op, "x", name="y", **params)
        assert h.forward(preset, {"x": np.ones((1, 2, 4))}).holds
        assert h.forward(f"{preset}:order=sequential", {"x": np.ones((1, 2, 4))}).holds


# -- the order lives in the arithmetic ----------------------------------------------------------
def test_order_argument_with_an_arithmetic():
    g, batch = _mlp()
    with pytest.raises(ValueError, match="order='sequential' contradicts the order any"):
        g.forward("torch-cpu-bfloat16", batch, order="sequential")
    with pytest.raises(ValueError, match="contradicts"):
        train(g, "torch-cpu-bfloat16", SGD(), batch, loss="loss", order="pairwise")
    assert g.forward("torch-cpu-bfloat16", batch, order="any").holds
    res = g.forward("torch-cpu-bfloat16:order=pairwise", batch)
    assert res.order == "pairwise" and res.holds
    # a Format takes the order argument, as it always did; an order it cannot parse is refused
    assert g.forward(formats.get("bfloat16"), batch, order="blocked:2").order == "blocked:2"
    with pytest.raises(ValueError, match="order"):
        g.forward(formats.get("bfloat16"), batch, order="sideways")


def test_a_format_and_its_nf_arithmetic_agree_bit_for_bit():
    """A Format, its name and ``arith.nf`` give the same runtime values and bounds (the format
    rules, node orders included)."""
    g, batch = _mlp()
    fmt = formats.get("bfloat16")
    a = g.forward(fmt, batch, order="pairwise")
    b = g.forward(arith.nf(fmt, "pairwise"), batch)
    c = g.forward("store=bfloat16,order=pairwise", batch)
    for r in (b, c):
        for n in a.runtime:
            assert np.array_equal(a.runtime[n], r.runtime[n]) and np.array_equal(a.eps[n], r.eps[n])
    ba, bb = g.backward(fmt, a, loss="loss"), g.backward(arith.nf(fmt, "pairwise"), b, loss="loss")
    for n in ba.runtime:
        assert np.array_equal(ba.runtime[n], bb.runtime[n]) and np.array_equal(ba.eps[n], bb.eps[n])


def test_backward_needs_the_forward_arithmetic():
    g, batch = _mlp()
    res = g.forward("torch-cpu-bfloat16", batch)
    with pytest.raises(ValueError, match="forward pass ran in torch-cpu-bfloat16, not in"):
        g.backward("torch-cpu-float16", res, loss="loss")
    with pytest.raises(ValueError, match="forward pass ran in"):
        g.backward(formats.get("bfloat16"), res, loss="loss")
    assert g.backward(res.fmt, res, loss="loss").holds
    assert g.backward(res.arith, res, loss="loss").holds


# -- per-node arithmetic maps and conversions ---------------------------------------------------
def test_map_keeps_the_first_layer_in_binary32():
    g = demo_graph()
    x = demo_input()
    res = g.forward("torch-cpu-bfloat16", {"x": x}, arith_map={"0": "torch-cpu-float32"})
    _assert_holds_finite(res)
    used = {r["node"]: r["arith"] for r in res.report()}
    # the layer's leaves follow it into binary32; the rest stays in bfloat16
    for n in ("x", "0.weight", "0.bias", "0"):
        assert used[n] == "torch-cpu-float32", n
    for n in ("4.weight", "1", "4"):
        assert used[n] == "torch-cpu-bfloat16", n
    w = g.nodes["0.weight"].value
    assert np.array_equal(res.runtime["0.weight"], formats.get("binary32").round(w))
    # relu reads the binary32 conv output rounded to bfloat16, and is charged for it
    bf16 = formats.get("bfloat16")
    read = bf16.round(res.runtime["0"])
    assert np.array_equal(res.runtime["1"], np.maximum(read, 0))
    assert np.all(res.eps["1"] >= np.where(read > 0, np.abs(read - res.runtime["0"]), 0))
    assert "arith" in format_table(res.report()).splitlines()[0]
    assert "arith" not in format_table(g.forward("torch-cpu-bfloat16", {"x": x}).report())


def test_map_with_gradients_and_training():
    g = demo_graph("cross_entropy")
    A = "torch-cpu-bfloat16:order=sequential"
    m = {"4": "torch-cpu-float32:order=sequential", "loss": "torch-cpu-float32:order=sequential"}
    batch = {"x": demo_input()[:2], "target": demo_labels()[:2]}
    res = g.forward(A, batch, arith_map=m)
    back = g.backward(A, res, loss="loss")
    _assert_holds_finite(res, back)
    # the flatten gradient (bfloat16) is the binary32 linear's input gradient rounded
    assert np.all(np.asarray(formats.get("bfloat16").is_representable(back.runtime["3"])))
    run = train(g, A, SGD(lr=0.1), batch, loss="loss", steps=1, arith_map=m)
    assert run.holds
    b32 = run.params["4.weight"].runtime      # updated in binary32: not all bfloat16 values
    assert not np.all(np.asarray(formats.get("bfloat16").is_representable(b32)))
    w0 = run.params["0.weight"].runtime
    assert np.all(np.asarray(formats.get("bfloat16").is_representable(w0)))


def test_arith_map_errors_name_the_entry():
    g, batch = _mlp()
    with pytest.raises(ValueError, match="arith_map: 'fc9' is not a node of the graph"):
        g.forward("torch-cpu-bfloat16", batch, arith_map={"fc9": "torch-cpu-float32"})
    with pytest.raises(ValueError, match=r"arith_map\['fc1'\]: unknown arithmetic 'float33'"):
        g.forward("torch-cpu-bfloat16", batch, arith_map={"fc1": "float33"})
    h = demo_graph("cross_entropy")
    with pytest.raises(ValueError, match="'target' is a label"):
        h.forward("torch-cpu-bfloat16", {}, arith_map={"target": "binary32"})
    with pytest.raises(ValueError, match="arith_map must map"):
        g.forward("torch-cpu-bfloat16", batch, arith_map=["fc1"])


def test_conversion_overflow_is_refused_naming_the_input():
    g = Graph()
    g.input("x")
    g.output(g.op("relu", "x", name="y"))
    with pytest.raises(ValueError, match=r"node 'y' \(relu\): input 'x' overflowed binary16"):
        g.forward("torch-cpu-float32", {"x": np.array([1e6])}, arith_map={"y": "torch-cpu-float16"})


def _chain(first: str, second: str, third: str):
    """x (in ``first``) → mul by w in ``second`` → sum in ``third``: forward conversions into
    ``second`` and ``third``, and gradient conversions back."""
    g = Graph()
    g.input("x")
    g.param("w", np.array([0.7, -1.3, 2.9, 0.11]))
    g.output(g.op("sum", g.op("mul", "x", "w", name="m"), name="s"))
    return g, {"x": first, "w": second, "m": second, "s": third}


def test_conversion_is_charged_exactly():
    """An exact op (``neg`` in TorchLean's bfloat16) reading binary32 values: its only error
    is the conversion, and its bound is that distance (rounded up)."""
    g = Graph()
    g.input("x")
    g.output(g.op("neg", "x", name="y"))
    x = np.array([1.0 + 2.0 ** -9, 3.0, -0.5 - 2.0 ** -12, 2.0 ** -140])
    res = g.forward(formats.get("bfloat16"), {"x": x}, arith_map={"x": "torch-cpu-float32"})
    assert res.holds and [r["arith"] for r in res.report()] == ["torch-cpu-float32", "bfloat16"]
    assert np.array_equal(res.runtime["x"], x) and np.all(res.eps["x"] == 0)
    gap = np.abs(formats.get("bfloat16").round(x) - x)
    assert np.all(gap[[0, 2, 3]] > 0) and gap[1] == 0
    assert np.all(res.eps["y"] >= gap) and np.all(res.eps["y"] <= gap * (1 + 2.0 ** -50))


def test_conversions_in_both_directions():
    """``m = x·w`` in binary32 read by a bfloat16 sum; the gradient of ``x`` (bfloat16) is the
    binary32 gradient rounded, charged, and encloses."""
    g, m = _chain("torch-cpu-bfloat16:order=sequential", "torch-cpu-float32:order=sequential",
                  "torch-cpu-bfloat16:order=sequential")
    x = np.array([1.0 + 2.0 ** -7, 3.0, -0.5, 1.25])
    res = g.forward(m["s"], {"x": x}, arith_map=m)
    back = g.backward(m["s"], res, loss="s")
    _assert_holds_finite(res, back)
    bf16 = formats.get("bfloat16")
    w32 = formats.get("binary32").round(res.runtime["w"])
    assert np.array_equal(back.runtime["x"], bf16.round(w32))
    assert np.all(back.eps["x"] >= np.abs(back.runtime["x"] - res.runtime["w"]))


def _stated(spec: str) -> str:
    """``spec`` with a sequential order (a preset takes ``:order=``, a spec ``,order=``)."""
    return spec + (",order=sequential" if spec.startswith("store=") else ":order=sequential")


STORAGES = ["torch-cpu-float32", "torch-cpu-bfloat16", "torch-cpu-float16", "fp8-e4m3",
            "fp8-e5m2", "store=[flt:p=5,emin=-10,emax=6]"]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(STORAGES), st.sampled_from(STORAGES), st.sampled_from(STORAGES),
       st.lists(st.floats(-60, 60, allow_nan=False, allow_subnormal=False), min_size=4,
                max_size=4),
       st.integers(-12, 4))
def test_conversion_chains_enclose_forward_and_backward(a, b, c, xs, scale):
    """Every chain of storage formats, values over a wide range (tiny to overflowing): the
    forward and reverse enclosures hold, or a value that overflows a storage is refused."""
    g, m = _chain(*(_stated(s) for s in (a, b, c)))
    x = np.array(xs) * 2.0 ** scale
    try:
        res = g.forward(m["s"], {"x": x}, arith_map=m)
    except ValueError as e:
        assert "overflowed" in str(e)
        return
    assert res.holds, res.failures()
    if np.all(np.isfinite(res.eps["s"])) and np.all(np.isfinite(res.runtime["s"])):
        try:
            back = g.backward(m["s"], res, loss="s")
        except ValueError as e:
            assert "overflowed" in str(e)
            return
        assert back.holds, back.failures()


def test_convert_is_the_identity_into_a_wider_storage():
    v = Value(np.array([1.5, 2.0 ** -130]), Interval.exact(np.array([1.5, 2.0 ** -130])),
              np.array([0.0, 1e-45]))
    bf16, b32 = formats.get("bfloat16"), formats.get("binary32")
    assert convert(v, bf16, b32) is v
    w = convert(v, b32, formats.get("binary16"))
    assert np.array_equal(w.runtime, [1.5, 0.0]) and w.spec is v.spec
    assert w.eps[0] == 0 and w.eps[1] >= 2.0 ** -130 + 1e-45


@pytest.mark.parametrize("name", ["binary16", "torch-cpu-float16", "fp8-e4m3", "fp8-e5m2",
                                  "torch-cpu-bfloat16"])
def test_overflowed_gradient_contributions_accumulate_to_inf(name):
    """``x`` feeds two products; one gradient contribution overflows the storage: the sum of
    the contributions is non-finite with an infinite bound and the report says why (the
    arithmetic's ``add`` rule refuses non-finite operands: it raised ``y contains NaN or
    inf``)."""
    A = arith.get(name)
    big = float(A.storage.max_finite) * 0.75
    g = Graph()
    g.input("x")
    g.param("wb", np.array([big]))
    g.param("w", np.array([1.0]))
    g.param("c", np.array([4.0]))
    s = g.op("add", g.op("mul", "x", "wb", name="y1"), g.op("mul", "x", "w", name="y2"), name="s")
    g.output(g.op("sum", g.op("mul", s, "c", name="l2"), name="loss"))
    fmt = A.storage if A.is_nf else A
    res = g.forward(fmt, {"x": np.array([2.0 ** -10])})
    back = g.backward(fmt, res, loss="loss")
    assert not np.all(np.isfinite(back.runtime["x"])) and np.isinf(back.eps["x"]).all()
    row = next(r for r in back.report() if r["node"] == "x")
    assert "overflowed" in row["reason"] and row["holds"] is not False
