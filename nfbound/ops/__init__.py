"""Operations: each a primitive with runtime, spec, bound and VJP rules side by side."""
from . import elementwise
from .primitive import REGISTRY, Primitive, get, register

__all__ = ["REGISTRY", "Primitive", "get", "register", "elementwise"]
