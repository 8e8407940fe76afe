"""nfbound: certified error bounds for neural networks computed in low-precision formats."""
from . import formats

__version__ = "0.1.0"
__all__ = ["formats"]
