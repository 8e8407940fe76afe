"""Training with certified parameter bounds: SGD, Momentum, AdamW on an MLP and a small CNN."""
from __future__ import annotations

import numpy as np
import pytest
from gmpy2 import mpq

from nfbound import formats
from nfbound.graph import SGD, AdamW, Graph, Momentum, train
from nfbound.graph.forward import load_ops
from nfbound.graph.train import constant

FORMATS = ["bfloat16", "float16", "float8_e4m3fn", "binary32"]


def _needs(*names):
    ops = load_ops()
    missing = [n for n in names if n not in ops.REGISTRY]
    if missing:
        pytest.fail(f"ops not registered yet: {missing}")


def _mlp(rng, d_in=4, d_hid=5, d_out=3):
    g = Graph()
    g.input("x")
    g.input("t")
    g.param("W1", rng.standard_normal((d_hid, d_in)) * 0.5)
    g.param("b1", rng.standard_normal(d_hid) * 0.1)
    g.param("W2", rng.standard_normal((d_out, d_hid)) * 0.5)
    g.param("b2", rng.standard_normal(d_out) * 0.1)
    g.op("linear", "x", "W1", "b1", name="z1")
    g.op("relu", "z1", name="a1")
    g.op("linear", "a1", "W2", "b2", name="y")
    g.op("mse_loss", "y", "t", name="loss")
    g.output("loss")
    return g


def _cnn(rng, c_out=2, hw=6, n_cls=3):
    g = Graph()
    g.input("x")
    g.input("t", kind="label")
    g.param("conv1.weight", rng.standard_normal((c_out, 1, 3, 3)) * 0.5)
    g.param("conv1.bias", rng.standard_normal(c_out) * 0.1)
    g.op("conv", "x", "conv1.weight", "conv1.bias", stride=(1, 1), padding=(1, 1), name="conv1")
    g.op("relu", "conv1", name="relu1")
    g.op("max_pool", "relu1", kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), name="pool1")
    g.op("flatten", "pool1", start_dim=1, name="flat")
    g.param("fc.weight", rng.standard_normal((n_cls, c_out * (hw // 2) ** 2)) * 0.3)
    g.param("fc.bias", rng.standard_normal(n_cls) * 0.1)
    g.op("linear", "flat", "fc.weight", "fc.bias", name="fc")
    g.op("cross_entropy", "fc", "t", name="loss")
    g.output("loss")
    return g


def _mlp_batches(rng, k=2):
    return [{"x": rng.standard_normal((3, 4)), "t": rng.standard_normal((3, 3))} for _ in range(k)]


def _cnn_batches(rng, k=2):
    return [{"x": rng.standard_normal((2, 1, 6, 6)), "t": rng.integers(0, 3, size=2)}
            for _ in range(k)]


OPTIMIZERS = {"sgd": SGD(lr=0.05), "momentum": Momentum(lr=0.05, momentum=0.9),
              "adamw": AdamW(lr=0.01, eps=1e-3, weight_decay=0.01)}


def _check_all_steps(result, n_params):
    """Three steps; in each, every forward value, every gradient and every updated parameter
    lies within its bound (exact tests), and the loss and parameter bounds are finite."""
    assert len(result.steps) == 3
    for s in result.steps:
        assert len(s.params) == n_params
        assert s.forward_failed == () and s.backward_failed == (), (s.step, s.failures())
        assert s.failures() == [] and s.holds() is True
        for name, v in s.params.items():
            assert v.spec.encloses(v.runtime, v.eps).all(), f"step {s.step}: {name} escapes"
            assert np.all(np.isfinite(v.eps)), f"step {s.step}: parameter {name} bound is inf"
        assert np.all(np.isfinite(s.loss.eps)), f"step {s.step}: loss bound is inf"
    assert result.holds() is True


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_sgd_mlp_three_steps_enclosed_and_replayed(fmt_name):
    _needs("linear", "relu", "mse_loss", "sub")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(3)
    g, batches = _mlp(rng), _mlp_batches(rng)
    lr = 0.05
    res = train(g, fmt, SGD(lr=lr), batches, loss="loss", steps=3)
    _check_all_steps(res, 4)
    # step 1 replayed by hand: p' = RN(p − RN(RN(lr)·g)), spec p − lr·g exactly
    p0 = g.initial_params(fmt)
    fw = g.forward(fmt, batches[0], params=p0)
    bw = g.backward(fmt, fw, loss="loss")
    lr_rt = fmt.round(np.array([lr]))[0]
    for name in ("W1", "b2"):
        want = fmt.sub(p0[name].runtime, fmt.mul(np.full(np.shape(p0[name].runtime), lr_rt),
                                                  bw.runtime[name]))
        got = res.steps[0].params[name]
        assert np.array_equal(got.runtime, want)
        spec_want = p0[name].spec.lo - bw.spec[name].lo * mpq(lr)
        assert got.spec.is_exact and np.all(got.spec.lo == spec_want)
    # the parameters moved
    assert not np.array_equal(res.params["W1"].runtime, p0["W1"].runtime)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("opt", ["momentum", "adamw"])
def test_momentum_adamw_mlp_enclosed(fmt_name, opt):
    _needs("linear", "relu", "mse_loss", "sub", "div", "sqrt")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(4)
    g = _mlp(rng)
    res = train(g, fmt, OPTIMIZERS[opt], _mlp_batches(rng), loss="loss", steps=3)
    _check_all_steps(res, 4)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adamw"])
def test_cnn_three_steps_enclosed(fmt_name, opt):
    _needs("conv", "relu", "max_pool", "flatten", "linear", "cross_entropy", "sub", "div", "sqrt")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(5)
    g = _cnn(rng)
    res = train(g, fmt, OPTIMIZERS[opt], _cnn_batches(rng), loss="loss", steps=3)
    _check_all_steps(res, 4)


def test_adamw_first_step_replayed():
    """Step 1 of AdamW by hand in the documented order (the floor-bounded division keeps the
    runtime of RN(m̂ / d)), spec exact where the roots are."""
    _needs("linear", "relu", "mse_loss", "sub", "div", "sqrt")
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(8)
    g, b = _mlp(rng), _mlp_batches(rng, 1)
    opt = OPTIMIZERS["adamw"]
    got = train(g, fmt, opt, b, steps=1).params
    p0 = g.initial_params(fmt)
    bw = g.backward(fmt, g.forward(fmt, b[0], params=p0))
    lr, b1, b2 = mpq(opt.lr), mpq(opt.betas[0]), mpq(opt.betas[1])
    for name in ("W1", "b2"):
        p, gr = p0[name].runtime, bw.runtime[name]

        def c(q):
            return constant(fmt, q, np.shape(p)).runtime
        p1 = fmt.mul(c(1 - lr * mpq(opt.weight_decay)), p)
        m = fmt.add(fmt.mul(c(b1), np.zeros(np.shape(p))), fmt.mul(c(1 - b1), gr))
        v = fmt.add(fmt.mul(c(b2), np.zeros(np.shape(p))), fmt.mul(c(1 - b2), fmt.mul(gr, gr)))
        d = fmt.add(fmt.sqrt(fmt.div(v, c(1 - b2))), c(mpq(opt.eps)))
        want = fmt.sub(p1, fmt.mul(c(lr), fmt.div(fmt.div(m, c(1 - b1)), d)))
        assert np.array_equal(got[name].runtime, want), name
        assert np.all(np.isfinite(got[name].eps))


def test_divide_floor_finite_where_div_is_not():
    """``|ŷ| ≤ ε_y``: the plain div rule gives inf; with the spec denominator known to be
    ≥ floor the bound is finite, the runtime is the same, and it encloses the extreme spec
    points (denominator at the floor and at its top)."""
    from nfbound.graph.forward import Value
    from nfbound.graph.train import apply, divide_floor
    from nfbound.ops.interval import Interval
    fmt = formats.get("bfloat16")
    floor = 2.0 ** -10
    x_rt, y_rt = fmt.round(np.array([0.75, -0.5])), fmt.round(np.array([2.0 ** -9, 2.0 ** -8]))
    ex, ey = np.array([2.0 ** -6, 2.0 ** -6]), np.array([2.0 ** -6, 2.0 ** -6])
    lo_y = np.array([mpq(floor), mpq(floor)], dtype=object)
    hi_y = np.array([mpq(float(v)) + mpq(2.0 ** -6) for v in y_rt], dtype=object)
    xs = Interval.exact(np.array([mpq(0.75) + mpq(2.0 ** -6), mpq(-0.5)], dtype=object))
    x = Value(x_rt, xs, ex)
    y = Value(y_rt, Interval(lo_y, hi_y), ey)
    plain = apply(fmt, "div", x, y)
    fl = divide_floor(fmt, x, y, floor)
    assert np.all(np.isinf(plain.eps)) and np.all(np.isfinite(fl.eps))
    assert np.array_equal(plain.runtime, fl.runtime)
    assert fl.spec.encloses(fl.runtime, fl.eps).all()
    for yv in (lo_y, hi_y):                      # the extreme quotients, exactly
        q = Interval.exact(xs.lo / yv)
        assert q.encloses(fl.runtime, fl.eps).all()
    # the premise is checked: a spec denominator below the floor is refused
    with pytest.raises(ValueError, match="floor"):
        divide_floor(fmt, x, y, 2.0 ** -9)
    with pytest.raises(ValueError, match="floor"):
        divide_floor(fmt, x, y, 0.0)


def _patched(monkeypatch, op, **rules):
    """Replace rules of the registered primitive ``op`` (and drop its fused rules)."""
    import dataclasses
    ops = load_ops()
    P = ops.REGISTRY[op]
    monkeypatch.setitem(ops.REGISTRY, op, dataclasses.replace(P, fused=None, vjp_fused=None,
                                                              **rules))


def test_step_verdicts_catch_forward_gradient_and_parameter_failures(monkeypatch):
    """The per-step verdicts can fail: a zero forward bound for relu breaks the forward
    enclosure, zero VJP bounds for linear break the gradients (and the parameters after the
    update, whose bounds build on them)."""
    _needs("linear", "relu", "mse_loss", "sub")
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(9)
    g, b = _mlp(rng), _mlp_batches(rng, 1)
    with monkeypatch.context() as m:
        _patched(m, "linear", vjp_bound=lambda fmt, xs, eps, gr, eg, **kw: tuple(
            np.zeros(np.shape(x)) for x in xs))
        res = train(g, fmt, SGD(lr=0.05), b, steps=1)
        s = res.steps[0]
        assert s.forward_failed == () and {"W1", "W2"} <= set(s.backward_failed)
        assert "parameter W1" in s.failures() and s.holds() is False and res.holds() is False
    with monkeypatch.context() as m:
        _patched(m, "relu", bound=lambda fmt, xs, eps: np.zeros(np.shape(xs[0])))
        s = train(g, fmt, SGD(lr=0.05), b, steps=1).steps[0]
        assert "a1" in s.forward_failed and s.holds() is False


def test_step_verdicts_without_spec_or_bounds_are_none():
    _needs("linear", "relu", "mse_loss", "sub")
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(10)
    g, b = _mlp(rng), _mlp_batches(rng, 1)
    full = train(g, fmt, SGD(lr=0.05), b, steps=1)
    for kw in ({"spec": False}, {"bounds": False}, {"spec": False, "bounds": False}):
        res = train(g, fmt, SGD(lr=0.05), b, steps=1, **kw)
        s = res.steps[0]
        assert s.holds() is None and s.failures() is None and res.holds() is None
        for n, v in s.params.items():            # the runtime does not depend on the flags
            assert np.array_equal(v.runtime, full.params[n].runtime)


def test_momentum_first_step_equals_sgd():
    """v₀ = 0: RN(μ·0) = 0 and RN(0 + g) = g exactly, so step 1 is an SGD step."""
    _needs("linear", "relu", "mse_loss", "sub")
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(7)
    g, b = _mlp(rng), _mlp_batches(rng, 1)
    a = train(g, fmt, SGD(lr=0.05), b, steps=1).params
    m = train(g, fmt, Momentum(lr=0.05, momentum=0.9), b, steps=1).params
    for n in a:
        assert np.array_equal(a[n].runtime, m[n].runtime)
        assert np.all(a[n].spec.lo == m[n].spec.lo)
        # the bound of RN(0 + g) = g carries only extra upward binary64 steps
        assert np.all(m[n].eps >= a[n].eps) and np.allclose(m[n].eps, a[n].eps, rtol=1e-12)


def test_constant_rounding_and_bound():
    fmt = formats.get("bfloat16")
    c = constant(fmt, mpq(1, 10), (2,))
    assert c.runtime[0] == fmt.round(np.array([0.1]))[0]
    assert c.spec.lo[0] == mpq(1, 10)
    assert mpq(float(c.eps[0])) >= abs(mpq(float(c.runtime[0])) - mpq(1, 10)) > 0


@pytest.mark.parametrize("bad, match", [
    (lambda: SGD(lr=0.0), "lr"), (lambda: SGD(lr=float("nan")), "lr"),
    (lambda: Momentum(momentum=1.0), "momentum"), (lambda: AdamW(betas=(0.9, 1.5)), "betas"),
    (lambda: AdamW(eps=0.0), "eps"), (lambda: AdamW(weight_decay=-1.0), "weight_decay")])
def test_bad_hyperparameters(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_train_argument_errors():
    g = Graph()
    g.input("x")
    g.param("w", np.array([1.0]))
    g.op("mul", "x", "w", name="y")
    g.output("y")
    fmt = formats.get("bfloat16")
    with pytest.raises(ValueError, match="batches"):
        train(g, fmt, SGD(), [])
    with pytest.raises(ValueError, match="steps"):
        train(g, fmt, SGD(), [{"x": np.ones(1)}], steps=-1)
    with pytest.raises(ValueError, match="optimizer"):
        train(g, fmt, object(), [{"x": np.ones(1)}])
