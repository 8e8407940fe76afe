"""Model import (PyTorch via torch.fx, ONNX) and the built-in demo model."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nfbound.formats import get as get_format  # noqa: E402
from nfbound.graph import SGD, train  # noqa: E402
from nfbound.models import demo_input, demo_labels, demo_model, demo_program  # noqa: E402
from nfbound.models import onnx_import, torch_import  # noqa: E402
from nfbound.models.demo import DEMO_PATH  # noqa: E402

# torch.onnx.export(dynamo=False) is the legacy exporter (the dynamo one needs onnxscript)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Mixed(nn.Module):
    """Every import path at once: modules, functional forms, a view, a raw parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
        self.deconv = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(32, 5)
        self.w = nn.Parameter(torch.randn(4, 5) / 3)

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        h = F.softplus(self.deconv(h))
        h = torch.sigmoid(self.pool(h))
        h = h.view(h.size(0), -1)
        h = F.relu(self.fc(h))
        h = F.linear(h, self.w)
        return F.softmax(h, dim=1)


class Modules(nn.Module):
    """The rest of the import surface: Conv3d and Conv1d (joined by views), the Tanh, Sigmoid,
    Softplus and Softmax modules, F.conv2d with raw parameters, F.max_pool2d, F.avg_pool2d and
    torch.flatten."""

    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv3d(2, 3, 3, padding=1)
        self.act3 = nn.Tanh()
        self.conv1 = nn.Conv1d(12, 4, 3, stride=2)
        self.act1 = nn.Sigmoid()
        self.w2 = nn.Parameter(torch.randn(2, 1, 3, 3) / 3)
        self.b2 = nn.Parameter(torch.randn(2) / 10)
        self.act2 = nn.Softplus()
        self.fc = nn.Linear(16, 5)
        self.out = nn.Softmax(dim=1)

    def forward(self, x):                        # x: (1, 2, 4, 6, 6)
        h = self.act3(self.conv3(x))             # (1, 3, 4, 6, 6)
        h = h.view(1, 12, 36)
        h = self.act1(self.conv1(h))             # (1, 4, 17)
        h = h.view(1, 1, 4, 17)
        h = self.act2(F.conv2d(h, self.w2, self.b2, padding=1))   # (1, 2, 4, 17)
        h = F.max_pool2d(h, 2)                   # (1, 2, 2, 8)
        h = F.avg_pool2d(h, (1, 2))              # (1, 2, 2, 4)
        return self.out(self.fc(torch.flatten(h, 1)))


MODULES_OPS = ["conv", "tanh", "reshape", "conv", "sigmoid", "reshape", "conv", "softplus",
               "max_pool", "avg_pool", "flatten", "linear", "softmax"]


def _modules():
    torch.manual_seed(1)
    return Modules(), np.random.default_rng(1).standard_normal((1, 2, 4, 6, 6))


def _export(model, x, path):
    model.eval()
    torch.onnx.export(model, torch.as_tensor(x, dtype=next(model.parameters()).dtype), str(path),
                      dynamo=False)
    return path


def _mixed():
    torch.manual_seed(0)
    return Mixed(), np.random.default_rng(0).standard_normal((2, 2, 8, 8))


def _forward(program, x, fmt="bfloat16"):
    return program.to_graph().forward(get_format(fmt), inputs={"x": x}, progress=False)


# -- PyTorch vs ONNX -------------------------------------------------------------------------------
def test_demo_torch_and_onnx_give_the_same_program(tmp_path):
    m, x = demo_model(), demo_input()
    a = torch_import.trace(m, x)
    b = onnx_import.load(_export(m, x, tmp_path / "demo.onnx"))
    assert [s.op for s in a.steps] == ["conv", "relu", "max_pool", "flatten", "linear"]
    assert a.signature() == b.signature()
    assert a.signature() == demo_program().signature()
    assert [s.name for s in a.steps] == [s.name for s in demo_program().steps]


def test_mixed_torch_and_onnx_give_the_same_program(tmp_path):
    m, x = _mixed()
    a = torch_import.trace(m, x)
    b = onnx_import.load(_export(m, x, tmp_path / "mixed.onnx"))
    assert [s.op for s in a.steps] == ["conv", "tanh", "conv_transpose", "softplus", "avg_pool",
                                       "sigmoid", "reshape", "linear", "relu", "linear", "softmax"]
    assert a.signature() == b.signature()
    # the conv without bias has no bias input; the parameters are the float32 weights
    assert a.steps[0].inputs == ("x", "conv.weight")
    assert sorted(a.params) == sorted(n for n, _ in m.named_parameters())
    assert np.array_equal(a.params["fc.weight"], m.fc.weight.detach().double().numpy())
    # changing one weight changes the signature (the comparison can fail)
    c = torch_import.trace(m, x)
    c.params["fc.weight"] = c.params["fc.weight"].copy()
    c.params["fc.weight"][0, 0] += 2.0 ** -20
    assert c.signature() != a.signature()


def test_demo_torch_and_onnx_give_the_same_bounds(tmp_path):
    m, x = demo_model(), demo_input()
    ra = _forward(torch_import.trace(m, x), x)
    rb = _forward(onnx_import.load(_export(m, x, tmp_path / "demo.onnx")), x)
    assert ra.holds and rb.holds
    la, lb = ra.graph.topological_order(), rb.graph.topological_order()
    assert [ra.graph.nodes[n].op for n in la] == [rb.graph.nodes[n].op for n in lb]
    for na, nb in zip(la, lb):
        assert np.array_equal(ra.eps[na], rb.eps[nb])
        assert np.array_equal(np.asarray(ra.runtime[na]), np.asarray(rb.runtime[nb]))


def _same_results(ra, rb):
    """Two forward (or backward) results of equal graphs: the same nodes in the same order,
    bit-identical runtime values and bounds."""
    la, lb = ra.graph.topological_order(), rb.graph.topological_order()
    assert [ra.graph.nodes[n].op for n in la] == [rb.graph.nodes[n].op for n in lb]
    for na, nb in zip(la, lb):
        if na in ra.runtime:
            assert np.array_equal(np.asarray(ra.runtime[na]), np.asarray(rb.runtime[nb])), na
            assert np.array_equal(ra.eps[na], rb.eps[nb]), na


def test_mixed_torch_and_onnx_give_the_same_bounds(tmp_path):
    m, x = _mixed()
    ra = _forward(torch_import.trace(m, x), x, "binary16")
    rb = _forward(onnx_import.load(_export(m, x, tmp_path / "mixed.onnx")), x, "binary16")
    assert ra.holds and rb.holds
    _same_results(ra, rb)


def test_modules_import_spec_and_onnx(tmp_path):
    """Conv1d/Conv3d, activation modules and the functional forms: imported as the expected
    ops; the spec equals PyTorch's float64 forward; the ONNX export gives the same program
    and bit-identical bounds."""
    m, x = _modules()
    a = torch_import.trace(m, x)
    assert [s.op for s in a.steps] == MODULES_OPS
    assert a.params["w2"].shape == (2, 1, 3, 3)            # F.conv2d's raw weight
    b = onnx_import.load(_export(m, x, tmp_path / "modules.onnx"))
    assert a.signature() == b.signature()
    ra, rb = _forward(a, x), _forward(b, x)
    assert ra.holds and rb.holds
    _same_results(ra, rb)
    with torch.no_grad():
        ref = m.double()(torch.from_numpy(x)).numpy()
    spec = ra.spec[a.output].to_float()
    np.testing.assert_allclose(spec, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
    assert np.abs(np.asarray(ra.runtime[a.output], dtype=np.float64) - ref).max() > 1e-5


def test_onnx_import_agrees_with_onnxruntime(tmp_path):
    """An independent ONNX implementation (onnxruntime, float32) computes what our spec of the
    imported ONNX graph says, to float32 accuracy: the importer reads the ONNX semantics
    (pads, strides, Gemm transposes, Softmax axis, …) right."""
    ort = pytest.importorskip("onnxruntime")
    for name, (m, x) in {"mixed": _mixed(), "modules": _modules(), "demo": (
            demo_model().float(), demo_input())}.items():
        m = m.float()
        x32 = x.astype(np.float32)
        path = _export(m, x32, tmp_path / f"{name}.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x32})[0].astype(np.float64)
        prog = onnx_import.load(path)
        res = prog.to_graph().forward(get_format("binary32"), inputs={"x": x32.astype(np.float64)},
                                      bounds=False, progress=False)
        spec = res.spec[prog.output].to_float()
        assert spec.shape == got.shape, name
        np.testing.assert_allclose(got, spec, rtol=0, atol=1e-5 * np.abs(spec).max(),
                                   err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "float8_e4m3fn", "binary32"])
def test_torch_and_onnx_give_the_same_gradient_bounds(tmp_path, fmt):
    """Forward and backward (loss = sum of the outputs) of both models in every format:
    PyTorch import and ONNX import agree bit for bit, and every enclosure holds."""
    for name, (m, x) in {"mixed": _mixed(), "modules": _modules()}.items():
        ga = torch_import.trace(m, x).to_graph("sum")
        gb = onnx_import.load(_export(m, x, tmp_path / f"{name}.onnx")).to_graph("sum")
        f = get_format(fmt)
        fa, fb = (g.forward(f, {"x": x}, progress=False) for g in (ga, gb))
        ba, bb = ga.backward(f, fa, progress=False), gb.backward(f, fb, progress=False)
        assert fa.holds and fb.holds and ba.holds and bb.holds
        _same_results(fa, fb)
        _same_results(ba, bb)


# -- the demo model ---------------------------------------------------------------------------------
def test_demo_data():
    x, y = demo_input(), demo_labels()
    assert DEMO_PATH.stat().st_size < 20_000
    assert x.shape == (8, 1, 8, 8) and x.dtype == np.float64 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (8,) and y.dtype.kind == "i"
    with torch.no_grad():
        pred = demo_model()(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred == y).sum() >= 7          # the trained model classifies the demo digits


def test_demo_spec_equals_torch_float64_forward():
    """The spec path is the exact real forward: it agrees with PyTorch's float64 forward of the
    same weights to float64 accuracy (the float64 forward itself errs by ~1e-16 relative)."""
    x = demo_input()
    res = _forward(demo_program(), x)
    with torch.no_grad():
        ref = demo_model()(torch.from_numpy(x)).numpy()
    spec = res.spec["4"].to_float()
    assert spec.shape == ref.shape == (8, 10)
    np.testing.assert_allclose(spec, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
    # and the bfloat16 runtime is visibly different from it (the check is not vacuous)
    assert np.abs(np.asarray(res.runtime["4"], dtype=np.float64) - ref).max() > 1e-4
    assert res.holds


# -- unsupported layers -----------------------------------------------------------------------------
def test_unsupported_module_names_layer_and_type():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"unsupported layer '1' \(BatchNorm2d\)"):
        torch_import.trace(m, np.zeros((1, 1, 5, 5)))


def test_unsupported_function_and_options():
    class G(nn.Module):
        def forward(self, x):
            return F.gelu(x)
    with pytest.raises(ValueError, match=r"unsupported layer 'gelu' \(function gelu\)"):
        torch_import.trace(G(), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"'0' \(Conv2d\): dilation"):
        torch_import.trace(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2)), np.zeros((1, 1, 7, 7)))
    with pytest.raises(ValueError, match=r"'0' \(Conv2d\): groups"):
        torch_import.trace(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), np.zeros((1, 2, 7, 7)))
    with pytest.raises(ValueError, match=r"Softplus\): beta"):
        torch_import.trace(nn.Sequential(nn.Softplus(beta=2)), np.zeros((1, 3)))


def test_softplus_threshold_rejected():
    """PyTorch returns x where x > threshold: only the default 20 (|difference| < e^-20) is
    imported as the exact log(1 + e^x); any other threshold is refused, naming the layer."""
    with pytest.raises(ValueError, match=r"unsupported layer '0' \(Softplus\): threshold=0.5"):
        torch_import.trace(nn.Sequential(nn.Softplus(threshold=0.5)), np.zeros((1, 3)))

    class G(nn.Module):
        def __init__(self, **kw):
            super().__init__()
            self.kw = kw

        def forward(self, x):
            return F.softplus(x, **self.kw)
    with pytest.raises(ValueError, match=r"'softplus' \(softplus\): threshold=5"):
        torch_import.trace(G(threshold=5.0), np.zeros((1, 3)))
    for m in (nn.Sequential(nn.Softplus()), G(), G(beta=1.0, threshold=20)):
        assert [s.op for s in torch_import.trace(m, np.zeros((1, 3))).steps] == ["softplus"]


def test_unsupported_onnx_node_names_node_and_op():
    from onnx import TensorProto, helper
    node = helper.make_node("LeakyRelu", ["x"], ["y"], name="act1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph)
    with pytest.raises(ValueError, match=r"unsupported node 'act1' \(LeakyRelu\)"):
        onnx_import.from_model(model)


def test_view_needs_example_input():
    class V(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)
    with pytest.raises(ValueError, match="example input"):
        torch_import.trace(V())
    assert torch_import.trace(V(), np.zeros((2, 3, 4))).steps[0].params == {"shape": (2, 12)}


# -- the trainable parameters are exactly the model's ---------------------------------------------
class Layers(nn.Module):
    """One layer of each kind with parameters — module and functional forms — every bias
    present or absent; a buffer, a frozen parameter and a weight shared by two layers."""

    def __init__(self, kind: str, bias: bool):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.layer = nn.Conv2d(2, 3, 2, bias=bias)
        elif kind == "conv_transpose":
            self.layer = nn.ConvTranspose1d(2, 3, 1, bias=bias)
        elif kind == "linear":
            self.layer = nn.Linear(2, 3, bias=bias)
        else:   # functional: F.conv2d, F.conv_transpose1d, F.linear with raw parameters
            shape = {"f_conv": (3, 2, 2, 2), "f_conv_transpose": (2, 3, 1), "f_linear": (3, 2)}
            self.w = nn.Parameter(torch.randn(shape[kind]) / 2)
            self.b = nn.Parameter(torch.randn(3) / 4) if bias else None
        self.register_buffer("shift", torch.randn(1, 3) / 8)
        self.frozen = nn.Parameter(torch.randn(3, 3) / 3, requires_grad=False)
        self.head = nn.Linear(3, 3, bias=False)
        self.tied = nn.Linear(3, 3, bias=False)
        self.tied.weight = self.head.weight

    def forward(self, x):
        if self.kind == "f_conv":
            h = F.conv2d(x, self.w, self.b)
        elif self.kind == "f_conv_transpose":
            h = F.conv_transpose1d(x, self.w, self.b)
        elif self.kind == "f_linear":
            h = F.linear(x, self.w, self.b)
        else:
            h = self.layer(x)
        h = torch.flatten(h, 1)                   # (1, 3)
        h = F.linear(h, self.frozen) + self.shift
        return self.tied(torch.tanh(self.head(h)))


LAYER_INPUTS = {"conv": (1, 2, 2, 2), "f_conv": (1, 2, 2, 2), "conv_transpose": (1, 2, 1),
                "f_conv_transpose": (1, 2, 1), "linear": (1, 2), "f_linear": (1, 2)}
LAYER_OPS = {"conv": "conv", "f_conv": "conv", "conv_transpose": "conv_transpose",
             "f_conv_transpose": "conv_transpose", "linear": "linear", "f_linear": "linear"}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", sorted(LAYER_INPUTS))
def test_imported_parameters_are_the_models(tmp_path, kind, bias):
    """Every layer kind with parameters, module and functional, with and without bias: the
    PyTorch import's trainable parameters are exactly ``named_parameters()`` with
    ``requires_grad`` (a missing bias stays absent — it was a zero parameter that training
    moved —, a tied weight is one parameter), buffers and frozen parameters are constants that
    training leaves alone; the ONNX import's parameters are exactly its initializers (no zero
    bias either). Both imports compute the PyTorch forward."""
    torch.manual_seed(3)
    m = Layers(kind, bias).double()
    x = np.random.default_rng(3).standard_normal(LAYER_INPUTS[kind])
    a = torch_import.trace(m, x)
    layer = next(s for s in a.steps if s.op == LAYER_OPS[kind])
    assert len(layer.inputs) == (3 if bias else 2)
    assert sorted(a.params) == sorted(n for n, p in m.named_parameters() if p.requires_grad)
    assert sorted(a.consts) == ["frozen", "shift"]
    for n, p in [*m.named_parameters(), *m.named_buffers()]:
        assert np.array_equal((a.params | a.consts)[n], p.detach().numpy()), n
    g = a.to_graph("sum")
    assert sorted(g.params) == sorted(a.params)
    run = train(g, get_format("binary32"), SGD(lr=0.5), {"x": x}, steps=2)
    assert run.holds and sorted(run.params) == sorted(a.params)
    b = onnx_import.load(_export(m, x, tmp_path / f"{kind}.onnx"))
    inits = {t.name for t in onnx.load(str(tmp_path / f"{kind}.onnx")).graph.initializer}
    assert sorted(n.removesuffix(".T") for n in b.params) == sorted(inits)
    assert len(next(s for s in b.steps if s.op == LAYER_OPS[kind]).inputs) == (3 if bias else 2)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    for prog in (a, b):
        res = _forward(prog, x, "binary32")
        assert res.holds
        np.testing.assert_allclose(res.spec[prog.output].to_float(), ref, rtol=0, atol=1e-14)


def _onnx_model(nodes, inits, x_shape, y_shape):
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_onnx_missing_bias_stays_absent_and_constants_are_not_trained(trans_b):
    """Hand-built ONNX: ``Conv`` and ``ConvTranspose`` without ``B``, ``Gemm`` without ``C``
    (``transB`` 0 and 1) import without a bias input; a ``Constant`` operand is a constant,
    not a parameter: training updates the initializers only."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(5)
    inits = {"cw": rng.standard_normal((2, 1, 2)), "tw": rng.standard_normal((2, 1, 1)),
             "gw": rng.standard_normal((3, 3))}
    shift = numpy_helper.from_array(rng.standard_normal((1, 3)), "c")
    nodes = [helper.make_node("Conv", ["x", "cw"], ["h1"], name="/conv/Conv"),
             helper.make_node("ConvTranspose", ["h1", "tw"], ["h2"], name="/deconv/ConvTranspose"),
             helper.make_node("Flatten", ["h2"], ["h3"], name="/flat/Flatten"),
             helper.make_node("Gemm", ["h3", "gw"], ["h4"], name="/fc/Gemm", transB=trans_b),
             helper.make_node("Constant", [], ["c"], name="/shift/Constant", value=shift),
             helper.make_node("Add", ["h4", "c"], ["y"], name="/add/Add")]
    prog = onnx_import.from_model(_onnx_model(nodes, inits, [1, 1, 4], [1, 3]))
    assert [(s.op, len(s.inputs)) for s in prog.steps] == [
        ("conv", 2), ("conv_transpose", 2), ("flatten", 1), ("linear", 2), ("add", 2)]
    assert sorted(prog.params) == sorted(["cw", "tw", "gw" if trans_b else "gw.T"])
    assert list(prog.consts) == ["c"]
    x = rng.standard_normal((1, 1, 4))
    run = train(prog.to_graph("sum"), get_format("bfloat16"), SGD(lr=0.25), {"x": x}, steps=2)
    assert run.holds and sorted(run.params) == sorted(prog.params)
    ref = x[0, 0, :3] * inits["cw"][:, 0, 0, None] + x[0, 0, 1:] * inits["cw"][:, 0, 1, None]
    ref = (ref[:, None, :] * inits["tw"][:, :, 0, None]).sum(axis=0).reshape(1, -1)
    ref = ref @ (inits["gw"].T if trans_b else inits["gw"]) + numpy_helper.to_array(shift)
    res = _forward(prog, x)
    np.testing.assert_allclose(res.spec[prog.output].to_float(), ref, rtol=0, atol=1e-14)


def test_program_keeps_0d_parameters_0d():
    """A 0-d tensor stays 0-d (``np.ascontiguousarray`` made it shape (1,))."""
    from nfbound.models import Program
    p = Program()
    p.add_param("s", np.float64(0.5))
    p.add_const("c", torch.tensor(2.0).double().numpy())
    assert p.params["s"].shape == () and p.consts["c"].shape == ()
