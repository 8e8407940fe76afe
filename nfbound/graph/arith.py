"""Which arithmetic every node of a graph computes in, and the conversions between them.

A graph is evaluated in one :class:`~nfbound.arith.Arithmetic` (parsed once from a preset,
spec string or :class:`~nfbound.formats.Format`: :func:`parse`), optionally overridden per
node by an ``arith_map`` (node name → arithmetic; e.g. the first and last layer kept in
binary32). :func:`assign` resolves it into a :class:`NodeArithmetics`:

* an op node computes in its own entry of the map, else in the graph's arithmetic;
* a leaf (data input, parameter, constant) is rounded to the *storage* format of its own
  entry, else of the arithmetic all its consumers share (a layer kept in binary32 keeps its
  weights in binary32), else of the graph's arithmetic; labels pass unchanged.

What the rules receive (:meth:`NodeArithmetics.rules`): an arithmetic with TorchLean's
semantics and a stated order (every step rounded to one format: ``Arithmetic.is_nf``) is given
to the rules as its :class:`~nfbound.formats.Format`, with the order as the ``order`` parameter
— exactly what a graph evaluated in a ``Format`` has always done, bit for bit, node-level
``order``/``order_free`` parameters included. Every other arithmetic is given as itself: the
order lives in the arithmetic, and a node parameter contradicting it is refused by the rules.

Conversions (:func:`~nfbound.graph.forward.convert`). A value ``x̂`` of a node whose storage is
``S`` consumed by a node whose storage is ``S'`` is read as ``RN_S'(x̂)`` (PyTorch's
``.to(dtype)``; the same in reverse mode, where a gradient ``ĝ`` flowing back from the consumer
becomes ``RN_S(ĝ)``). Theorem: if ``|x̂ − x| ≤ ε`` then

    |RN_S'(x̂) − x| ≤ |RN_S'(x̂) − x̂| + |x̂ − x| ≤ ε + |RN_S'(x̂) − x̂|,

and the spec ``x`` is unchanged (over the reals a conversion is the identity, so its VJP is
the identity too). The distance ``|RN_S'(x̂) − x̂|`` is computed exactly and rounded up, as for a
leaf (:func:`~nfbound.graph.forward.leaf_value`); it is 0 when ``x̂`` is a value of ``S'`` and
``inf`` when the conversion overflows (the consumer then refuses the value by name). When every
value of ``S`` is a value of ``S'`` (``contains(S', S)``, e.g. bfloat16 into binary32, or one
format in two subnormal modes: the consumer's rules read subnormals per its own mode) nothing
is rounded and nothing is charged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..arith import Arithmetic, Order, nf
from ..arith import get as get_arith
from ..formats import Format


def parse(arith: "Arithmetic | Format | str", order: "str | Order | None" = None) -> Arithmetic:
    """The graph's arithmetic from ``arith`` and the ``order`` argument of the graph calls.

    A :class:`~nfbound.formats.Format` means TorchLean's semantics in it with ``order``
    (default ``sequential``): the graphs' historic API. Anything else (an ``Arithmetic``, a
    preset, a spec string or a format name: :func:`nfbound.arith.get`) carries its own order;
    an ``order`` that contradicts it is a ``ValueError``."""
    if isinstance(arith, Format):
        return nf(arith, "sequential" if order is None else Order.parse(order))
    A = get_arith(arith)
    if order is not None and Order.parse(order) != A.order:
        raise ValueError(f"order={str(order)!r} contradicts the order {A.order} of arithmetic "
                         f"{A}: with an arithmetic the order is part of it (state it there, "
                         f"e.g. 'order={order}' in its spec)")
    return A


@dataclass(frozen=True)
class NodeArithmetics:
    """The arithmetic of every node of one graph (module docstring): ``default`` is the
    graph's, ``nodes`` maps every node name to its own."""

    default: Arithmetic
    nodes: Mapping[str, Arithmetic]

    def __getitem__(self, name: str) -> Arithmetic:
        return self.nodes[name]

    def storage(self, name: str) -> Format:
        """The format the values (and gradients) of node ``name`` are stored in."""
        return self.nodes[name].storage

    def rules(self, name: str) -> "Format | Arithmetic":
        """What the primitive rules of node ``name`` receive: the format of an NF arithmetic
        with a stated order, else the arithmetic itself (module docstring)."""
        A = self.nodes[name]
        return A.storage if uses_format_rules(A) else A

    def order(self, name: str) -> str | None:
        """The ``order`` parameter the graph adds to the rules of node ``name`` (format rules
        only; an arithmetic states its own order)."""
        A = self.nodes[name]
        return str(A.order) if uses_format_rules(A) else None

    @property
    def uniform(self) -> bool:
        """Whether every node computes in the graph's arithmetic."""
        return all(A == self.default for A in self.nodes.values())


def uses_format_rules(A: Arithmetic) -> bool:
    """Whether ``A`` is evaluated by the format rules (TorchLean's NF with a stated order)."""
    return A.is_nf and not A.order.is_any


def assign(graph, arith: "Arithmetic | Format | str", order: "str | Order | None" = None,
           arith_map: "Mapping[str, Arithmetic | Format | str] | None" = None
           ) -> NodeArithmetics:
    """Every node's arithmetic (module docstring). ``ValueError`` naming the entry for an
    ``arith_map`` key that is not a node of ``graph`` or is a label, or a value that is not an
    arithmetic."""
    default = parse(arith, order)
    if arith_map is None:
        arith_map = {}
    if not isinstance(arith_map, Mapping):
        raise ValueError(f"arith_map must map node names to arithmetics, got {arith_map!r}")
    own: dict[str, Arithmetic] = {}
    for name, value in arith_map.items():
        node = graph.nodes.get(name) if isinstance(name, str) else None
        if node is None:
            raise ValueError(f"arith_map: {name!r} is not a node of the graph")
        if node.kind == "label":
            raise ValueError(f"arith_map: {name!r} is a label input (passed unchanged, it has "
                             f"no arithmetic)")
        try:
            own[name] = get_arith(value)
        except ValueError as e:
            raise ValueError(f"arith_map[{name!r}]: {e}") from None
    nodes = {n: own.get(n, default) for n, node in graph.nodes.items() if node.kind == "op"}
    consumers: dict[str, set] = {}
    for n, node in graph.nodes.items():
        for i in node.inputs:
            if node.kind == "op":
                consumers.setdefault(i, set()).add(nodes[n])
    for n, node in graph.nodes.items():
        if node.kind != "op":
            shared = consumers.get(n, set())
            nodes[n] = own.get(n, next(iter(shared)) if len(shared) == 1 else default)
    return NodeArithmetics(default, nodes)

