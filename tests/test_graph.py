"""Graphs: forward/reverse machinery, context addition, the MLP/MSE gradient theorems checked
exactly in rationals, end-to-end enclosure for an MLP and a small CNN, graph errors."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from gmpy2 import mpq
from hypothesis import given, settings
from hypothesis import strategies as st

from nfbound import formats
from nfbound.graph import Graph, ctx_add, ctx_add_bound, format_table
from nfbound.bounds.upward import add_up
from nfbound.graph.forward import load_ops
from nfbound.ops.interval import Interval

FORMATS = ["bfloat16", "float16", "float8_e4m3fn", "binary32"]
Q = np.frompyfunc(mpq, 1, 1)


def _q(a) -> np.ndarray:
    return np.asarray(Q(np.asarray(a, dtype=np.float64)), dtype=object)


# -- context addition ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt_name", FORMATS + ["float8_e5m2", "decimal32"])
def test_ctx_add_bound_encloses(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(1)
    n = 6 if fmt_name == "decimal32" else 200
    xf, yf = rng.standard_normal(n) * 8, rng.standard_normal(n) * 8
    xf[:3] = 0.0                                       # exact operands: no rounding charged
    yf[3:6] = -xf[3:6] * (1 + 2.0 ** -12)              # cancellation
    x, y = fmt.round(xf), fmt.round(yf)
    xr = np.asarray(x, dtype=object) if np.asarray(x).dtype == object else _q(x)
    yr = np.asarray(y, dtype=object) if np.asarray(y).dtype == object else _q(y)
    ex = np.abs(np.asarray(xf)) * 2.0 ** -9
    ey = np.abs(np.asarray(yf)) * 2.0 ** -9
    # spec operands: at the far end of each error interval
    xs = Interval.exact(xr + _q(ex) * np.where(rng.random(n) < 0.5, -1, 1))
    ys = Interval.exact(yr + _q(ey) * np.where(rng.random(n) < 0.5, -1, 1))
    s, b = ctx_add(fmt, x, ex, y, ey)
    assert (xs + ys).encloses(s, b).all()
    assert np.array_equal(np.asarray(ctx_add_bound(fmt, x, ex, y, ey)), b)
    # an exactly zero operand charges no rounding: the bound is ε_x + ε_y alone
    assert np.array_equal(b[:3], add_up(ex[:3], ey[:3], np.zeros(3)))
    assert np.all(b[3:] > ey[3:])


def test_ctx_add_bound_overflow_is_inf():
    fmt = formats.get("float16")
    x = fmt.round(np.array([65504.0, 1.0]))
    s, b = ctx_add(fmt, x, np.zeros(2), x, np.zeros(2))
    assert math.isinf(s[0]) and math.isinf(b[0])
    assert s[1] == 2.0 and 2.0 ** -10 <= b[1] <= 2.0 ** -10 * (1 + 1e-12)   # half an ulp of 2


def test_ctx_add_bound_tie_half_ulp():
    fmt = formats.get("bfloat16")
    x, y = np.array([1.0]), np.array([2.0 ** -8])       # 1 + 2^-8 is a tie in bfloat16
    s, b = ctx_add(fmt, x, np.zeros(1), y, np.zeros(1))
    assert s[0] == 1.0 and 2.0 ** -8 <= b[0] <= 2.0 ** -8 * (1 + 1e-12)   # exactly reached
    assert Interval.exact(x + y).encloses(s, b).all()


# -- machinery on add/mul ---------------------------------------------------------------------------
def _shared_graph():
    """d = b·b + a, b = a + x, a = x·w: x used twice, b twice by one node, a twice."""
    g = Graph()
    x = g.input("x")
    w = g.param("w", np.array([0.3, -1.7, 2.1]))
    a = g.op("mul", x, w, name="a")
    b = g.op("add", a, x, name="b")
    c = g.op("mul", b, b, name="c")
    d = g.op("add", c, a, name="d")
    g.output(d)
    return g


@pytest.mark.parametrize("fmt_name", FORMATS + ["decimal32"])
def test_forward_backward_add_mul_replay_and_enclosure(fmt_name):
    fmt = formats.get(fmt_name)
    g = _shared_graph()
    # elementwise graph: seed each coordinate separately through a 1-element copy
    xv = np.array([1.37, -0.61, 0.0123])
    for k in range(3):
        gk = Graph()
        for name, node in g.nodes.items():
            if node.kind == "data":
                gk.input(name)
            elif node.kind == "param":
                gk.param(name, node.value[k:k + 1])
            else:
                gk.op(node.op, *node.inputs, name=name)
        gk.output("d")
        res = gk.forward(fmt, {"x": xv[k:k + 1]}, progress=False)
        assert res.holds
        back = gk.backward(fmt, res)
        assert back.holds
        # runtime replay: contributions accumulated in reverse topological order of consumers
        x, w = res.runtime["x"], res.runtime["w"]
        a, b = res.runtime["a"], res.runtime["b"]
        one = fmt.round(np.ones(1))
        gb = fmt.add(fmt.mul(one, b), fmt.mul(one, b))
        ga = fmt.add(one, gb)
        gx = fmt.add(gb, fmt.mul(ga, w))
        gw = fmt.mul(ga, x)
        assert np.array_equal(np.asarray(back.runtime["x"]), np.asarray(gx))
        assert np.array_equal(np.asarray(back.runtime["w"]), np.asarray(gw))
        # spec: exact derivatives of d = (xw + x)² + xw at the spec (unrounded) values
        xs, ws = mpq(float(xv[k])), mpq(float(g.nodes["w"].value[k]))
        assert back.spec["x"].lo[0] == 2 * (xs * ws + xs) * (ws + 1) + ws
        assert back.spec["w"].lo[0] == 2 * (xs * ws + xs) * xs + xs
        assert back.spec["x"].is_exact
        rows = back.report()
        assert [r["node"] for r in rows] == ["x", "w", "a", "b", "c", "d"]
        for r in rows + res.report():
            assert r["holds"] and r["max_observed"] <= r["max_bound"]


def test_spec_and_bounds_can_be_switched_off():
    fmt = formats.get("bfloat16")
    g = _shared_graph()
    xv = {"x": np.array([1.5, 2.25, -3.0])}
    full = g.forward(fmt, xv)
    rt = g.forward(fmt, xv, spec=False, bounds=False)
    assert rt.spec is None and rt.eps is None and rt.holds is None
    for n in full.runtime:
        assert np.array_equal(full.runtime[n], rt.runtime[n])
    rows = rt.report()
    assert rows[0]["max_bound"] is None and rows[0]["max_observed"] is None
    with pytest.raises(ValueError, match="bounds"):
        g.backward(fmt, rt, loss="d", bounds=True)


def test_unreached_param_has_exact_zero_gradient():
    fmt = formats.get("binary32")
    g = Graph()
    x = g.input("x")
    g.param("unused", np.array([1.0, 2.0]))
    y = g.op("mul", x, x, name="y")
    res = g.forward(fmt, {"x": np.array([0.1])})
    back = g.backward(fmt, res, loss=y)
    assert np.all(back.runtime["unused"] == 0) and np.all(back.eps["unused"] == 0)
    assert back.spec["unused"].lo[1] == 0


def test_report_reason_for_infinite_bound():
    fmt = formats.get("float16")
    g = Graph()
    x = g.input("x")
    g.op("mul", x, x, name="y")          # overflows: the next op would refuse the inf input
    res = g.forward(fmt, {"x": np.array([65504.0 * 0.75])}, spec=False)
    rows = {r["node"]: r for r in res.report()}
    assert math.isinf(rows["y"]["max_bound"]) and "overflow" in rows["y"]["reason"]
    assert "at index (0,)" in rows["y"]["reason"]
    assert rows["x"]["reason"] is None
    table = format_table(res.report())
    assert "overflow" in table


def test_consumer_of_an_overflowed_value_raises_naming_it():
    """Overflow policy: the overflowing node keeps its inf bound; a node consuming it raises,
    naming the overflowed input (forward), and so does backward through it."""
    fmt = formats.get("float16")
    g = Graph()
    x = g.input("x")
    y = g.op("mul", x, x, name="y")
    g.output(g.op("sum", y, name="s"))
    with pytest.raises(ValueError, match=r"node 's' \(sum\): input 'y' overflowed"):
        g.forward(fmt, {"x": np.array([65504.0 * 0.75, 1.0])})
    g2 = Graph()
    x2 = g2.input("x")
    g2.output(g2.op("sum", g2.op("mul", x2, x2, name="y"), name="s"))
    res = g2.forward(fmt, {"x": np.array([200.0, 1.0])})      # forward finite: 40001 < 65504
    assert np.all(np.isfinite(res.eps["s"]))
    with pytest.raises(ValueError, match=r"overflowed"):
        g2.backward(fmt, res.__class__(res.graph, res.fmt, res.order,
                                       {**res.runtime, "y": np.array([np.inf, 1.0])},
                                       res.spec, res.eps), loss="s")


def test_graph_checks_the_grid_once_per_leaf():
    """Inside the graphs the rules skip the grid test (every value is a format value by
    construction); a parameter override that is off the grid is refused on entry, and the
    trust does not leak out of the evaluation."""
    from nfbound.graph.forward import Value
    from nfbound.ops import checks
    fmt = formats.get("bfloat16")
    g = Graph()
    g.input("x")
    g.param("w", np.array([0.5, 0.25]))
    g.output(g.op("mul", "x", "w", name="y"))
    x = {"x": np.array([1.0, 3.0])}
    assert g.forward(fmt, x).holds
    off = Value(np.array([0.1, 0.25]), Interval.exact(np.array([0.1, 0.25])), np.zeros(2))
    with pytest.raises(ValueError, match=r"node 'w' \(param\).*not bfloat16 values"):
        g.forward(fmt, x, params={"w": off})
    with pytest.raises(ValueError, match="not bfloat16 values"):
        checks.format_value("x", np.array([0.1]), fmt)


# -- graph errors ---------------------------------------------------------------------------------
def test_unknown_op_names_node():
    g = Graph()
    x = g.input("x")
    with pytest.raises(ValueError, match="'bad'.*unknown op 'frobnicate'"):
        g.op("frobnicate", x, name="bad")


def test_missing_input_names_node():
    g = Graph()
    x = g.input("x")
    g.op("add", x, "nowhere", name="n1")
    with pytest.raises(ValueError, match="node 'n1': input 'nowhere'"):
        g.forward(formats.get("bfloat16"), {"x": np.ones(2)})


def test_cycle_names_node():
    g = Graph()
    x = g.input("x")
    g.op("add", x, "c2", name="c1")
    g.op("mul", "c1", x, name="c2")
    with pytest.raises(ValueError, match="cycle through 'c(1|2)'"):
        g.topological_order()


def test_missing_input_value_and_shape_error_name_node():
    fmt = formats.get("bfloat16")
    g = Graph()
    x, y = g.input("x"), g.input("y")
    g.op("add", x, y, name="s")
    with pytest.raises(ValueError, match="input 'y'"):
        g.forward(fmt, {"x": np.ones(2)})
    with pytest.raises(ValueError, match="node 's' \\(add\\).*same shape"):
        g.forward(fmt, {"x": np.ones(2), "y": np.ones(3)})
    with pytest.raises(ValueError, match="already exists"):
        g.input("x")
    with pytest.raises(ValueError, match="NaN"):
        g.forward(fmt, {"x": np.array([np.nan, 1.0]), "y": np.ones(2)})


# -- MLP with MSE: spec gradients equal the closed forms exactly (seed MlpMse) --------------------
def _needs(*names):
    ops = load_ops()
    missing = [n for n in names if n not in ops.REGISTRY]
    if missing:
        pytest.fail(f"ops not registered yet: {missing}")


def _mlp_graph(rng, d_in=4, d_hid=5, d_out=3):
    return _mlp_graph_of(rng.standard_normal((d_hid, d_in)), rng.standard_normal(d_hid) * 0.5,
                         rng.standard_normal((d_out, d_hid)), rng.standard_normal(d_out) * 0.5)


def _mlp_graph_of(W1v, b1v, W2v, b2v):
    g = Graph()
    x, t = g.input("x"), g.input("t")
    W1, b1 = g.param("W1", W1v), g.param("b1", b1v)
    W2, b2 = g.param("W2", W2v), g.param("b2", b2v)
    z1 = g.op("linear", x, W1, b1, name="z1")
    a1 = g.op("relu", z1, name="a1")
    y = g.op("linear", a1, W2, b2, name="y")
    g.op("mse_loss", y, t, name="loss")
    g.output("loss")
    return g


def _matvec(A, v):
    return np.array([sum((A[i, j] * v[j] for j in range(A.shape[1])), mpq(0))
                     for i in range(A.shape[0])], dtype=object)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlp_mse_spec_gradients_equal_closed_forms(seed):
    _needs("linear", "relu", "mse_loss")
    rng = np.random.default_rng(seed)
    g = _mlp_graph(rng)
    xv, tv = rng.standard_normal((1, 4)), rng.standard_normal((1, 3))
    res = g.forward(formats.get("bfloat16"), {"x": xv, "t": tv})
    back = g.backward(formats.get("bfloat16"), res, loss="loss")
    assert res.holds and back.holds
    W1, b1 = _q(g.nodes["W1"].value), _q(g.nodes["b1"].value)
    W2, b2 = _q(g.nodes["W2"].value), _q(g.nodes["b2"].value)
    x, t = _q(xv[0]), _q(tv[0])
    z1 = _matvec(W1, x) + b1
    assert all(v != 0 for v in z1), "the theorem needs z1 away from the ReLU kink"
    a1 = np.array([v if v > 0 else mpq(0) for v in z1], dtype=object)
    y = _matvec(W2, a1) + b2
    n = y.size
    mse_grad = (y - t) * mpq(2, n)                       # (2/n)(y − t)
    relu_d = np.array([mpq(1) if v > 0 else mpq(0) for v in z1], dtype=object)
    delta1 = relu_d * _matvec(W2.T, mse_grad)            # relu'(z1) ⊙ W2ᵀ mseGrad
    expected = {
        "W2": np.outer(mse_grad, a1),                    # mseGrad ⊗ a1
        "b2": mse_grad,
        "b1": delta1,
        "W1": np.outer(delta1, x),                       # (relu'(z1) ⊙ W2ᵀ mseGrad) ⊗ x
        "x": _matvec(W1.T, delta1)[None, :],             # W1ᵀ(relu'(z1) ⊙ W2ᵀ mseGrad)
    }
    assert res.spec["loss"].lo.reshape(-1)[0] == sum((y - t) ** 2) / n
    for name, e in expected.items():
        s = back.spec[name]
        assert s.is_exact, name
        assert s.shape == e.shape, name
        assert np.all(s.lo == e), f"∂L/∂{name} differs from the closed form"
        # and the closed form is not trivially zero
    assert any(v != 0 for v in expected["W1"].reshape(-1))


def _closed_form_b1(g, xv, tv, relu_at_0):
    """``∂L/∂b1 = relu'(z1) ⊙ W2ᵀ mseGrad`` in rationals, with ``relu'(0) = relu_at_0``."""
    W1, b1 = _q(g.nodes["W1"].value), _q(g.nodes["b1"].value)
    W2, b2 = _q(g.nodes["W2"].value), _q(g.nodes["b2"].value)
    z1 = _matvec(W1, _q(xv[0])) + b1
    a1 = np.array([v if v > 0 else mpq(0) for v in z1], dtype=object)
    mse_grad = (_matvec(W2, a1) + b2 - _q(tv[0])) * mpq(2, tv.shape[1])
    d = np.array([mpq(1) if v > 0 else (mpq(relu_at_0) if v == 0 else mpq(0)) for v in z1],
                 dtype=object)
    return z1, d * _matvec(W2.T, mse_grad)


def test_mlp_mse_gradient_at_a_relu_kink():
    """z1[0] = 0 exactly in the spec while the rounded runtime puts it above 0: the spec
    gradient follows PyTorch's relu'(0) = 0 (the closed form with relu'(0) = 1 differs, so the
    comparison can fail), and the runtime gradient — computed with relu' = 1 — still lies
    within its bound (the relu VJP bound must cover the kink)."""
    _needs("linear", "relu", "mse_loss")
    fmt = formats.get("bfloat16")
    for seed in range(50):        # dyadic data, so the spec kink is exact; find a runtime ẑ > 0
        rng = np.random.default_rng(seed)
        W1 = np.round(rng.standard_normal((5, 4)) * 64) / 64
        xv = np.round(rng.standard_normal((1, 4)) * 4096) / 4096
        b1 = rng.standard_normal(5) * 0.5
        b1[0] = -float(W1[0] @ xv[0])               # exact: few bits in every term
        assert mpq(b1[0]) == -sum(mpq(float(w)) * mpq(float(v)) for w, v in zip(W1[0], xv[0]))
        g = _mlp_graph_of(W1, b1, rng.standard_normal((3, 5)), rng.standard_normal(3) * 0.5)
        tv = rng.standard_normal((1, 3))
        res = g.forward(fmt, {"x": xv, "t": tv})
        if res.runtime["z1"][0, 0] > 0:
            break
    else:
        pytest.fail("no seed puts the runtime above the kink")
    assert res.spec["z1"].is_exact and res.spec["z1"].lo[0, 0] == 0
    back = g.backward(fmt, res, loss="loss")
    assert res.holds and back.holds
    z1, at0 = _closed_form_b1(g, xv, tv, relu_at_0=0)
    assert z1[0] == 0
    assert back.spec["b1"].is_exact and np.all(back.spec["b1"].lo == at0)
    _, at1 = _closed_form_b1(g, xv, tv, relu_at_0=1)
    assert at1[0] != 0 and not np.all(back.spec["b1"].lo == at1)
    # the runtime took the other branch: a nonzero gradient where the spec's is 0, enclosed
    assert back.runtime["b1"][0] != 0 and back.spec["b1"].lo[0] == 0
    assert back.eps["b1"][0] >= abs(back.runtime["b1"][0])


# -- end-to-end enclosure: MLP and small CNN ----------------------------------------------------------
def _cnn_graph(rng, c_in=1, c_out=2, hw=6, n_cls=3):
    g = Graph()
    x, t = g.input("x"), g.input("t", kind="label")
    g.param("conv1.weight", rng.standard_normal((c_out, c_in, 3, 3)) * 0.5)
    g.param("conv1.bias", rng.standard_normal(c_out) * 0.1)
    g.op("conv", x, "conv1.weight", "conv1.bias", stride=(1, 1), padding=(1, 1), name="conv1")
    g.op("relu", "conv1", name="relu1")
    g.op("max_pool", "relu1", kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), name="pool1")
    g.op("flatten", "pool1", start_dim=1, name="flat")
    feat = c_out * (hw // 2) ** 2
    g.param("fc.weight", rng.standard_normal((n_cls, feat)) * 0.3)
    g.param("fc.bias", rng.standard_normal(n_cls) * 0.1)
    g.op("linear", "flat", "fc.weight", "fc.bias", name="fc")
    g.op("cross_entropy", "fc", t, name="loss")
    g.output("loss")
    return g


def _assert_all_hold(res, back):
    for r in res.report():
        assert r["holds"], f"forward enclosure failed at {r}"
    for r in back.report():
        assert r["holds"], f"gradient enclosure failed at {r}"


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_mlp_end_to_end_enclosure(fmt_name):
    _needs("linear", "relu", "mse_loss")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(11)
    g = _mlp_graph(rng)
    batch = {"x": rng.standard_normal((3, 4)), "t": rng.standard_normal((3, 3))}
    res = g.forward(fmt, batch)
    back = g.backward(fmt, res, loss="loss")
    _assert_all_hold(res, back)
    assert back.eps["W1"].shape == (5, 4) and np.all(np.isfinite(back.eps["W1"]))


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_cnn_end_to_end_enclosure(fmt_name):
    _needs("conv", "relu", "max_pool", "flatten", "linear", "cross_entropy")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(12)
    g = _cnn_graph(rng)
    batch = {"x": rng.standard_normal((2, 1, 6, 6)), "t": np.array([0, 2])}
    res = g.forward(fmt, batch)
    back = g.backward(fmt, res, loss="loss")
    _assert_all_hold(res, back)
    assert back.spec["x"].shape == (2, 1, 6, 6)
    assert "t" not in back.runtime                       # labels are not differentiable


# -- 0-d values: graph inputs, parameters, every elementwise op, the interval spec ----------------
ELEMENTWISE_MODULES = ("nfbound.ops.elementwise", "nfbound.ops.transcendental")
ZERO_D_FORMATS = ["bfloat16", "float8_e4m3fn", "binary16:rounding=up", "decimal32"]


def test_adding_two_0d_nodes():
    """Two 0-d parameters added: forward, backward and report work and hold (the interval spec
    returned a bare ``mpq`` for 0-d operands: ``AttributeError: ... no attribute 'shape'``)."""
    fmt = formats.get("bfloat16")
    g = Graph()
    g.param("a", np.float64(1.5))
    g.param("b", 1 / 3)
    g.output(g.op("add", "a", "b", name="s"))
    res = g.forward(fmt, {})
    back = g.backward(fmt, res)
    _assert_all_hold(res, back)
    assert res.spec["s"].shape == () and np.shape(res.runtime["s"]) == () == res.eps["s"].shape
    assert res.runtime["s"] == fmt.add(fmt.round(np.array(1.5)), fmt.round(np.array(1 / 3)))
    assert [r["shape"] for r in res.report()] == [(), (), ()]


def _interval_0d(draw) -> Interval:
    lo = draw(st.fractions(min_value=-8, max_value=8, max_denominator=64))
    w = draw(st.sampled_from([0, 0, 1]) | st.fractions(0, 4, max_denominator=16))
    return Interval(np.asarray(mpq(lo), dtype=object), np.asarray(mpq(lo + w), dtype=object)) \
        if w else Interval.exact(np.asarray(mpq(lo), dtype=object))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_interval_ops_on_0d_stay_0d_arrays(data):
    """Every operation of the interval spec on 0-d enclosures gives 0-d object arrays (never a
    bare ``mpq``) with the endpoints of the same operation on 1-element arrays, and an exact
    interval stays exact (``lo is hi``)."""
    a, b = _interval_0d(data.draw), _interval_0d(data.draw)

    def one(v: Interval) -> Interval:
        return v.map_exact(lambda e: e.reshape(1))

    ops_ = {"neg": lambda x, y: -x, "add": lambda x, y: x + y, "sub": lambda x, y: x - y,
            "rsub": lambda x, y: 2 - x, "mul": lambda x, y: x * y, "abs": lambda x, y: x.abs(),
            "max": lambda x, y: x.maximum(y), "getitem": lambda x, y: x[...],
            "monotone": lambda x, y: x.monotone(lambda e: e - 1, lambda e: e + 1, False)}
    if not bool(np.any((b.lo <= 0) & (b.hi >= 0))):
        ops_["div"] = lambda x, y: x / y
    for name, f in ops_.items():
        r, r1 = f(a, b), f(one(a), one(b))
        for e, e1 in ((r.lo, r1.lo), (r.hi, r1.hi)):
            assert isinstance(e, np.ndarray) and e.shape == () and e.dtype == object, name
            assert e[()] == e1[0], name
        assert (r.lo is r.hi) == (r1.lo is r1.hi), name
        assert r.rad.shape == r.mid.shape == r.to_float().shape == r.distance(0.5).shape == ()
        assert r.encloses(np.float64(0.5), np.inf).shape == ()


def _zero_d(xs, as_array: bool):
    """The first element of each input: a 0-d array, or a Python scalar (float, int label, or
    the exact ``mpq`` of an object-array format)."""
    out = []
    for x in xs:
        v = np.asarray(x).reshape(-1)[0]
        if as_array:
            out.append(np.asarray(v))
        elif isinstance(v, np.integer):
            out.append(int(v))
        else:
            out.append(v if not isinstance(v, np.floating) else float(v))
    return tuple(out)


@pytest.mark.parametrize("fmt_name", ZERO_D_FORMATS)
@pytest.mark.parametrize("op_name", sorted(load_ops().REGISTRY))
def test_every_op_on_0d_inputs(op_name, fmt_name):
    """Each registered op fed 0-d inputs (0-d arrays and Python scalars), forward and VJP, with
    exact and perturbed spec inputs: the elementwise and transcendental ops must accept them,
    return 0-d results and bounds, and enclose; any other op either does the same or refuses
    with a ``ValueError`` (never another exception, never a wrong shape)."""
    from test_registry import _perturbed_spec, _seed, _upstream
    ops = load_ops()
    fmt, P = formats.get(fmt_name), ops.get(op_name)
    elementwise = P.runtime.__module__ in ELEMENTWISE_MODULES
    rng = np.random.default_rng(_seed(op_name, fmt_name, "0-d"))
    for trial in range(4):
        xs, params = P.sample(rng, fmt)
        xs = _zero_d(xs, as_array=trial % 2 == 0)
        try:
            out = P.runtime(fmt, *xs, **params)
        except ValueError:
            assert not elementwise, f"{op_name} refuses 0-d inputs"
            return
        rel = 0.0 if trial < 2 else 2.0 ** -10
        spec_in, eps = zip(*(_perturbed_spec(rng, x, rel) for x in xs))
        try:
            spec_out = P.spec(*spec_in, **params)
        except ValueError:
            continue   # a spec domain error (sqrt or log of an enclosure reaching 0)
        bound = P.bound(fmt, xs, eps, **params)
        if elementwise:
            assert np.shape(out) == spec_out.shape == np.shape(bound) == ()
        assert spec_out.encloses(out, bound).all(), (op_name, xs)
        g, eg, g_spec = _upstream(rng, fmt, np.shape(out), rel)
        grads = P.vjp_runtime(fmt, xs, g, **params)
        grads_spec = P.vjp_spec(spec_in, g_spec, **params)
        grads_bound = P.vjp_bound(fmt, xs, eps, g, eg, **params)
        for x, gr, gs, gb in zip(xs, grads, grads_spec, grads_bound):
            if gr is None:
                continue
            assert np.shape(gr) == gs.shape == np.shape(gb) == np.shape(x) == ()
            assert gs.encloses(gr, gb).all(), (op_name, xs)


@pytest.mark.parametrize("fmt_name", ZERO_D_FORMATS)
def test_0d_graph_through_every_elementwise_op(fmt_name):
    """A scalar data input (Python float) and 0-d parameters through every elementwise and
    transcendental op, in one graph: forward, backward, report and three training steps of
    the 0-d parameters hold, every value and gradient 0-d."""
    from nfbound.graph import SGD, AdamW, Momentum, train
    ops = load_ops()
    fmt = formats.get(fmt_name)
    g = Graph()
    g.input("x")
    g.param("w", 0.75)
    g.param("c", np.asarray(1.25))
    g.op("mul", "x", "w", name="h")
    last, k = "h", 0
    for name, P in sorted(ops.REGISTRY.items()):
        if P.runtime.__module__ not in ELEMENTWISE_MODULES:
            continue
        k += 1
        n_in = len([p for p in inspect.signature(P.runtime).parameters.values()
                    if p.kind == p.POSITIONAL_OR_KEYWORD]) - 1
        params = {"c": 0.5} if "c" in inspect.signature(P.runtime).parameters else {}
        arg = {"abs": last, "sqrt": f"pos{k}", "safe_log": f"pos{k}", "exp": f"small{k}"}
        if name in ("sqrt", "safe_log"):   # keep the argument away from 0: a softplus
            g.op("softplus", last, name=f"pos{k}")
        if name == "exp":
            g.op("tanh", last, name=f"small{k}")
        ins = (arg.get(name, last), "c")[:n_in]
        last = g.op(name, *ins, name=f"{name}{k}", **params)
    g.output(last)
    for x in (0.5, np.float64(-0.375), np.asarray(0.25)):
        res = g.forward(fmt, {"x": x})
        back = g.backward(fmt, res)
        _assert_all_hold(res, back)
        assert all(np.shape(v) == () for v in (*res.runtime.values(), *back.runtime.values()))
        assert all(r["shape"] == () for r in res.report() + back.report())
    for opt in (SGD(lr=0.25), Momentum(lr=0.25), AdamW(lr=0.25, eps=1e-3)):
        run = train(g, fmt, opt, {"x": 0.5}, steps=3)
        assert run.holds, (opt, [s.failures() for s in run.steps])
        assert all(np.shape(v.runtime) == v.spec.shape == np.shape(v.eps) == ()
                   for v in run.params.values())


# -- conv without bias: the registry's enclosure check ---------------------------------------------
@pytest.mark.parametrize("fmt_name", ["bfloat16", "float8_e5m2", "decimal32", "binary16:rounding=up"])
@pytest.mark.parametrize("op_name", ["conv", "conv_transpose"])
def test_conv_without_bias_enclosure(op_name, fmt_name, monkeypatch):
    """conv and conv_transpose without bias (what a bias-free layer imports as): forward and
    VJP enclosure with exact and perturbed inputs, replay and order-free bounds — the
    registry's check on the op's own samples with the bias left out."""
    import dataclasses

    from test_registry import check_enclosure
    ops = load_ops()
    P = ops.get(op_name)

    def sample(rng, fmt):
        xs, params = P.sample(rng, fmt)
        return xs[:2], params
    monkeypatch.setitem(ops.REGISTRY, op_name, dataclasses.replace(P, sample=sample))
    check_enclosure(op_name, fmt_name, trials=4)
