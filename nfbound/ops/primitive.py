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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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

    def __post_init__(self) -> None:
        for field in ("runtime", "spec", "bound", "vjp_runtime", "vjp_spec", "vjp_bound",
                      "sample"):
            if not callable(getattr(self, field)):
                raise TypeError(f"primitive {self.name!r}: rule {field} is not callable")
        for field in ("fused", "vjp_fused"):
            if getattr(self, field) is not None and not callable(getattr(self, field)):
                raise TypeError(f"primitive {self.name!r}: rule {field} is not callable")

    def runtime_and_bound(self, fmt, xs, eps, **params):
        """``(runtime, bound)`` of the forward rule: :attr:`fused` if there is one."""
        if self.fused is not None:
            return self.fused(fmt, xs, eps, **params)
        return self.runtime(fmt, *xs, **params), self.bound(fmt, xs, eps, **params)

    def vjp_runtime_and_bound(self, fmt, xs, eps, g, eps_g, **params):
        """``(grads, bounds)`` of the VJP rules: :attr:`vjp_fused` if there is one."""
        if self.vjp_fused is not None:
            return self.vjp_fused(fmt, xs, eps, g, eps_g, **params)
        return (self.vjp_runtime(fmt, xs, g, **params),
                self.vjp_bound(fmt, xs, eps, g, eps_g, **params))


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
