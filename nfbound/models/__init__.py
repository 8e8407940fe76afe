"""Models in: PyTorch (``torch.fx``) and ONNX importers, and the built-in demo CNN.

``load_model(path, example_input)`` dispatches on the suffix (``.pt``/``.pth``: a whole module
saved with ``torch.save(model, path)``; ``.onnx``). Importers return a
:class:`~nfbound.models.program.Program`; ``program.to_graph(loss)`` gives the
:class:`nfbound.graph.Graph`. torch and onnx are imported only when used.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path

from .demo import demo_graph, demo_input, demo_labels, demo_model, demo_program
from .program import INPUT, LABELS, LOSS, Program, Step


#: How to get the optional dependencies of the importers (torch, onnx, scikit-learn).
INSTALL_HINT = "pip install 'nfbound[models]'"


def require(module: str, what: str):
    """``import module``, or an ``ImportError`` saying that ``what`` needs it and how to install
    it (:data:`INSTALL_HINT`)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs the optional dependency {module!r}, which cannot be "
                          f"imported ({e}): {INSTALL_HINT}") from e


def load_torch_file(path):
    """A whole ``torch.nn.Module`` saved with ``torch.save(model, path)`` (unpickled with
    ``weights_only=False``: only load files you trust; the model's class must be importable).
    TorchScript archives are rejected (``torch.fx`` cannot trace them): export to ONNX instead.
    ``FileNotFoundError`` for a missing file, ``ImportError`` without torch, ``ValueError`` for
    anything else; torch's warnings while loading are not shown (the error says it all)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    torch = require("torch", f"reading {path.suffix} models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # e.g. "looks like a TorchScript archive, dispatching"
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            try:
                torch.jit.load(str(path), map_location="cpu")
            except Exception:
                raise ValueError(f"{path}: cannot load with torch.load ({type(e).__name__}: "
                                 f"{e})") from None
            obj = None
    if obj is None or isinstance(obj, torch.jit.ScriptModule):
        raise ValueError(f"{path}: a TorchScript archive; nfbound imports modules saved with "
                         f"torch.save(model, path) or ONNX files")
    if isinstance(obj, dict):
        raise ValueError(f"{path}: holds a state dict, not a module; save the whole module with "
                         f"torch.save(model, path)")
    if not isinstance(obj, torch.nn.Module):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def load_model(path, example_input=None) -> Program:
    """The program of a ``.pt``/``.pth`` (torch) or ``.onnx`` file (``example_input``: see
    :func:`~nfbound.models.torch_import.trace`; ONNX files carry their shapes)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        module = load_torch_file(path)
        from .torch_import import trace
        return trace(module, example_input)
    if suffix == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        require("onnx", "reading .onnx models")
        from .onnx_import import load
        return load(path)
    raise ValueError(f"model {path}: unknown file type {suffix!r} (expected .pt, .pth or .onnx)")


__all__ = ["Program", "Step", "INPUT", "LABELS", "LOSS", "INSTALL_HINT", "demo_graph", "demo_input",
           "demo_labels", "demo_model", "demo_program", "load_model", "load_torch_file", "require"]
