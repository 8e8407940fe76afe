"""Tests over every registered primitive: forward and VJP enclosure ``|runtime − spec| ≤ bound``,
refusal of runtime values that are not values of the format, fused = separate rules.

Each primitive supplies ``sample(rng, fmt)``; spec inputs are taken with a nonzero input error
(the runtime inputs perturbed within ``eps``, exactly: the perturbation is added to the exact
rational runtime value), so the propagated part of every rule is exercised as well as the
rounding part. The formats include decimal ones (object runtimes, exact reference engine) and
directed roundings. A new op is covered the moment it is registered.
"""
from __future__ import annotations

import inspect
import re
import zlib

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpq

import nfbound.ops as ops
from nfbound import arith, formats
from nfbound.bounds.upward import exact_array_up
from nfbound.formats.reference import to_exact
from nfbound.ops.interval import Interval, exact_array

from test_nonfinite import assert_inf_where_overflowed

FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2", "binary32", "decimal32",
           "decimal64", "bfloat16:rounding=zero", "binary16:rounding=up",
           "bfloat16:subnormals=ftz+daz", "binary16:subnormals=ftz", "float8_e5m2:subnormals=daz"]


def _seed(*parts: str) -> int:
    """A reproducible seed (``hash`` of a string changes from run to run)."""
    return zlib.crc32("|".join(parts).encode())


def _is_label(x) -> bool:
    return np.asarray(x).dtype.kind in "iu"


def _magnitude_up(xq) -> np.ndarray:
    """``|x|`` of exact values rounded up to float64, capped at the largest finite float64 (so
    that ``|x|·rel`` stays a finite error bound for decimal64 values beyond binary64)."""
    return np.fmin(exact_array_up(np.abs(xq)), np.finfo(np.float64).max)


def _perturbed_spec(rng, x, rel: float):
    """A spec input at distance ≤ eps from the runtime input ``x``, and that eps (float64).

    ``rel = 0``: the spec is the runtime value itself and eps is 0. Otherwise
    ``eps = |x̂|·rel + 2^−20`` and the spec is ``x̂ + δ`` with ``|δ| ≤ eps/2``, both exact.
    """
    if _is_label(x):  # labels are exact
        return Interval.exact(np.asarray(x, dtype=np.float64)), np.zeros(np.shape(x))
    xq = exact_array(x)
    if rel == 0:
        return Interval.exact(xq), np.zeros(np.shape(x))
    eps = _magnitude_up(xq) * rel + 2.0 ** -20
    shift = eps * rng.uniform(-1, 1, size=xq.shape) * 0.5
    return Interval.exact(xq + exact_array(shift)), eps


def _upstream(rng, fmt, shape, rel: float):
    """A runtime upstream gradient ``ĝ`` (a format value), its bound and a spec gradient within
    it (exact)."""
    g = fmt.round(rng.standard_normal(shape))
    eg = _magnitude_up(exact_array(g)) * rel
    return g, eg, Interval.exact(exact_array(g) + exact_array(eg) / 4)


def _assert_format_values(fmt, out, what: str) -> None:
    """Every finite runtime result is a value of the format: the graphs rely on it to check
    the grid once per leaf (``checks.trusted_format_values``)."""
    a = np.asarray(out)
    finite = np.isfinite(a) if a.dtype != object else np.vectorize(
        lambda v: not (isinstance(v, float) and not np.isfinite(v)), otypes=[bool])(a)
    assert np.asarray(fmt.is_representable(a))[finite].all(), f"{what} is off the grid of {fmt}"


def _overflow_magnitudes(fmt) -> list:
    """Format values that make rules overflow: the largest finite ``M``, ``M/2`` and ``√M``
    (sums and products of two overflow), 2 (a doubling of ``M`` overflows), the smallest
    positive value (a divisor that overflows a quotient) and 0 (a zero factor meeting an
    overflowed intermediate: ``0·inf = NaN``)."""
    M = fmt.max_finite
    exact = [M, M / 2, mpq(gmpy2.isqrt(int(M))), mpq(2), mpq(fmt.radix) ** fmt.emin, mpq(0)]
    return list(fmt.round(np.array(exact, dtype=object)))


def _adversarial(rng, fmt, x):
    """``x`` with about two thirds of its entries replaced by overflow-prone magnitudes
    (:func:`_overflow_magnitudes`), each keeping its entry's sign: inputs a sample keeps
    nonnegative (sqrt's) stay nonnegative."""
    if _is_label(x):
        return x
    a = np.asarray(x)
    mags = _overflow_magnitudes(fmt)
    pick = rng.integers(0, (3 * len(mags)) // 2, size=a.shape)
    out = np.array(a, copy=True)
    flat, fp = out.reshape(-1), pick.reshape(-1)
    for i in range(flat.size):
        if fp[i] < len(mags):
            flat[i] = -mags[fp[i]] if flat[i] < 0 else mags[fp[i]]
    return flat.reshape(a.shape)


def _adversarial_upstream(rng, fmt, shape, rel: float):
    """:func:`_upstream` made adversarial: ``ĝ = 0`` everywhere in a third of the cases (the
    zero that meets an overflowed intermediate), overflow-prone magnitudes otherwise."""
    if rng.random() < 1 / 3:
        g = fmt.round(np.zeros(shape))
    else:
        g = _adversarial(rng, fmt, fmt.round(rng.standard_normal(shape)))
    eg = _magnitude_up(exact_array(g)) * rel
    return g, eg, Interval.exact(exact_array(g) + exact_array(eg) / 4)


def _target(name):
    """An :class:`~nfbound.arith.Arithmetic` as given, else a format (name, spec string or
    ``Format``; ``"tf32"`` names both a format and an arithmetic preset: here the format)."""
    if isinstance(name, arith.Arithmetic):
        return name
    return formats.get(name)


def check_enclosure(op_name: str, fmt_name: str, trials: int, rels=(2.0 ** -10,),
                    adversarial: bool = False) -> None:
    """Forward and VJP enclosures on ``trials`` sampled instances of the primitive: the first
    with spec inputs equal to the runtime ones, the others with relative input errors cycling
    through ``rels``. Every rule (bound, VJP bound, fused, VJP fused) must give the bound
    ``inf`` where its runtime value overflowed (README: "a runtime result that overflows — ±inf,
    NaN, or a value saturated at ±max_finite — gets the bound inf";
    ``test_nonfinite.assert_inf_where_overflowed``).
    ``adversarial``: the sampled inputs and upstream gradients are made overflow-prone
    (:func:`_adversarial`). ``fmt_name`` is a format (name, spec or ``Format``) or an
    ``Arithmetic``: the rules then run in the arithmetic on storage values."""
    target = _target(fmt_name)
    fmt = target.storage if isinstance(target, arith.Arithmetic) else target
    P = ops.get(op_name)
    rng = np.random.default_rng(_seed(op_name, str(fmt_name),
                                      *(("adversarial",) if adversarial else ())))
    for trial in range(trials):
        xs, params = P.sample(rng, fmt)
        if isinstance(target, arith.Arithmetic):   # the arithmetic states the order
            params = {k: v for k, v in params.items() if k not in ("order", "order_free")}
        if adversarial:
            xs = tuple(_adversarial(rng, fmt, x) for x in xs)
        rel = 0.0 if trial == 0 else rels[(trial - 1) % len(rels)]
        spec_in, eps = zip(*(_perturbed_spec(rng, x, rel) for x in xs))
        out = P.runtime(target, *xs, **params)
        bound = P.bound(target, xs, eps, **params)
        assert np.shape(bound) == np.shape(out)
        _assert_format_values(fmt, out, f"{op_name} runtime")
        assert_inf_where_overflowed(fmt, out, bound, f"{op_name} bound")
        if P.fused is not None:
            assert_inf_where_overflowed(fmt, *P.fused(target, xs, eps, **params), f"{op_name} fused")

        g, eg, g_spec = (_adversarial_upstream if adversarial else _upstream)(
            rng, fmt, np.shape(out), rel)
        grads = P.vjp_runtime(target, xs, g, **params)
        grads_bound = P.vjp_bound(target, xs, eps, g, eg, **params)
        fused = P.vjp_fused(target, xs, eps, g, eg, **params) if P.vjp_fused is not None else None
        for i, (gr, gb) in enumerate(zip(grads, grads_bound)):
            if gr is None:
                continue
            assert np.shape(gr) == np.shape(xs[i]) == np.shape(gb)
            _assert_format_values(fmt, gr, f"{op_name} VJP runtime of input {i}")
            assert_inf_where_overflowed(fmt, gr, gb, f"{op_name} VJP bound of input {i}")
            if fused is not None:
                assert_inf_where_overflowed(fmt, fused[0][i], fused[1][i],
                                           f"{op_name} VJP fused, input {i}")

        # a spec domain error (e.g. a divisor enclosure containing 0) is a clear refusal
        try:
            spec_out = P.spec(*spec_in, **params)
        except ValueError:
            continue
        ok = spec_out.encloses(out, bound)
        assert ok.all(), (f"{op_name} forward enclosure failed in {fmt_name}: distance "
                          f"{spec_out.distance(out)[~ok][:3]} > bound {np.asarray(bound)[~ok][:3]}")
        try:
            grads_spec = P.vjp_spec(spec_in, g_spec, **params)
        except ValueError:
            continue
        for i, (gr, gs, gb) in enumerate(zip(grads, grads_spec, grads_bound)):
            if gr is not None:
                ok = gs.encloses(gr, gb)
                assert ok.all(), f"{op_name} VJP enclosure failed for input {i} in {fmt_name}"


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_forward_and_vjp_enclosure(op_name, fmt_name):
    check_enclosure(op_name, fmt_name, trials=3)


ARITH_OPS = sorted(ops.REGISTRY)


@pytest.mark.parametrize("preset", arith.names())
@pytest.mark.parametrize("op_name", ARITH_OPS)
def test_forward_and_vjp_enclosure_in_every_arithmetic(op_name, preset):
    """Every op under every arithmetic preset (storage values in; accumulator, compute and
    operand formats, ``order=any``, flushing): forward and VJP enclosures, overflow guards."""
    check_enclosure(op_name, arith.get(preset), trials=2)


SWEEP_FORMATS = formats.names() + ["bfloat16:rounding=zero", "binary16:rounding=up",
                                   "bfloat16:rounding=down", "float8_e4m3fn:overflow=saturate",
                                   "decimal32:rounding=away", "flt:radix=10,p=3,emin=-12,emax=6"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", SWEEP_FORMATS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_forward_and_vjp_enclosure_sweep(op_name, fmt_name):
    check_enclosure(op_name, fmt_name, trials=20, rels=(2.0 ** -10, 2.0 ** -4, 2.0 ** -20))


ADVERSARIAL_FORMATS = ["float8_e4m3fn", "float8_e4m3fn:overflow=saturate", "binary16",
                       "bfloat16:rounding=zero", "decimal32"]


@pytest.mark.parametrize("fmt_name", ADVERSARIAL_FORMATS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_overflow_gets_an_infinite_bound(op_name, fmt_name):
    """Inputs and upstream gradients at the edge of the range (the largest finite value, tiny
    divisors, ``ĝ = 0`` meeting an overflowed intermediate): every rule gives ``inf`` where its
    runtime value overflowed (NaN in e4m3fn, ±max when saturating), and the enclosures hold."""
    check_enclosure(op_name, fmt_name, trials=2, adversarial=True)


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", SWEEP_FORMATS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_overflow_gets_an_infinite_bound_sweep(op_name, fmt_name):
    check_enclosure(op_name, fmt_name, trials=20, rels=(2.0 ** -10, 2.0 ** -4, 2.0 ** -20),
                    adversarial=True)


@pytest.mark.parametrize("fmt_name", FORMATS + ["binary64", "tf32"])
def test_every_primitive_has_a_sample_that_is_in_the_format(fmt_name):
    fmt = formats.get(fmt_name)
    rng = np.random.default_rng(0)
    for name, P in ops.REGISTRY.items():
        xs, _ = P.sample(rng, fmt)
        for x in xs:
            if x is not None and not _is_label(x):
                assert fmt.is_representable(x).all(), f"{name}.sample gave values outside {fmt}"


# -- runtime values that are not values of the format ----------------------------------------
def _input_names(P) -> list[str]:
    """The names of the runtime inputs: the positional parameters of ``runtime`` after ``fmt``."""
    params = inspect.signature(P.runtime).parameters.values()
    return [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD][1:]


def _off_grid(fmt, a, rng) -> np.ndarray:
    """A copy of the runtime array ``a`` with one element moved up by a quarter of its ulp:
    strictly between two values of ``fmt`` (exactly: a binary64 number for formats that fit
    binary64, an exact rational otherwise)."""
    b = np.array(a, copy=True)
    flat = b.reshape(-1)
    i = int(rng.integers(flat.size))
    flat[i] = to_exact(flat[i]) + fmt.ulp(flat[i:i + 1])[0] / 4
    assert not fmt.is_representable(flat[i:i + 1])[0]
    return flat.reshape(b.shape)


def _rules(P, fmt, params, eps, g, eg):
    """Every rule that takes runtime values, as ``(label, f(xs, g))``; the VJP rules flagged."""
    rules = [("runtime", False, lambda xs, g_: P.runtime(fmt, *xs, **params)),
             ("bound", False, lambda xs, g_: P.bound(fmt, xs, eps, **params)),
             ("vjp_runtime", True, lambda xs, g_: P.vjp_runtime(fmt, xs, g_, **params)),
             ("vjp_bound", True, lambda xs, g_: P.vjp_bound(fmt, xs, eps, g_, eg, **params))]
    if P.fused is not None:
        rules.append(("fused", False, lambda xs, g_: P.fused(fmt, xs, eps, **params)))
    if P.vjp_fused is not None:
        rules.append(("vjp_fused", True,
                      lambda xs, g_: P.vjp_fused(fmt, xs, eps, g_, eg, **params)))
    return rules


def _assert_refused(call, name: str, fmt, what: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    assert re.search(rf"(^|\W){re.escape(name)}(\W|$)", msg) and str(fmt) in msg, \
        f"{what}: the error does not name {name!r} and the format: {msg!r}"


@pytest.mark.parametrize("fmt_name", ["bfloat16", "float8_e5m2:rounding=down", "decimal32"])
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_off_grid_runtime_values_are_refused_by_every_rule(op_name, fmt_name):
    """Runtime inputs and upstream gradients must be values of the format: an input with one
    element off the grid is refused by every rule that takes it (runtime, bound, VJPs, fused),
    with a ``ValueError`` naming the argument and the format. (The rules round exact results
    of format values once; an off-grid operand would be rounded twice and its error missed —
    binary16 ``add(1, 2^−11 + 2^−60)`` returned 1 with the bound 2^−11.)"""
    fmt = formats.get(fmt_name)
    P = ops.get(op_name)
    rng = np.random.default_rng(_seed(op_name, fmt_name, "off-grid"))
    xs, params = P.sample(rng, fmt)
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    out = P.runtime(fmt, *xs, **params)
    g = fmt.round(rng.standard_normal(np.shape(out)))
    eg = np.zeros(np.shape(out))
    rules = _rules(P, fmt, params, eps, g, eg)
    names = _input_names(P)
    assert len(names) == len(xs)
    checked = 0
    for i, (name, x) in enumerate(zip(names, xs)):
        if x is None or _is_label(x):
            continue
        bad = list(xs)
        bad[i] = _off_grid(fmt, x, rng)
        for label, _, rule in rules:
            _assert_refused(lambda: rule(tuple(bad), g), name, fmt, f"{op_name}.{label}, {name}")
        checked += 1
    assert checked >= 1
    g_bad = _off_grid(fmt, g, rng)
    for label, is_vjp, rule in rules:
        if is_vjp:
            _assert_refused(lambda: rule(tuple(xs), g_bad), "g", fmt, f"{op_name}.{label}, g")


# -- fused rules ---------------------------------------------------------------------------------
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
FUSED_FORMATS = ["bfloat16", "binary16", "float8_e4m3fn", "float8_e5m2", "binary32", "decimal32",
                 "bfloat16:rounding=zero"]


@pytest.mark.parametrize("fmt_name", FUSED_FORMATS)
@pytest.mark.parametrize("op_name", FUSED)
def test_fused_rules_equal_separate_rules(op_name, fmt_name):
    """``fused`` = ``(runtime, bound)`` and ``vjp_fused`` = ``(vjp_runtime, vjp_bound)``, bit for
    bit (values, signs of zeros, bounds), with nonzero input and gradient errors."""
    fmt = formats.get(fmt_name)
    P = ops.get(op_name)
    rng = np.random.default_rng(_seed(op_name, fmt_name, "fused"))
    for _ in range(4):
        xs, params = P.sample(rng, fmt)
        eps = tuple(np.zeros(np.shape(x)) if _is_label(x)
                    else exact_array_up(np.abs(exact_array(x))) * 2.0 ** -9 for x in xs)
        out = P.runtime(fmt, *xs, **params)
        if P.fused is not None:
            assert _same(P.fused(fmt, xs, eps, **params),
                         (out, P.bound(fmt, xs, eps, **params))), f"{op_name} fused ≠ separate"
        g, eg, _ = _upstream(rng, fmt, np.shape(out), 2.0 ** -9)
        if P.vjp_fused is not None:
            assert _same(P.vjp_fused(fmt, xs, eps, g, eg, **params),
                         (P.vjp_runtime(fmt, xs, g, **params),
                          P.vjp_bound(fmt, xs, eps, g, eg, **params))), f"{op_name} vjp_fused ≠ separate"


def test_some_primitives_have_fused_rules():
    assert {"conv", "conv_transpose", "linear", "matmul", "cross_entropy"} <= set(FUSED)
