"""Training with certified parameter bounds: SGD, Momentum and AdamW on the three paths.

Each optimizer update is written as a sequence of elementwise primitives (``nfbound.ops``
``add``, ``sub``, ``mul``, ``div``, ``sqrt``) applied to :class:`~nfbound.graph.forward.Value`
triples, so the runtime is rounded after every elementary step in the order stated below, the
spec update uses the exact (spec) gradients and exact hyperparameters, and the bound of the
new parameter follows from the primitives' forward bound rules by composition (each rule is
sound for inputs within their ε, docs/design.md §4).

Hyperparameters are float64 numbers taken as the exact rationals they denote. A constant
``c`` derived from them (``1 − β₁``, ``1 − β₁ᵗ``, ``1 − lr·λ``) is computed exactly in
rationals; the runtime uses ``RN(c)`` (one rounding) and its bound ``|RN(c) − c|``.

Orders (``RN`` is rounding to the format; ``g`` the runtime gradient, ``t`` the step, from 1):

* SGD: ``p' = RN(p − RN(lr·g))``;
* Momentum (PyTorch, no dampening, buffer from 0): ``v' = RN(RN(μ·v) + g)``,
  ``p' = RN(p − RN(lr·v'))``;
* AdamW (PyTorch semantics): ``p₁ = RN(RN(1 − lr·λ)·p)``, ``m' = RN(RN(β₁·m) + RN(RN(1−β₁)·g))``,
  ``v' = RN(RN(β₂·v) + RN(RN(1−β₂)·RN(g·g)))``, ``m̂ = RN(m' / RN(1 − β₁ᵗ))``,
  ``v̂ = RN(v' / RN(1 − β₂ᵗ))``, ``d = RN(RN(√v̂) + RN(ε))``, ``p' = RN(p₁ − RN(lr·RN(m̂ / d)))``.
  The spec denominator is ``√v̂ + ε ≥ ε > 0``, so ``m̂ / d`` is bounded by the division rule with
  that floor (:func:`divide_floor`): finite even where ``d̂`` is not known to be away from 0.
  That bound grows like ``1/ε`` where ``d̂`` is not known to be away from 0 (low precision), so
  it is capped by the a-priori bound ``|q| ≤ C_t`` of the exact quotient ``q = m̂/d``
  (:func:`adam_quotient_bound`): its spec is intersected with ``[−C_t, C_t]`` and its bound is
  ``min(division bound, |RN(m̂/d)| + C_t)`` (:func:`cap_magnitude`).

Arithmetics: every step of a parameter's update runs in that parameter's node arithmetic
(:mod:`nfbound.graph.arith`; the optimizer receives what the primitive rules receive, a
:class:`~nfbound.formats.Format` or an :class:`~nfbound.arith.Arithmetic`): each elementwise op
computed in its compute format and rounded once to the parameter's storage format, the
constants rounded to storage (``RN_S(c)``), the state ``m``, ``v`` kept in storage.

Each :class:`StepResult` records the exact enclosure verdicts of the step's forward values,
gradients and updated parameters (the end-to-end check of issue 5).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from gmpy2 import mpq
from tqdm.auto import tqdm

from ..arith import Arithmetic
from ..bounds.upward import abs_up, add_up, exact_up
from ..formats import Format
from ..ops import checks
from ..ops.arithmetic import conversion_bound, to_storage
from ..ops.elementwise import div_error
from ..ops.interval import Interval
from ..ops.primitive import _read as read_operand
from .forward import Graph, Value, _disable, primitive


def storage(fmt: "Format | Arithmetic") -> Format:
    """The format values are stored in: ``fmt`` itself, or an arithmetic's storage."""
    return fmt.storage if isinstance(fmt, Arithmetic) else fmt


# -- Value arithmetic through the primitives' rules ------------------------------------------
def apply(fmt: "Format | Arithmetic", op: str, *vals: Value, spec: bool = True,
          bounds: bool = True, **params) -> Value:
    """The primitive ``op`` on the three paths: runtime rule, spec rule, forward bound rule."""
    P = primitive(op)
    xs = tuple(v.runtime for v in vals)
    if bounds:
        rt, ep = P.runtime_and_bound(fmt, xs, tuple(v.eps for v in vals), **params)
        ep = np.asarray(ep, dtype=np.float64)
    else:
        rt, ep = P.runtime(fmt, *xs, **params), None
    sp = P.spec(*(v.spec for v in vals), **params) if spec else None
    return Value(rt, sp, ep)


def divide_floor(fmt: "Format | Arithmetic", x: Value, y: Value, floor: float,
                 spec: bool = True, bounds: bool = True) -> Value:
    """``RN(x / y)`` by the ``div`` primitive's runtime and spec rules, bounded with a known
    lower bound of the spec denominator: the caller guarantees ``y ≥ floor > 0`` for every
    point ``y`` of the spec enclosure (checked exactly when the spec is computed; a violation
    is a ``ValueError``). The bound is :func:`~nfbound.ops.elementwise.div_error` with that
    ``floor``: ``(ε_x + |x̂/ŷ|·ε_y) / max(floor, |ŷ| − ε_y) + r`` — finite even where
    ``|ŷ| ≤ ε_y``, where the plain ``div`` rule (which knows no floor) gives ``inf``. The
    runtime is bit-identical to ``apply(fmt, "div", x, y)``.

    The operands are read as every primitive reads them (DAZ: a subnormal read as 0, its
    magnitude added to its ``ε``; :mod:`nfbound.ops.primitive`). In an arithmetic the quotient
    is computed in its compute format ``W`` and rounded to storage, bounded by
    :func:`~nfbound.ops.arithmetic.conversion_bound` (the division has no order)."""
    if not (floor > 0 and math.isfinite(floor)):
        raise ValueError(f"floor must be a positive finite float, got {floor!r}")
    P = primitive("div")
    W = fmt.compute if isinstance(fmt, Arithmetic) else fmt
    if bounds:   # div_error computes RN(x̂/ŷ) with W.div, exactly as the div runtime rule
        z, e = div_error(W, *read_operand(W, x.runtime, x.eps), *read_operand(W, y.runtime, y.eps),
                         floor=floor)
        if isinstance(fmt, Arithmetic):
            rt = to_storage(fmt, W, z)
            ep = conversion_bound(fmt, W, z, rt, e, any_order=False)
        else:
            rt, ep = z, e
    else:
        rt, ep = P.runtime(fmt, x.runtime, y.runtime), None
    sp = None
    if spec:
        if np.any(y.spec.lo < mpq(floor)):
            raise ValueError(f"div: the spec denominator reaches below its stated floor {floor!r}")
        sp = P.spec(x.spec, y.spec)
    return Value(rt, sp, ep)


def cap_magnitude(x: Value, c: float, spec: bool = True, bounds: bool = True) -> Value:
    """``x`` with the a-priori knowledge ``|x_S| ≤ c`` of the exact quantity ``x_S`` it encloses
    (the caller's premise; ``c`` a float64 ≥ 0, ``inf`` when nothing is known).

    The spec becomes ``spec ∩ [−c, c]``: it still contains ``x_S`` (in both sets). The bound
    becomes ``min(ε, |x̂| + c)`` (the sum rounded up; ``inf`` where ``x̂`` is NaN): for every
    point ``x`` of the new spec, ``x`` lies in the old spec, so ``|x̂ − x| ≤ ε``, and ``|x| ≤ c``,
    so ``|x̂ − x| ≤ |x̂| + c``. The runtime is unchanged. A spec enclosure disjoint from
    ``[−c, c]`` contradicts the premise: ``ValueError``."""
    if not c >= 0:
        raise ValueError(f"cap_magnitude: c must be ≥ 0, got {c!r}")
    if c == math.inf:
        return x
    sp = None
    if spec:
        cq = mpq(c)
        lo = np.asarray(np.vectorize(lambda a: a if a > -cq else -cq, otypes=[object])(x.spec.lo),
                        dtype=object).reshape(x.spec.shape)
        hi = np.asarray(np.vectorize(lambda a: a if a < cq else cq, otypes=[object])(x.spec.hi),
                        dtype=object).reshape(x.spec.shape)
        if np.any(lo > hi):
            raise ValueError(f"cap_magnitude: the spec enclosure lies outside [−{c!r}, {c!r}]")
        sp = Interval(lo, hi)
    ep = None
    if bounds:
        cap = add_up(abs_up(x.runtime), c)
        ep = np.minimum(x.eps, np.where(np.isnan(cap), np.inf, cap))
    return Value(x.runtime, sp, ep)


@functools.lru_cache(maxsize=1024)
def adam_quotient_bound(beta1, beta2, t: int) -> float:
    """The smallest float64 ``≥ C_t``, an a-priori bound of the exact Adam quotient at step
    ``t ≥ 1``: ``|m̂_t / (√v̂_t + ε)| ≤ C_t`` for every real gradient sequence ``g_1..g_t`` and
    every ``ε > 0``; ``inf`` where no such bound exists or ``C_t`` exceeds binary64's range.
    ``beta1``, ``beta2`` in ``[0, 1)`` are taken as the exact rationals they denote.

    Exact Adam from ``m_0 = v_0 = 0``: ``m_t = β₁m_{t−1} + (1−β₁)g_t``, ``v_t = β₂v_{t−1} +
    (1−β₂)g_t²``, i.e. ``m_t = Σᵢ (1−β₁)β₁^{t−i} gᵢ`` and ``v_t = (1−β₂) Σᵢ β₂^{t−i} gᵢ²``. For
    ``β₂ > 0``, Cauchy–Schwarz on ``(β₁/√β₂)^{t−i} · (√β₂^{t−i} gᵢ)`` gives

        |m_t| ≤ (1−β₁) · √S · √(v_t/(1−β₂)),    S = Σ_{k=0}^{t−1} (β₁²/β₂)^k

    (``S = t`` when ``β₁² = β₂``, ``(1 − rᵗ)/(1 − r)`` with ``r = β₁²/β₂`` otherwise, also for
    ``r > 1``). With ``m̂ = m_t/(1−β₁ᵗ)``, ``v̂ = v_t/(1−β₂ᵗ)`` and ``√v̂ + ε > √v̂``:

        |m̂/(√v̂ + ε)| ≤ |m̂|/√v̂ ≤ C_t = (1−β₁)/(1−β₁ᵗ) · √((1−β₂ᵗ)/(1−β₂)) · √S,

    and where ``v_t = 0`` every ``gᵢ = 0`` (all weights ``β₂^{t−i}`` are positive), so
    ``m̂ = 0``. Equality ``|m̂|/√v̂ = C_t`` holds for ``gᵢ = (β₁/β₂)^{t−i}``. ``C_1 = 1``.
    For ``β₂ = 0``: ``v̂ = g_t²``, and ``m̂ = g_t`` when ``t = 1`` or ``β₁ = 0`` (``C_t = 1``);
    otherwise ``g = (…, 1, 0)`` gives ``v̂ = 0 ≠ m̂``, ``|q| = |m̂|/ε`` unbounded (``inf``).

    ``C_t²`` is computed exactly in rationals and its square root rounded up
    (:func:`_sqrt_up`)."""
    b1, b2 = mpq(beta1), mpq(beta2)
    if not (0 <= b1 < 1 and 0 <= b2 < 1 and isinstance(t, int) and t >= 1):
        raise ValueError(f"adam_quotient_bound: need betas in [0, 1) and t ≥ 1, got "
                         f"{beta1!r}, {beta2!r}, {t!r}")
    if b2 == 0:
        return 1.0 if t == 1 or b1 == 0 else math.inf
    r = b1 * b1 / b2
    s = mpq(t) if r == 1 else (1 - r ** t) / (1 - r)
    c2 = (1 - b1) ** 2 * (1 - b2 ** t) * s / ((1 - b1 ** t) ** 2 * (1 - b2))
    return _sqrt_up(c2)


def _sqrt_up(q: mpq) -> float:
    """The smallest float64 ``s ≥ 0`` with ``s² ≥ q`` (exact rational comparisons; ``inf``
    above binary64's range), i.e. ``√q`` rounded up, for a rational ``q ≥ 0``."""
    f = exact_up(q)
    if f == math.inf:
        return math.inf
    s = math.sqrt(f)
    while mpq(s) ** 2 < q:
        s = float(np.nextafter(s, math.inf))
    while s > 0 and mpq(float(np.nextafter(s, 0.0))) ** 2 >= q:
        s = float(np.nextafter(s, 0.0))
    return s


def square(fmt: "Format | Arithmetic", g: Value, spec: bool = True, bounds: bool = True) -> Value:
    """``RN(g·g)`` by the ``mul`` rules; the spec is ``|g|·|g|`` (the same reals, but an
    enclosure that stays ≥ 0 when ``g``'s enclosure contains 0, so ``√`` of it is defined)."""
    gs = g.spec.abs() if spec else None
    a = Value(g.runtime, gs, g.eps)
    return apply(fmt, "mul", a, a, spec=spec, bounds=bounds)


def constant(fmt: "Format | Arithmetic", c, shape, spec: bool = True,
             bounds: bool = True) -> Value:
    """The exact rational ``c`` broadcast to ``shape``: runtime ``RN(c)`` in the storage
    format, ``ε = |RN(c) − c|`` (exact distance converted upward)."""
    q = mpq(c)
    r = storage(fmt).round(np.array([q], dtype=object))
    r0 = r[0]
    if isinstance(r0, (float, np.floating)) and not math.isfinite(r0):
        e = math.inf
    else:
        e = exact_up(abs(mpq(r0) - q))
    rt = np.full(shape, r[0], dtype=np.asarray(r).dtype)
    sp = None
    if spec:
        a = np.empty(shape, dtype=object)
        a[...] = q
        sp = Interval(a, a)
    return Value(rt, sp, np.full(shape, e, dtype=np.float64) if bounds else None)


def zeros(fmt: "Format | Arithmetic", shape, spec: bool = True, bounds: bool = True) -> Value:
    return constant(fmt, 0, shape, spec, bounds)


def _check_hyper(name: str, v, lo: float, hi: float, lo_open: bool = False,
                 hi_open: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    ok = math.isfinite(f) and (f > lo if lo_open else f >= lo) and (f < hi if hi_open else f <= hi)
    if not ok:
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo}, {hi}"
                         f"{')' if hi_open else ']'}, got {v!r}")
    return f


# -- optimizers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SGD:
    """``p' = RN(p − RN(lr·g))``."""

    lr: float = 0.01

    def __post_init__(self):
        _check_hyper("lr", self.lr, 0.0, math.inf, lo_open=True, hi_open=True)

    def init(self, fmt: "Format | Arithmetic", p: Value, spec: bool, bounds: bool) -> dict:
        return {}

    def update(self, fmt: "Format | Arithmetic", t: int, p: Value, g: Value, state: dict, spec: bool,
               bounds: bool):
        kw = dict(spec=spec, bounds=bounds)
        lr = constant(fmt, self.lr, np.shape(p.runtime), **kw)
        return apply(fmt, "sub", p, apply(fmt, "mul", lr, g, **kw), **kw), state


@dataclass(frozen=True)
class Momentum:
    """``v' = RN(RN(μ·v) + g)``, ``p' = RN(p − RN(lr·v'))`` (PyTorch SGD with momentum)."""

    lr: float = 0.01
    momentum: float = 0.9

    def __post_init__(self):
        _check_hyper("lr", self.lr, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_hyper("momentum", self.momentum, 0.0, 1.0, hi_open=True)

    def init(self, fmt: "Format | Arithmetic", p: Value, spec: bool, bounds: bool) -> dict:
        return {"v": zeros(fmt, np.shape(p.runtime), spec, bounds)}

    def update(self, fmt: "Format | Arithmetic", t: int, p: Value, g: Value, state: dict, spec: bool,
               bounds: bool):
        kw = dict(spec=spec, bounds=bounds)
        shape = np.shape(p.runtime)
        mu, lr = constant(fmt, self.momentum, shape, **kw), constant(fmt, self.lr, shape, **kw)
        v = apply(fmt, "add", apply(fmt, "mul", mu, state["v"], **kw), g, **kw)
        return apply(fmt, "sub", p, apply(fmt, "mul", lr, v, **kw), **kw), {"v": v}


@dataclass(frozen=True)
class AdamW:
    """AdamW (decoupled weight decay), rounding order in the module docstring.

    The bound of ``RN(m̂/d)`` is the division rule's capped by ``|RN(m̂/d)| + C_t``
    (:func:`adam_quotient_bound`). The premise of ``C_t``: the spec ``m``, ``v`` are the exact
    recurrences from 0 over the spec gradients of steps ``1..t`` — they are, since :meth:`init`
    starts them at exact zeros, ``β₁``, ``β₂``, ``1 − β₁``, ``1 − β₂`` are exact constants, the
    same spec gradient ``g`` feeds ``m`` and ``v`` (``g·g`` as ``|g|·|g|``), weight decay acts on
    ``p`` only (decoupled: it never enters ``m``, ``v``), and ``t`` is the 1-based count of
    updates of this state (checked: the state counts its updates, a mismatch is a
    ``ValueError``). The spec gradients are those of the exact training run from the same
    initial parameters and data; ``C_t`` holds for any real gradient sequence, so for them.
    """

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2

    def __post_init__(self):
        _check_hyper("lr", self.lr, 0.0, math.inf, lo_open=True, hi_open=True)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be a pair, got {self.betas!r}")
        _check_hyper("betas[0]", self.betas[0], 0.0, 1.0, hi_open=True)
        _check_hyper("betas[1]", self.betas[1], 0.0, 1.0, hi_open=True)
        _check_hyper("eps", self.eps, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_hyper("weight_decay", self.weight_decay, 0.0, math.inf, hi_open=True)

    def init(self, fmt: "Format | Arithmetic", p: Value, spec: bool, bounds: bool) -> dict:
        shape = np.shape(p.runtime)
        return {"m": zeros(fmt, shape, spec, bounds), "v": zeros(fmt, shape, spec, bounds),
                "t": 0}

    def update(self, fmt: "Format | Arithmetic", t: int, p: Value, g: Value, state: dict, spec: bool,
               bounds: bool):
        if t != state["t"] + 1:
            raise ValueError(f"AdamW: step {t} on a state after {state['t']} updates "
                             f"(bias correction and the quotient cap need t = {state['t'] + 1})")
        kw = dict(spec=spec, bounds=bounds)
        shape = np.shape(p.runtime)
        lr, b1, b2 = mpq(self.lr), mpq(self.betas[0]), mpq(self.betas[1])

        def c(q):
            return constant(fmt, q, shape, **kw)

        p1 = apply(fmt, "mul", c(1 - lr * mpq(self.weight_decay)), p, **kw)
        m = apply(fmt, "add", apply(fmt, "mul", c(b1), state["m"], **kw),
                  apply(fmt, "mul", c(1 - b1), g, **kw), **kw)
        v = apply(fmt, "add", apply(fmt, "mul", c(b2), state["v"], **kw),
                  apply(fmt, "mul", c(1 - b2), square(fmt, g, **kw), **kw), **kw)
        if spec:  # β₂v + (1−β₂)g² ≥ 0: keep the enclosure nonnegative (intersect with [0, ∞))
            v = Value(v.runtime, _nonneg(v.spec), v.eps)
        m_hat = apply(fmt, "div", m, c(1 - b1 ** t), **kw)
        v_hat = apply(fmt, "div", v, c(1 - b2 ** t), **kw)
        # d = √v̂ + ε ≥ ε on the spec path: v ≥ 0 (intersected above), v̂ = v/(1 − β₂ᵗ) ≥ 0,
        # √ rounds its lower end down but never below 0, and ε is the exact constant. So
        # ε rounded down to float64 is a floor of the spec denominator (finite bounds even where
        # |d̂| ≤ ε_d, where the plain div rule gives inf).
        eps_q = mpq(self.eps)
        d = apply(fmt, "add", apply(fmt, "sqrt", v_hat, **kw), c(eps_q), **kw)
        floor = -exact_up(-eps_q)
        q = cap_magnitude(divide_floor(fmt, m_hat, d, floor, **kw),
                          adam_quotient_bound(self.betas[0], self.betas[1], t), **kw)
        step = apply(fmt, "mul", c(lr), q, **kw)
        return apply(fmt, "sub", p1, step, **kw), {"m": m, "v": v, "t": t}


def _nonneg(s: Interval) -> Interval:
    """``s ∩ [0, ∞)`` for an enclosure of a quantity known to be ≥ 0."""
    if s.lo is s.hi:       # exact: the point is the quantity itself, already ≥ 0
        return s
    z = mpq(0)
    lo = np.asarray(np.vectorize(lambda a: a if a > z else z, otypes=[object])(s.lo),
                    dtype=object).reshape(s.shape)
    return Interval(lo, s.hi)


# -- the training loop --------------------------------------------------------------------------
@dataclass
class StepResult:
    """One training step: the loss before the update, every parameter after it, and the exact
    enclosure verdicts of the step's forward pass (every node, with the step's parameters and
    batch) and backward pass (every gradient the update used).

    ``forward_failed``/``backward_failed`` name the nodes whose runtime left its bound; they
    are ``None`` when training ran with ``spec=False`` or ``bounds=False`` (nothing to check).
    """

    step: int
    loss: Value
    params: dict
    forward_failed: tuple[str, ...] | None = None
    backward_failed: tuple[str, ...] | None = None

    def failures(self) -> list[str] | None:
        """Every enclosure of the step that failed, as ``"forward NODE"``, ``"gradient NODE"``
        and ``"parameter NAME"`` (exact rational tests); ``None`` without spec or bounds."""
        if self.forward_failed is None or self.backward_failed is None:
            return None
        return ([f"forward {n}" for n in self.forward_failed]
                + [f"gradient {n}" for n in self.backward_failed]
                + [f"parameter {n}" for n, v in self.params.items()
                   if not bool(v.spec.encloses(v.runtime, v.eps).all())])

    @property
    def holds(self) -> bool | None:
        """Forward values, gradients and updated parameters all within their bounds; ``None``
        without spec or bounds."""
        f = self.failures()
        return None if f is None else not f


@dataclass
class TrainResult:
    """The steps of :func:`train` in order."""

    steps: list = field(default_factory=list)

    @property
    def params(self) -> dict:
        """The parameters after the last step (``{}`` when no step ran)."""
        return self.steps[-1].params if self.steps else {}

    @property
    def holds(self) -> bool | None:
        """Every step holds (:attr:`StepResult.holds`); ``None`` if trained without spec or
        bounds; ``True`` for zero steps (nothing was computed, nothing failed)."""
        verdicts = [s.holds for s in self.steps]
        return None if None in verdicts else all(verdicts)


def train(graph: Graph, arith: "Arithmetic | Format | str", optimizer, batches,
          loss: str | None = None, steps: int | None = None, order: str | None = None,
          spec: bool = True, bounds: bool = True, progress: bool | None = None,
          params: dict | None = None, arith_map=None) -> TrainResult:
    """Run ``steps`` optimizer steps (default: one per batch); step ``k`` uses
    ``batches[k % len(batches)]`` (a dict of graph inputs; a single dict is used every step).

    ``arith``, ``order`` and ``arith_map`` are those of :meth:`Graph.forward` (parsed once);
    each parameter's update runs in its node's arithmetic (module docstring).
    Each step: forward and backward on the three paths, then the optimizer update of every
    parameter of the graph (:attr:`Graph.params`: a model's constants are never updated).
    ``params`` optionally gives the starting state of every parameter (:class:`Value`
    triples, keyed by exactly the graph's parameters); by default it is
    :meth:`Graph.initial_params`. Returns per step the loss, the updated parameters'
    runtime/spec/eps and (with ``spec`` and ``bounds``) the exact enclosure verdicts of the
    step's forward values and gradients (:class:`StepResult`). ``progress`` drives one bar
    over the steps (silent off a terminal by default); the passes inside a step show none.
    """
    if isinstance(batches, dict):
        batches = [batches]
    batches = list(batches)
    if not batches:
        raise ValueError("batches must not be empty")
    steps = len(batches) if steps is None else steps
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a nonnegative integer, got {steps!r}")
    for name in ("init", "update"):
        if not callable(getattr(optimizer, name, None)):
            raise ValueError(f"optimizer must provide {name}() (SGD, Momentum, AdamW)")
    plan = graph.arithmetics(arith, order, arith_map)
    if params is None:
        state_p = graph.initial_params(plan, spec, bounds)
    else:
        state_p = dict(params)
        missing = [n for n in graph.params if n not in state_p]
        if missing:
            raise ValueError(f"params: no state for parameter {missing[0]!r} (it would not be "
                             f"trained)")
        stray = [n for n in state_p if n not in graph.params]
        if stray:
            raise ValueError(f"params: {stray[0]!r} is not a parameter of the graph")
    opt_state = {n: optimizer.init(plan.rules(n), v, spec, bounds) for n, v in state_p.items()}
    out = TrainResult()
    for k in tqdm(range(steps), desc=f"train {plan.default}", disable=_disable(progress),
                  leave=False):
        res = graph.forward(plan, batches[k % len(batches)], spec=spec, bounds=bounds,
                            params=state_p, progress=False)
        lname = loss if loss is not None else (graph.outputs[0] if len(graph.outputs) == 1
                                               else None)
        back = graph.backward(plan, res, loss=lname, progress=False)
        f_fail, b_fail = res.failures(), back.failures()
        new = {}
        for n, p in state_p.items():
            try:   # parameters were checked on entering the forward pass; the rest are outputs
                with checks.trusted_format_values():   # of rules: format values
                    new[n], opt_state[n] = optimizer.update(plan.rules(n), k + 1, p,
                                                            back.value(n), opt_state[n], spec,
                                                            bounds)
            except (ValueError, TypeError, ZeroDivisionError) as e:
                raise ValueError(f"param {n!r}: optimizer step {k + 1}: {e}") from e
        state_p = new
        out.steps.append(StepResult(k + 1, res.value(back.loss), dict(new),
                                    None if f_fail is None else tuple(f_fail),
                                    None if b_fail is None else tuple(b_fail)))
    return out
