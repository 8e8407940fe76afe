"""nfbound: certified error bounds for neural networks computed in low-precision formats."""
__version__ = "0.1.0"

from . import kernel_cache  # noqa: E402  (before any compiled kernel is defined)
from . import formats  # noqa: E402

__all__ = ["formats"]
