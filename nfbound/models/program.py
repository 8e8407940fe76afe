"""``Program``: an imported model as a flat list of nfbound op steps, before it becomes a Graph.

The PyTorch and ONNX importers both produce a :class:`Program` (parameters + steps naming
nfbound ops with keyword params), so that "the same model imported two ways gives the same
graph" is a plain comparison of two programs (:meth:`Program.signature`), and
:meth:`Program.to_graph` is the single place that talks to :mod:`nfbound.graph`.

Conventions shared by the importers:

* the model has one data input, named ``"x"`` in the graph, with a batch dimension first;
* the trainable parameters (:attr:`Program.params`) are exactly the model's: PyTorch
  parameters with ``requires_grad`` named as in ``named_parameters()`` (``"0.weight"``), or
  ONNX initializers (ONNX marks none of them frozen); buffers, frozen parameters and ONNX
  ``Constant`` tensors are constants (:attr:`Program.consts`: rounded like parameters, never
  trained). All are held as float64 (``tensor.detach().double()``, exact for float32/16
  weights), with their own shape (a 0-d tensor stays 0-d);
* op params are canonical Python values: tuples of ints for stride/padding/kernel sizes;
* a missing bias stays absent: a convolution, transpose convolution or linear layer without
  bias is the op without its bias input — never a zero parameter, which training would
  update although the model has no such parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INPUT = "x"
LABELS = "target"
LOSS = "loss"


@dataclass(frozen=True)
class Step:
    """One node: ``name = op(*inputs, **params)`` (inputs are node or parameter names)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    params: dict = field(default_factory=dict)


@dataclass
class Program:
    """Parameters and constants (ordered) and steps (topological order) of an imported model.

    ``params`` are trained by :func:`nfbound.graph.train`, ``consts`` never are (see the module
    docstring). ``input_shape``: the input's shape as the model declares it (batch dimension
    first; a symbolic batch dimension taken as 1), ``None`` when unknown (PyTorch modules
    declare none).
    """

    params: dict[str, np.ndarray] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    output: str = INPUT
    source: str = ""
    input_shape: tuple[int, ...] | None = None

    def _names(self) -> set[str]:
        return ({INPUT, LABELS, LOSS} | set(self.params) | set(self.consts)
                | {s.name for s in self.steps})

    def fresh(self, base: str) -> str:
        """``base`` or ``base_1``, ``base_2``, … : a name not used yet."""
        used, name, k = self._names(), base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        return name

    def add_param(self, name: str, value) -> str:
        """A trainable parameter ``name`` (the name it gets is returned: ``name``, or a fresh
        one if a step or constant already uses it); adding the same parameter again returns
        its name."""
        return self._add_leaf(self.params, "parameter", name, value)

    def add_const(self, name: str, value) -> str:
        """A constant ``name``: a leaf like a parameter, but never trained."""
        return self._add_leaf(self.consts, "constant", name, value)

    def _add_leaf(self, table: dict, what: str, name: str, value) -> str:
        if name in table:
            if not np.array_equal(table[name], value):
                raise ValueError(f"{what} {name!r} defined twice with different values")
            return name
        name = name if name not in self._names() else self.fresh(name)
        table[name] = np.array(value, dtype=np.float64, order="C")   # a copy; 0-d stays 0-d
        return name

    def add_step(self, name: str, op: str, inputs, **params) -> str:
        name = self.fresh(name)
        self.steps.append(Step(name, op, tuple(inputs), params))
        self.output = name
        return name

    def signature(self) -> list[tuple]:
        """Name-free description: ``(op, params, input kinds)`` per step, where an input is
        ``("x",)``, ``("step", k)`` (the k-th step), ``("param", shape, bytes)`` or
        ``("const", shape, bytes)`` — two programs with equal signatures compute the same
        function with the same numbers, and train the same parameters."""
        index = {s.name: k for k, s in enumerate(self.steps)}
        out = []
        for s in self.steps:
            kinds = []
            for i in s.inputs:
                if i == INPUT:
                    kinds.append(("x",))
                elif i in index:
                    kinds.append(("step", index[i]))
                else:
                    kind, p = ("param", self.params[i]) if i in self.params \
                        else ("const", self.consts[i])
                    kinds.append((kind, p.shape, p.tobytes()))
            out.append((s.op, tuple(sorted(s.params.items())), tuple(kinds)))
        return out

    def to_graph(self, loss: str | None = None):
        """Build the :class:`nfbound.graph.Graph`.

        ``loss=None``: output = the model output. ``loss="cross_entropy"``: adds a label input
        ``"target"`` (integer class labels) and the node ``"loss" = cross_entropy(output,
        target)`` (mean over the batch, PyTorch's default). ``loss="sum"``: ``"loss"`` = the sum
        of every output value (flattened, then summed), for models without labels.
        """
        from ..graph import Graph
        g = Graph()
        g.input(INPUT)
        for name, value in self.params.items():
            g.param(name, value)
        for name, value in self.consts.items():
            g.const(name, value)
        for s in self.steps:
            g.op(s.op, *s.inputs, name=s.name, **s.params)
        if loss is None:
            g.output(self.output)
        elif loss == "cross_entropy":
            g.input(LABELS, kind="label")
            g.op("cross_entropy", self.output, LABELS, name=LOSS)
            g.output(LOSS)
        elif loss == "sum":
            flat = self.fresh("loss_flat")
            g.op("reshape", self.output, name=flat, shape=(-1,))
            g.op("sum", flat, name=LOSS, axis=0)
            g.output(LOSS)
        else:
            raise ValueError(f"loss must be None, 'cross_entropy' or 'sum', got {loss!r}")
        return g
