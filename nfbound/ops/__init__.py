"""Operations: each a primitive with runtime, spec, bound and VJP rules side by side.

Importing this package registers every primitive (one module per op family).
"""
import importlib as _importlib

from .primitive import REGISTRY, Primitive, get, register

_FAMILIES = ("elementwise", "transcendental", "reduce", "linalg", "conv", "pool", "shape",
             "softmax", "loss")
for _name in _FAMILIES:
    _importlib.import_module(f"{__name__}.{_name}")

__all__ = ["REGISTRY", "Primitive", "get", "register"]
