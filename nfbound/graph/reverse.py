"""Reverse mode: backpropagation of a scalar loss on the three paths (TorchLean ``RevGraph``).

Walking the nodes in reverse topological order, each op node with an upstream gradient
``(ĝ, g, ε_g)`` hands its inputs the contributions of its VJP rules:

* runtime ``P.vjp_runtime(fmt, xs, ĝ, **params)`` (every step rounded),
* spec ``P.vjp_spec(xs_interval, g, **params)``,
* bound ``P.vjp_bound(fmt, xs, eps, ĝ, ε_g, **params)``.

A value consumed by several nodes (or twice by one node) receives several contributions; they
are accumulated by a rounded addition ``RN(â + b̂)`` in the order they arrive (reverse
topological order of the consumers, then input position), the spec adds them exactly and the
bound is :func:`~nfbound.bounds.ctx.ctx_add_bound` ``ε_a + ε_b + r`` (TorchLean
``approxCtx_add``). A single contribution is taken as is — no ``+ 0`` is performed, so no
rounding is charged (TorchLean ``set3IdxNe``). A node no contribution reaches has gradient
exactly 0 on every path. Gradients have their value's shape, 0-d ones included.

Soundness (TorchLean ``backprop_approx``): by induction over the reverse order, every
contribution satisfies ``|ĝ_i − g_i| ≤ ε_i`` (the VJP bound rules are sound given sound forward
bounds of the inputs and a sound upstream bound), and the context addition preserves it.
The seed gradient of the loss is 1: its runtime ``RN(1)`` with the error ``|RN(1) − 1|`` (0 but in
formats without 1, e.g. fixed point with a quantum above 1), taken as a leaf.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..bounds.ctx import ctx_add_bound
from ..formats import Format
from ..ops.interval import Interval
from ..ops import checks
from .forward import (ForwardResult, Graph, Value, _disable, leaf_value, op_params, primitive,
                      refuse_overflowed)


def _accumulate(fmt: Format, old: Value, new: Value, spec: bool, bounds: bool) -> Value:
    """Context addition of two gradient contributions of the same value."""
    s_rt = fmt.add(old.runtime, new.runtime)
    s_sp = old.spec + new.spec if spec else None
    s_ep = ctx_add_bound(fmt, old.runtime, old.eps, new.runtime, new.eps, out=s_rt) if bounds \
        else None
    return Value(s_rt, s_sp, s_ep)


def zero_gradient(fmt: Format, shape, spec: bool, bounds: bool) -> Value:
    """The exact zero gradient of a value no contribution reaches."""
    z = fmt.round(np.zeros(shape))
    return Value(z, Interval.exact(np.zeros(shape)) if spec else None,
                 np.zeros(shape) if bounds else None)


def backward(graph: Graph, fmt: Format, result: ForwardResult, loss: str | None = None,
             spec: bool | None = None, bounds: bool | None = None,
             progress: bool | None = None) -> "BackwardResult":
    """Gradients of the scalar node ``loss`` w.r.t. every node (runtime, spec, bounds).

    ``spec``/``bounds`` default to what the forward result carries; asking for spec gradients
    or bounds that the forward pass did not compute is a ``ValueError``.
    """
    if result.graph is not graph:
        raise ValueError("result: the forward result belongs to another graph")
    if loss is None:
        if len(graph.outputs) != 1:
            raise ValueError(f"loss: give the loss node (graph outputs: {graph.outputs})")
        loss = graph.outputs[0]
    if loss not in graph.nodes:
        raise ValueError(f"loss: {loss!r} is not a node of the graph")
    spec = result.spec is not None if spec is None else spec
    bounds = result.eps is not None if bounds is None else bounds
    if spec and result.spec is None:
        raise ValueError("spec: the forward pass was run with spec=False")
    if bounds and result.eps is None:
        raise ValueError("bounds: the forward pass was run with bounds=False")
    shape = np.shape(result.runtime[loss])
    if int(np.prod(shape)) != 1:
        raise ValueError(f"loss: node {loss!r} is not scalar (shape {shape})")
    if graph.nodes[loss].kind == "label":
        raise ValueError(f"loss: node {loss!r} is a label (not differentiable)")

    grads: dict[str, Value] = {loss: leaf_value(fmt, np.ones(shape), spec, bounds)}
    topo = graph.topological_order()
    reverse = topo[::-1]
    for n in tqdm(reverse, desc=f"backward {fmt}", disable=_disable(progress), leave=False):
        node = graph.nodes[n]
        if node.kind != "op" or n not in grads:
            continue
        g = grads[n]
        try:
            with checks.trusted_format_values():
                contribs = _vjp(fmt, node, result, g, spec, bounds)
        except (ValueError, TypeError, ZeroDivisionError) as e:
            raise ValueError(f"node {n!r} ({node.op}) backward: {e}") from e
        for i, c in zip(node.inputs, contribs):
            if c is None or graph.nodes[i].kind == "label":
                continue
            if np.shape(c.runtime) != np.shape(result.runtime[i]):
                raise ValueError(f"node {n!r} ({node.op}) backward: gradient of input {i!r} has "
                                 f"shape {np.shape(c.runtime)}, input {np.shape(result.runtime[i])}")
            grads[i] = c if i not in grads else _accumulate(fmt, grads[i], c, spec, bounds)
    for n in topo:
        if n not in grads and graph.nodes[n].kind in ("data", "param", "const"):
            grads[n] = zero_gradient(fmt, np.shape(result.runtime[n]), spec, bounds)
    keep = [n for n in topo if n in grads]
    return BackwardResult(graph, fmt, loss, {n: np.asarray(grads[n].runtime) for n in keep},
                          {n: grads[n].spec for n in keep} if spec else None,
                          {n: np.asarray(grads[n].eps, dtype=np.float64) for n in keep}
                          if bounds else None)


def _vjp(fmt: Format, node, result: ForwardResult, g: Value, spec: bool, bounds: bool):
    """The contributions ``(Value | None, …)`` of ``node``'s VJP to each of its inputs."""
    P = primitive(node.op)
    params = op_params(P, node, result.order)
    xs = tuple(result.runtime[i] for i in node.inputs)
    refuse_overflowed(fmt, node.inputs, xs)
    refuse_overflowed(fmt, (node.name,), (g.runtime,), what="the gradient of")
    if bounds:
        g_rt, g_ep = P.vjp_runtime_and_bound(fmt, xs, tuple(result.eps[i] for i in node.inputs),
                                             g.runtime, g.eps, **params)
    else:
        g_rt, g_ep = P.vjp_runtime(fmt, xs, g.runtime, **params), (None,) * len(xs)
    g_sp = P.vjp_spec(tuple(result.spec[i] for i in node.inputs), g.spec, **params) if spec \
        else (None,) * len(xs)
    if not (len(g_rt) == len(g_sp) == len(g_ep) == len(xs)):
        raise ValueError(f"VJP rules returned {len(g_rt)}/{len(g_sp)}/{len(g_ep)} gradients for "
                         f"{len(xs)} inputs")
    out = []
    for r, s, e in zip(g_rt, g_sp, g_ep):
        if r is None:
            out.append(None)
            continue
        if (spec and s is None) or (bounds and e is None):
            raise ValueError("VJP spec/bound rule returned None for a differentiable input")
        out.append(Value(r, s, None if e is None else
                         np.broadcast_to(np.asarray(e, dtype=np.float64), np.shape(r))))
    return out


@dataclass
class BackwardResult:
    """Gradients of ``loss`` w.r.t. every node reached (and every leaf but labels)."""

    graph: Graph
    fmt: Format
    loss: str
    runtime: dict
    spec: dict | None
    eps: dict | None

    def value(self, name: str) -> Value:
        return Value(self.runtime[name], None if self.spec is None else self.spec[name],
                     None if self.eps is None else self.eps[name])

    def report(self) -> list[dict]:
        """One row per gradient (topological order of the nodes)."""
        from .report import rows
        return rows(self.graph, list(self.runtime), self.runtime, self.spec, self.eps, self.fmt,
                    gradient=True)

    def failures(self) -> list[str] | None:
        """The nodes whose runtime gradient is farther than ``eps`` from some point of its
        spec gradient (exact rational test); ``None`` without spec or bounds."""
        if self.spec is None or self.eps is None:
            return None
        return [n for n in self.runtime
                if not bool(self.spec[n].encloses(self.runtime[n], self.eps[n]).all())]

    @property
    def holds(self) -> bool | None:
        """Whether every gradient encloses (see :meth:`failures`); ``None`` without spec or
        bounds."""
        f = self.failures()
        return None if f is None else not f
