"""Forward graphs: a DAG of primitive nodes evaluated under runtime, spec and bound rules.

A node stores ``(op, params, inputs)`` — no closures — so one graph is evaluated by each
primitive's three forward rules in a single pass over a topological order:

* runtime: ``P.runtime(fmt, *xs, **params)`` on the runtime values of the inputs;
* spec: ``P.spec(*xs_interval, **params)`` on the spec enclosures of the inputs;
* bound: ``P.bound(fmt, xs, eps, **params)``.

Soundness composes (TorchLean ``RuntimeApprox`` graph theorem): if every input satisfies
``|x̂ − x| ≤ ε_x`` elementwise and every primitive's bound rule is sound for inputs within
their ``ε``, then by induction along the topological order every node satisfies
``|runtime − spec| ≤ eps``. The leaves: a data input, parameter or constant ``a`` (a float64
array, taken as the exact reals it denotes) has runtime ``RN(a)``, spec ``a`` and
``ε = |RN(a) − a|`` rounded upward; a label input is passed through unchanged (``ε = 0``, not
differentiable). Parameters are what :func:`nfbound.graph.train` updates; constants (a
model's buffers, frozen weights) never are. Every value may be 0-d (a scalar input,
parameter or loss): runtime values are arrays of the node's shape, also where a rule returns
a NumPy scalar.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ..arith import Arithmetic, contains
from ..bounds.upward import add_up, exact_array_up, up
from ..formats import Format
from ..ops import checks
from ..ops.interval import Interval
from .arith import NodeArithmetics, assign

if TYPE_CHECKING:
    from .reverse import BackwardResult

KINDS = ("data", "label", "param", "const", "op")


class Value(NamedTuple):
    """One tensor on the three paths: ``|runtime − x| ≤ eps`` for every ``x`` in ``spec``."""

    runtime: Any
    spec: Interval | None
    eps: np.ndarray | None


@dataclass(frozen=True)
class Node:
    """A graph node: a leaf (``kind`` data/label/param/const) or a primitive application."""

    name: str
    kind: str
    op: str | None = None
    inputs: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)
    value: np.ndarray | None = None       # the float64 spec value of a parameter or constant


def load_ops():
    """The ``nfbound.ops`` package, imported (importing it registers every primitive)."""
    import nfbound.ops as ops
    return ops


def refuse_overflowed(fmt: Format, names, values, what: str = "input") -> None:
    """Stop at the first consumer of an overflowed value.

    A runtime value that overflowed (±inf or NaN, per the format's overflow rule) has an
    infinite bound, and so would every value computed from it; the op rules refuse non-finite
    operands. The node that overflowed keeps its ``inf`` bound (the report says why); a node
    consuming it raises ``ValueError`` naming the overflowed input, so no finite bound is ever
    given downstream of an overflow.
    """
    from .report import nonfinite
    for n, v in zip(names, values):
        if nonfinite(v):
            raise ValueError(f"{what} {n!r} overflowed {fmt} (its runtime holds ±inf or NaN, its "
                             f"bound is inf and so would be every bound depending on it); a "
                             f"format with a wider exponent range avoids this")


def primitive(name: str):
    """The registered primitive ``name`` (``ValueError`` listing the known ops otherwise)."""
    ops = load_ops()
    return ops.get(name)


def op_params(P, node: Node, order: str | None) -> dict:
    """The keyword parameters every rule of ``P`` receives at ``node``: the node's own params,
    plus ``order`` when it is given (format rules: :meth:`NodeArithmetics.order`), the op
    takes one and the node did not fix it."""
    params = dict(node.params)
    if order is not None and "order" not in params and _takes_order(P.runtime):
        params["order"] = order
    return params


@functools.lru_cache(maxsize=None)
def _takes_order(runtime) -> bool:
    """Whether a runtime rule has an ``order`` parameter (signatures are fixed: cached)."""
    return "order" in inspect.signature(runtime).parameters


def leaf_value(fmt: Format, a, spec: bool = True, bounds: bool = True) -> Value:
    """A data input or parameter: runtime ``RN(a)``, spec ``a`` (exact), ``ε = |RN(a) − a|``.

    ``a`` is read at its exact value whatever its dtype (``checks.finite``: int64 beyond 2^53,
    longdouble and rationals are never converted to float64 first; other dtypes are refused).
    When ``a`` and ``RN(a)`` are binary64 values their difference is computed in binary64 and
    pushed one step up (an upper bound of the exact difference); otherwise it is computed
    exactly in rationals and converted upward. Overflow to ±inf gives ``ε = inf``.
    """
    arr = checks.finite("value", a)
    rt = fmt.round(arr)
    s = Interval.exact(arr) if (spec or (bounds and np.asarray(rt).dtype == object)) else None
    eps = None
    if bounds:
        r = np.asarray(rt)
        if r.dtype != object and arr.dtype != object:
            with np.errstate(invalid="ignore"):
                d = np.abs(r - arr)
            eps = np.where(np.isfinite(r), up(d), np.inf)
            eps = np.where(d == 0, 0.0, eps)
        else:
            eps = _exact_distance_up(s, r)
    return Value(rt, s if spec else None, eps)


def convert(value: Value, source: Format, target: Format, bounds: bool = True) -> Value:
    """``value`` of storage ``source`` read in storage ``target``: runtime ``RN_target(x̂)``,
    the same spec, ``ε + |RN_target(x̂) − x̂|`` (the distance bounded as for a leaf:
    :func:`leaf_value`). Unchanged when every value of ``source`` is one of ``target``. The
    theorem is in :mod:`nfbound.graph.arith`."""
    if contains(target, source):
        return value
    step = leaf_value(target, value.runtime, spec=False, bounds=bounds)
    return Value(step.runtime, value.spec, add_up(value.eps, step.eps) if bounds else None)


def _exact_distance_up(s: Interval, runtime) -> np.ndarray:
    d = s.distance(runtime)
    return np.asarray(exact_array_up(d), dtype=np.float64).reshape(s.shape)


def label_value(labels, spec: bool = True, bounds: bool = True) -> Value:
    """A label input: unchanged, exact (read at its exact value, as :func:`leaf_value`), error 0."""
    a = np.asarray(labels)
    s = Interval.exact(checks.finite("labels", a)) if spec else None
    return Value(a, s, np.zeros(a.shape) if bounds else None)


class Graph:
    """A DAG of primitive nodes (names are unique; op names from ``nfbound.ops.REGISTRY``).

    Nodes may be added in any order (importers); :meth:`topological_order` checks that every
    input exists and that there is no cycle, raising ``ValueError`` naming the node.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.outputs: list[str] = []
        self._order: list[str] | None = None

    # -- building -------------------------------------------------------------------------
    def _add(self, node: Node) -> str:
        if not isinstance(node.name, str) or not node.name:
            raise ValueError(f"node name must be a non-empty string, got {node.name!r}")
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} already exists")
        self.nodes[node.name] = node
        self._order = None
        return node.name

    def input(self, name: str, kind: str = "data") -> str:
        """A graph input: ``kind="data"`` (rounded to the format, differentiable) or
        ``kind="label"`` (passed through unchanged, not differentiable)."""
        if kind not in ("data", "label"):
            raise ValueError(f"input {name!r}: kind must be 'data' or 'label', got {kind!r}")
        return self._add(Node(name, kind))

    def param(self, name: str, value) -> str:
        """A trainable parameter with float64 spec value ``value`` (rounded like data)."""
        return self._leaf(name, "param", value)

    def const(self, name: str, value) -> str:
        """A constant: a leaf like a parameter (rounded like data, differentiable), but not
        one of :attr:`params`, so :func:`~nfbound.graph.train` never updates it."""
        return self._leaf(name, "const", value)

    def _leaf(self, name: str, kind: str, value) -> str:
        a = np.asarray(value)
        if a.dtype != object:
            a = np.array(a, dtype=np.float64)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{kind} {name!r} contains NaN or inf")
        return self._add(Node(name, kind, value=a))

    def op(self, op_name: str, *inputs: str, name: str | None = None, **params) -> str:
        """Apply primitive ``op_name`` to the named nodes; returns the new node's name."""
        if name is None:
            k = sum(1 for n in self.nodes.values() if n.op == op_name)
            name = f"{op_name}_{k}"
            while name in self.nodes:
                k += 1
                name = f"{op_name}_{k}"
        try:
            primitive(op_name)
        except ValueError as e:
            raise ValueError(f"node {name!r}: {e}") from None
        for i in inputs:
            if not isinstance(i, str):
                raise ValueError(f"node {name!r}: inputs must be node names, got {i!r}")
        return self._add(Node(name, "op", op_name, tuple(inputs), dict(params)))

    def output(self, *names: str) -> None:
        for n in names:
            if n not in self.nodes:
                raise ValueError(f"output {n!r} is not a node of the graph")
            if n not in self.outputs:
                self.outputs.append(n)

    @property
    def params(self) -> list[str]:
        """The trainable parameters (constants excluded)."""
        return [n for n, v in self.nodes.items() if v.kind == "param"]

    @property
    def inputs(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v.kind in ("data", "label")]

    def topological_order(self) -> list[str]:
        """Nodes so that every node comes after its inputs (insertion order among ready
        nodes). ``ValueError`` naming the node for a missing input or a cycle."""
        if self._order is not None:
            return list(self._order)
        for n, node in self.nodes.items():
            for i in node.inputs:
                if i not in self.nodes:
                    raise ValueError(f"node {n!r}: input {i!r} is not a node of the graph")
        state: dict[str, int] = {}          # 1 = on the stack, 2 = done
        order: list[str] = []
        for root in self.nodes:
            if root in state:
                continue
            stack = [(root, iter(self.nodes[root].inputs))]
            state[root] = 1
            while stack:
                n, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[n] = 2
                    order.append(n)
                elif state.get(nxt) == 1:
                    raise ValueError(f"node {nxt!r}: the graph has a cycle through {nxt!r} "
                                     f"(reached again from {n!r})")
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(self.nodes[nxt].inputs)))
        self._order = order
        return list(order)

    def initial_params(self, arith: "Arithmetic | Format | str | NodeArithmetics",
                       spec: bool = True, bounds: bool = True,
                       arith_map: Mapping | None = None) -> dict:
        """Parameter values in their storage formats (:mod:`nfbound.graph.arith`): runtime
        ``RN_S(w)``, spec ``w``, ``ε = |RN_S(w) − w|``."""
        plan = self.arithmetics(arith, None, arith_map)
        out = {}
        for n in self.params:
            try:
                out[n] = leaf_value(plan.storage(n), self.nodes[n].value, spec, bounds)
            except ValueError as e:
                raise ValueError(f"param {n!r}: {e}") from None
        return out

    def arithmetics(self, arith: "Arithmetic | Format | str | NodeArithmetics",
                    order: str | None = None, arith_map: Mapping | None = None
                    ) -> NodeArithmetics:
        """Every node's arithmetic (:func:`nfbound.graph.arith.assign`); a
        :class:`~nfbound.graph.arith.NodeArithmetics` of this graph (``result.arith``) is
        taken as it is, with neither ``order`` nor ``arith_map``."""
        if not isinstance(arith, NodeArithmetics):
            return assign(self, arith, order, arith_map)
        if order is not None or arith_map is not None:
            raise ValueError("order, arith_map: already part of the given NodeArithmetics")
        if set(arith.nodes) != set(self.nodes):
            raise ValueError("arith: these NodeArithmetics belong to another graph")
        return arith

    # -- evaluation ---------------------------------------------------------------------------
    def forward(self, arith: "Arithmetic | Format | str | NodeArithmetics", inputs: dict,
                order: str | None = None, spec: bool = True, bounds: bool = True,
                progress: bool | None = None, params: dict | None = None,
                arith_map: Mapping | None = None) -> "ForwardResult":
        """Evaluate every node: runtime values, spec enclosures (``spec=True``) and certified
        bounds (``bounds=True``) in one pass over a topological order.

        ``arith`` is an :class:`~nfbound.arith.Arithmetic`, a preset or spec string, or a
        :class:`~nfbound.formats.Format` (TorchLean's semantics in it, reductions in
        ``order``, default ``sequential``); with an arithmetic the order is the arithmetic's
        and a contradicting ``order`` is a ``ValueError``. ``arith_map`` overrides it per node
        (node name → arithmetic; :mod:`nfbound.graph.arith`: leaves follow their consumers,
        values crossing storage formats are converted with their rounding charged).

        ``inputs`` maps each data/label input to its value (float64 array; labels: integer
        array; 0-d values and Python scalars are 0-d inputs). ``params`` optionally overrides
        parameter values with :class:`Value` triples (used by training; a key that is not a
        parameter of the graph is a ``ValueError``); by default parameters come from
        :meth:`initial_params`.
        """
        plan = self.arithmetics(arith, order, arith_map)
        topo = self.topological_order()
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise ValueError(f"input {missing[0]!r}: no value given in inputs")
        unknown = [k for k in inputs if k not in self.nodes or self.nodes[k].kind not in
                   ("data", "label")]
        if unknown:
            raise ValueError(f"inputs: {unknown[0]!r} is not an input node of the graph")
        params = dict(params or {})
        stray = [k for k in params if k not in self.nodes or self.nodes[k].kind != "param"]
        if stray:
            raise ValueError(f"params: {stray[0]!r} is not a parameter of the graph")
        rt: dict[str, Any] = {}
        sp: dict[str, Interval] | None = {} if spec else None
        ep: dict[str, np.ndarray] | None = {} if bounds else None
        for n in tqdm(topo, desc=f"forward {plan.default}", disable=_disable(progress),
                      leave=False):
            node = self.nodes[n]
            S = plan.storage(n)
            try:
                if node.kind == "op":
                    with checks.trusted_format_values():
                        v = self._eval_op(plan, node, rt, sp, ep)
                elif node.kind == "label":
                    v = label_value(inputs[n], spec, bounds)
                elif node.kind == "data":
                    v = leaf_value(S, inputs[n], spec, bounds)
                elif node.kind == "param" and n in params:
                    v = Value(*params[n])
                    checks.format_value("runtime value", v.runtime, S)
                    if (spec and v.spec is None) or (bounds and v.eps is None):
                        raise ValueError("parameter state lacks spec or eps")
                else:
                    v = leaf_value(S, node.value, spec, bounds)
            except (ValueError, TypeError, ZeroDivisionError) as e:
                raise ValueError(f"node {n!r} ({node.op or node.kind}): {e}") from e
            rt[n] = np.asarray(v.runtime)
            if spec:
                sp[n] = v.spec
            if bounds:
                ep[n] = np.asarray(v.eps, dtype=np.float64)
        return ForwardResult(self, arith if isinstance(arith, Format) else plan.default,
                             str(plan.default.order), rt, sp, ep, plan)

    def inputs_of(self, plan: NodeArithmetics, node: Node, rt, sp, ep) -> list[Value]:
        """The inputs of op ``node`` as it reads them: each converted from its node's storage
        to ``node``'s (:func:`convert`; labels pass unchanged). A value that overflowed, before
        or by the conversion, is refused by name (:func:`refuse_overflowed`)."""
        S = plan.storage(node.name)
        out = []
        for i in node.inputs:
            v = Value(rt[i], None if sp is None else sp[i], None if ep is None else ep[i])
            if self.nodes[i].kind != "label":
                refuse_overflowed(plan.storage(i), (i,), (v.runtime,))
                v = convert(v, plan.storage(i), S, ep is not None)
                refuse_overflowed(S, (i,), (v.runtime,))
            out.append(v)
        return out

    def _eval_op(self, plan: NodeArithmetics, node: Node, rt, sp, ep) -> Value:
        P = primitive(node.op)
        A = plan.rules(node.name)
        params = op_params(P, node, plan.order(node.name))
        vals = self.inputs_of(plan, node, rt, sp, ep)
        xs = tuple(v.runtime for v in vals)
        e = None
        if ep is None:
            out = P.runtime(A, *xs, **params)
        else:   # the runtime's own checks (shapes, NaN) run first, in either rule
            out, e = P.runtime_and_bound(A, xs, tuple(v.eps for v in vals), **params)
            e = np.asarray(e, dtype=np.float64)
        s = P.spec(*(v.spec for v in vals), **params) if sp is not None else None
        if e is not None and e.shape != np.shape(out):
            raise ValueError(f"bound rule returned shape {e.shape}, runtime {np.shape(out)}")
        if s is not None and s.shape != np.shape(out):
            raise ValueError(f"spec rule returned shape {s.shape}, runtime {np.shape(out)}")
        return Value(out, s, e)

    def backward(self, arith: "Arithmetic | Format | str | NodeArithmetics",
                 result: "ForwardResult", loss: str | None = None, spec: bool | None = None,
                 bounds: bool | None = None, progress: bool | None = None
                 ) -> "BackwardResult":
        """Reverse mode from the scalar node ``loss`` (default: the single output) in the
        arithmetics of the forward pass (``arith`` must be the forward pass's); see
        :func:`nfbound.graph.reverse.backward`."""
        from .reverse import backward
        return backward(self, arith, result, loss=loss, spec=spec, bounds=bounds,
                        progress=progress)


def _disable(progress: bool | None):
    """tqdm's ``disable``: None (silent when not a TTY) unless forced on/off."""
    return None if progress is None else not progress


@dataclass
class ForwardResult:
    """Runtime values, spec enclosures and bounds of every node of a forward pass.

    ``fmt`` is the graph's arithmetic (the ``Format`` itself when one was given), ``order`` its
    order, ``arith`` every node's arithmetic (derived from ``fmt`` and ``order`` when not
    given)."""

    graph: Graph
    fmt: "Format | Arithmetic"
    order: str
    runtime: dict
    spec: dict | None
    eps: dict | None
    arith: NodeArithmetics | None = None

    def __post_init__(self) -> None:
        if self.arith is None:
            self.arith = assign(self.graph, self.fmt,
                                self.order if isinstance(self.fmt, Format) else None)

    def value(self, name: str) -> Value:
        return Value(self.runtime[name], None if self.spec is None else self.spec[name],
                     None if self.eps is None else self.eps[name])

    def report(self) -> list[dict]:
        """One row per node in topological order (see :func:`nfbound.graph.report.rows`)."""
        from .report import rows
        return rows(self.graph, self.graph.topological_order(), self.runtime, self.spec,
                    self.eps, self.arith)

    def failures(self) -> list[str] | None:
        """The nodes (topological order, labels excluded) whose runtime is farther than ``eps``
        from some point of their spec (exact rational test); ``None`` without spec or bounds."""
        if self.spec is None or self.eps is None:
            return None
        return [n for n in self.runtime if self.graph.nodes[n].kind != "label"
                and not bool(self.spec[n].encloses(self.runtime[n], self.eps[n]).all())]

    @property
    def holds(self) -> bool | None:
        """Whether every node's runtime lies within ``eps`` of every point of its spec
        (exact rational test); ``None`` without spec or bounds."""
        f = self.failures()
        return None if f is None else not f

