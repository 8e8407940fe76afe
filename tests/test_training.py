"""Training with certified parameter bounds: SGD, Momentum, AdamW on an MLP and a small CNN."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from gmpy2 import mpq

from nfbound import formats
from nfbound.bounds.rounding import rounding_term
from nfbound.graph import SGD, AdamW, Graph, Momentum, train
from nfbound.graph.forward import Value, load_ops
from nfbound.graph.train import adam_quotient_bound, cap_magnitude, constant
from nfbound.ops.interval import Interval

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
        assert s.failures() == [] and s.holds is True
        for name, v in s.params.items():
            assert v.spec.encloses(v.runtime, v.eps).all(), f"step {s.step}: {name} escapes"
            assert np.all(np.isfinite(v.eps)), f"step {s.step}: parameter {name} bound is inf"
        assert np.all(np.isfinite(s.loss.eps)), f"step {s.step}: loss bound is inf"
    assert result.holds is True


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
    g, batches = _mlp(rng), _mlp_batches(rng)
    res = train(g, fmt, OPTIMIZERS[opt], batches, loss="loss", steps=3)
    _check_all_steps(res, 4)
    if opt == "adamw":
        _check_adamw_replay_and_envelope(g, fmt, OPTIMIZERS[opt], batches, res)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adamw"])
def test_cnn_three_steps_enclosed(fmt_name, opt):
    _needs("conv", "relu", "max_pool", "flatten", "linear", "cross_entropy", "sub", "div", "sqrt")
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(5)
    g, batches = _cnn(rng), _cnn_batches(rng)
    res = train(g, fmt, OPTIMIZERS[opt], batches, loss="loss", steps=3)
    _check_all_steps(res, 4)
    if opt == "adamw":
        _check_adamw_replay_and_envelope(g, fmt, OPTIMIZERS[opt], batches, res)


def _quotient_bound_by_series(b1: mpq, b2: mpq, t: int) -> float:
    """``C_t`` of AdamW (β₂ > 0) from its three factors, the geometric sum added term by term,
    as a float64 with a relative margin ``10⁻¹²`` above (an envelope, not the certified value)."""
    s = sum((b1 * b1 / b2) ** k for k in range(t))
    c2 = (1 - b1) ** 2 / (1 - b1 ** t) ** 2 * (1 - b2 ** t) / (1 - b2) * s
    return float(np.sqrt(float(c2))) * (1 + 1e-12)


def _check_adamw_replay_and_envelope(g, fmt, opt, batches, res):
    """The three AdamW steps of ``res`` replayed by hand on the runtime path, in the documented
    order (runtime gradients at the runtime parameters): every parameter's runtime is
    bit-identical. And every parameter bound lies below an envelope built from the rules with
    the quotient bound ``|RN(m̂/d)| + C_t`` (the math of the cap, not numbers from a run):

        p₁ = RN(ĉ·p̂):      E₁ = |ĉ|E + |p̂|ε_c + ε_c·E + r(p₁)       (c = 1 − lr·λ)
        q  = RN(m̂/d):      E_q = |q̂| + C_t
        s  = RN(l̂r·q̂):     E_s = |l̂r|E_q + |q̂|ε_lr + ε_lr·E_q + r(s)
        p' = RN(p₁ − s):    E' = E₁ + E_s + r(p')

    from ``E₀`` = the initial rounding bound, each step widened by ``1 + 10⁻⁹`` (the binary64
    upward steps of the certified bound). The envelope is finite, so the check bites: without
    the cap, the division bound alone exceeds it in bfloat16, float16 and float8_e4m3fn."""
    lr, b1, b2 = mpq(opt.lr), mpq(opt.betas[0]), mpq(opt.betas[1])
    p0 = g.initial_params(fmt)
    rt = {n: v.runtime for n, v in p0.items()}
    env = {n: np.asarray(v.eps, dtype=np.float64) for n, v in p0.items()}
    mom = {n: (np.zeros(np.shape(v)), np.zeros(np.shape(v))) for n, v in rt.items()}
    for k, step in enumerate(res.steps):
        t = k + 1
        fw = g.forward(fmt, batches[k % len(batches)], spec=False, bounds=False,
                       params={n: Value(v, None, None) for n, v in rt.items()})
        grads = g.backward(fmt, fw, loss="loss").runtime
        ct = _quotient_bound_by_series(b1, b2, t)
        for n, p in rt.items():
            def c(q):
                return constant(fmt, q, np.shape(p), spec=False)
            decay, lrc = c(1 - lr * mpq(opt.weight_decay)), c(lr)
            gr, (m, v) = grads[n], mom[n]
            m = fmt.add(fmt.mul(c(b1).runtime, m), fmt.mul(c(1 - b1).runtime, gr))
            v = fmt.add(fmt.mul(c(b2).runtime, v), fmt.mul(c(1 - b2).runtime, fmt.mul(gr, gr)))
            mom[n] = (m, v)
            d = fmt.add(fmt.sqrt(fmt.div(v, c(1 - b2 ** t).runtime)), c(mpq(opt.eps)).runtime)
            q = fmt.div(fmt.div(m, c(1 - b1 ** t).runtime), d)
            p1 = fmt.mul(decay.runtime, p)
            s = fmt.mul(lrc.runtime, q)
            new = fmt.sub(p1, s)
            got = step.params[n]
            assert np.array_equal(got.runtime, new), (t, n)
            e, ec, el = env[n], decay.eps, lrc.eps
            e1 = np.abs(decay.runtime) * e + np.abs(p) * ec + ec * e + rounding_term(fmt, p1)
            eq = np.abs(q) + ct
            es = np.abs(lrc.runtime) * eq + np.abs(q) * el + el * eq + rounding_term(fmt, s)
            env[n] = (e1 + es + rounding_term(fmt, new)) * (1 + 1e-9)
            assert np.all(np.isfinite(env[n])), (t, n)
            assert np.all(got.eps <= env[n]), (t, n, float(np.max(got.eps / env[n])))
            rt[n] = new


@pytest.mark.parametrize("b1, b2", [(0.9, 0.999), (0.5, 0.6), (0.99, 0.9), (0.5, 0.25),
                                    (0.0, 0.999), (0.3, 0.05), (0.999, 0.999)])
def test_adam_quotient_bound_exact(b1, b2):
    """``|m̂_t| ≤ C_t·√v̂_t`` exactly in rationals (squared: ``m̂² ≤ C²·v̂``) for the exact Adam
    recurrences from 0 over random and adversarial gradient sequences, t = 1..6, also for
    ``β₁² > β₂`` (0.99, 0.9), ``β₁² = β₂`` (0.5, 0.25) and ``β₁ = 0``. The bound is attained by
    ``gᵢ = (β₁/β₂)^{t−i}``, where ``m̂²/v̂`` equals the closed form's ``C_t²`` summed term by term,
    and the returned float is the smallest float64 whose square is ≥ it (sound and tight)."""
    rng = np.random.default_rng(11)
    B1, B2 = mpq(b1), mpq(b2)
    for t in range(1, 7):
        c = adam_quotient_bound(b1, b2, t)
        seqs = {
            "normal": rng.standard_normal(t), "alternating": (-1.0) ** np.arange(t) * 3.0,
            "big then tiny": np.array([1e6] + [1e-6] * (t - 1)),
            "tiny then big": np.array([1e-6] * (t - 1) + [1e6]), "constant": np.full(t, -0.7),
            "zeros then one": np.array([0.0] * (t - 1) + [1.0]),
            "one then zeros": np.array([1.0] + [0.0] * (t - 1)),
            "wide": rng.standard_normal(t) * 10.0 ** rng.integers(-8, 8, size=t)}
        seqs = {k: [mpq(float(x)) for x in s] for k, s in seqs.items()}
        seqs["extremal"] = [(B1 / B2) ** (t - i) for i in range(1, t + 1)]
        for name, gs in seqs.items():
            m = v = mpq(0)
            for gi in gs:
                m, v = B1 * m + (1 - B1) * gi, B2 * v + (1 - B2) * gi * gi
            m_hat, v_hat = m / (1 - B1 ** t), v / (1 - B2 ** t)
            assert v_hat > 0, (t, name)
            assert m_hat ** 2 <= mpq(c) ** 2 * v_hat, (b1, b2, t, name)
            if name == "extremal":
                ratio = m_hat ** 2 / v_hat
                s = sum((B1 * B1 / B2) ** k for k in range(t))
                assert ratio == (1 - B1) ** 2 / (1 - B1 ** t) ** 2 * (1 - B2 ** t) / (1 - B2) * s
                assert mpq(c) ** 2 >= ratio > mpq(float(np.nextafter(c, 0.0))) ** 2
    assert adam_quotient_bound(b1, b2, 1) == 1.0


def test_adam_quotient_bound_without_second_moment_decay():
    """β₂ = 0 (``v̂ = g_t²``): the quotient is ``±1`` at t = 1 or with β₁ = 0; otherwise ``g =
    (1, 0)`` gives ``v̂ = 0`` with ``m̂ ≠ 0``, so ``|m̂|/(√v̂ + ε) = |m̂|/ε`` has no a-priori bound
    (``inf``: no cap). Arguments outside the premises are refused."""
    assert adam_quotient_bound(0.9, 0.0, 1) == 1.0 and adam_quotient_bound(0.0, 0.0, 5) == 1.0
    assert adam_quotient_bound(0.9, 0.0, 2) == np.inf
    B1 = mpq(0.9)
    m = B1 * (1 - B1) * 1 + (1 - B1) * 0          # m after g = (1, 0), and v̂ = 0² = 0
    assert m != 0
    assert adam_quotient_bound(0.99, 0.5, 10 ** 4) == np.inf  # C_t² beyond binary64's range
    for bad in ((0.9, 0.999, 0), (1.0, 0.999, 1), (0.9, 1.0, 1), (-0.1, 0.9, 1)):
        with pytest.raises(ValueError, match="adam_quotient_bound"):
            adam_quotient_bound(*bad)


def test_cap_magnitude():
    """``|x_S| ≤ c``: spec ∩ [−c, c], bound ``min(ε, |x̂| + c)`` (rounded up), runtime unchanged;
    every point of the capped spec within the capped bound (exact), not so for the old spec; a
    spec disjoint from [−c, c] refused; a NaN runtime caps with inf (not a NaN bound); c = inf
    changes nothing."""
    x = Value(np.array([0.25, 0.5, np.nan, 1.375]),
              Interval.between([-3.0, 0.5, 0.0, 1.25], [2.0, 0.75, 0.0, 1.5]),
              np.array([100.0, 0.25, np.inf, 0.125]))
    assert x.spec.encloses(x.runtime, x.eps).all()
    y = cap_magnitude(x, 1.5)
    assert y.runtime is x.runtime
    assert list(y.spec.lo) == [mpq(-3, 2), mpq(1, 2), 0, mpq(5, 4)]
    assert list(y.spec.hi) == [mpq(3, 2), mpq(3, 4), 0, mpq(3, 2)]
    assert list(y.eps) == [np.nextafter(1.75, np.inf), 0.25, np.inf, 0.125]  # 0.25 + 1.5, up
    assert y.spec.encloses(y.runtime, y.eps).all()
    assert not x.spec.encloses(y.runtime, y.eps).all()       # the old spec is too wide for it
    assert cap_magnitude(x, np.inf) is x
    assert cap_magnitude(x, 1.5, spec=False).spec is None
    assert cap_magnitude(x, 1.5, bounds=False).eps is None
    with pytest.raises(ValueError, match="outside"):
        cap_magnitude(x, 0.25)
    with pytest.raises(ValueError, match="c must"):
        cap_magnitude(x, -1.0)


def test_adamw_cap_intersects_the_quotient_spec(monkeypatch):
    """A gradient enclosure straddling 0 gives ``m̂/d`` the spec ``[−M/ε, M/ε]`` (interval
    division loses that ``m`` and ``v`` come from the same gradient); the true quotient lies in
    ``[−C_1, C_1] = [−1, 1]``. With the cap, the parameter's spec is ``[−lr, lr]`` and its bound
    ``≈ lr·(|q̂| + 1)`` holds for every point of it (exact test). Without the cap (``C = inf``)
    the bound is the division rule's, orders of magnitude larger, and its spec has points the
    capped bound would not cover: capping the bound needs the spec intersected too."""
    _needs("sub", "div", "sqrt")
    fmt = formats.get("bfloat16")
    opt = AdamW(lr=0.01, eps=1e-6, weight_decay=0.0)
    zero = np.zeros(1)
    p = Value(zero, Interval.exact(zero), zero)
    g = Value(np.array([0.0625]), Interval.between([-0.5], [1.0]), np.array([1.0]))
    new, state = opt.update(fmt, 1, p, g, opt.init(fmt, p, True, True), True, True)
    assert state["t"] == 1
    lr = mpq(opt.lr)
    assert new.spec.lo[0] == -lr and new.spec.hi[0] == lr
    assert new.spec.encloses(new.runtime, new.eps).all()
    assert new.eps[0] <= 3 * opt.lr
    monkeypatch.setattr(sys.modules["nfbound.graph.train"], "adam_quotient_bound",
                        lambda b1, b2, t: np.inf)
    raw, _ = opt.update(fmt, 1, p, g, opt.init(fmt, p, True, True), True, True)
    assert np.array_equal(raw.runtime, new.runtime)
    assert raw.spec.encloses(raw.runtime, raw.eps).all() and raw.eps[0] > 1000 * new.eps[0]
    assert not raw.spec.encloses(new.runtime, new.eps).all()


def test_adamw_step_count_is_checked():
    """The quotient cap and the bias correction need ``t`` = 1 + the updates of this state."""
    fmt = formats.get("bfloat16")
    opt = AdamW()
    p = Value(np.ones(2), Interval.exact(np.ones(2)), np.zeros(2))
    with pytest.raises(ValueError, match="step 2 on a state after 0 updates"):
        opt.update(fmt, 2, p, p, opt.init(fmt, p, True, True), True, True)


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


def test_divide_floor_reads_daz_operands():
    """Under DAZ a subnormal numerator is read as 0: the quotient is 0 and the bound must
    cover ``|x/y|`` (it gave the underflow term 2^-126 for ``2^-130 / 2^-10 = 2^-120``)."""
    from nfbound.graph.train import divide_floor
    fmt = formats.get("bfloat16:subnormals=ftz+daz")
    x, y = np.array([2.0 ** -130]), np.array([2.0 ** -10])
    r = divide_floor(fmt, Value(x, Interval.exact(x), np.zeros(1)),
                     Value(y, Interval.exact(y), np.zeros(1)), 1e-8)
    assert r.runtime[0] == 0 and r.eps[0] >= 2.0 ** -120
    assert r.spec.encloses(r.runtime, r.eps).all()


@pytest.mark.parametrize("name", [
    "bfloat16:subnormals=daz", "bfloat16:subnormals=ftz+daz", "binary16:subnormals=ftz",
    "bfloat16", "store=[bfloat16:subnormals=daz],compute=binary32",
    "store=bfloat16,compute=[binary32:subnormals=daz]",
    "store=binary16,compute=[binary32:subnormals=ftz+daz]"])
def test_divide_floor_encloses_on_tiny_operands(name):
    """A sweep over subnormal and tiny normal operands, every subnormal mode, in a format and
    in arithmetics whose storage or compute format flushes: the bound always holds, and the
    runtime is the div primitive's."""
    from nfbound import arith
    from nfbound.graph.train import apply, divide_floor
    fmt = arith.get(name) if name.startswith("store=") else formats.get(name)
    S = fmt.storage if name.startswith("store=") else fmt
    b = float(S.smallest_normal)
    rng = np.random.default_rng(3)
    xs = S.round(np.concatenate([rng.uniform(-1, 1, 64) * b, rng.uniform(-4, 4, 64) * b]))
    ys = S.round(np.abs(rng.standard_normal(128)) * 2.0 ** rng.integers(-12, 2, 128) + 2.0 ** -12)
    ex = np.abs(xs) * 2.0 ** -10
    X = Value(xs, Interval.exact(xs), ex)
    Y = Value(ys, Interval.exact(ys), np.zeros(128))
    r = divide_floor(fmt, X, Y, 2.0 ** -13)
    assert np.array_equal(r.runtime, apply(fmt, "div", X, Y, bounds=False).runtime)
    for sign in (-1, 1):     # the spec numerator at both ends of its error interval
        q = Interval.exact(np.asarray([mpq(float(a)) + sign * mpq(float(e))
                                       for a, e in zip(xs, ex)], dtype=object) /
                           np.asarray([mpq(float(v)) for v in ys], dtype=object))
        assert q.encloses(r.runtime, r.eps).all()


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
        assert "parameter W1" in s.failures() and s.holds is False and res.holds is False
    with monkeypatch.context() as m:
        _patched(m, "relu", bound=lambda fmt, xs, eps: np.zeros(np.shape(xs[0])))
        s = train(g, fmt, SGD(lr=0.05), b, steps=1).steps[0]
        assert "a1" in s.forward_failed and s.holds is False


def test_step_verdicts_without_spec_or_bounds_are_none():
    _needs("linear", "relu", "mse_loss", "sub")
    fmt = formats.get("bfloat16")
    rng = np.random.default_rng(10)
    g, b = _mlp(rng), _mlp_batches(rng, 1)
    full = train(g, fmt, SGD(lr=0.05), b, steps=1)
    for kw in ({"spec": False}, {"bounds": False}, {"spec": False, "bounds": False}):
        res = train(g, fmt, SGD(lr=0.05), b, steps=1, **kw)
        s = res.steps[0]
        assert s.holds is None and s.failures() is None and res.holds is None
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


# -- training an imported model is training the PyTorch model -------------------------------------
TORCH_OPTIMIZERS = {"sgd": SGD(lr=0.5), "momentum": Momentum(lr=0.1, momentum=0.9),
                    "adamw": AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)}


def _torch_optimizer(torch, name: str, params):
    """The PyTorch optimizer with the hyperparameters of ``TORCH_OPTIMIZERS[name]``."""
    o = TORCH_OPTIMIZERS[name]
    if name == "sgd":
        return torch.optim.SGD(params, lr=o.lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps,
                             weight_decay=o.weight_decay)


def _tiny_model(torch, bias: bool):
    """Conv2d (module) → ReLU → conv_transpose2d (functional, raw parameters) → flatten →
    Linear, every bias present or absent; float32 weights held in float64."""
    nn, F = torch.nn, torch.nn.functional

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 2, padding=1, bias=bias)
            self.wt = nn.Parameter(torch.randn(2, 1, 2, 2) / 2)
            self.bt = nn.Parameter(torch.randn(1) / 4) if bias else None
            self.fc = nn.Linear(4, 3, bias=bias)

        def forward(self, x):                                                # x: (N, 1, 2, 2)
            h = torch.relu(self.conv(x))                                     # (N, 2, 3, 3)
            h = F.conv_transpose2d(h, self.wt, self.bt, stride=1, padding=1)  # (N, 1, 2, 2)
            return self.fc(torch.flatten(h, 1))

    torch.manual_seed(7)
    return Tiny().double()


def _matching_params(program, model) -> dict:
    """PyTorch parameter name → the program's trainable parameter holding it: the same name,
    or (ONNX exports a bias-free Linear's weight as an anonymous transposed initializer) the one
    program parameter with its value. Asserts a one-to-one match with nothing left over."""
    out = {}
    for n, p in model.named_parameters():
        w = p.detach().numpy()
        if n in program.params:
            out[n] = n
        else:
            same = [k for k, v in program.params.items() if v.shape == w.shape
                    and np.array_equal(v, w)]
            assert len(same) == 1, (n, same)
            out[n] = same[0]
    assert sorted(out.values()) == sorted(program.params), "the program trains extra parameters"
    return out


#: every importer × optimizer × bias; the default run takes one bias-free case per optimizer
#: (both importers among them), the rest runs with the slow sweeps
_QUICK = {("torch", "sgd"), ("torch", "adamw"), ("onnx", "momentum")}
IMPORT_TRAINING_CASES = [
    pytest.param(importer, opt, bias, marks=() if not bias and (importer, opt) in _QUICK
                 else pytest.mark.slow)
    for importer in ("torch", "onnx") for opt in sorted(TORCH_OPTIMIZERS) for bias in (False, True)]


@pytest.mark.parametrize("importer, opt, bias", IMPORT_TRAINING_CASES)
def test_trained_import_matches_pytorch_training(tmp_path, importer, opt, bias):
    """Two steps of training an imported model are two steps of training the PyTorch model
    (``loss.backward(); optimizer.step()`` in float64): the spec parameters after each step are
    PyTorch's, every one of them and nothing else, and the binary32 runtime parameters lie
    within their bounds of them. (A conv without bias was imported with a zero bias parameter
    that training then moved: here the spec weights ended up to 5e−3 away from PyTorch's, on
    a sum loss with SGD lr = 0.5 the binary32 runtime ones 0.48 away with bounds ~1e−5, and
    ``holds`` was True.)

    PyTorch's float64 run is not exact: ``tol`` covers its rounding errors (≤ 1e−15 relative
    on this tiny model; the spec differs from it by < 1e−14 here)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = _tiny_model(torch, bias)
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal((2, 1, 2, 2)), np.array([0, 2])
    if importer == "torch":
        from nfbound.models.torch_import import trace
        program = trace(model, x)
    else:
        pytest.importorskip("onnx")
        from nfbound.models.onnx_import import load
        path = tmp_path / "tiny.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.from_numpy(x), str(path), dynamo=False)
        program = load(path)
    names = _matching_params(program, model)
    assert [s.op for s in program.steps] == ["conv", "relu", "conv_transpose", "flatten",
                                             "linear"]
    assert all(len(s.inputs) == (3 if bias else 2) for s in program.steps
               if s.op in ("conv", "conv_transpose", "linear"))
    fmt = formats.get("binary32")
    batch = {"x": x, "target": t}
    run = train(program.to_graph("cross_entropy"), fmt, TORCH_OPTIMIZERS[opt], batch,
                loss="loss", steps=2)
    assert run.holds is True
    optimizer = _torch_optimizer(torch, opt, model.parameters())
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    for step in run.steps:
        optimizer.zero_grad()
        F.cross_entropy(model(xt), tt).backward()
        optimizer.step()
        assert sorted(step.params) == sorted(names.values())
        for n, p in model.named_parameters():
            want = p.detach().numpy()
            got = step.params[names[n]]
            tol = 1e-12 * (1 + np.abs(want))
            gap = np.asarray(got.spec.distance(want), dtype=np.float64)
            assert np.all(gap <= tol), (step.step, n, float(np.max(gap)))
            ok = Interval.between(want - tol, want + tol).encloses(got.runtime, got.eps)
            assert ok.all(), (step.step, n)


def test_constants_are_never_trained_and_every_parameter_is():
    """A graph constant (a model's buffer or frozen weight) keeps its value through training
    while the parameters move; a starting state that leaves out a parameter (which would then
    silently stay fixed) or trains a constant is a ``ValueError``."""
    g = Graph()
    g.input("x")
    g.param("w", np.array([0.5, -0.25]))
    g.const("c", np.array([0.75, 0.125]))
    g.op("mul", "x", "w", name="xw")
    g.op("mul", "xw", "c", name="y")
    g.op("sum", "y", name="loss", axis=0)
    g.output("loss")
    fmt = formats.get("bfloat16")
    batch = {"x": np.array([1.0, 2.0])}
    run = train(g, fmt, SGD(lr=0.5), batch, steps=2)
    assert run.holds and list(run.params) == ["w"] and g.params == ["w"]
    assert not np.array_equal(run.params["w"].runtime, [0.5, -0.25])
    res = g.forward(fmt, batch, params=run.params)
    assert np.array_equal(res.runtime["c"], [0.75, 0.125]) and res.holds
    assert g.backward(fmt, res).holds
    p0 = g.initial_params(fmt)
    with pytest.raises(ValueError, match="params: no state for parameter 'w'"):
        train(g, fmt, SGD(), batch, params={})
    with pytest.raises(ValueError, match="params: 'c' is not a parameter"):
        train(g, fmt, SGD(), batch, params={**p0, "c": p0["w"]})
