"""Shape primitives: reshape and flatten (exact, index-only maps).

A reshape only renames positions: ``y[π(i)] = x[i]`` for a bijection ``π`` fixed by the shapes
(row-major order, as ``torch.reshape`` on a contiguous tensor). No arithmetic happens, so

* runtime and spec are the same index map (``Interval.map_exact``),
* the forward bound is ``ε`` carried along the same map (no rounding term),
* the VJP is the inverse index map (the gradient reshaped back to the input's shape), exact too.

Inputs. The runtime, bound and VJP rules take runtime values: ``x`` and the upstream gradient
``g`` must be finite values of the format (``checks.format_value``; a ``ValueError`` names the
argument otherwise), and ``g`` must have the output's shape (not merely its size).

Overflow and domain errors: no arithmetic happens, so no rounding, no overflow and no domain
error; an invalid ``shape``/``start_dim``/``end_dim`` raises ``ValueError``. A ``±max_finite``
value of a saturating format (maybe an upstream overflow) keeps the bound ``inf``, as every
rule's output does (``bounds.rounding.guard_nonfinite``).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..bounds.rounding import guard_nonfinite
from ..formats import Format
from . import checks
from .interval import Interval
from .primitive import Primitive, register


def _target_shape(shape, size: int) -> tuple[int, ...]:
    """``shape`` validated against ``size`` elements (one ``-1`` is inferred, torch rule)."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of integers, got {shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise ValueError(f"shape must be a tuple of integers, got {shape!r}")
        if d < -1:
            raise ValueError(f"shape entries must be ≥ 0 or −1 (inferred), got {shape!r}")
    if sum(1 for d in dims if d == -1) > 1:
        raise ValueError(f"shape may contain at most one −1, got {shape!r}")
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if -1 in dims:
        if known == 0 or size % known:
            raise ValueError(f"shape {shape!r} is invalid for an input of {size} elements")
        dims = tuple(size // known if d == -1 else int(d) for d in dims)
    elif known != size:
        raise ValueError(f"shape {shape!r} is invalid for an input of {size} elements")
    return tuple(int(d) for d in dims)


def _flat_shape(in_shape: tuple[int, ...], start_dim, end_dim) -> tuple[int, ...]:
    """``torch.flatten`` semantics: dimensions ``start_dim..end_dim`` (inclusive, negative
    indices count from the end) merge into one; a 0-d input becomes shape ``(1,)``."""
    for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    nd = len(in_shape)
    rank = max(nd, 1)

    def norm(name, v):
        if not -rank <= v < rank:
            raise ValueError(f"{name}={v} is out of range for a {nd}-d input "
                             f"(expected in [{-rank}, {rank - 1}])")
        return v % rank

    s, e = norm("start_dim", int(start_dim)), norm("end_dim", int(end_dim))
    if s > e:
        raise ValueError(f"start_dim={start_dim} comes after end_dim={end_dim}")
    if nd == 0:
        return (1,)
    merged = int(np.prod(in_shape[s:e + 1], dtype=np.int64))
    return tuple(in_shape[:s]) + (merged,) + tuple(in_shape[e + 1:])


def _sample_tensor(rng, fmt: Format):
    shape = tuple(int(d) for d in rng.integers(1, 4, size=rng.integers(1, 4)))
    return fmt.round(rng.standard_normal(shape) * 4), shape


# -- reshape: y = x viewed with a new shape (row-major) ---------------------------------------
def reshape_runtime(fmt: Format, x, *, shape):
    """``x`` in row-major order, re-cut to ``shape`` (one ``-1`` inferred). Exact."""
    x = checks.format_value("x", x, fmt)
    return np.reshape(x, _target_shape(shape, np.size(x)))


def reshape_spec(x: Interval, *, shape) -> Interval:
    dims = _target_shape(shape, int(np.prod(x.shape, dtype=np.int64)))
    return x.map_exact(lambda a: a.reshape(dims))


def reshape_bound(fmt: Format, xs, eps, *, shape):
    """``ε`` re-cut the same way: a reshape does no arithmetic (``|y_R − y_S| = |x_R − x_S|``
    position by position)."""
    (x,), (ex,) = xs, eps
    x = checks.format_value("x", x, fmt)
    return np.reshape(guard_nonfinite(fmt, x, checks.eps_like("eps", ex, x)),
                      _target_shape(shape, np.size(x)))


def reshape_vjp_runtime(fmt: Format, xs, g, *, shape):
    """The gradient re-cut to the input's shape (the adjoint of a permutation is its inverse)."""
    x, g = _vjp_args(fmt, xs, g)
    return (_back(g, np.shape(x), _target_shape(shape, np.size(x)), "g"),)


def reshape_vjp_spec(xs, g: Interval, *, shape):
    (x,) = xs
    out = _target_shape(shape, int(np.prod(x.shape, dtype=np.int64)))
    return (g.map_exact(lambda a: _back(a, x.shape, out, "g")),)


def reshape_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, shape):
    x, g = _vjp_args(fmt, xs, g)
    out = _target_shape(shape, np.size(x))
    _back(g, np.shape(x), out, "g")
    return (_back(guard_nonfinite(fmt, g, checks.eps_like("eps_g", eps_g, g)), np.shape(x), out,
                  "eps_g"),)


def _vjp_args(fmt: Format, xs, g):
    """``(x, g)`` of a VJP rule, both checked to be runtime values of ``fmt``."""
    (x,) = xs
    return checks.format_value("x", x, fmt), checks.format_value("g", g, fmt)


def _back(g, in_shape, out_shape, name: str):
    """``g`` (of the op's output shape ``out_shape``) re-cut to the input's shape."""
    if np.shape(g) != tuple(out_shape):
        raise ValueError(f"{name} has shape {np.shape(g)}, expected the output's shape "
                         f"{tuple(out_shape)}")
    return np.reshape(g, in_shape)


def _sample_reshape(rng, fmt: Format):
    x, shape = _sample_tensor(rng, fmt)
    new = [int(np.prod(shape))]
    if len(shape) > 1 and rng.integers(2):
        new = [shape[-1], -1]
    return (x,), {"shape": tuple(new)}


reshape = register(Primitive("reshape", reshape_runtime, reshape_spec, reshape_bound,
                             reshape_vjp_runtime, reshape_vjp_spec, reshape_vjp_bound,
                             _sample_reshape))


# -- flatten: merge dims start_dim..end_dim (torch.flatten; default start_dim=1 as nn.Flatten) -
def flatten_runtime(fmt: Format, x, *, start_dim: int = 1, end_dim: int = -1):
    """``x`` with dimensions ``start_dim..end_dim`` merged (row-major). Exact."""
    x = checks.format_value("x", x, fmt)
    return np.reshape(x, _flat_shape(np.shape(x), start_dim, end_dim))


def flatten_spec(x: Interval, *, start_dim: int = 1, end_dim: int = -1) -> Interval:
    dims = _flat_shape(x.shape, start_dim, end_dim)
    return x.map_exact(lambda a: a.reshape(dims))


def flatten_bound(fmt: Format, xs, eps, *, start_dim: int = 1, end_dim: int = -1):
    """``ε`` flattened the same way (exact op, no rounding term)."""
    (x,), (ex,) = xs, eps
    x = checks.format_value("x", x, fmt)
    return np.reshape(guard_nonfinite(fmt, x, checks.eps_like("eps", ex, x)),
                      _flat_shape(np.shape(x), start_dim, end_dim))


def flatten_vjp_runtime(fmt: Format, xs, g, *, start_dim: int = 1, end_dim: int = -1):
    x, g = _vjp_args(fmt, xs, g)
    return (_back(g, np.shape(x), _flat_shape(np.shape(x), start_dim, end_dim), "g"),)


def flatten_vjp_spec(xs, g: Interval, *, start_dim: int = 1, end_dim: int = -1):
    (x,) = xs
    out = _flat_shape(x.shape, start_dim, end_dim)
    return (g.map_exact(lambda a: _back(a, x.shape, out, "g")),)


def flatten_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, start_dim: int = 1, end_dim: int = -1):
    x, g = _vjp_args(fmt, xs, g)
    out = _flat_shape(np.shape(x), start_dim, end_dim)
    _back(g, np.shape(x), out, "g")
    return (_back(guard_nonfinite(fmt, g, checks.eps_like("eps_g", eps_g, g)), np.shape(x), out,
                  "eps_g"),)


def _sample_flatten(rng, fmt: Format):
    x, shape = _sample_tensor(rng, fmt)
    nd = len(shape)
    start = int(rng.integers(0, nd))
    end = int(rng.integers(start, nd)) - (nd if rng.integers(2) else 0)
    return (x,), {"start_dim": start, "end_dim": end}


flatten = register(Primitive("flatten", flatten_runtime, flatten_spec, flatten_bound,
                             flatten_vjp_runtime, flatten_vjp_spec, flatten_vjp_bound,
                             _sample_flatten))
