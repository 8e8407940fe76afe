"""Models in: PyTorch (``torch.fx``) and ONNX importers, and the built-in demo CNN.

``load_model(path, example_input)`` dispatches on the suffix (``.pt``/``.pth``: a whole module
saved with ``torch.save(model, path)``; ``.onnx``). Importers return a
:class:`~nfbound.models.program.Program`; ``program.to_graph(loss)`` gives the
:class:`nfbound.graph.Graph`. torch and onnx are imported only when used.
"""
from __future__ import annotations

from pathlib import Path

from .demo import demo_graph, demo_input, demo_labels, demo_model, demo_program
from .program import INPUT, LABELS, LOSS, Program, Step


def load_torch_file(path):
    """A whole ``torch.nn.Module`` saved with ``torch.save(model, path)`` (unpickled with
    ``weights_only=False``: only load files you trust; the model's class must be importable).
    TorchScript archives are rejected (``torch.fx`` cannot trace them): export to ONNX instead."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        try:
            torch.jit.load(str(path), map_location="cpu")
        except Exception:
            raise ValueError(f"{path}: cannot load with torch.load ({type(e).__name__}: {e})") from None
        raise ValueError(f"{path}: a TorchScript archive; nfbound imports modules saved with "
                         f"torch.save(model, path) or ONNX files") from None
    if isinstance(obj, dict):
        raise ValueError(f"{path}: holds a state dict, not a module; save the whole module with "
                         f"torch.save(model, path)")
    if not isinstance(obj, torch.nn.Module):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def load_model(path, example_input=None) -> Program:
    """The program of a ``.pt``/``.pth`` (torch) or ``.onnx`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        from .torch_import import trace
        return trace(load_torch_file(path), example_input)
    if suffix == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        from .onnx_import import load
        return load(path)
    raise ValueError(f"model {path}: unknown file type {suffix!r} (expected .pt, .pth or .onnx)")


__all__ = ["Program", "Step", "INPUT", "LABELS", "LOSS", "demo_graph", "demo_input", "demo_labels",
           "demo_model", "demo_program", "load_model", "load_torch_file"]
