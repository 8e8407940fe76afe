"""The ``nfbound`` command line, run as a user runs it (``python -m nfbound.cli``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gmpy2 import mpq

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nfbound.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(p, *words):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfbound: error:"), p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# -- bound -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_bound():
    return run("bound")


def test_bound_default_table(default_bound):
    p = default_bound
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("node"))
    rows = []
    for line in lines[head + 1:]:
        if not line.strip() or line.startswith(("argmax", "time", "verdict")):
            break
        rows.append(line.split())
    names = [r[0] for r in rows]
    assert names[:1] == ["x"] and names[-5:] == ["0", "1", "2", "3", "4"]
    # the enclosure column of every row holds
    assert all(r[-1] == "True" for r in rows), rows
    assert lines[-1].startswith("verdict: all") and "held" in lines[-1]
    assert "bfloat16" in lines[0]


def test_bound_json_and_gradients():
    p = run("bound", "--json", "--gradients", "--quiet")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["holds"] is True and out["format"] == "bfloat16" and out["loss"] == "cross_entropy"
    fwd = {r["node"]: r for r in out["forward"]}
    assert fwd["4"]["shape"] == [8, 10] and fwd["4"]["holds"] is True
    assert all(r["holds"] is True for r in out["forward"] + out["backward"])
    b = fwd["4"]["max_bound"]
    assert 0 < fwd["4"]["max_observed"] <= b < 10          # a real, finite, non-vacuous bound
    grads = {r["node"] for r in out["backward"]}
    assert {"0.weight", "0.bias", "4.weight", "4.bias"} <= grads


def test_bound_errors(tmp_path):
    one_line_error(run("bound", "--model", tmp_path / "missing.pt", "--input", tmp_path / "x.npy"),
                   "not found")
    one_line_error(run("bound", "--format", "flt:p=x,emin=-3"), "malformed format spec")
    one_line_error(run("bound", "--format", "nosuchformat"), "unknown format")
    one_line_error(run("bound", "--order", "sideways"))
    one_line_error(run("bound", "--no-such-flag"), "unrecognized arguments")


def test_bound_unsupported_layer(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    torch.save(model, tmp_path / "bn.pt")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 6, 6)))
    one_line_error(run("bound", "--model", tmp_path / "bn.pt", "--input", tmp_path / "x.npy"),
                   "unsupported layer '1' (BatchNorm2d)")


# -- formats -----------------------------------------------------------------------------------------
def test_formats():
    p = run("formats")
    assert p.returncode == 0
    rows = {l.split()[0]: l.split() for l in p.stdout.splitlines()[1:-1]}
    assert rows["bfloat16"][1:4] == ["2", "8", "-133"] and rows["binary16"][-2] == "65504"
    p = run("formats", "flt:p=7,emin=-20,emax=15")
    assert p.returncode == 0 and "u                    2^-7" in p.stdout
    one_line_error(run("formats", "flt:p=7,emin=-20,bogus=1"), "unknown key")


# -- verify ------------------------------------------------------------------------------------------
def exact_check(runtime, spec, spec_radius, bound) -> bool:
    """``|runtime − spec| ≤ bound + spec_radius`` elementwise in exact rationals: the saved spec
    is the float64 nearest to the spec midpoint and ``spec_radius`` covers both the enclosure's
    half-width and that rounding, so this is a sound re-check of the enclosure from the file."""
    return all(abs(mpq(r) - mpq(s)) <= mpq(b) + mpq(e) for r, s, e, b in
               zip(runtime.ravel(), spec.ravel(), spec_radius.ravel(), bound.ravel()))


def torch_conv2d_reference(z, op):
    """The op recomputed independently in torch float64, with a float64 error bound of it:
    ``|fl(Σ t) − Σ t| ≤ n·2^−52·Σ|t|`` (n = number of terms, generous), Σ|t| from the same
    computation on absolute values."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def compute(x, w, b, g):
        x, w, b = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(x, w, b, stride=tuple(z["stride"]), padding=tuple(z["padding"]))
        if op == "conv2d":
            return y.detach().numpy()
        y.backward(torch.tensor(g))
        return {"conv2d_grad_input": x, "conv2d_grad_weight": w,
                "conv2d_grad_bias": b}[op].grad.numpy()

    x, w, b = z["input"], z["weight"], z["bias"]
    g = z["grad_output"] if "grad_output" in z else None
    ref = compute(x, w, b, g)
    mag = compute(np.abs(x), np.abs(w), np.abs(b), None if g is None else np.abs(g))
    n = x.size + w.size + b.size + (0 if g is None else g.size)
    return ref, n * 2.0 ** -52 * mag


@pytest.mark.parametrize("op", ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias"])
def test_verify_save_and_independent_recheck(tmp_path, op):
    path = tmp_path / f"{op}.npz"
    p = run("verify", "--op", op, "--format", "bfloat16", "--seed", 3, "--save", path)
    assert p.returncode == 0, p.stderr
    assert "enclosure held" in p.stdout.splitlines()[-1]
    z = np.load(path)
    keys = {"input", "weight", "bias", "runtime", "bound", "spec", "spec_radius", "stride", "padding",
            "format", "op"} | ({"grad_output"} if "grad" in op else set())
    assert set(z.files) == keys
    assert str(z["format"]) == "bfloat16" and str(z["op"]) == op
    runtime, spec, bound, rad = z["runtime"], z["spec"], z["bound"], z["spec_radius"]
    assert runtime.dtype == spec.dtype == bound.dtype == np.float64
    assert runtime.shape == spec.shape == bound.shape
    assert exact_check(runtime, spec, rad, bound)
    # the check can fail: a runtime moved by twice the bound plus a bit is caught
    assert not exact_check(runtime + 2 * bound + 1e-3, spec, rad, bound)
    # independent spec: torch float64, its own rounding error ≤ tol
    ref, tol = torch_conv2d_reference(z, op)
    assert np.all(np.abs(runtime - ref) <= bound + tol)
    assert np.all(np.abs(spec - ref) <= tol + rad)
    assert np.max(np.abs(runtime - ref)) > 0          # bfloat16 really differs from the reals


def test_verify_activation_and_errors(tmp_path):
    p = run("verify", "--op", "tanh", "--format", "float8_e4m3fn", "--shape", "3x5", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["holds"] is True and out["output_shape"] == [3, 5] and out["primitive"] == "tanh"
    one_line_error(run("verify", "--op", "nosuchop", "--format", "bfloat16"), "unknown --op")
    one_line_error(run("verify", "--op", "conv2d_grad_nothing", "--format", "bfloat16"), "no argument")
    one_line_error(run("verify", "--op", "conv2d", "--format", "bfloat16", "--shape", "2x3"), "--shape")
