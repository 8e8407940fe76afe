"""Number formats and bit-exact rounding engines.

``get(name)`` returns a preset (``bfloat16``, ``binary16``, ``float8_e4m3fn``, …) or parses a
spec string; ``Format.flt / flx / fix`` build formats directly. See ``format.Format``.
"""
from .exponent import FIX, FLT, FLX, ExponentFunction, custom
from .format import Format
from .presets import PRESETS, get, names

__all__ = ["Format", "ExponentFunction", "FLT", "FLX", "FIX", "custom", "get", "names", "PRESETS"]
