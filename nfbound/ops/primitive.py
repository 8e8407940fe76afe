"""Primitives: one record per operation with all six of its rules side by side.

A :class:`Primitive` carries, for one op (JAX's ``standard_primitive`` + ``defjvp`` in one place):

* ``runtime(fmt, *xs, **params)``: the op in the format, every elementary step rounded, in the
  documented order (float64 arrays for formats that fit binary64, object arrays of ``mpq``
  otherwise);
* ``spec(*xs: Interval, **params) -> Interval``: the op over the reals, exact or enclosed;
* ``bound(fmt, xs, eps, **params) -> eps_out``: given runtime inputs ``xs`` and their error
  bounds ``eps`` (``|x_R − x_S| ≤ eps`` elementwise), a float64 array ``ε`` with
  ``|op_R(xs) − op_S(xs_S)| ≤ ε`` elementwise (rounded upward);
* ``vjp_runtime(fmt, xs, g, **params) -> tuple``: runtime gradients of every input given the
  runtime output gradient ``g``;
* ``vjp_spec(xs: tuple[Interval], g: Interval, **params) -> tuple[Interval]``;
* ``vjp_bound(fmt, xs, eps, g, eps_g, **params) -> tuple``: bounds of the input gradients;
* ``sample(rng, fmt) -> (xs, params)``: a random valid instance (float64 inputs, already
  values of ``fmt``), used by the registry-wide enclosure test and ``nfbound verify``.

Inputs that are not differentiable (integer targets, say) get ``None`` gradients. A primitive
is complete by construction: the seven rules above are required, so a missing one fails at
import.

Two optional *fused* rules serve ops whose bound is a replay of the runtime computation (conv,
linear, matmul: the bound is accumulated alongside the rounded sums, so computing it alone
recomputes the runtime):

* ``fused(fmt, xs, eps, **params) -> (out, eps_out)`` equals
  ``(runtime(fmt, *xs, **params), bound(fmt, xs, eps, **params))`` bit for bit;
* ``vjp_fused(fmt, xs, eps, g, eps_g, **params) -> (grads, bounds)`` equals
  ``(vjp_runtime(fmt, xs, g, **params), vjp_bound(fmt, xs, eps, g, eps_g, **params))``.

The graphs call them when bounds are requested (one pass instead of two); the registry test
checks the equalities.

Arithmetics: every rule that takes runtime values takes an :class:`~nfbound.arith.Arithmetic`
wherever it takes a ``Format`` (``P.bound(arith.get("torch-cpu-bfloat16"), xs, eps)``); the
rules are written for formats (:attr:`Primitive.rules`) and :mod:`nfbound.ops.arithmetic`
composes them — compute in the working format, round to storage — with the same signatures.
``contraction`` marks the ops computed in the accumulator (matmul, linear, conv …) and
``operand_slots`` their multiplied inputs (converted first by an ``operands`` format, TF32);
``libm`` the elementwise functions a library may not round correctly (``Arithmetic.libm_ulps``).

Subnormal inputs in the flush modes (``Format.subnormals``), once for every rule: before a
rule runs, each runtime input and upstream gradient ``x̂`` that holds nonzero subnormals
(``0 < |x̂| < b_min``, values of the format) is read as the op reads it — ``Format.daz(x̂)``,
zeros of their sign under DAZ, ``x̂`` itself under FTZ alone — and its bound grows by ``|x̂|``
at those positions. Under DAZ that is the input error of the flush: ``|daz(x̂) − x| ≤ ε + |x̂|``.
Under FTZ alone ``x̂`` stays, but an operation may still turn it into 0 (``RN(0 + x̂)`` is a
subnormal result, flushed) where a rule takes the operation as exact; ``ε + |x̂|`` bounds both
``|x̂ − x|`` and ``|0 − x|``, so every replay of such an operation holds. (Results computed
inside a rule carry the same double reading through ``Format.underflow_term``.) Subnormals off
the grid are left alone for the rule to refuse. Gradual formats are untouched.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..arith import Arithmetic
from ..bounds.upward import abs_up, add_up
from . import arithmetic, checks

REGISTRY: dict[str, "Primitive"] = {}


@dataclass(frozen=True)
class Primitive:
    name: str
    runtime: Callable
    spec: Callable
    bound: Callable
    vjp_runtime: Callable
    vjp_spec: Callable
    vjp_bound: Callable
    sample: Callable
    fused: Callable | None = None
    vjp_fused: Callable | None = None
    contraction: bool = False
    operand_slots: tuple[int, ...] = (0, 1)
    libm: bool = False
    rules: "FormatRules" = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for field in ("runtime", "spec", "bound", "vjp_runtime", "vjp_spec", "vjp_bound",
                      "sample"):
            if not callable(getattr(self, field)):
                raise TypeError(f"primitive {self.name!r}: rule {field} is not callable")
        for field in ("fused", "vjp_fused"):
            if getattr(self, field) is not None and not callable(getattr(self, field)):
                raise TypeError(f"primitive {self.name!r}: rule {field} is not callable")
        read = {name: (None if getattr(self, name) is None else wrap(getattr(self, name)))
                for name, wrap in _SUBNORMAL_READERS.items()}
        object.__setattr__(self, "rules", FormatRules(**read))
        for name, rule in read.items():
            if rule is not None:
                object.__setattr__(self, name, _dispatch(self, name, rule))

    def runtime_and_bound(self, fmt, xs, eps, **params):
        """``(runtime, bound)`` of the forward rule: :attr:`fused` if there is one."""
        if isinstance(fmt, Arithmetic):
            return arithmetic.fused(self, fmt, xs, eps, **params)
        if self.fused is not None:
            return self.fused(fmt, xs, eps, **params)
        return self.runtime(fmt, *xs, **params), self.bound(fmt, xs, eps, **params)

    def vjp_runtime_and_bound(self, fmt, xs, eps, g, eps_g, **params):
        """``(grads, bounds)`` of the VJP rules: :attr:`vjp_fused` if there is one."""
        if isinstance(fmt, Arithmetic):
            return arithmetic.vjp_fused(self, fmt, xs, eps, g, eps_g, **params)
        if self.vjp_fused is not None:
            return self.vjp_fused(fmt, xs, eps, g, eps_g, **params)
        return (self.vjp_runtime(fmt, xs, g, **params),
                self.vjp_bound(fmt, xs, eps, g, eps_g, **params))


@dataclass(frozen=True)
class FormatRules:
    """The rules that take runtime values, for a :class:`~nfbound.formats.Format` (after the
    subnormal reading below): what :mod:`nfbound.ops.arithmetic` composes for an arithmetic."""

    runtime: Callable
    bound: Callable
    vjp_runtime: Callable
    vjp_bound: Callable
    fused: Callable | None
    vjp_fused: Callable | None


def _dispatch(P: "Primitive", name: str, rule):
    """The rule ``name`` of ``P`` taking a ``Format`` (``rule``) or an
    :class:`~nfbound.arith.Arithmetic` (its composition in :mod:`nfbound.ops.arithmetic`,
    which has the same signature after ``P``)."""
    composed = getattr(arithmetic, name)

    @functools.wraps(rule)
    def dispatched(fmt, *args, **params):
        if isinstance(fmt, Arithmetic):
            return composed(P, fmt, *args, **params)
        return rule(fmt, *args, **params)
    return dispatched


def _read(fmt, x, e):
    """``(x as read, its bound)`` for one runtime input (module docstring): unchanged unless
    ``x`` holds nonzero subnormal values of a format in a flush mode."""
    if x is None or getattr(fmt, "subnormals", "gradual") == "gradual":
        return x, e
    try:
        a = checks.exact_values("x", x)    # every real dtype (ml_dtypes too) at its exact value
        tiny = fmt.tiny(a)
        if not tiny.any() or not np.asarray(fmt.is_representable(a[tiny])).all():
            return x, e
    except (TypeError, ValueError):   # not numbers: the rule refuses them by name
        return x, e
    charge = np.where(tiny, abs_up(a), 0.0)
    return fmt.daz(a), (None if e is None else add_up(e, charge))


def _read_all(fmt, xs, eps=None):
    """:func:`_read` over the inputs; malformed ``xs``/``eps`` pass unchanged to the rule,
    which refuses them by name."""
    if getattr(fmt, "subnormals", "gradual") == "gradual" or not isinstance(xs, (tuple, list)) \
            or (eps is not None and (not isinstance(eps, (tuple, list)) or len(eps) != len(xs))):
        return xs, eps
    pairs = [_read(fmt, x, None if eps is None else eps[i]) for i, x in enumerate(xs)]
    return tuple(x for x, _ in pairs), (None if eps is None else tuple(e for _, e in pairs))


def _reading_runtime(rule):
    @functools.wraps(rule)
    def runtime(fmt, *xs, **params):
        return rule(fmt, *_read_all(fmt, xs)[0], **params)
    return runtime


def _reading_bound(rule):
    @functools.wraps(rule)
    def bound(fmt, xs, eps, **params):
        return rule(fmt, *_read_all(fmt, xs, eps), **params)
    return bound


def _reading_vjp_runtime(rule):
    @functools.wraps(rule)
    def vjp_runtime(fmt, xs, g, **params):
        return rule(fmt, _read_all(fmt, xs)[0], _read(fmt, g, None)[0], **params)
    return vjp_runtime


def _reading_vjp_bound(rule):
    @functools.wraps(rule)
    def vjp_bound(fmt, xs, eps, g, eps_g, **params):
        return rule(fmt, *_read_all(fmt, xs, eps), *_read(fmt, g, eps_g), **params)
    return vjp_bound


#: The rules that take runtime values, and how each reads its inputs (module docstring).
_SUBNORMAL_READERS = {"runtime": _reading_runtime, "bound": _reading_bound,
                      "fused": _reading_bound, "vjp_runtime": _reading_vjp_runtime,
                      "vjp_bound": _reading_vjp_bound, "vjp_fused": _reading_vjp_bound}


def register(p: Primitive) -> Primitive:
    """Add a primitive to the registry (names are unique)."""
    if p.name in REGISTRY:
        raise ValueError(f"primitive {p.name!r} registered twice")
    REGISTRY[p.name] = p
    return p


def get(name: str) -> Primitive:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
