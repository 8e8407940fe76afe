"""Import an ONNX model into an nfbound program / graph (same op set as the PyTorch importer).

Supported node types: ``Conv``, ``ConvTranspose``, ``Gemm`` (``alpha = beta = 1``, ``transA =
0``; a weight given as ``B`` with ``transB = 0`` is transposed — an exact permutation),
``MatMul`` followed by ``Add`` of an initializer (merged into one ``linear``; otherwise
``matmul``/``add``), ``Relu``, ``Tanh``, ``Sigmoid``, ``Softplus``, ``MaxPool``,
``AveragePool``, ``Flatten``, ``Reshape``, ``Softmax``, ``Identity``/``Dropout`` (identity), and
``Constant`` nodes feeding those, all in the standard ``ai.onnx`` domain. Initializers used as
operands become trainable parameters (ONNX marks none as frozen; PyTorch's exporter writes the
model's parameters as initializers), ``Constant`` tensors become constants (never trained);
both are held as float64. Weights of ``Conv``, ``ConvTranspose`` and ``Gemm`` must be
initializers or constants; a missing bias (``Conv``/``ConvTranspose`` without ``B``, ``Gemm``
without ``C``) stays absent. An ``Identity`` of an initializer is that initializer (PyTorch's
exporter ties a weight shared by two layers so): one parameter. Stated limit: an initializer
used both as a weight that ``linear`` takes transposed (``MatMul``, ``Gemm`` with
``transB = 0``) and as it is elsewhere becomes two parameters, which training unties. Anything else — an
unsupported op, a custom domain, attributes the op does not take (ONNX ``Softplus`` has none:
it is the exact ``log(1 + e^x)``), a malformed node — raises ``ValueError`` naming the node and
its op type.

Shapes needed by ``Reshape`` (``0`` entries, ``-1``) and ``Flatten`` with ``axis ≠ 1`` come
from ONNX shape inference on the model's declared input shape. Pads must be symmetric
(``begin == end``); ``auto_pad``, dilations ≠ 1, ``group`` ≠ 1, ``ceil_mode`` are rejected.
The declared input shape is kept as ``Program.input_shape`` (see :func:`_declared_shape`).
"""
from __future__ import annotations

import numpy as np

from .program import INPUT, Program


def _layer_name(node, k: int) -> str:
    """``/0/Conv`` → ``0`` (PyTorch's exporter names nodes ``/<module path>/<Op>``)."""
    name = node.name or (node.output[0] if node.output else f"node{k}")
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p]
        if len(parts) > 1:
            return ".".join(parts[:-1])
    return name


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _declared_shape(value_info) -> tuple[int, ...] | None:
    """The static shape of a graph input (a symbolic or missing first, batch, dimension counts
    as 1); ``None`` if any other dimension is not a fixed positive size."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for k, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif k == 0:
            dims.append(1)
        else:
            return None
    return tuple(dims)


class _Importer:
    def __init__(self, model):
        import onnx
        from onnx import numpy_helper
        self.model = model
        self.prog = Program(source="onnx")
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.consts: dict[str, np.ndarray] = {}
        self.env: dict[str, str] = {}
        # Identity/Dropout outputs of an initializer or Constant → that tensor's name: an alias
        # is the same tensor (the exporter ties a weight shared by two layers this way)
        self.alias: dict[str, str] = {}
        self.shapes: dict[str, tuple] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
                dims = vi.type.tensor_type.shape.dim
                if all(d.HasField("dim_value") for d in dims):
                    self.shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        except Exception:
            pass
        self.uses: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in model.graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1

    def fail(self, node, layer, why: str):
        raise ValueError(f"unsupported node {node.name or layer!r} ({node.op_type}): {why}")

    def tensor(self, name: str, node, layer) -> str:
        """The graph name of the ONNX value ``name``: a node's output, or an initializer /
        ``Constant`` tensor turned into a leaf (:meth:`leaf`) on first use."""
        if name in self.env:
            return self.env[name]
        if name in self.inits or name in self.consts:
            self.env[name] = self.leaf(name, self.constant(name, node, layer), node, layer)
            return self.env[name]
        self.fail(node, layer, f"input {name!r} is not produced by a supported node")

    def leaf(self, source: str, value: np.ndarray, node, layer, name: str | None = None) -> str:
        """The initializer or ``Constant`` ``source`` as a program leaf named ``name``
        (default ``source``) holding ``value`` (its value, or a transposed copy): a trainable
        parameter for an initializer, a constant for a ``Constant``."""
        if value.dtype.kind not in "fiu":
            self.fail(node, layer, f"input {source!r} has dtype {value.dtype}, not numeric")
        add = self.prog.add_param if source in self.inits else self.prog.add_const
        return add(source if name is None else name, value.astype(np.float64))

    def weight(self, name: str, node, layer) -> str:
        """A leaf operand (an initializer or a ``Constant``), not a computed tensor."""
        w = self.tensor(name, node, layer)
        if w not in self.prog.params and w not in self.prog.consts:
            self.fail(node, layer, f"the weight {name!r} must be an initializer or a Constant, "
                                   f"not the output of another node")
        return w

    def constant(self, name: str, node, layer) -> np.ndarray:
        if name in self.inits:
            return self.inits[name]
        if name in self.consts:
            return self.consts[name]
        self.fail(node, layer, f"input {name!r} must be a constant")

    def spatial(self, node, layer, a: dict, n: int):
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            self.fail(node, layer, f"auto_pad={a['auto_pad']!r}")
        if any(d != 1 for d in a.get("dilations", [1] * n)):
            self.fail(node, layer, "dilations must be 1")
        pads = list(a.get("pads", [0] * (2 * n)))
        if pads[:n] != pads[n:]:
            self.fail(node, layer, f"asymmetric pads {pads}")
        strides = tuple(int(s) for s in a.get("strides", [1] * n))
        return strides, tuple(int(p) for p in pads[:n])

    def leaf_value(self, name: str) -> np.ndarray:
        return self.prog.params[name] if name in self.prog.params else self.prog.consts[name]

    def node(self, node, k: int, nodes, skip: set) -> None:
        op, layer, a = node.op_type, _layer_name(node, k), _attrs(node)
        src = [self.alias.get(i, i) for i in node.input]   # inputs, aliases resolved
        if node.domain not in ("", "ai.onnx"):
            self.fail(node, layer, f"custom domain {node.domain!r}")
        if not node.output or not node.output[0]:
            self.fail(node, layer, "the node has no output")
        out = node.output[0]
        if op != "Constant" and (not src or not src[0]):
            self.fail(node, layer, "the node has no input")
        if op == "Constant":
            from onnx import numpy_helper
            if "value" not in a:
                self.fail(node, layer, "only tensor constants are supported")
            self.consts[out] = numpy_helper.to_array(a["value"])
            return
        if op in ("Identity", "Dropout"):
            if src[0] in self.inits or src[0] in self.consts:
                self.alias[out] = src[0]
            else:
                self.env[out] = self.tensor(src[0], node, layer)
            return
        x = self.tensor(src[0], node, layer)
        step = None
        if op in ("Conv", "ConvTranspose"):
            if len(src) < 2 or not src[1]:
                self.fail(node, layer, "the weight input is missing")
            w = self.weight(src[1], node, layer)
            W = self.leaf_value(w)
            n = W.ndim - 2
            if n < 1:
                self.fail(node, layer, f"the weight has {W.ndim} dimensions, expected at least 3")
            if a.get("group", 1) != 1:
                self.fail(node, layer, "group must be 1")
            if op == "ConvTranspose" and (any(v != 0 for v in a.get("output_padding", [])) or "output_shape" in a):
                self.fail(node, layer, "output_padding/output_shape are not supported")
            stride, padding = self.spatial(node, layer, a, n)
            ins = [x, w]
            if len(src) > 2 and src[2]:
                ins.append(self.tensor(src[2], node, layer))
            step = self.prog.add_step(layer, "conv" if op == "Conv" else "conv_transpose", ins,
                                      stride=stride, padding=padding)
        elif op == "Gemm":
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0) != 0:
                self.fail(node, layer, "only alpha=1, beta=1, transA=0 are supported")
            if len(src) < 2:
                self.fail(node, layer, "the weight input B is missing")
            wname = src[1]
            if wname not in self.inits and wname not in self.consts:
                self.fail(node, layer, "the weight B must be an initializer or a Constant")
            W = self.constant(wname, node, layer)
            if W.ndim != 2:
                self.fail(node, layer, f"the weight B has {W.ndim} dimensions, expected 2")
            ins = [x, self.weight(wname, node, layer) if a.get("transB", 0)
                   else self.leaf(wname, W.T, node, layer, name=f"{wname}.T")]
            if len(src) > 2 and src[2]:
                ins.append(self.tensor(src[2], node, layer))
            step = self.prog.add_step(layer, "linear", ins)
        elif op == "MatMul":
            wname = src[1]
            nxt = next((m for m in nodes[k + 1:] if out in m.input), None)
            if wname in self.inits and self.inits[wname].ndim == 2:
                ins = [x, self.leaf(wname, self.inits[wname].T, node, layer, name=f"{wname}.T")]
                if (nxt is not None and nxt.op_type == "Add" and self.uses.get(out) == 1):
                    other = [self.alias.get(i, i) for i in nxt.input if i != out]
                    if len(other) == 1 and other[0] in self.inits and self.inits[other[0]].ndim == 1:
                        ins.append(self.tensor(other[0], nxt, layer))
                        skip.add(id(nxt))
                        out = nxt.output[0]
                step = self.prog.add_step(layer, "linear", ins)
            else:
                step = self.prog.add_step(layer, "matmul", (x, self.tensor(wname, node, layer)))
        elif op == "Add":
            step = self.prog.add_step(layer, "add", (x, self.tensor(src[1], node, layer)))
        elif op in ("Relu", "Tanh", "Sigmoid", "Softplus"):
            if a:   # none of them takes an attribute in ai.onnx
                self.fail(node, layer, f"unexpected attributes {sorted(a)}")
            step = self.prog.add_step(layer, op.lower(), (x,))
        elif op in ("MaxPool", "AveragePool"):
            if a.get("ceil_mode", 0):
                self.fail(node, layer, "ceil_mode must be 0")
            if op == "MaxPool" and (len(node.output) > 1 and node.output[1]):
                self.fail(node, layer, "the Indices output is not supported")
            if "kernel_shape" not in a:
                self.fail(node, layer, "kernel_shape is missing")
            kernel = tuple(int(v) for v in a["kernel_shape"])
            stride, padding = self.spatial(node, layer, a, len(kernel))
            if op == "AveragePool" and any(padding) and not a.get("count_include_pad", 0):
                self.fail(node, layer, "count_include_pad=0 with padding is not supported")
            step = self.prog.add_step(layer, "max_pool" if op == "MaxPool" else "avg_pool", (x,),
                                      kernel_size=kernel, stride=stride, padding=padding)
        elif op == "Flatten":
            axis = int(a.get("axis", 1))
            if axis == 1:
                step = self.prog.add_step(layer, "flatten", (x,), start_dim=1, end_dim=-1)
            elif out in self.shapes:
                step = self.prog.add_step(layer, "reshape", (x,), shape=self.shapes[out])
            else:
                self.fail(node, layer, f"axis={axis} needs a static input shape")
        elif op == "Reshape":
            if out in self.shapes:
                shape = self.shapes[out]
            else:
                shape = tuple(int(v) for v in self.constant(src[1], node, layer))
                if 0 in shape:
                    self.fail(node, layer, "shape entries 0 need a static input shape")
            step = self.prog.add_step(layer, "reshape", (x,), shape=tuple(shape))
        elif op == "Softmax":
            opset = max((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), default=13)
            if opset < 13:
                self.fail(node, layer, "opset < 13 Softmax (2-D coercion) is not supported")
            step = self.prog.add_step(layer, "softmax", (x,), dim=int(a.get("axis", -1)))
        else:
            self.fail(node, layer, "op type not supported")
        self.env[out] = step

    def run(self) -> Program:
        g = self.model.graph
        data = [i for i in g.input if i.name not in self.inits]
        if len(data) != 1:
            raise ValueError(f"the model must take exactly one tensor input, it takes {len(data)}")
        if len(g.output) != 1:
            raise ValueError(f"the model must have exactly one output, it has {len(g.output)}")
        self.env[data[0].name] = INPUT
        self.prog.input_shape = _declared_shape(data[0])
        nodes, skip = list(g.node), set()
        for k, node in enumerate(nodes):
            if id(node) in skip:
                continue
            try:
                self.node(node, k, nodes, skip)
            except (IndexError, KeyError, TypeError, AttributeError) as e:
                # a malformed node (missing inputs or attributes, wrong attribute types)
                raise ValueError(f"malformed node {node.name or _layer_name(node, k)!r} "
                                 f"({node.op_type}): {type(e).__name__}: {e}") from e
        out = g.output[0].name
        if out not in self.env:
            raise ValueError(f"the model output {out!r} is not produced by any node" +
                             ("" if nodes else " (the graph has no nodes)"))
        self.prog.output = self.env[out]
        return self.prog


def load(path) -> Program:
    """The :class:`~nfbound.models.program.Program` of the ONNX file ``path``."""
    import onnx
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable ONNX model ({e})") from None
    return _Importer(model).run()


def from_model(model) -> Program:
    """The program of an in-memory ``onnx.ModelProto``."""
    return _Importer(model).run()


def from_onnx(path, loss: str | None = None):
    """``load(path).to_graph(loss)``: a :class:`nfbound.graph.Graph`."""
    return load(path).to_graph(loss)
