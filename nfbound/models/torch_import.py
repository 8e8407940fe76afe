"""Import a ``torch.nn.Module`` (traced with ``torch.fx``) into an nfbound program / graph.

Supported (anything else raises ``ValueError`` naming the layer and its type/op):

* modules: ``Sequential`` (inlined), ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Linear``,
  ``ReLU``, ``Tanh``, ``Sigmoid``, ``Softplus`` (beta = 1, threshold = 20), ``MaxPool1d/2d/3d``,
  ``AvgPool1d/2d/3d``, ``Flatten``, ``Softmax``, ``Identity``, ``Dropout`` (identity at inference);
* functions: ``F.relu``/``torch.relu``, ``torch.tanh``/``F.tanh``, ``torch.sigmoid``,
  ``F.softplus``, ``F.conv1d/2d/3d``, ``F.conv_transpose1d/2d/3d``, ``F.linear``,
  ``F.max_pool1d/2d/3d``, ``F.avg_pool1d/2d/3d``, ``torch.flatten``, ``F.softmax``/``torch.softmax``,
  ``+`` (``add``) between two tensors;
* methods: ``x.view``, ``x.reshape``, ``x.flatten``, ``x.relu``, ``x.tanh``, ``x.sigmoid``,
  ``x.softmax``, ``x.size`` (only to compute a view shape).

Parameters: every ``nn.Parameter`` with ``requires_grad`` is a trainable parameter of the
program, named as in ``named_parameters()`` (one parameter per tensor: tied weights stay
tied); buffers and frozen parameters are constants (never trained); a layer without bias has no
bias input (see :mod:`nfbound.models.program`).

Limits, stated: dilation ≠ 1, groups ≠ 1, ``ceil_mode=True``, string padding, ``output_padding``
≠ 0 are rejected. ``Softplus`` is imported as the exact ``log(1 + e^x)``: PyTorch's default
``threshold`` shortcut (returns ``x`` where ``x > 20``) differs from it by less than
``e^−20`` and is not modelled; any other ``threshold`` (or ``beta ≠ 1``) changes the function
and is rejected, naming the layer. ``view``/``reshape`` shapes are taken from a run on the example
input (so the graph is specific to that input shape; the batch dimension included).
"""
from __future__ import annotations

import operator

import numpy as np

from .program import INPUT, Program

#: PyTorch's default ``Softplus`` threshold, the only one imported (see the module docstring).
SOFTPLUS_THRESHOLD = 20.0


def _tuple(v, n: int, what: str, layer: str) -> tuple[int, ...]:
    if isinstance(v, str):
        raise ValueError(f"unsupported layer {layer!r}: string {what}={v!r} (give integers)")
    if isinstance(v, int):
        return (int(v),) * n
    t = tuple(int(a) for a in v)
    if len(t) == 1 and n > 1:
        t = t * n
    if len(t) != n:
        raise ValueError(f"layer {layer!r}: {what}={v!r} has {len(t)} entries, expected {n}")
    return t


def _require(cond: bool, layer: str, kind: str, why: str) -> None:
    if not cond:
        raise ValueError(f"unsupported layer {layer!r} ({kind}): {why}")


def _np(t) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _bind(node, names: list[str], defaults: dict):
    """Positional + keyword arguments of an fx call bound to ``names`` (with ``defaults``)."""
    out = dict(defaults)
    for n, a in zip(names, node.args):
        out[n] = a
    out.update(node.kwargs)
    return out


class _Importer:
    def __init__(self, gm, shapes: dict):
        self.gm = gm
        self.shapes = shapes              # fx node name -> output shape (from the example run)
        self.prog = Program(source="torch")
        self.env: dict[str, object] = {}  # fx node name -> graph name (or a Python constant)
        # each model tensor under one name, its first in named_parameters()/named_buffers():
        # a tensor shared by two layers (tied weights) is one parameter, as in PyTorch
        self.names = {id(t): n for n, t in [*gm.named_buffers(), *gm.named_parameters()]}

    # -- helpers -----------------------------------------------------------------------------
    def ref(self, a, layer: str):
        import torch.fx
        if isinstance(a, torch.fx.Node):
            v = self.env[a.name]
            if not isinstance(v, str):
                raise ValueError(f"layer {layer!r}: input {a.name!r} is not a tensor")
            return v
        raise ValueError(f"layer {layer!r}: expected a tensor input, got {a!r}")

    def const(self, a):
        import torch.fx
        if isinstance(a, torch.fx.Node):
            return self.env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.const(v) for v in a)
        return a

    def param(self, name: str, tensor) -> str:
        """The leaf for the model tensor ``name`` (named as in ``named_parameters()``): a
        trainable parameter if it is an ``nn.Parameter`` with ``requires_grad`` (what a PyTorch
        optimizer updates), else (a buffer, a frozen parameter) a constant."""
        import torch.nn as nn
        name = self.names.get(id(tensor), name)
        if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
            return self.prog.add_param(name, _np(tensor))
        return self.prog.add_const(name, _np(tensor))

    def nd(self, layer: str, kind: str, x_node) -> int:
        shape = self.shapes.get(x_node.name) if hasattr(x_node, "name") else None
        return len(shape) - 2 if shape is not None else 2

    # -- layers --------------------------------------------------------------------------------
    def conv(self, layer, kind, x, weight, bias, stride, padding, dilation, groups, n,
             transpose=False, output_padding=0):
        _require(_tuple(dilation, n, "dilation", layer) == (1,) * n, layer, kind, "dilation must be 1")
        _require(int(groups) == 1, layer, kind, "groups must be 1")
        if transpose:
            _require(_tuple(output_padding, n, "output_padding", layer) == (0,) * n, layer, kind,
                     "output_padding must be 0")
        ins = (x, weight) if bias is None else (x, weight, bias)
        return self.prog.add_step(layer, "conv_transpose" if transpose else "conv", ins,
                                  stride=_tuple(stride, n, "stride", layer),
                                  padding=_tuple(padding, n, "padding", layer))

    def pool(self, layer, kind, op, x, kernel_size, stride, padding, n, dilation=1, ceil_mode=False,
             **extra):
        _require(not ceil_mode, layer, kind, "ceil_mode must be False")
        _require(_tuple(dilation, n, "dilation", layer) == (1,) * n, layer, kind, "dilation must be 1")
        if op == "avg_pool":
            _require(extra.get("divisor_override") is None, layer, kind, "divisor_override is not supported")
            _require(extra.get("count_include_pad", True) or _tuple(padding, n, "padding", layer) == (0,) * n,
                     layer, kind, "count_include_pad=False with padding is not supported")
        k = _tuple(kernel_size, n, "kernel_size", layer)
        s = k if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) \
            else _tuple(stride, n, "stride", layer)
        return self.prog.add_step(layer, op, (x,), kernel_size=k, stride=s,
                                  padding=_tuple(padding, n, "padding", layer))

    def flatten(self, layer, x, start_dim=1, end_dim=-1):
        return self.prog.add_step(layer, "flatten", (x,), start_dim=int(start_dim), end_dim=int(end_dim))

    def softmax(self, layer, kind, x, dim):
        _require(dim is not None, layer, kind, "dim must be given")
        return self.prog.add_step(layer, "softmax", (x,), dim=int(dim))

    def softplus(self, layer, kind, x, beta=1.0, threshold=SOFTPLUS_THRESHOLD):
        """``log(1 + e^x)``: only PyTorch's defaults ``beta = 1``, ``threshold = 20`` (see the
        module docstring); anything else is a ``ValueError`` naming the layer."""
        _require(float(beta) == 1.0, layer, kind, f"beta={beta} (only beta=1)")
        _require(float(threshold) == SOFTPLUS_THRESHOLD, layer, kind,
                 f"threshold={threshold} (only the default {SOFTPLUS_THRESHOLD:g}: PyTorch returns x "
                 f"where x > threshold, the spec is the exact log(1 + e^x))")
        return self.prog.add_step(layer, "softplus", (x,))

    def reshape(self, layer, node, x):
        shape = self.shapes.get(node.name)
        if shape is None:
            raise ValueError(f"layer {layer!r} ({node.target}): view/reshape needs an example input "
                             f"to know the shape")
        return self.prog.add_step(layer, "reshape", (x,), shape=tuple(int(d) for d in shape))

    # -- node dispatch -------------------------------------------------------------------------
    def call_module(self, node):
        import torch.nn as nn
        layer = str(node.target)
        mod = self.gm.get_submodule(node.target)
        kind = type(mod).__name__
        x = self.ref(node.args[0], layer) if node.args else None
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                            nn.ConvTranspose3d)):
            transpose = isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            _require(mod.padding_mode == "zeros", layer, kind, f"padding_mode={mod.padding_mode!r}")
            n = mod.weight.dim() - 2
            w = self.param(f"{layer}.weight", mod.weight)
            b = self.param(f"{layer}.bias", mod.bias) if mod.bias is not None else None
            return self.conv(layer, kind, x, w, b, mod.stride, mod.padding, mod.dilation, mod.groups, n,
                             transpose, getattr(mod, "output_padding", 0))
        if isinstance(mod, nn.Linear):
            w = self.param(f"{layer}.weight", mod.weight)
            ins = (x, w) if mod.bias is None else (x, w, self.param(f"{layer}.bias", mod.bias))
            return self.prog.add_step(layer, "linear", ins)
        simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
        for cls, op in simple.items():
            if type(mod) is cls:
                return self.prog.add_step(layer, op, (x,))
        if type(mod) is nn.Softplus:
            return self.softplus(layer, kind, x, mod.beta, mod.threshold)
        if type(mod) in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d):
            _require(not mod.return_indices, layer, kind, "return_indices must be False")
            n = int(kind[-2])
            return self.pool(layer, kind, "max_pool", x, mod.kernel_size, mod.stride, mod.padding, n,
                             mod.dilation, mod.ceil_mode)
        if type(mod) in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d):
            n = int(kind[-2])
            return self.pool(layer, kind, "avg_pool", x, mod.kernel_size, mod.stride, mod.padding, n,
                             1, mod.ceil_mode, count_include_pad=mod.count_include_pad,
                             divisor_override=getattr(mod, "divisor_override", None))
        if type(mod) is nn.Flatten:
            return self.flatten(layer, x, mod.start_dim, mod.end_dim)
        if type(mod) is nn.Softmax:
            return self.softmax(layer, kind, x, mod.dim)
        raise ValueError(f"unsupported layer {layer!r} ({kind})")

    def call_function(self, node):
        import torch
        import torch.nn.functional as F
        f, layer = node.target, node.name
        kind = getattr(f, "__name__", str(f))
        unary = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
                 torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
        if f in unary:
            return self.prog.add_step(layer, unary[f], (self.ref(node.args[0], layer),))
        convs = {F.conv1d: (1, False), F.conv2d: (2, False), F.conv3d: (3, False),
                 F.conv_transpose1d: (1, True), F.conv_transpose2d: (2, True), F.conv_transpose3d: (3, True)}
        if f in convs:
            n, transpose = convs[f]
            names = ["input", "weight", "bias", "stride", "padding"] + \
                (["output_padding", "groups", "dilation"] if transpose else ["dilation", "groups"])
            a = _bind(node, names, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                                     "output_padding": 0})
            b = self.ref(a["bias"], layer) if a["bias"] is not None else None
            return self.conv(layer, kind, self.ref(a["input"], layer), self.ref(a["weight"], layer), b,
                             self.const(a["stride"]), self.const(a["padding"]), self.const(a["dilation"]),
                             self.const(a["groups"]), n, transpose, self.const(a["output_padding"]))
        if f is F.linear:
            a = _bind(node, ["input", "weight", "bias"], {"bias": None})
            ins = [self.ref(a["input"], layer), self.ref(a["weight"], layer)]
            if a["bias"] is not None:
                ins.append(self.ref(a["bias"], layer))
            return self.prog.add_step(layer, "linear", ins)
        pools = {F.max_pool1d: ("max_pool", 1), F.max_pool2d: ("max_pool", 2), F.max_pool3d: ("max_pool", 3),
                 F.avg_pool1d: ("avg_pool", 1), F.avg_pool2d: ("avg_pool", 2), F.avg_pool3d: ("avg_pool", 3)}
        if f in pools:
            op, n = pools[f]
            if op == "max_pool":
                names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
            else:
                names = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                         "divisor_override"]
            a = {k: self.const(v) if k != "input" else v for k, v in _bind(node, names, {
                "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
                "count_include_pad": True, "divisor_override": None}).items()}
            _require(not a.get("return_indices"), layer, kind, "return_indices must be False")
            extra = {} if op == "max_pool" else {"count_include_pad": a["count_include_pad"],
                                                  "divisor_override": a["divisor_override"]}
            return self.pool(layer, kind, op, self.ref(a["input"], layer), a["kernel_size"], a["stride"],
                             a["padding"], n, a.get("dilation", 1), a["ceil_mode"], **extra)
        if f is torch.flatten:
            a = _bind(node, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
            return self.flatten(layer, self.ref(a["input"], layer), self.const(a["start_dim"]),
                                self.const(a["end_dim"]))
        if f in (F.softmax, torch.softmax):
            a = _bind(node, ["input", "dim"], {"dim": None})
            _require(a.get("dtype") is None, layer, kind, "dtype must not be given")
            return self.softmax(layer, kind, self.ref(a["input"], layer), self.const(a["dim"]))
        if f is F.softplus:
            a = _bind(node, ["input", "beta", "threshold"], {"beta": 1.0,
                                                            "threshold": SOFTPLUS_THRESHOLD})
            return self.softplus(layer, kind, self.ref(a["input"], layer), self.const(a["beta"]),
                                 self.const(a["threshold"]))
        if f in (operator.add, torch.add):
            import torch.fx
            x, y = node.args[:2]
            _require(isinstance(x, torch.fx.Node) and isinstance(y, torch.fx.Node) and "alpha" not in node.kwargs,
                     layer, kind, "only tensor + tensor is supported")
            return self.prog.add_step(layer, "add", (self.ref(x, layer), self.ref(y, layer)))
        raise ValueError(f"unsupported layer {layer!r} (function {kind})")

    def call_method(self, node):
        layer, m = node.name, node.target
        if m == "size":
            return None  # its value is only used through the recorded shapes of view/reshape
        x = self.ref(node.args[0], layer)
        if m in ("view", "reshape"):
            return self.reshape(layer, node, x)
        if m in ("relu", "tanh", "sigmoid"):
            return self.prog.add_step(layer, m, (x,))
        if m == "flatten":
            a = _bind(node, ["self", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
            return self.flatten(layer, x, self.const(a["start_dim"]), self.const(a["end_dim"]))
        if m == "softmax":
            a = _bind(node, ["self", "dim"], {"dim": None})
            return self.softmax(layer, f"method {m}", x, self.const(a["dim"]))
        raise ValueError(f"unsupported layer {layer!r} (method {m})")

    def run(self) -> Program:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"the model must take exactly one tensor input, it takes "
                             f"{len(placeholders)} ({', '.join(n.name for n in placeholders)})")
        for node in self.gm.graph.nodes:
            try:
                self.node(node)
            except (IndexError, KeyError, TypeError, AttributeError) as e:
                # arguments of an unexpected form (fx records whatever the forward passed)
                raise ValueError(f"layer {node.name!r} ({node.op} {node.target}): cannot import "
                                 f"it: {type(e).__name__}: {e}") from e
        return self.prog

    def node(self, node) -> None:
        """Import one fx node into :attr:`prog` (its graph name goes to :attr:`env`)."""
        if node.op == "placeholder":
            self.env[node.name] = INPUT
        elif node.op == "get_attr":
            self.env[node.name] = self.param(str(node.target), self.gm.get_parameter(node.target)
                                             if _is_param(self.gm, node.target)
                                             else self.gm.get_buffer(node.target))
        elif node.op == "call_module":
            self.env[node.name] = self.call_module(node)
        elif node.op == "call_function":
            self.env[node.name] = self.call_function(node)
        elif node.op == "call_method":
            self.env[node.name] = self.call_method(node)
        elif node.op == "output":
            out = node.args[0]
            _require(hasattr(out, "name"), "output", "output", "the model must return one tensor")
            self.prog.output = self.ref(out, "output")


def _is_param(gm, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _shapes(gm, example_input) -> dict:
    """Output shape of every fx node on ``example_input`` (float64 run)."""
    import torch
    import torch.fx
    shapes: dict = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if isinstance(v, torch.Tensor):
                shapes[n.name] = tuple(v.shape)
            return v

    with torch.no_grad():
        Recorder(gm).run(torch.as_tensor(np.asarray(example_input, dtype=np.float64)).to(
            next(iter(gm.parameters()), torch.zeros((), dtype=torch.float64)).dtype))
    return shapes


def trace(module, example_input=None) -> Program:
    """The :class:`~nfbound.models.program.Program` of ``module`` (a ``torch.nn.Module``).

    ``example_input`` (array with the batch dimension) is run once through the traced module to
    learn the shapes of ``view``/``reshape`` results; errors of that run are reported as
    ``ValueError``. Raises ``ValueError`` naming the layer for anything unsupported.
    """
    import torch
    import torch.fx
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError("TorchScript modules cannot be traced with torch.fx: save the module itself "
                         "(torch.save(model, path)) or export it to ONNX")
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(module).__name__}")
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as e:  # fx raises TraceError, TypeError, … on data-dependent control flow
        raise ValueError(f"torch.fx cannot trace {type(module).__name__}: {e}") from None
    shapes = {}
    if example_input is not None:
        try:
            shapes = _shapes(gm, example_input)
        except Exception as e:
            raise ValueError(f"the model fails on the example input of shape "
                             f"{np.shape(example_input)}: {e}") from None
    return _Importer(gm, shapes).run()


def from_torch(module, example_input=None, loss: str | None = None):
    """``trace(module, example_input).to_graph(loss)``: a :class:`nfbound.graph.Graph`."""
    return trace(module, example_input).to_graph(loss)
