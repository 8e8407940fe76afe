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


def _check_all_steps(result, n_params):
    assert len(result.steps) == 3
    for s in result.steps:
        assert len(s.params) == n_params
        for name, v in s.params.items():
            ok = v.spec.encloses(v.runtime, v.eps)
            assert ok.all(), f"step {s.step}: parameter {name} escapes its bound"
            assert np.all(np.isfinite(v.eps)) or np.any(np.isinf(v.eps))


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
@pytest.mark.parametrize("opt", [Momentum(lr=0.05, momentum=0.9),
                                 AdamW(lr=0.01, eps=1e-3, weight_decay=0.01)],
                         ids=["momentum", "adamw"])
def test_momentum_adamw_mlp_enclosed(fmt_name, opt):
    _needs("linear", "relu", "mse_loss", "sub", "div", "sqrt")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(4)
    g = _mlp(rng)
    res = train(g, fmt, opt, _mlp_batches(rng), loss="loss", steps=3)
    _check_all_steps(res, 4)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_sgd_cnn_three_steps_enclosed(fmt_name):
    _needs("conv", "relu", "max_pool", "flatten", "linear", "cross_entropy", "sub")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(5)
    g = _cnn(rng)
    res = train(g, fmt, SGD(lr=0.1), _cnn_batches(rng), loss="loss", steps=3)
    _check_all_steps(res, 4)
    assert all(np.isfinite(float(np.max(v.eps))) for v in res.params.values())


@pytest.mark.parametrize("fmt_name", ["bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("opt", [Momentum(lr=0.05), AdamW(lr=0.01, eps=1e-3)],
                         ids=["momentum", "adamw"])
def test_momentum_adamw_cnn_enclosed(fmt_name, opt):
    _needs("conv", "relu", "max_pool", "flatten", "linear", "cross_entropy", "sub", "div", "sqrt")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(6)
    g = _cnn(rng)
    res = train(g, fmt, opt, _cnn_batches(rng), loss="loss", steps=3)
    _check_all_steps(res, 4)


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
