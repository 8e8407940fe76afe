"""Elementwise arithmetic primitives: add, sub, mul (template for every op module).

Each op is one :class:`~nfbound.ops.primitive.Primitive` whose six rules sit together.
Binary ops require equal shapes (no silent broadcasting).
"""
from __future__ import annotations

import numpy as np

from ..bounds.rounding import rounding_term
from ..bounds.upward import add_up, mul_up
from ..formats import Format
from . import checks
from .interval import Interval
from .primitive import Primitive, register


def _zero(x) -> np.ndarray:
    a = np.asarray(x)
    return np.vectorize(lambda v: v == 0, otypes=[bool])(a) if a.dtype == object else a == 0


def _abs(x) -> np.ndarray:
    """``|x|`` of runtime values as float64 rounded upward (exact for binary64 values)."""
    a = np.asarray(x)
    if a.dtype == object:
        from ..bounds.upward import exact_array_up
        return exact_array_up(np.vectorize(abs, otypes=[object])(a))
    return np.abs(a)


def _sample_pair(rng, fmt: Format):
    shape = tuple(rng.integers(1, 5, size=rng.integers(1, 3)))
    x, y = (fmt.round(rng.standard_normal(shape) * 4) for _ in range(2))
    return (x, y), {}


# -- add: z = x + y ---------------------------------------------------------------------------
def add_runtime(fmt: Format, x, y):
    """``RN(x + y)`` elementwise."""
    checks.same_shape(("x", "y"), x, y)
    return fmt.add(checks.finite("x", x), checks.finite("y", y))


def add_spec(x: Interval, y: Interval) -> Interval:
    return x + y


def add_bound(fmt: Format, xs, eps):
    """``ε_x + ε_y + r``, ``r = rounding_term(RN(x̂ + ŷ))`` (0 when an operand is 0: exact)."""
    (x, y), (ex, ey) = xs, eps
    z = add_runtime(fmt, x, y)
    return add_up(ex, ey, rounding_term(fmt, z, _zero(x) | _zero(y)))


def add_vjp_runtime(fmt: Format, xs, g):
    return g, g


def add_vjp_spec(xs, g: Interval):
    return g, g


def add_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    return eps_g, eps_g


add = register(Primitive("add", add_runtime, add_spec, add_bound, add_vjp_runtime, add_vjp_spec,
                         add_vjp_bound, _sample_pair))


# -- mul: z = x · y ---------------------------------------------------------------------------
def mul_runtime(fmt: Format, x, y):
    """``RN(x · y)`` elementwise."""
    checks.same_shape(("x", "y"), x, y)
    return fmt.mul(checks.finite("x", x), checks.finite("y", y))


def mul_spec(x: Interval, y: Interval) -> Interval:
    return x * y


def mul_error(fmt: Format, x, ex, y, ey):
    """Bound of ``|RN(x̂ŷ) − x·y|``: ``|x̂|·ε_y + |ŷ|·ε_x + ε_x·ε_y + r``.

    From ``x̂ŷ − xy = x̂(ŷ − y) + ŷ(x̂ − x) − (x̂ − x)(ŷ − y)``; ``r`` is the rounding term of
    ``RN(x̂ŷ)``, 0 when a factor is 0. Tighter than TorchLean's ``(|x̂|+ε_x)ε_y + (|ŷ|+ε_y)ε_x + r``
    by ``ε_x·ε_y``. Returns ``(RN(x̂ŷ), bound)``.
    """
    z = fmt.mul(x, y)
    r = rounding_term(fmt, z, _zero(x) | _zero(y))
    return z, add_up(mul_up(_abs(x), ey), mul_up(_abs(y), ex), mul_up(ex, ey), r)


def mul_bound(fmt: Format, xs, eps):
    (x, y), (ex, ey) = xs, eps
    checks.same_shape(("x", "y"), x, y)
    return mul_error(fmt, x, ex, y, ey)[1]


def mul_vjp_runtime(fmt: Format, xs, g):
    """``(RN(g·y), RN(g·x))``."""
    x, y = xs
    return fmt.mul(g, y), fmt.mul(g, x)


def mul_vjp_spec(xs, g: Interval):
    x, y = xs
    return g * y, g * x


def mul_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    (x, y), (ex, ey) = xs, eps
    return mul_error(fmt, g, eps_g, y, ey)[1], mul_error(fmt, g, eps_g, x, ex)[1]


mul = register(Primitive("mul", mul_runtime, mul_spec, mul_bound, mul_vjp_runtime, mul_vjp_spec,
                         mul_vjp_bound, _sample_pair))
