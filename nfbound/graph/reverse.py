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

Arithmetics (:mod:`nfbound.graph.arith`): every node's gradient is stored in the node's storage
format and computed by the VJP rules of its consumers in *their* arithmetics, on the inputs as
the consumers read them in the forward pass (converted to their storage). A contribution of a
consumer whose storage differs is converted back, ``RN_S(ĝ)`` with ``ε_g + |RN_S(ĝ) − ĝ|``
(the reverse of the forward conversion, PyTorch's backward of ``.to(dtype)``; its spec is the
identity's). Contributions are accumulated as above for TorchLean's semantics; in any other
arithmetic by its ``add`` op (autograd adds gradients in the tensor's dtype: computed in the
compute format, rounded once to storage), bounded by the ``add`` primitive's rules there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..bounds.ctx import ctx_add_bound
from ..arith import Arithmetic
from ..formats import Format
from ..ops.interval import Interval
from ..ops import checks
from .arith import NodeArithmetics, parse
from .report import nonfinite
from .forward import (ForwardResult, Graph, Value, _disable, convert, leaf_value, op_params,
                      primitive, refuse_overflowed)


def _accumulate(fmt: "Format | Arithmetic", old: Value, new: Value, spec: bool,
                bounds: bool) -> Value:
    """Context addition of two gradient contributions of the same value: in a format,
    ``RN(â + b̂)`` with :func:`~nfbound.bounds.ctx.ctx_add_bound`; in an arithmetic, its
    ``add`` op and that primitive's bound (module docstring), ``inf`` when a contribution
    overflowed (the ``add`` rules refuse non-finite operands)."""
    s_sp = old.spec + new.spec if spec else None
    if isinstance(fmt, Format):
        s_rt = fmt.add(old.runtime, new.runtime)
        s_ep = ctx_add_bound(fmt, old.runtime, old.eps, new.runtime, new.eps, out=s_rt) \
            if bounds else None
        return Value(s_rt, s_sp, s_ep)
    xs = (old.runtime, new.runtime)
    if nonfinite(old.runtime) or nonfinite(new.runtime):   # an overflowed contribution: as in a
        s_rt = fmt.storage.add(*xs)                          # format, the sum overflows, bound inf
        return Value(s_rt, s_sp, np.full(np.shape(s_rt), np.inf) if bounds else None)
    add = primitive("add")
    if not bounds:
        return Value(add.runtime(fmt, *xs), s_sp, None)
    s_rt, s_ep = add.runtime_and_bound(fmt, xs, (old.eps, new.eps))
    return Value(s_rt, s_sp, np.asarray(s_ep, dtype=np.float64))


def zero_gradient(fmt: Format, shape, spec: bool, bounds: bool) -> Value:
    """The exact zero gradient of a value no contribution reaches."""
    z = fmt.round(np.zeros(shape))
    return Value(z, Interval.exact(np.zeros(shape)) if spec else None,
                 np.zeros(shape) if bounds else None)


def backward(graph: Graph, arith: "Arithmetic | Format | str | NodeArithmetics",
             result: ForwardResult, loss: str | None = None, spec: bool | None = None,
             bounds: bool | None = None, progress: bool | None = None) -> "BackwardResult":
    """Gradients of the scalar node ``loss`` w.r.t. every node (runtime, spec, bounds), in the
    arithmetics of the forward pass (``result.arith``, its per-node map included): ``arith``
    must be the forward pass's (its format, arithmetic or :class:`NodeArithmetics`), else a
    ``ValueError``.

    ``spec``/``bounds`` default to what the forward result carries; asking for spec gradients
    or bounds that the forward pass did not compute is a ``ValueError``.
    """
    if result.graph is not graph:
        raise ValueError("result: the forward result belongs to another graph")
    plan = result.arith
    given = arith if isinstance(arith, NodeArithmetics) else \
        parse(arith, result.order if isinstance(arith, Format) else None)
    if given != (plan if isinstance(arith, NodeArithmetics) else plan.default):
        raise ValueError(f"arith: the forward pass ran in {plan.default}, not in "
                         f"{getattr(given, 'default', given)}")
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

    grads: dict[str, Value] = {loss: leaf_value(plan.storage(loss), np.ones(shape), spec, bounds)}
    topo = graph.topological_order()
    reverse = topo[::-1]
    for n in tqdm(reverse, desc=f"backward {plan.default}", disable=_disable(progress),
                  leave=False):
        node = graph.nodes[n]
        if node.kind != "op" or n not in grads:
            continue
        g = grads[n]
        try:
            with checks.trusted_format_values():
                contribs = _vjp(plan, node, result, g, spec, bounds)
        except (ValueError, TypeError, ZeroDivisionError) as e:
            raise ValueError(f"node {n!r} ({node.op}) backward: {e}") from e
        for i, c in zip(node.inputs, contribs):
            if c is None or graph.nodes[i].kind == "label":
                continue
            if np.shape(c.runtime) != np.shape(result.runtime[i]):
                raise ValueError(f"node {n!r} ({node.op}) backward: gradient of input {i!r} has "
                                 f"shape {np.shape(c.runtime)}, input {np.shape(result.runtime[i])}")
            c = convert(c, plan.storage(n), plan.storage(i), bounds)
            grads[i] = c if i not in grads else \
                _accumulate(plan.rules(i), grads[i], c, spec, bounds)
    for n in topo:
        if n not in grads and graph.nodes[n].kind in ("data", "param", "const"):
            grads[n] = zero_gradient(plan.storage(n), np.shape(result.runtime[n]), spec, bounds)
    keep = [n for n in topo if n in grads]
    return BackwardResult(graph, result.fmt, loss,
                          {n: np.asarray(grads[n].runtime) for n in keep},
                          {n: grads[n].spec for n in keep} if spec else None,
                          {n: np.asarray(grads[n].eps, dtype=np.float64) for n in keep}
                          if bounds else None, plan)


def _vjp(plan: NodeArithmetics, node, result: ForwardResult, g: Value, spec: bool,
         bounds: bool):
    """The contributions ``(Value | None, …)`` of ``node``'s VJP to each of its inputs, in
    ``node``'s storage (the caller converts them to the inputs')."""
    P = primitive(node.op)
    A = plan.rules(node.name)
    params = op_params(P, node, plan.order(node.name))
    vals = result.graph.inputs_of(plan, node, result.runtime, result.spec if spec else None,
                                  result.eps if bounds else None)
    xs = tuple(v.runtime for v in vals)
    refuse_overflowed(plan.storage(node.name), (node.name,), (g.runtime,),
                      what="the gradient of")
    if bounds:
        g_rt, g_ep = P.vjp_runtime_and_bound(A, xs, tuple(v.eps for v in vals), g.runtime,
                                             g.eps, **params)
    else:
        g_rt, g_ep = P.vjp_runtime(A, xs, g.runtime, **params), (None,) * len(xs)
    g_sp = P.vjp_spec(tuple(v.spec for v in vals), g.spec, **params) if spec \
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
    """Gradients of ``loss`` w.r.t. every node reached (and every leaf but labels), each in its
    node's storage format (``arith``: every node's arithmetic, the forward pass's)."""

    graph: Graph
    fmt: "Format | Arithmetic"
    loss: str
    runtime: dict
    spec: dict | None
    eps: dict | None
    arith: NodeArithmetics | None = None

    def __post_init__(self) -> None:
        if self.arith is None:
            self.arith = self.graph.arithmetics(self.fmt)

    def value(self, name: str) -> Value:
        return Value(self.runtime[name], None if self.spec is None else self.spec[name],
                     None if self.eps is None else self.eps[name])

    def report(self) -> list[dict]:
        """One row per gradient (topological order of the nodes)."""
        from .report import rows
        return rows(self.graph, list(self.runtime), self.runtime, self.spec, self.eps,
                    self.arith, gradient=True)

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
