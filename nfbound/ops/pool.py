"""Pooling primitives: ``max_pool`` and ``avg_pool`` over 1, 2 or 3 spatial dimensions.

Input ``(N, C, *spatial)`` with ``d = len(spatial) ∈ {1, 2, 3}``; parameters ``kernel_size``,
``stride`` (default ``kernel_size``) and ``padding`` (default 0), each an int or a ``d``-tuple,
with ``torch.nn.functional.{max,avg}_pool{1,2,3}d`` semantics (``dilation=1``,
``ceil_mode=False``; as torch, ``padding ≤ kernel_size // 2``). Output size per dimension
``⌊(L + 2p − k)/s⌋ + 1``. Window ``w`` covers padded positions ``w·s + κ`` for kernel offsets
``κ`` in row-major order.

* ``max_pool`` pads with ``−∞`` and returns the window maximum (exact); its gradient goes to
  the *first* maximal position of the window in row-major order (torch's CPU kernel: a later
  value replaces the running maximum only if strictly greater).
* ``avg_pool`` pads with zeros and divides by the full window size ``n = Πk``
  (``count_include_pad=True``, torch's default): ``y = RN(Σ_window x / n)`` with the window sum
  rounded after every addition in row-major kernel order (or the ``order`` given) and ``n`` the
  exact integer (torch divides in its accumulation type, where ``n`` is exact; it is *not*
  rounded to the format first — ``27`` is not an e4m3 value). Dividing by ``n`` rather than
  multiplying by ``1/n`` keeps one rounding (``1/n`` is a format value only for ``n`` a power
  of the radix).

Gradient accumulation where windows overlap (``stride < kernel_size``): the input gradient at
position ``j`` is the sequential rounded sum, over the windows containing ``j`` in row-major
*window* order (torch's CPU backward loops output positions in that order), of each window's
contribution; the first addition ``0 + c`` is exact. The replay bound of this sum is
``Σ δ_w + Σ r_k`` (docs/design.md §4), ``r_k = 0`` for an addition with an operand 0. This order is
fixed (``order`` selects the order of avg_pool's forward window sums only).

Any order. ``avg_pool``'s rules take ``order_free`` (what an ``order=any`` arithmetic passes):
its bounds then hold for *every* evaluation of the window sums and of the gradient
accumulation — any tree, blocking, wider accumulator — and for the runtime's stated one
(:func:`order_free_sum`, :func:`order_free_mean_bound`: ``accumulate.order_free_bound``). A
rounding whose operand depends on how an earlier sum was evaluated is bounded for every such
operand (:func:`any_rounding`), not by the runtime's rounding term.

Shared with :mod:`~nfbound.ops.softmax` and :mod:`~nfbound.ops.loss`: :func:`sequential_sum`
(``accumulate`` with a compiled engine for the sequential orders, identical results),
:func:`divide_by_count` (``RN(s/n)`` for an exact integer ``n``) with its error rule, and the
any-order helpers above.

Inputs. The runtime, bound and VJP rules take runtime values: ``x`` and the upstream gradient
``g`` (of the output's shape ``(N, C, *out)``) must be finite values of the format
(``checks.format_value``; a ``ValueError`` names the argument otherwise).

Overflow and domain errors. max_pool is exact and cannot overflow. An avg_pool window sum or
a gradient accumulation that overflows (±inf, NaN or a saturated ±max_finite) gets the bound
``inf`` — never a finite wrong number. Pooling has no domain errors; bad geometry
(kernel, stride, padding, shapes) raises ``ValueError`` naming the parameter.
"""
from __future__ import annotations

import itertools
import numbers

import numba
import numpy as np
from gmpy2 import mpq

from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import abs_up, add_up, div_up, mul_up, sum_up
from ..formats import Format, fast
from . import checks
from .accumulate import (accumulate, check_order, gamma, order_free_bound, overflow_guard,
                         rounded_add)
from .conv_kernels import add_step
from .elementwise import _zero
from .interval import Interval
from .linalg import _sample_order
from .primitive import Primitive, register
from .reduce import _check_bool


# -- geometry ----------------------------------------------------------------------------------
def _tuple(name: str, v, d: int, minimum: int) -> tuple[int, ...]:
    vals = (v,) * d if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
    try:
        vals = tuple(vals)
    except TypeError:
        raise ValueError(f"{name} must be an int or a tuple of {d} ints, got {v!r}") from None
    if len(vals) != d or any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in vals):
        raise ValueError(f"{name} must be an int or a tuple of {d} ints, got {v!r}")
    if any(a < minimum for a in vals):
        raise ValueError(f"{name} entries must be ≥ {minimum}, got {v!r}")
    return tuple(int(a) for a in vals)


def pool_geometry(in_shape, kernel_size, stride=None, padding=0):
    """Validated ``(k, s, p, out)`` tuples for an input of shape ``(N, C, *spatial)``."""
    in_shape = tuple(in_shape)
    if isinstance(kernel_size, numbers.Integral) and not isinstance(kernel_size, bool):
        d = len(in_shape) - 2
    else:
        try:
            d = len(tuple(kernel_size))
        except TypeError:
            raise ValueError(f"kernel_size must be an int or a tuple of ints, got {kernel_size!r}") from None
    if d not in (1, 2, 3) or len(in_shape) != d + 2:
        raise ValueError(f"input must have shape (N, C, *spatial) with 1, 2 or 3 spatial dims "
                         f"matching kernel_size={kernel_size!r}, got shape {in_shape}")
    if any(n < 1 for n in in_shape):
        raise ValueError(f"input must have nonzero sizes, got shape {in_shape}")
    k = _tuple("kernel_size", kernel_size, d, 1)
    s = k if stride is None else _tuple("stride", stride, d, 1)
    p = _tuple("padding", padding, d, 0)
    for ki, pi in zip(k, p):
        if pi > ki // 2:
            raise ValueError(f"padding={padding!r} must be at most half of kernel_size={kernel_size!r}")
    L = in_shape[2:]
    if any(li + 2 * pi < ki for li, pi, ki in zip(L, p, k)):
        raise ValueError(f"kernel_size={kernel_size!r} is larger than the padded input {L} "
                         f"(padding={padding!r})")
    out = tuple((li + 2 * pi - ki) // si + 1 for li, pi, ki, si in zip(L, p, k, s))
    return k, s, p, out


def _offsets(k) -> list[tuple[int, ...]]:
    """Kernel offsets ``κ`` in row-major order (the window order)."""
    return list(itertools.product(*(range(ki) for ki in k)))


def _slices(off, s, out) -> tuple:
    """Padded positions ``w·s + κ`` of every window ``w`` for one kernel offset ``κ``."""
    return (Ellipsis,) + tuple(slice(o, o + si * (n - 1) + 1, si) for o, si, n in zip(off, s, out))


def _pad(a: np.ndarray, p, fill) -> np.ndarray:
    if not any(p):
        return a
    shape = a.shape[:2] + tuple(n + 2 * pi for n, pi in zip(a.shape[2:], p))
    out = np.full(shape, fill, dtype=a.dtype)
    out[(Ellipsis,) + tuple(slice(pi, pi + n) for pi, n in zip(p, a.shape[2:]))] = a
    return out


def windows(a: np.ndarray, k, s, p, out, fill) -> np.ndarray:
    """The windows of ``a`` padded with ``fill``: shape ``(N, C, *out, Πk)``, the last axis in
    row-major kernel order."""
    ap = _pad(a, p, fill)
    return np.stack([ap[_slices(off, s, out)] for off in _offsets(k)], axis=-1)


def _zeros_like(a: np.ndarray, shape) -> np.ndarray:
    if a.dtype == object:
        return np.full(shape, mpq(0), dtype=object)
    return np.zeros(shape)


def scatter_windows(fmt: Format | None, contrib, in_shape, k, s, p, out, eps=None):
    """Adjoint of :func:`windows`: add each window's contributions back to the input positions.

    ``contrib`` has shape ``(N, C, *out, Πk)``. At every input position the contributions are
    added sequentially in row-major **window** order, each addition rounded in ``fmt``
    (``fmt=None``: exact rational sums, for the spec). For a fixed kernel offset ``κ`` the
    windows hit distinct positions ``w·s + κ``, and ``w`` increases in row-major order exactly
    when ``κ`` decreases in row-major order, so looping over the offsets in *reverse* row-major
    order adds, at each position, in increasing window order. Contributions to padding
    positions are dropped.

    With ``eps`` (bounds of the contributions), also returns the replay bound
    ``Σ δ + Σ r_k`` per position (``rounded_add``: ``r = 0`` when an operand is 0), ``inf``
    where the sum overflowed (``bounds.rounding.guard_nonfinite``).
    """
    c = np.asarray(contrib)
    padded = in_shape[:2] + tuple(n + 2 * pi for n, pi in zip(in_shape[2:], p))
    acc = _zeros_like(c, padded)
    acc_e = np.zeros(padded) if eps is not None else None
    offs = _offsets(k)
    for idx in reversed(range(len(offs))):
        sl = _slices(offs[idx], s, out)
        if fmt is None:
            acc[sl] = acc[sl] + c[..., idx]
        elif eps is None:
            acc[sl] = fmt.add(acc[sl], c[..., idx])
        else:
            acc[sl], acc_e[sl] = rounded_add(fmt, acc[sl], acc_e[sl], c[..., idx], eps[..., idx])
    crop = (Ellipsis,) + tuple(slice(pi, pi + n) for pi, n in zip(p, in_shape[2:]))
    if eps is None:
        return acc[crop].copy()
    return acc[crop].copy(), guard_nonfinite(fmt, acc[crop], acc_e[crop])


def _check_input(fmt: Format, x) -> np.ndarray:
    """The input of a rule: runtime values of ``fmt``."""
    return checks.format_value("x", x, fmt)


def _check_g_shape(g, out_shape) -> None:
    if np.shape(g) != tuple(out_shape):
        raise ValueError(f"g must have the output's shape {tuple(out_shape)}, got {np.shape(g)}")


def _check_g(fmt: Format, g, out_shape) -> np.ndarray:
    """The upstream gradient of a rule: the output's shape, runtime values of ``fmt``."""
    _check_g_shape(g, out_shape)
    return checks.format_value("g", g, fmt)


def _out_shape(in_shape, out) -> tuple[int, ...]:
    return tuple(in_shape[:2]) + tuple(out)


# -- compiled sequential accumulation ------------------------------------------------------------
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _seq_partials(t, p, emin, mx, rnd, ovf, simple):
    """Partial sums ``P[:, k] = RN(P[:, k−1] + t[:, k])`` (``P[:, 0] = t[:, 0]``) of the rows of
    ``t`` with :func:`fast.op_scalar`, then the format's treatment of an infinite result in a
    format without infinities (``Format._no_inf``: NaN or ±max) — exactly ``fmt.add``."""
    R, n = t.shape
    P = np.empty((R, n))
    for i in range(R):
        s = t[i, 0]
        P[i, 0] = s
        for k in range(1, n):
            s = fast.op_scalar(0, s, t[i, k], p, emin, mx, rnd, ovf, simple)
            if np.isinf(s):
                if ovf == fast.OVF_NAN:
                    s = np.nan
                elif ovf == fast.OVF_SATURATE:
                    s = np.copysign(mx, s)
            P[i, k] = s
    return P


@numba.njit(cache=True, nogil=True)
def _seq_replay(e, r):
    """``b_0 = e_0``, ``b_k = (b_{k−1} ⊕ e_k) ⊕ r_k``: ``add_up(ε_a, ε_b, r)`` of
    ``accumulate.rounded_add``, step by step (``⊕`` = :func:`conv_kernels.add_step`: one
    binary64 step toward +inf, none when an operand is an exact 0)."""
    R, n = e.shape
    out = np.empty(R)
    for i in range(R):
        b = e[i, 0]
        for k in range(1, n):
            b = add_step(add_step(b, e[i, k]), r[i, k])
        out[i] = b
    return out


def sequential_sum(fmt: Format, terms, eps=None, order: str = "sequential", axis: int = -1):
    """``accumulate(fmt, terms, eps, order, axis)`` with a compiled engine for the
    ``"sequential"`` and ``"reversed"`` orders (formats with compiled operations, float64
    terms): the same rounded additions, bit for bit, and the same upward replay
    ``e_k = up(up(e_{k−1} + ε_k) + r_k)`` with ``r_k = rounding_term(ŝ_k)`` (0 when an operand
    is 0) — only without a Python loop over the terms. Other cases call ``accumulate``.
    Returns ``(sum, bound)``; ``bound`` is ``None`` when ``eps`` is ``None``, ``inf`` where the
    sum overflowed (``bounds.rounding.guard_nonfinite``, as ``accumulate``).
    """
    order = check_order(order)
    t = np.asarray(terms)
    if not (fmt.fast_ops and t.dtype != object and order in ("sequential", "reversed")
            and t.ndim >= 1 and t.shape[axis] > 0):
        total, bound = accumulate(fmt, t, 0.0 if eps is None else eps, order=order, axis=axis)
        return total, (None if eps is None else bound)
    t = np.moveaxis(np.asarray(t, dtype=np.float64), axis, -1)
    if order == "reversed":
        t = t[..., ::-1]
    out_shape, n = t.shape[:-1], t.shape[-1]
    t2 = np.ascontiguousarray(t).reshape(-1, n)
    p_, emin, mx, rnd, ovf, simple = fmt.kernel_params
    with np.errstate(all="ignore"):
        P = _seq_partials(t2, p_, emin, mx, rnd, ovf, simple)
    total = P[:, -1].reshape(out_shape)
    if eps is None:
        return total, None
    e = np.moveaxis(np.broadcast_to(np.asarray(eps, dtype=np.float64), np.shape(terms)), axis, -1)
    if order == "reversed":
        e = e[..., ::-1]
    e2 = np.ascontiguousarray(e).reshape(-1, n)
    exact = np.zeros(t2.shape, dtype=bool)
    exact[:, 1:] = (P[:, :-1] == 0) | (t2[:, 1:] == 0)
    r = rounding_term(fmt, P, exact)
    return total, guard_nonfinite(fmt, total,
                                  _seq_replay(e2, np.ascontiguousarray(r)).reshape(out_shape))


# -- division by an exact positive integer --------------------------------------------------
def divide_by_count(fmt: Format, s, n: int):
    """``RN(s / n)`` for an exact positive integer ``n`` (a window size, an element count): one
    rounding of the exact quotient. ``n`` is not rounded to the format first.

    With the compiled engine the division takes the residual ("sticky") path: ``q = fl64(s/n)``
    and the exact remainder ``s − q·n`` (TwoProduct) give the correctly rounded quotient for any
    binary64 operands of moderate size, whether or not ``n`` is a value of the format (the
    plain double-rounding shortcut is proved only for operands of the format). Other formats use
    the exact reference engine. Non-finite ``s`` (an overflowed sum) propagates unchanged.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"divisor must be a positive integer, got {n!r}")
    n = int(n)
    a = np.asarray(s)
    if a.dtype != object and fmt.fits_binary64:
        if fmt.fast_ops and n <= 2 ** 100:
            shape = a.shape
            a = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)   # (ascontiguousarray: ndim ≥ 1)
            p, emin, mx, rnd, ovf, _ = fmt.kernel_params
            with np.errstate(all="ignore"):
                q = fast.op_array(fast.OPS["div"], a, np.full(a.shape, float(n)),
                                  p, emin, mx, rnd, ovf, False)
            return np.where(np.isfinite(a), q, a).reshape(shape)
        exact = fmt.div(np.asarray(a, dtype=object), np.full(a.shape, mpq(n), dtype=object))
        return np.array([float(v) for v in exact.reshape(-1)], dtype=np.float64).reshape(a.shape)
    return fmt.div(np.asarray(a, dtype=object), np.full(a.shape, mpq(n), dtype=object))


def divide_by_count_error(fmt: Format, s, es, n: int):
    """``(RN(ŝ/n), ε_s/n + r)``: ``|RN(ŝ/n) − s/n| ≤ |ŝ − s|/n + |RN(ŝ/n) − ŝ/n|`` — the
    division rule ``(ε_a + |â/b̂|·ε_b)/(b̂ − ε_b) + r`` with an exact divisor (``ε_b = 0``);
    ``r = 0`` when ``ŝ = 0`` (exact); ``inf`` where ``RN(ŝ/n)`` overflowed
    (``bounds.rounding.guard_nonfinite``)."""
    y = divide_by_count(fmt, s, n)
    return y, guard_nonfinite(fmt, y, add_up(div_up(es, float(n)),
                                             rounding_term(fmt, y, _zero(s))))


# -- every evaluation order (shared with softmax and loss) ---------------------------------------
def any_rounding(fmt: Format, M) -> np.ndarray:
    """``γ_1·M + τ``: an upper bound of ``|RN(z) − z|`` for *every* exact ``|z| ≤ M``.

    The error model of ``accumulate.order_free_bound``: ``RN(z) = z(1 + δ) + θ`` with
    ``|δ| ≤ u ≤ γ_1`` and ``|θ| ≤ τ = fmt.underflow_term`` (Flocq ``relative_error_N_FLT`` and
    its directed analogue; in the flush modes a flushed result, or a subnormal one read as 0 by
    the next operation, is ``0 = z − z`` with ``|z| ≤ b_min = τ``). It serves a rounding whose
    operand depends on the evaluation order of an earlier sum: the runtime's rounding term is
    computed from the runtime's result and need not bound another evaluation's (whose result
    may lie in a larger binade). ``accumulate.gamma`` refuses a format without a relative error
    model. No overflow check: callers guard ``M`` (``accumulate.overflow_guard``).
    """
    return add_up(mul_up(gamma(fmt, 1), M), fmt.underflow_term)


def order_free_sum(fmt: Format, abs_sum, m: int, eps_sum, *, products: bool = False):
    """``(bound, Z)`` for a sum of ``m`` leaves evaluated in *any* way: ``bound ≥ |ŝ' − s|`` for
    every evaluation ``ŝ'`` (any tree, blocking, FMA, wider accumulator; the spec sum ``s``) and
    ``Z ≥ |ŝ'|``.

    ``accumulate.order_free_bound`` (its lemma; leaves, ``abs_sum ≥ Σ|ℓ_j|``, ``eps_sum`` and
    ``products`` as there), ``inf`` where some rounding could overflow (``overflow_guard``).
    ``Z`` bounds the result as well as every operand: the lemma with the leaves as their own
    spec (``eps_sum = 0``) gives ``|ŝ' − Σℓ| ≤ γ_L·Σ|ℓ| + K·τ·(1 + γ_{L−1})``, so
    ``|ŝ'| ≤ Σ|ℓ| + γ_L·Σ|ℓ| + K·τ·(1 + γ_{L−1}) = Z``. At most one leaf without products: no
    rounding at all (the sum is the leaf, a format value), so ``(eps_sum, abs_sum)``.
    """
    if m <= 1 and not products:
        return np.asarray(eps_sum, dtype=np.float64) + 0.0, np.asarray(abs_sum, dtype=np.float64)
    b, Z = order_free_bound(fmt, abs_sum, m, eps_sum, products=products)
    return overflow_guard(fmt, Z, b), Z


def order_free_mean_bound(fmt: Format, abs_sum, m: int, eps_sum, n: int, *,
                          products: bool = False) -> np.ndarray:
    """Bound of ``|RN(ŝ'/n) − s/n|`` for every evaluation ``ŝ'`` of a sum of ``m`` leaves
    (:func:`order_free_sum`) divided by the exact positive integer ``n``:

        |RN(ŝ'/n) − s/n| ≤ |ŝ' − s|/n + |RN(ŝ'/n) − ŝ'/n| ≤ E/n + any_rounding(Z/n),

    with ``(E, Z)`` of :func:`order_free_sum` (``|ŝ'/n| ≤ Z/n``; :func:`any_rounding`, since the
    runtime quotient's rounding term need not bound another evaluation's). ``n = 1``: the
    division is exact, ``E``. ``inf`` where ``E`` is (``|ŝ'/n| ≤ Z ≤ max_finite`` otherwise).
    """
    E, Z = order_free_sum(fmt, abs_sum, m, eps_sum, products=products)
    if n == 1:
        return E
    return add_up(div_up(E, float(n)), any_rounding(fmt, div_up(Z, float(n))))


# -- max_pool ------------------------------------------------------------------------------------
def _neg_fill(a: np.ndarray):
    """A padding value below every entry (``−∞``; for exact rationals, ``min − 1``)."""
    if a.dtype == object:
        return min(a.reshape(-1)) - 1
    return -np.inf


def _argmax(xw: np.ndarray) -> np.ndarray:
    """First maximal index along the last axis (row-major window order), as torch."""
    return np.argmax(xw, axis=-1)


def max_pool_runtime(fmt: Format, x, *, kernel_size, stride=None, padding=0):
    """``y_w = max_{κ} x_pad[w·s + κ]`` (exact: no rounding)."""
    x = _check_input(fmt, x)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    xw = windows(x, k, s, p, out, _neg_fill(x))
    return _at(xw, _argmax(xw))


def _at(xw: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The entry at index ``t`` of every window (last axis)."""
    return np.take_along_axis(xw, t[..., None], axis=-1)[..., 0]


def max_pool_spec(x: Interval, *, kernel_size, stride=None, padding=0) -> Interval:
    """Window maxima of the enclosure: ``max`` is increasing in every argument, so the image
    of a box is ``[max lo, max hi]`` (exact)."""
    k, s, p, out = pool_geometry(x.shape, kernel_size, stride, padding)
    fill = _neg_fill(x.lo)
    lo = np.max(windows(x.lo, k, s, p, out, fill), axis=-1)
    if x.lo is x.hi:
        return Interval(lo, lo)
    return Interval(lo, np.max(windows(x.hi, k, s, p, out, fill), axis=-1))


def _window_bounds(x: np.ndarray, e: np.ndarray, k, s, p, out):
    """Windows of ``x̂`` and ``ε`` with ``low = x̂ − ε`` rounded down and ``high = x̂ + ε``
    rounded up (exact where ``ε = 0``; exact rationals for object inputs), so that every spec
    value satisfies ``low ≤ x ≤ high``. Padding: ``x̂ = high = low = −∞``, ``ε = 0``."""
    xw = windows(x, k, s, p, out, _neg_fill(x))
    ew = windows(np.asarray(e, dtype=np.float64), k, s, p, out, 0.0)
    if x.dtype == object:
        def shift(v, ei, sign):
            return v + sign * mpq(ei) if np.isfinite(ei) else sign * np.inf
        low = np.vectorize(lambda v, ei: shift(v, ei, -1), otypes=[object])(xw, ew)
        high = np.vectorize(lambda v, ei: shift(v, ei, 1), otypes=[object])(xw, ew)
        return xw, ew, low, high
    with np.errstate(invalid="ignore", over="ignore"):
        low = np.where(ew == 0, xw, np.nextafter(xw - ew, -np.inf))
        high = np.where(ew == 0, xw, np.nextafter(xw + ew, np.inf))
    return xw, ew, low, high


def _candidates(xw, low, high):
    """``(t, cand, certain)``: the runtime argmax ``t`` of each window; the positions ``i``
    with ``high_i ≥ low_t`` (every spec argmax ``a`` is one: ``x_a ≥ x_t ≥ low_t`` and
    ``x_a ≤ high_a``); and whether ``t`` is certainly the spec's first argmax — when
    ``low_t > high_i`` for ``i < t`` and ``low_t ≥ high_i`` for ``i > t``, every spec input has
    ``x_t > x_i`` before ``t`` and ``x_t ≥ x_i`` after it."""
    t = _argmax(xw)
    low_t = np.take_along_axis(low, t[..., None], axis=-1)
    cand = high >= low_t
    pos = np.arange(xw.shape[-1])
    before = pos < t[..., None]
    blocking = np.where(before, cand, high > low_t) & (pos != t[..., None])
    return t, cand, ~blocking.any(axis=-1)


def max_pool_bound(fmt: Format, xs, eps, *, kernel_size, stride=None, padding=0):
    """``max_{i ∈ cand} ε_i``: the spec maximum is ``x_a`` for a candidate ``a`` and the runtime
    one ``x̂_t``; ``x_a − x̂_t ≤ x_a − x̂_a ≤ ε_a`` (``x̂_a ≤ x̂_t``) and
    ``x̂_t − x_a ≤ x̂_t − x_t ≤ ε_t`` (``x_t ≤ x_a``). At most the max of ``ε`` over the window
    (max is 1-Lipschitz in ∞-norm); exact op, no rounding term."""
    (x,), (ex,) = xs, eps
    x = _check_input(fmt, x)
    e = checks.eps_like("eps", ex, x)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    xw, ew, low, high = _window_bounds(x, e, k, s, p, out)
    t, cand, _ = _candidates(xw, low, high)
    return guard_nonfinite(fmt, _at(xw, t), np.max(np.where(cand, ew, 0.0), axis=-1))


def max_pool_vjp_runtime(fmt: Format, xs, g, *, kernel_size, stride=None, padding=0):
    """``g`` of each window routed to its first argmax, accumulated (rounded, row-major window
    order) where windows overlap."""
    (x,) = xs
    x = _check_input(fmt, x)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    g = _check_g(fmt, g, _out_shape(x.shape, out))
    xw = windows(x, k, s, p, out, _neg_fill(x))
    contrib = _route(g, _argmax(xw), xw.shape[-1])
    return (scatter_windows(fmt, contrib, x.shape, k, s, p, out),)


def _route(g: np.ndarray, t: np.ndarray, K: int) -> np.ndarray:
    """Contributions ``(…, K)``: ``g`` at the window's argmax ``t``, 0 elsewhere."""
    hit = np.arange(K) == t[..., None]
    zero = mpq(0) if g.dtype == object else 0.0
    return np.where(hit, g[..., None], zero)


def max_pool_vjp_spec(xs, g: Interval, *, kernel_size, stride=None, padding=0):
    """Gradient of the exact max-pool at every spec input of the enclosure, enclosed.

    Per window and position ``j`` (first-argmax rule, pairwise exact comparisons of the
    enclosure ``[lo, hi]``): ``j`` is *surely* the first argmax when ``lo_j > hi_i`` for every
    ``i < j`` and ``lo_j ≥ hi_i`` for every ``i > j`` (contribution ``g``); *surely not* when some
    ``i < j`` has ``lo_i ≥ hi_j`` or some ``i > j`` has ``lo_i > hi_j`` (contribution 0);
    otherwise the contribution is ``g`` or 0: ``[min(0, g_lo), max(0, g_hi)]``. Contributions
    add exactly. For an exact input this is exactly torch's first-argmax gradient.
    """
    (x,) = xs
    k, s, p, out = pool_geometry(x.shape, kernel_size, stride, padding)
    _check_g_shape(g.lo, _out_shape(x.shape, out))
    fill = _neg_fill(x.lo)
    wl = windows(x.lo, k, s, p, out, fill)
    wh = wl if x.lo is x.hi else windows(x.hi, k, s, p, out, fill)
    K = wl.shape[-1]
    lo_j, hi_j = wl[..., :, None], wh[..., :, None]     # position j on axis −2
    lo_i, hi_i = wl[..., None, :], wh[..., None, :]     # competitor i on axis −1
    before = np.arange(K)[None, :] < np.arange(K)[:, None]   # i < j
    after = np.arange(K)[None, :] > np.arange(K)[:, None]    # i > j
    sure = np.all(np.where(before, lo_j > hi_i, True) & np.where(after, lo_j >= hi_i, True), axis=-1)
    never = np.any((before & (lo_i >= hi_j)) | (after & (lo_i > hi_j)), axis=-1)
    zero = mpq(0)
    glo, ghi = g.lo[..., None], g.hi[..., None]
    maybe_lo = np.vectorize(lambda v: v if v < 0 else zero, otypes=[object])(g.lo)[..., None]
    maybe_hi = np.vectorize(lambda v: v if v > 0 else zero, otypes=[object])(g.hi)[..., None]
    c_lo = np.where(sure, glo, np.where(never, zero, maybe_lo))
    c_hi = np.where(sure, ghi, np.where(never, zero, maybe_hi))
    lo = scatter_windows(None, c_lo, x.shape, k, s, p, out)
    if g.lo is g.hi and not np.any(~sure & ~never):
        return (Interval(lo, lo),)
    return (Interval(lo, scatter_windows(None, c_hi, x.shape, k, s, p, out)),)


def max_pool_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, kernel_size, stride=None, padding=0):
    """Bound of the routed-and-accumulated gradient.

    Per window ``w`` and position ``i`` the runtime contribution is ``ĉ = ĝ·[i = t]`` and the
    spec one ``c = g·[i = a]`` (``t``, ``a`` the runtime and spec first argmax). If ``t`` is
    certainly ``a`` (see :func:`_candidates`): ``|ĉ − c| ≤ ε_g`` at ``t``, 0 elsewhere.
    Otherwise, at a candidate ``i`` (which includes ``t`` and every possible ``a``) both
    contributions are each ``g``-or-0, so ``|ĉ − c| ≤ max(|ĝ − g|, |ĝ|, |g|) ≤ |ĝ| + ε_g``; at a
    non-candidate both are 0. The input gradient is the rounded sequential sum of the ``ĉ``
    (window order), so its bound is the replay ``Σ δ + Σ r_k`` (:func:`scatter_windows`).
    """
    (x,), (ex,) = xs, eps
    x = _check_input(fmt, x)
    e = checks.eps_like("eps", ex, x)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    g = _check_g(fmt, g, _out_shape(x.shape, out))
    eg = checks.eps_like("eps_g", eps_g, g)
    xw, _, low, high = _window_bounds(x, e, k, s, p, out)
    t, cand, certain = _candidates(xw, low, high)
    K = xw.shape[-1]
    hit = np.arange(K) == t[..., None]
    unsure = add_up(abs_up(g), eg)[..., None]
    delta = np.where(certain[..., None], np.where(hit, eg[..., None], 0.0),
                     np.where(cand, unsure, 0.0))
    contrib = _route(g, t, K)
    return (scatter_windows(fmt, contrib, x.shape, k, s, p, out, eps=delta)[1],)


def _sample_pool(rng, fmt: Format, coarse: bool):
    d = int(rng.integers(1, 4))
    k = tuple(int(v) for v in rng.integers(1, 4, size=d))
    s = tuple(int(v) for v in rng.integers(1, 3, size=d))
    p = tuple(int(rng.integers(0, ki // 2 + 1)) for ki in k)
    L = tuple(int(max(ki, rng.integers(2, 6))) for ki in k)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + L
    x = rng.standard_normal(shape) * 4
    if coarse:  # few distinct values: ties inside windows
        x = np.round(x)
    return (fmt.round(x),), {"kernel_size": k, "stride": s, "padding": p}


max_pool = register(Primitive("max_pool", max_pool_runtime, max_pool_spec, max_pool_bound,
                              max_pool_vjp_runtime, max_pool_vjp_spec, max_pool_vjp_bound,
                              lambda rng, fmt: _sample_pool(rng, fmt, coarse=True)))


# -- avg_pool ------------------------------------------------------------------------------------
def _zero_fill(x: np.ndarray):
    return mpq(0) if x.dtype == object else 0.0


def avg_pool_runtime(fmt: Format, x, *, kernel_size, stride=None, padding=0,
                     order: str = "sequential", order_free: bool = False):
    """``y_w = RN(ŝ_w / n)``, ``ŝ_w`` the rounded sum of the zero-padded window in ``order``
    (default sequential, row-major kernel order), ``n = Πk``. ``order_free`` only selects the
    bound (validated here)."""
    x = _check_input(fmt, x)
    check_order(order)
    _check_bool("order_free", order_free)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    xw = windows(x, k, s, p, out, _zero_fill(x))
    total, _ = sequential_sum(fmt, xw, None, order=order, axis=-1)
    return divide_by_count(fmt, total, int(np.prod(k)))


def avg_pool_spec(x: Interval, *, kernel_size, stride=None, padding=0,
                  order: str = "sequential", order_free: bool = False) -> Interval:
    """Exact window means ``Σ x / n`` (increasing in every input: ``[mean lo, mean hi]``)."""
    check_order(order)
    k, s, p, out = pool_geometry(x.shape, kernel_size, stride, padding)
    n = mpq(int(np.prod(k)))

    def mean(a):
        return np.sum(windows(a, k, s, p, out, mpq(0)), axis=-1) / n

    return x.map_exact(mean)


def avg_pool_bound(fmt: Format, xs, eps, *, kernel_size, stride=None, padding=0,
                   order: str = "sequential", order_free: bool = False):
    """``e_s/n + r``: the replay bound ``e_s = Σ ε + Σ r_k`` of the window sum
    (:func:`~nfbound.ops.accumulate.accumulate`; padding terms are exact zeros), then the
    exact-divisor division rule (:func:`divide_by_count_error`).

    ``order_free``: the window sum in any order (``n`` leaves, the padding zeros among them —
    a library that skips them sums fewer leaves, and the bound is increasing in ``m``), then
    the division: :func:`order_free_mean_bound` with ``Σ|x̂|`` and ``Σ ε`` of the window."""
    (x,), (ex,) = xs, eps
    x = _check_input(fmt, x)
    check_order(order)
    order_free = _check_bool("order_free", order_free)
    e = checks.eps_like("eps", ex, x)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    n = int(np.prod(k))
    xw = windows(x, k, s, p, out, _zero_fill(x))
    ew = windows(np.asarray(e, dtype=np.float64), k, s, p, out, 0.0)
    if not order_free:
        total, es = sequential_sum(fmt, xw, ew, order=order, axis=-1)
        return divide_by_count_error(fmt, total, es, n)[1]
    y = divide_by_count(fmt, sequential_sum(fmt, xw, None, order=order, axis=-1)[0], n)
    b = order_free_mean_bound(fmt, sum_up(abs_up(xw), axis=-1), n, sum_up(ew, axis=-1), n)
    return guard_nonfinite(fmt, y, b)


def avg_pool_vjp_runtime(fmt: Format, xs, g, *, kernel_size, stride=None, padding=0,
                         order: str = "sequential", order_free: bool = False):
    """``q_w = RN(g_w / n)`` spread over window ``w``, accumulated (rounded, row-major window
    order) where windows overlap; padding positions dropped."""
    (x,) = xs
    x = _check_input(fmt, x)
    check_order(order)
    _check_bool("order_free", order_free)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    g = _check_g(fmt, g, _out_shape(x.shape, out))
    n = int(np.prod(k))
    q = divide_by_count(fmt, g, n)
    contrib = np.repeat(q[..., None], n, axis=-1)
    return (scatter_windows(fmt, contrib, x.shape, k, s, p, out),)


def avg_pool_vjp_spec(xs, g: Interval, *, kernel_size, stride=None, padding=0,
                      order: str = "sequential", order_free: bool = False):
    (x,) = xs
    check_order(order)
    k, s, p, out = pool_geometry(x.shape, kernel_size, stride, padding)
    _check_g_shape(g.lo, _out_shape(x.shape, out))
    n = int(np.prod(k))

    def spread(a):
        return scatter_windows(None, np.repeat((a / mpq(n))[..., None], n, axis=-1),
                               x.shape, k, s, p, out)

    return (g.map_exact(spread),)


def avg_pool_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, kernel_size, stride=None, padding=0,
                       order: str = "sequential", order_free: bool = False):
    """Each window's term ``q̂_w = RN(ĝ_w/n)`` errs by ``δ_w = ε_g/n + r`` (exact-divisor
    division rule); the input gradient is the rounded sum of the ``q̂`` of the windows covering
    the position: replay ``Σ δ + Σ r_k``.

    ``order_free``: that sum in any order. The ``q̂_w`` do not depend on any order, so at a
    position covered by ``c`` windows the bound is :func:`order_free_sum` of ``c`` leaves with
    ``Σ|q̂_w|`` and ``Σ δ_w`` — ``Σ δ_w`` itself where ``c ≤ 1`` (no addition)."""
    (x,) = xs
    x = _check_input(fmt, x)
    check_order(order)
    order_free = _check_bool("order_free", order_free)
    k, s, p, out = pool_geometry(np.shape(x), kernel_size, stride, padding)
    g = _check_g(fmt, g, _out_shape(x.shape, out))
    eg = checks.eps_like("eps_g", eps_g, g)
    n = int(np.prod(k))
    q, dq = divide_by_count_error(fmt, g, eg, n)
    contrib = np.repeat(q[..., None], n, axis=-1)
    delta = np.repeat(np.asarray(dq, dtype=np.float64)[..., None], n, axis=-1)
    grad, bound = scatter_windows(fmt, contrib, x.shape, k, s, p, out, eps=delta)
    if not order_free:
        return (bound,)
    geometry = (x.shape, k, s, p, out)
    count = scatter_windows(None, np.ones(contrib.shape), *geometry)     # exact small integers
    abs_sum = _scatter_up(np.repeat(abs_up(q)[..., None], n, axis=-1), *geometry)
    eps_sum = _scatter_up(delta, *geometry)
    free = np.empty(count.shape)
    for c in np.unique(count):
        at = count == c
        free[at] = order_free_sum(fmt, abs_sum[at], int(c), eps_sum[at])[0]
    return (guard_nonfinite(fmt, grad, free),)


def _scatter_up(contrib: np.ndarray, in_shape, k, s, p, out) -> np.ndarray:
    """:func:`scatter_windows` of nonnegative float64 ``contrib`` with every addition rounded
    upward (``add_up``): an upper bound of the exact sum at every input position."""
    padded = in_shape[:2] + tuple(n + 2 * pi for n, pi in zip(in_shape[2:], p))
    acc = np.zeros(padded)
    for idx, off in enumerate(_offsets(k)):
        sl = _slices(off, s, out)
        acc[sl] = add_up(acc[sl], contrib[..., idx])
    return acc[(Ellipsis,) + tuple(slice(pi, pi + n) for pi, n in zip(p, in_shape[2:]))].copy()


def _sample_avg_pool(rng, fmt: Format):
    xs, params = _sample_pool(rng, fmt, coarse=False)
    return xs, {**params, "order": _sample_order(rng), "order_free": bool(rng.random() < 0.25)}


avg_pool = register(Primitive("avg_pool", avg_pool_runtime, avg_pool_spec, avg_pool_bound,
                              avg_pool_vjp_runtime, avg_pool_vjp_spec, avg_pool_vjp_bound,
                              _sample_avg_pool))
