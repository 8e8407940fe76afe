"""Reductions along an axis: ``sum``, ``mean``, ``max`` — and the streaming reduction engine.

Every reduction is a sequence of rounded additions in a stated ``order`` (``"sequential"``
— TorchLean's left-to-right, the default —, ``"reversed"``, ``"pairwise"``, ``"blocked:B"``;
see :mod:`nfbound.ops.accumulate`), and its bound is the *replay* of that accumulation on the
term errors (docs/design.md §4): for ``ŝ = RN(â + b̂)``,

    |ŝ − (a + b)| ≤ ε_a + ε_b + r,       r = rounding_term(ŝ)  (0 when â = 0 or b̂ = 0).

:func:`stream_reduce` runs that accumulation over terms produced one reduction index at a time
(vectorised across the outputs), so that products (dot, matmul, conv) need not be
materialised; it is bit-for-bit the computation of :func:`~nfbound.ops.accumulate.accumulate`
(tested). ``order_free=True`` replaces the replay bound by a bound valid for *any* summation
order (:func:`order_free_sum_bound`), e.g. for a reduction computed by a library whose order
is unknown.

* ``sum``: the rounded sum (an empty sum is exactly 0);
* ``mean``: ``RN(ŝ / n)`` — the rounded sum divided by the exact count ``n`` with *one*
  rounding (correctly rounded even when ``n`` is not a format value); bound
  ``e_s / n + r(RN(ŝ/n))``;
* ``max``: exact (no rounding); values only — the index is the first maximal one, as
  ``torch.max(x, dim)``, and the VJP sends the gradient there; its bound accounts for a
  runtime argmax that differs from the spec's (:func:`max_vjp_bound`).

Axis conventions (NumPy names, PyTorch semantics): ``axis`` is an int (negative counts from the
end) or ``None`` for all elements in row-major order; ``keepdims`` keeps the reduced axis with
size 1. The module attributes ``sum`` and ``max`` are the primitives (they shadow the
builtins inside this module, which therefore uses NumPy's).

Inputs. The runtime, bound and VJP rules (and ``sum_error``/``mean_error``/``max_error``) take
runtime values: ``x`` and the upstream gradient ``g`` must be finite values of the format
(``checks.format_value``; a ``ValueError`` names the argument otherwise), and ``g`` must have
the output's shape exactly (with or without the kept axis, per ``keepdims``).

Overflow and domain errors. A rounded partial sum that overflows (±inf, NaN or a saturated
±max_finite) makes the replay bound ``inf``; the order-free bound is ``inf`` wherever an
operand of some rounding *could* exceed the largest finite value (:func:`overflow_guard`), so
a saturating format never gets a finite wrong bound. ``max`` is exact and cannot overflow.
Reductions have no domain errors; ``mean``/``max`` of an empty axis raise ``ValueError``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from gmpy2 import mpq

from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import abs_up, add_up, div_up, exact_array_up, sum_up
from ..formats import Format, fast
from . import checks
from .accumulate import check_order, order_free_bound, overflow_guard, rounded_add
from .interval import Interval, exact_array
from .primitive import Primitive, register

Term = Callable[[int], tuple]


# =============================================================================================
# The streaming engine
# =============================================================================================
def stream_reduce(fmt: Format, n: int, term: Term, order: str = "sequential",
                  need_bound: bool = True, zero=None):
    """Rounded reduction of ``n`` terms in ``order``; ``term(j)`` returns ``(t_j, ε_j)``.

    Returns ``(sum, bound)`` (``bound`` is ``None`` when ``need_bound`` is false; ``term`` may
    then return ``ε_j = None``). The additions and the bound arithmetic are exactly those of
    :func:`~nfbound.ops.accumulate.accumulate` on the stacked terms (``t_0`` is taken as the
    exact ``0 + t_0``; ``rounded_add`` for every other addition; the result through
    ``bounds.rounding.guard_nonfinite``), so the results are identical; only the terms are
    produced lazily, one reduction index at a time. ``zero`` is the value of an empty reduction
    (an array of the output shape).

    * ``"pairwise"`` is evaluated with a stack (a binary counter): pushing ``t_j`` merges the
      two top entries while they hold equally many terms, and the remaining entries are merged
      from the top at the end. This is the same tree as the level-by-level pairing of
      ``accumulate`` (``T(n) = T(2^a) + T(n − 2^a)`` with ``2^a`` the largest power of two
      below ``n``), operands in the same left/right positions.
    * ``"blocked:B"``: sequential inside blocks of ``B`` consecutive terms, then sequential over
      the block sums.
    """
    order = check_order(order)
    if n == 0:
        z = np.asarray(zero)
        return z, (np.zeros(z.shape) if need_bound else None)
    if order == "sequential":
        s, e = _sequential(fmt, range(n), term, need_bound)
    elif order == "reversed":
        s, e = _sequential(fmt, range(n - 1, -1, -1), term, need_bound)
    elif order == "pairwise":
        s, e = _pairwise(fmt, n, term, need_bound)
    else:
        B = int(order.split(":", 1)[1])
        blocks = [_sequential(fmt, range(i, min(i + B, n)), term, need_bound)
                  for i in range(0, n, B)]
        s, e = _sequential(fmt, range(len(blocks)), blocks.__getitem__, need_bound)
    return s, (None if e is None else guard_nonfinite(fmt, s, e))


def _add(fmt: Format, a, b, need_bound: bool):
    (s, es), (t, et) = a, b
    if need_bound:
        return rounded_add(fmt, s, es, t, et)
    return fmt.add(s, t), None


def _sequential(fmt: Format, indices, term: Term, need_bound: bool):
    it = iter(indices)
    acc = term(next(it))                       # 0 + t_0 is exact
    for j in it:
        acc = _add(fmt, acc, term(j), need_bound)
    s, e = acc
    return np.asarray(s), (None if e is None else np.asarray(e, dtype=np.float64))


def _pairwise(fmt: Format, n: int, term: Term, need_bound: bool):
    stack: list[tuple[int, tuple]] = []
    for j in range(n):
        size, node = 1, term(j)
        while stack and stack[-1][0] == size:
            _, left = stack.pop()
            node = _add(fmt, left, node, need_bound)
            size *= 2
        stack.append((size, node))
    _, node = stack.pop()
    while stack:
        _, left = stack.pop()
        node = _add(fmt, left, node, need_bound)
    s, e = node
    return np.asarray(s), (None if e is None else np.asarray(e, dtype=np.float64))


# =============================================================================================
# Order-free bounds
# =============================================================================================
def order_free_sum_bound(fmt: Format, abs_sum, n: int, eps_sum) -> np.ndarray:
    """Bound of a sum of ``n`` runtime format values ``t̂_k`` computed in *any* order.

    ``accumulate.order_free_bound`` with ``n`` leaves: ``γ_n·Σ|t̂| + K·τ·(1 + γ_{n−1}) + Σ ε_k``
    (``γ_n``: ``n − 1`` additions on a term's path and one more rounding, so that an
    accumulator in a wider format followed by a final conversion to ``fmt`` is covered, as some
    libraries do; ``K = 1`` in gradual underflow — additions are exact below ``b_min`` — and
    ``K = n`` in the flush modes, ``τ = fmt.underflow_term``). ``inf`` where some rounding could
    overflow (:func:`overflow_guard`). ``abs_sum`` and ``eps_sum`` must be upper bounds of
    ``Σ|t̂_k|`` and ``Σ ε_k``. ``γ_n = inf`` once ``n·u ≥ 1``.
    """
    if n <= 0:
        return np.asarray(eps_sum, dtype=np.float64) + 0.0
    b, z = order_free_bound(fmt, abs_sum, n, eps_sum, products=False)
    return overflow_guard(fmt, z, b)


# =============================================================================================
# Shared helpers
# =============================================================================================
def _lo_hi(x) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(lo, hi)`` with ``lo ≤ x ≤ hi`` (both ``x`` for float64 runtime values)."""
    a = np.asarray(x)
    if a.dtype != object:
        a = a.astype(np.float64, copy=False)
        return a, a
    return -exact_array_up(np.vectorize(lambda v: -v, otypes=[object])(a)), exact_array_up(a)


def _add_dir(a, b, upward: bool = True) -> np.ndarray:
    """``a + b`` rounded upward (or downward): the binary64 sum, moved one step only when
    TwoSum's exact residual shows it lies on the wrong side of the exact sum (any signs;
    infinities propagate)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = a + b
        bb = s - a
        rho = (a - (s - bb)) + (b - bb)
        if upward:
            return np.where(np.isfinite(s) & (rho > 0), np.nextafter(s, np.inf), s)
        return np.where(np.isfinite(s) & (rho < 0), np.nextafter(s, -np.inf), s)


def _is_zero(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object:
        return np.vectorize(lambda v: v == 0, otypes=[bool])(a)
    return a == 0


def _zeros_like_runtime(x, shape) -> np.ndarray:
    if np.asarray(x).dtype == object:
        z = np.empty(shape, dtype=object)
        z[...] = mpq(0)
        return z
    return np.zeros(shape)


def _check_bool(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def _vjp_args(fmt: Format, xs, g):
    """``(x, g)`` of a VJP rule, both checked to be runtime values of ``fmt`` (``g``'s shape is
    checked against the output's by :func:`_check_out`)."""
    (x,) = xs
    return checks.format_value("x", x, fmt), checks.format_value("g", g, fmt)


def _axis(x: np.ndarray, axis) -> int | None:
    """Normalised axis (``None`` = all elements, row-major); ``ValueError`` naming ``axis``."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an int or None, got {axis!r}")
    nd = np.ndim(x)
    if not -nd <= axis < nd:
        raise ValueError(f"axis={axis} is out of range for an input with {nd} dimensions")
    return int(axis) % nd


def _to_last(x, axis: int | None) -> np.ndarray:
    """The reduction axis moved last (``None``: the input flattened row-major)."""
    a = np.asarray(x)
    return a.reshape(-1) if axis is None else np.moveaxis(a, axis, -1)


def _kept_shape(shape: tuple, axis: int | None) -> tuple:
    if axis is None:
        return (1,) * len(shape)
    return shape[:axis] + (1,) + shape[axis + 1:]


def _finish(out, shape: tuple, axis: int | None, keepdims: bool):
    """Reduced result (reduction axis removed) reshaped per ``keepdims``."""
    o = np.asarray(out)
    return o.reshape(_kept_shape(shape, axis)) if keepdims else o


def _out_shape(shape: tuple, axis: int | None, keepdims: bool) -> tuple:
    """The shape of a reduction's output."""
    if keepdims:
        return _kept_shape(shape, axis)
    return () if axis is None else shape[:axis] + shape[axis + 1:]


def _check_out(g, shape: tuple, axis: int | None, keepdims: bool, name: str = "g") -> None:
    """``g`` has the output's shape (``ValueError`` naming ``name`` otherwise: no silent
    broadcasting)."""
    out = _out_shape(shape, axis, keepdims)
    if np.shape(g) != out:
        raise ValueError(f"{name} has shape {np.shape(g)}, expected the output's shape {out}")


def _expand(g, shape: tuple, axis: int | None, keepdims: bool, name: str = "g") -> np.ndarray:
    """An array of the output's shape (:func:`_check_out`) broadcast back over the reduced axis
    (exact: copies)."""
    _check_out(g, shape, axis, keepdims, name)
    return np.array(np.broadcast_to(np.asarray(g).reshape(_kept_shape(shape, axis)), shape))


def _sum_terms(x, e, axis: int | None):
    t = _to_last(x, axis)
    et = _to_last(np.broadcast_to(e, np.shape(x)), axis) if e is not None else None
    return t, et, (lambda j: (t[..., j], None if et is None else et[..., j]))


def _isum(x: Interval, axis: int | None, keepdims: bool) -> Interval:
    """Exact sum of an enclosure along ``axis`` (endpoints summed)."""
    shape = x.shape

    def f(a):
        s = exact_array(np.asarray(np.sum(_to_last(a, axis), axis=-1), dtype=object))
        return _finish(s, shape, axis, keepdims)
    return x.map_exact(f)


def _sample_reduce(rng, fmt: Format):
    nd = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(1, 6, size=nd))
    x = fmt.round(rng.standard_normal(shape) * 4)
    axis = int(rng.integers(-nd, nd)) if rng.random() < 0.85 else None
    order = str(rng.choice(["sequential", "reversed", "pairwise", "blocked:2"]))
    return (x,), {"axis": axis, "keepdims": bool(rng.random() < 0.3), "order": order,
                  "order_free": bool(rng.random() < 0.25)}


# =============================================================================================
# sum
# =============================================================================================
def sum_error(fmt: Format, x, ex, axis: int | None = None, keepdims: bool = False,
              order: str = "sequential", order_free: bool = False):
    """``(Σ x, bound)`` along ``axis``: the rounded sum in ``order`` and its bound.

    Replay (default): ``e_k = e_{k−1} + ε_k + r_k`` along the chosen order (``r_k = 0`` for an
    exact addition of 0). ``order_free``: :func:`order_free_sum_bound` — holds for the sum
    computed in any order by anyone (so for the runtime in every ``order``). Either is ``inf``
    where the sum overflowed (``bounds.rounding.guard_nonfinite``).
    """
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, axis)
    order_free = _check_bool("order_free", order_free)
    ex = checks.eps_like("eps", ex, x)
    t, et, term = _sum_terms(x, ex, ax)
    n = t.shape[-1]
    s, e = stream_reduce(fmt, n, term, order, need_bound=not order_free,
                         zero=_zeros_like_runtime(x, t.shape[:-1]))
    if order_free:
        e = order_free_sum_bound(fmt, sum_up(abs_up(t), axis=-1), n, sum_up(et, axis=-1))
    e = guard_nonfinite(fmt, s, e)
    return _finish(s, x.shape, ax, keepdims), _finish(e, x.shape, ax, keepdims)


def sum_runtime(fmt: Format, x, *, axis: int | None = None, keepdims: bool = False,
                order: str = "sequential", order_free: bool = False):
    """``Σ_k x_k`` along ``axis``, every partial sum rounded, in ``order``."""
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, axis)
    _check_bool("order_free", order_free)
    return _sum_values(fmt, x, ax, keepdims, order)


def _sum_values(fmt: Format, x: np.ndarray, ax: int | None, keepdims: bool, order: str):
    """The rounded sum of checked runtime values along the normalised axis ``ax``."""
    t, _, term = _sum_terms(x, None, ax)
    s, _ = stream_reduce(fmt, t.shape[-1], term, order, need_bound=False,
                         zero=_zeros_like_runtime(x, t.shape[:-1]))
    return _finish(s, x.shape, ax, keepdims)


def sum_spec(x: Interval, *, axis=None, keepdims=False, order="sequential",
             order_free=False) -> Interval:
    return _isum(x, _axis(x.lo, axis), keepdims)


def sum_bound(fmt: Format, xs, eps, *, axis=None, keepdims=False, order="sequential",
              order_free=False):
    """Replay bound ``e_k = e_{k−1} + ε_k + r_k`` (or the order-free bound)."""
    (x,), (ex,) = xs, eps
    return sum_error(fmt, x, ex, axis, keepdims, order, order_free)[1]


def sum_vjp_runtime(fmt: Format, xs, g, *, axis=None, keepdims=False, order="sequential",
                    order_free=False):
    """``∂/∂x_k = g`` for every ``k``: ``g`` broadcast over the reduced axis (exact)."""
    x, g = _vjp_args(fmt, xs, g)
    return (_expand(g, np.shape(x), _axis(x, axis), keepdims),)


def sum_vjp_spec(xs, g: Interval, *, axis=None, keepdims=False, order="sequential",
                 order_free=False):
    (x,) = xs
    ax = _axis(x.lo, axis)
    return (g.map_exact(lambda a: _expand(a, x.shape, ax, keepdims)),)


def sum_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, axis=None, keepdims=False,
                  order="sequential", order_free=False):
    """``ε_g`` broadcast (the VJP is an exact copy)."""
    x, g = _vjp_args(fmt, xs, g)
    ax = _axis(x, axis)
    _check_out(g, np.shape(x), ax, keepdims)
    eg = guard_nonfinite(fmt, g, checks.eps_like("eps_g", eps_g, g))
    return (_expand(eg, np.shape(x), ax, keepdims, "eps_g"),)


sum = register(Primitive("sum", sum_runtime, sum_spec, sum_bound, sum_vjp_runtime,  # noqa: A001
                         sum_vjp_spec, sum_vjp_bound, _sample_reduce))


# =============================================================================================
# mean = RN(Σx / n)
# =============================================================================================
def div_by_count(fmt: Format, s, n: int):
    """``RN(s / n)`` elementwise for a positive integer ``n`` (exact divisor, one rounding).

    Compiled formats: binary64's ``s / n`` refined by the exact remainder ``s − q·n`` (the
    engine's non-``simple`` division, correct for any binary64 divisor; the ``simple`` shortcut
    is only proved for divisors that are format values, which ``n`` need not be — e.g. 300 in
    float8). binary64 itself: IEEE division is already the correctly rounded quotient. Other
    formats: the exact reference engine on ``mpq(n)``.
    """
    a = np.asarray(s)
    if a.dtype != object and fmt.fast_ops and n < 2 ** 53:
        p, emin, mx, rnd, ovf, simple = fmt.kernel_params
        flat = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)
        with np.errstate(all="ignore"):
            q = fast.op_array(fast.OPS["div"], flat, np.full(flat.shape, float(n)), p, emin, mx,
                              rnd, ovf, bool(fmt.is_binary64))
        return fmt._no_inf(q.reshape(a.shape))
    if a.dtype != object and fmt.fits_binary64 and n < 2 ** 53:
        return fmt.div(a, np.full(a.shape, float(n)))
    d = np.empty(a.shape, dtype=object)
    d[...] = mpq(n)
    return fmt.div(a.astype(object) if a.dtype != object else a, d)


def _count(shape: tuple, axis: int | None) -> int:
    n = int(np.prod(shape)) if axis is None else shape[axis]
    if n == 0:
        raise ValueError("mean over an empty axis (n = 0) is undefined")
    return n


def mean_error(fmt: Format, x, ex, axis: int | None = None, keepdims: bool = False,
               order: str = "sequential", order_free: bool = False):
    """``(RN(ŝ/n), bound)``: ``|RN(ŝ/n) − s/n| ≤ e_s/n + r`` with ``e_s`` the sum's bound and
    ``r = rounding_term(RN(ŝ/n))`` (0 when ``ŝ = 0``); ``e_s/n`` rounded upward. ``x`` is
    checked by :func:`sum_error`."""
    ax = _axis(x, axis)
    n = _count(np.shape(x), ax)
    s, es = sum_error(fmt, x, ex, ax, keepdims, order, order_free)
    q = div_by_count(fmt, s, n)
    b = add_up(div_up(es, float(n)), rounding_term(fmt, q, _is_zero(s)))
    return q, guard_nonfinite(fmt, q, b)


def mean_runtime(fmt: Format, x, *, axis=None, keepdims=False, order="sequential",
                 order_free=False):
    """``RN(ŝ / n)`` with ``ŝ`` the rounded sum in ``order`` and ``n`` the exact count."""
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, axis)
    n = _count(np.shape(x), ax)
    _check_bool("order_free", order_free)
    return div_by_count(fmt, _sum_values(fmt, x, ax, keepdims, order), n)


def mean_spec(x: Interval, *, axis=None, keepdims=False, order="sequential",
              order_free=False) -> Interval:
    ax = _axis(x.lo, axis)
    return _scale(_isum(x, ax, keepdims), mpq(1, _count(x.shape, ax)))


def _scale(x: Interval, c) -> Interval:
    """``c·x`` for an exact positive rational ``c``."""
    return x.map_exact(lambda a: np.asarray(a * c, dtype=object)) if x.lo is x.hi else \
        Interval(np.asarray(x.lo * c, dtype=object), np.asarray(x.hi * c, dtype=object))


def mean_bound(fmt: Format, xs, eps, *, axis=None, keepdims=False, order="sequential",
               order_free=False):
    (x,), (ex,) = xs, eps
    return mean_error(fmt, x, ex, axis, keepdims, order, order_free)[1]


def mean_vjp_runtime(fmt: Format, xs, g, *, axis=None, keepdims=False, order="sequential",
                     order_free=False):
    """``∂/∂x_k = RN(g / n)`` broadcast over the reduced axis."""
    x, g = _vjp_args(fmt, xs, g)
    ax = _axis(x, axis)
    n = _count(np.shape(x), ax)
    _check_out(g, np.shape(x), ax, keepdims)
    return (_expand(div_by_count(fmt, g, n), np.shape(x), ax, keepdims),)


def mean_vjp_spec(xs, g: Interval, *, axis=None, keepdims=False, order="sequential",
                  order_free=False):
    (x,) = xs
    ax = _axis(x.lo, axis)
    gs = _scale(g, mpq(1, _count(x.shape, ax)))
    return (gs.map_exact(lambda a: _expand(a, x.shape, ax, keepdims)),)


def mean_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, axis=None, keepdims=False,
                   order="sequential", order_free=False):
    """``ε_g/n + r(RN(ĝ/n))`` broadcast (``r = 0`` where ``ĝ = 0``)."""
    x, g = _vjp_args(fmt, xs, g)
    ax = _axis(x, axis)
    n = _count(np.shape(x), ax)
    _check_out(g, np.shape(x), ax, keepdims)
    eg = checks.eps_like("eps_g", eps_g, g)
    q = div_by_count(fmt, g, n)
    b = guard_nonfinite(fmt, q, add_up(div_up(eg, float(n)),
                                       rounding_term(fmt, q, _is_zero(g))))
    return (_expand(b, np.shape(x), ax, keepdims, "eps_g"),)


mean = register(Primitive("mean", mean_runtime, mean_spec, mean_bound, mean_vjp_runtime,
                          mean_vjp_spec, mean_vjp_bound, _sample_reduce))


# =============================================================================================
# max (values; the index is the first maximal one, as torch.max(x, dim))
# =============================================================================================
def _max_parts(x, axis: int | None):
    """Runtime values moved to the last axis, the max and the first argmax along it."""
    t = _to_last(x, axis)
    if t.shape[-1] == 0:
        raise ValueError("max over an empty axis is undefined")
    k = np.argmax(t, axis=-1)
    m = np.take_along_axis(t, k[..., None], axis=-1)[..., 0]
    return t, np.asarray(m), k


def max_runtime(fmt: Format, x, *, axis=None, keepdims=False):
    """``max_k x_k`` along ``axis`` (exact: no rounding)."""
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, axis)
    return _finish(_max_parts(x, ax)[1], x.shape, ax, keepdims)


def max_spec(x: Interval, *, axis=None, keepdims=False) -> Interval:
    """``max`` is monotone in every argument: ``[max lo, max hi]``."""
    ax = _axis(x.lo, axis)
    if _to_last(x.lo, ax).shape[-1:] == (0,):
        raise ValueError("max over an empty axis is undefined")
    return x.map_exact(lambda a: _finish(np.asarray(np.max(_to_last(a, ax), axis=-1),
                                                    dtype=object), x.shape, ax, keepdims)) \
        if x.lo is x.hi else Interval(
            _finish(np.asarray(np.max(_to_last(x.lo, ax), axis=-1), dtype=object), x.shape, ax,
                    keepdims),
            _finish(np.asarray(np.max(_to_last(x.hi, ax), axis=-1), dtype=object), x.shape, ax,
                    keepdims))


def max_error(fmt: Format, x, ex, axis: int | None = None, keepdims: bool = False):
    """``(max x̂, bound)`` with ``|max x̂ − max x| ≤ min(max_k ε_k, max(ε_k̂, D))``.

    ``k̂`` is the runtime argmax and ``D ≥ max_{j≠k̂} (x̂_j + ε_j) − x̂_k̂``. Both bounds hold:
    ``max`` is 1-Lipschitz in the ∞-norm (first); and (second) ``max x ≥ x_k̂ ≥ x̂_k̂ − ε_k̂``
    while ``max x = x_j ≤ x̂_j + ε_j`` for some ``j``. No rounding is charged (exact op).
    ``D`` is evaluated upward (``x̂`` taken from above/below for exact runtime values).
    """
    x = checks.format_value("x", x, fmt)
    ax = _axis(x, axis)
    ex = checks.eps_like("eps", ex, x)
    t, m, k = _max_parts(x, ax)
    e = _to_last(ex, ax)
    lo, hi = _lo_hi(t)
    upper = _add_dir(hi, e)
    np.put_along_axis(upper, k[..., None], -np.inf, axis=-1)     # j ≠ k̂ (k̂ gives ε_k̂)
    top = np.max(upper, axis=-1)
    lo_k = np.take_along_axis(lo, k[..., None], axis=-1)[..., 0]
    d = np.maximum(_add_dir(top, -lo_k), 0.0)
    e_k = np.take_along_axis(e, k[..., None], axis=-1)[..., 0]
    b = guard_nonfinite(fmt, m, np.minimum(np.max(e, axis=-1), np.maximum(e_k, d)))
    return _finish(m, x.shape, ax, keepdims), _finish(b, x.shape, ax, keepdims)


def max_bound(fmt: Format, xs, eps, *, axis=None, keepdims=False):
    (x,), (ex,) = xs, eps
    return max_error(fmt, x, ex, axis, keepdims)[1]


def max_vjp_runtime(fmt: Format, xs, g, *, axis=None, keepdims=False):
    """``g`` at the first runtime argmax along the axis, 0 elsewhere (``torch.max(x, dim)``)."""
    x, g = _vjp_args(fmt, xs, g)
    ax = _axis(x, axis)
    _, _, k = _max_parts(x, ax)
    return (_from_last(_at_argmax(g, x.shape, ax, keepdims, k)[0], x.shape, ax),)


def _at_argmax(g, shape: tuple, axis: int | None, keepdims: bool, k: np.ndarray):
    """``(ĝ at the argmax k, 0 elsewhere; the mask of k)`` along the reduced axis moved last."""
    gk = _to_last(_expand(g, shape, axis, keepdims), axis)
    at_k = np.arange(gk.shape[-1]) == np.asarray(k)[..., None]
    return np.where(at_k, gk, _zeros_like_runtime(gk, gk.shape)), at_k


def _from_last(a: np.ndarray, shape: tuple, axis: int | None) -> np.ndarray:
    """Inverse of :func:`_to_last`."""
    return a.reshape(shape) if axis is None else np.moveaxis(a, -1, axis)


def max_vjp_spec(xs, g: Interval, *, axis=None, keepdims=False):
    """Enclosure of the spec VJP for every ``x`` in the enclosure: position ``j`` gets ``g``
    where it is surely the first argmax, ``hull(g, 0)`` where it may be, ``0`` elsewhere.

    ``j`` may be the first argmax iff some realisation has ``x_j > x_i`` (``i < j``) and
    ``x_j ≥ x_i`` (``i > j``): ``hi_j > max_{i<j} lo_i`` and ``hi_j ≥ max_{i>j} lo_i``; it
    surely is iff ``lo_j > max_{i<j} hi_i`` and ``lo_j ≥ max_{i>j} hi_i`` (exact rationals).
    """
    (x,) = xs
    ax = _axis(x.lo, axis)
    lo, hi = _to_last(x.lo, ax), _to_last(x.hi, ax)
    if lo.shape[-1] == 0:
        raise ValueError("max over an empty axis is undefined")
    possible = _first_max_mask(hi, lo)
    sure = _first_max_mask(lo, hi)
    glo = _to_last(_expand(g.lo, x.shape, ax, keepdims), ax)
    ghi = _to_last(_expand(g.hi, x.shape, ax, keepdims), ax)
    zero = _zeros_like_runtime(glo, glo.shape)
    lo_out = np.where(sure, glo, np.where(possible, _elementwise_min(glo, zero), zero))
    hi_out = np.where(sure, ghi, np.where(possible, _elementwise_max(ghi, zero), zero))
    lo_out = _from_last(np.asarray(lo_out, dtype=object), x.shape, ax)
    hi_out = _from_last(np.asarray(hi_out, dtype=object), x.shape, ax)
    return (Interval(lo_out, hi_out),)


def _first_max_mask(cand, other) -> np.ndarray:
    """``cand_j > max_{i<j} other_i`` and ``cand_j ≥ max_{i>j} other_i`` along the last axis
    (exact comparisons; an empty max is −∞)."""
    n = cand.shape[-1]
    out = np.ones(cand.shape, dtype=bool)
    if n > 1:
        pre = np.maximum.accumulate(other, axis=-1)          # pre[j] = max_{i≤j} other_i
        suf = np.flip(np.maximum.accumulate(np.flip(other, -1), axis=-1), -1)
        out[..., 1:] &= np.asarray(cand[..., 1:] > pre[..., :-1], dtype=bool)
        out[..., :-1] &= np.asarray(cand[..., :-1] >= suf[..., 1:], dtype=bool)
    return out


def _elementwise_min(a, b):
    return np.asarray(np.minimum(a, b), dtype=object)


def _elementwise_max(a, b):
    return np.asarray(np.maximum(a, b), dtype=object)


def max_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, axis=None, keepdims=False):
    """Bound of the VJP of ``max`` when runtime and spec argmax may differ.

    With ``L = max_i (x̂_i − ε_i)`` (a lower bound of the spec max) the spec argmax lies in the
    candidate set ``C = {j : x̂_j + ε_j ≥ L}``, which holds the runtime argmax ``k̂``. If
    ``C = {k̂}`` (i.e. ``x̂_k̂ − ε_k̂ > x̂_j + ε_j`` for every ``j ≠ k̂`` — the gap to the
    *largest upper end* among the others, not merely to the runtime second value, which can
    have a small ``ε``), both argmaxes are ``k̂``: bound ``ε_g`` there, 0 elsewhere. Otherwise,
    case by case (runtime ``ĝ·[j = k̂]`` vs spec ``g·[j = k]``):
    at ``k̂`` the error is ``|ĝ − g| ≤ ε_g`` or ``|ĝ|`` → ``max(|ĝ|, ε_g)``; at ``j ∈ C∖{k̂}``
    it is 0 or ``|g| ≤ |ĝ| + ε_g``; outside ``C`` it is 0. ``C`` is enlarged by computing
    ``x̂_j + ε_j`` upward and ``x̂_i − ε_i`` downward (a superset is sound).
    """
    (ex,) = eps
    x, g = _vjp_args(fmt, xs, g)
    ax = _axis(x, axis)
    ex = checks.eps_like("eps", ex, x)
    t, _, k = _max_parts(x, ax)
    e = _to_last(ex, ax)
    lo, hi = _lo_hi(t)
    upper = _add_dir(hi, e)
    lower = _add_dir(lo, -e, upward=False)
    L = np.max(lower, axis=-1, keepdims=True)
    cand = upper >= L
    routed, at_k = _at_argmax(g, x.shape, ax, keepdims, k)
    cand |= at_k
    sure = (cand.sum(axis=-1) == 1)[..., None]
    ga = _to_last(_expand(abs_up(g), x.shape, ax, keepdims), ax)
    eg = _to_last(_expand(checks.eps_like("eps_g", eps_g, g).astype(np.float64), x.shape, ax,
                          keepdims, "eps_g"), ax)
    b = np.where(at_k, np.where(sure, eg, np.maximum(ga, eg)),
                 np.where(cand & ~sure, _add_dir(ga, eg), 0.0))
    return (_from_last(guard_nonfinite(fmt, routed, b), x.shape, ax),)


def _sample_max(rng, fmt: Format):
    (x,), params = _sample_reduce(rng, fmt)
    if rng.random() < 0.4:      # ties and near-ties
        x = fmt.round(np.round(np.asarray(x, dtype=np.float64)))
    return (x,), {"axis": params["axis"], "keepdims": params["keepdims"]}


max = register(Primitive("max", max_runtime, max_spec, max_bound, max_vjp_runtime,  # noqa: A001
                         max_vjp_spec, max_vjp_bound, _sample_max))
