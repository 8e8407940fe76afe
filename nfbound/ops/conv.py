"""Convolution primitives (N-D, batch first): ``conv`` and ``conv_transpose``.

``conv(input, weight, bias=None, stride=1, padding=0)``: ``input`` (N, C_in, *spatial),
``weight`` (C_out, C_in, *kernel), ``bias`` (C_out,); per-axis ``stride ≥ 1`` and
``padding ≥ 0`` (an int or a tuple, one entry per spatial axis); cross-correlation with zero
padding (``torch.nn.functional.conv{1,2,3}d``, dilation 1, groups 1)::

    y[n, oc, o] = Σ_{ic, k} x_pad[n, ic, o·stride + k] · W[oc, ic, k] + b[oc],
    out = (in + 2·padding − kernel) // stride + 1   (per axis).

``conv_transpose(input, weight, bias=None, stride=1, padding=0)``: ``weight``
(C_in, C_out, *kernel); ``torch.nn.functional.conv_transpose{1,2,3}d`` with output_padding 0::

    y[n, oc, o] = Σ_{ic, k : (o + padding − k) = j·stride, 0 ≤ j < in} x[n, ic, j] · W[ic, oc, k] + b[oc],
    out = (in − 1)·stride − 2·padding + kernel.

Runtime order (TorchLean, docs/design.md §4; "row-major" over multi-indices, ``k`` a kernel offset,
``o`` an output position, ``i``/``j`` input positions). Every product ``RN(a·w)`` is rounded,
then added to the running sum with one rounding, the first term as ``0 + t`` (exact):

* conv forward ``y[n, oc, o]``: ``ic`` outer, then ``k`` row-major; bias last;
* conv bias gradient ``gB[oc] = Σ_{n, o} δ[n, oc, o]``: ``n`` outer, then ``o`` row-major;
* conv kernel gradient ``gK[oc, ic, k] = Σ_{n, o} x_pad[n, ic, o·stride + k]·δ[n, oc, o]``:
  ``n`` outer, then ``o`` row-major;
* conv input gradient ``gX[n, ic, i] = Σ_{oc} Σ_{o, k : o·stride + k = i + padding}
  δ[n, oc, o]·W[oc, ic, k]``: ``oc`` outer, then ``o`` row-major (``k`` is then determined);
* conv_transpose forward: ``ic`` outer, then ``k`` row-major; bias last;
* conv_transpose input gradient (a conv of ``δ`` with ``W``): ``oc`` outer, then ``k``
  row-major;
* conv_transpose weight gradient ``gW[ic, oc, k] = Σ_{n, j} x[n, ic, j]·δ[n, oc, j·stride + k −
  padding]``: ``n`` outer, then ``j`` row-major;
* conv_transpose bias gradient: as for conv.

Terms that are *structural zeros* — a padding position, a position an offset misses — are
left out of these sequences: adding an exact 0 returns the same value, so the runtime result is
that of TorchLean's full sequence, and no rounding is charged for them. ``order`` selects the
reduction order of every one of these sums (forward and VJPs, bias always last):
``"sequential"`` (default, the orders above), ``"reversed"``, ``"pairwise"``, ``"blocked:B"``
(see :mod:`nfbound.ops.accumulate`), each applied to the sequence above with its structural
zeros removed.

Bounds: the replay of each accumulation (seed *Conv2D Backward Approximation*; docs/design.md §4):
with ``t̂ = RN(â·ŵ)`` and the mul rule ``ε_t = |â|·ε_w + |ŵ|·ε_a + ε_a·ε_w + r_mul``
(:func:`nfbound.ops.elementwise.mul_error`), each rounded partial sum ``ŝ' = RN(ŝ + t̂)`` has
``e' = e + ε_t + r_add`` (``r = rounding_term`` of the runtime result, 0 when an operand is 0).
Soundness is the triangle inequality applied along the sum: ``|ŝ' − (s + t)| ≤ |ŝ' − (ŝ + t̂)|
+ |ŝ − s| + |t̂ − t|``. All bound arithmetic rounds upward.

Order-free bounds (``order_free=True``; docs/design.md §4, issue 4): for a conv computed by a
library whose order is unknown (cuDNN, oneDNN, im2col + BLAS), each of the sums above — forward,
``gX``, ``gK`` — gets :func:`nfbound.ops.linalg.order_free_dot_bound` over its ``n`` live
products ``p_j = â_j ŵ_j``: with ``N = n + 1``,

    |ŷ − Σ a w| ≤ γ_N·Σ|p_j| + N·η·(1 + γ_{N−1}) + Σ(|â|ε_w + |ŵ|ε_a + ε_aε_w),

valid for any summation tree, blocking, FMA, or a wider accumulator rounded to the format at the
end (``γ_N = (1+u)^N − 1`` covers the product's own rounding, the ``n − 1`` additions on its
path and the final conversion; one ``η`` per rounding involving a product; ``inf`` if some
rounding could overflow). The forward bias is term ``n + 1`` (the exact product ``b·1``,
``ε_b`` its error), so a library adding it first, last or as an FMA addend is covered. ``n``
counts the live terms only: a structural zero (a padding tap, a zero inserted by a dilated
implementation) enters as an exact 0, and any addition with an all-zero operand subtree is exact,
so a tree over more leaves has no more inexact roundings on any live term's path. The bias
gradient ``Σ δ`` gets :func:`nfbound.ops.reduce.order_free_sum_bound` over its ``N·P`` terms.
The runtime values are still nfbound's own (in ``order``), and the bound covers them too; it
assumes a library that evaluates the sums of products (not Winograd- or FFT-type algorithms,
which compute other expressions).

Runtime inputs and output gradients must be values of the format (finite and on its grid:
:func:`nfbound.ops.checks.format_value`, checked once per call; a ``ValueError`` names the
argument otherwise): the kernels round exact results of format values, so off-grid data would
be rounded twice and that error missed by the bounds. Round such data first, its rounding
error becoming the input's ``eps``.

Engines: for formats with ``fast_ops`` and the sequential order, compiled kernels
(:mod:`nfbound.ops.conv_kernels`) compute the runtime and the bound in one pass; otherwise a
NumPy path loops over the reduction steps, vectorised over all outputs, with ``fmt.mul`` /
``fmt.add`` (also on object arrays: decimal formats, ``p > 51``). The two are bit-identical
(tested). Spec: exact rational im2col and tensordot; interval inputs in midpoint–radius form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from gmpy2 import mpq

from ..bounds.rounding import _saturates, guard_nonfinite, rounding_term
from ..bounds.upward import abs_up, add_up, mul_up, sum_up
from ..formats import Format
from . import checks, conv_kernels
from .accumulate import check_order
from .elementwise import mul_error
from .interval import Interval
from .linalg import order_free_dot_bound
from .primitive import Primitive, register
from .reduce import _check_bool, order_free_sum_bound

ENGINES = ("auto", "compiled", "generic")


# == geometry ==================================================================================
@dataclass(frozen=True)
class Geometry:
    """Per-axis sizes of a convolution in the *conv* direction ``in → out``:
    ``out = (in + 2·padding − kernel) // stride + 1``. A transpose convolution uses the
    geometry of the conv it is the adjoint of (its output is this ``in``, its input ``out``)."""

    in_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple((i + 2 * p - k) // s + 1 for i, k, s, p in
                     zip(self.in_spatial, self.kernel, self.stride, self.padding))

    @property
    def n_in(self) -> int:
        return math.prod(self.in_spatial)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_spatial)

    @property
    def n_kernel(self) -> int:
        return math.prod(self.kernel)


def _int_tuple(name: str, v, d: int, minimum: int) -> tuple[int, ...]:
    def is_int(e) -> bool:
        return isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_))
    if is_int(v):
        vals = (int(v),) * d
    elif isinstance(v, (tuple, list)) and len(v) == d and all(is_int(e) for e in v):
        vals = tuple(int(e) for e in v)
    else:
        raise ValueError(f"{name} must be an int or a tuple of {d} ints (one per spatial axis), "
                         f"got {v!r}")
    if any(e < minimum for e in vals):
        raise ValueError(f"{name} must be ≥ {minimum} on every axis, got {vals}")
    return vals


def conv_geometry(input_shape, weight_shape, bias_shape=None, stride=1, padding=0,
                  transpose: bool = False) -> tuple[Geometry, int]:
    """Validate the shapes and hyper-parameters of a (transpose) convolution.

    Returns the conv-direction :class:`Geometry` and ``C_out``. Raises ``ValueError`` naming
    the offending argument: ``input``/``weight`` ranks, the channel mismatch, ``bias`` shape,
    ``stride < 1``, ``padding < 0``, a kernel larger than the padded input, a transpose
    output size below 1.
    """
    xs, ws = tuple(input_shape), tuple(weight_shape)
    if len(xs) < 3:
        raise ValueError(f"input must have shape (N, C_in, *spatial) with at least one spatial "
                         f"axis, got shape {xs}")
    d = len(xs) - 2
    layout = "(C_in, C_out, *kernel)" if transpose else "(C_out, C_in, *kernel)"
    if len(ws) != d + 2:
        raise ValueError(f"weight must have shape {layout} with {d} kernel axes like input "
                         f"{xs}, got shape {ws}")
    w_in, w_out = (ws[0], ws[1]) if transpose else (ws[1], ws[0])
    if w_in != xs[1]:
        raise ValueError(f"weight {ws} expects {w_in} input channels but input {xs} has {xs[1]}")
    if min(ws) < 1 or min(xs[1:]) < 1:
        raise ValueError(f"input {xs} and weight {ws} need nonzero channel, spatial and kernel sizes")
    if bias_shape is not None and tuple(bias_shape) != (w_out,):
        raise ValueError(f"bias must have shape ({w_out},) (C_out), got {tuple(bias_shape)}")
    st = _int_tuple("stride", stride, d, 1)
    pd = _int_tuple("padding", padding, d, 0)
    kernel, spatial = ws[2:], xs[2:]
    if not transpose:
        for a, (i, k, p) in enumerate(zip(spatial, kernel, pd)):
            if k > i + 2 * p:
                raise ValueError(f"weight: kernel size {k} on spatial axis {a} exceeds the padded "
                                 f"input size {i} + 2·{p} (padding)")
        return Geometry(spatial, kernel, st, pd), w_out
    out = tuple((i - 1) * s - 2 * p + k for i, k, s, p in zip(spatial, kernel, st, pd))
    if min(out) < 1:
        raise ValueError(f"padding {pd} too large: transpose-convolution output size {out} "
                         f"((in − 1)·stride − 2·padding + kernel) must be ≥ 1 on every axis")
    g = Geometry(out, kernel, st, pd)
    assert g.out_spatial == spatial
    return g, w_out


# == index tables ==============================================================================
# A table lists, for every target position t (a row), the (first, second) index pairs of the
# terms of its sum, in order, compacted (live entries first; ``count[t]`` of them). Built per
# axis, then combined row-major over the axes (lexicographic order of the per-axis lists).
def _axis_pairs(kind: str, I: int, K: int, s: int, p: int, O: int):
    """One axis: (first, second, live) arrays (targets × candidates), candidates in order."""
    if kind == "taps":      # targets o; candidates k; first = input position, second = k
        o, k = np.arange(O)[:, None], np.arange(K)[None, :]
        first = o * s + k - p
        return first, np.broadcast_to(k, first.shape), (first >= 0) & (first < I)
    if kind in ("hits", "hits_by_kernel"):   # targets i; candidates o; first = o, second = k
        i, o = np.arange(I)[:, None], np.arange(O)[None, :]
        k = i + p - o * s
        first, live = np.broadcast_to(o, k.shape), (k >= 0) & (k < K)
        if kind == "hits_by_kernel":          # k = i + p − o·s decreases with o
            return first[:, ::-1], k[:, ::-1], live[:, ::-1]
        return first, k, live
    if kind == "kernel":    # targets k; candidates o; first = input position, second = o
        k, o = np.arange(K)[:, None], np.arange(O)[None, :]
        first = o * s + k - p
        return first, np.broadcast_to(o, first.shape), (first >= 0) & (first < I)
    raise AssertionError(kind)


def _compact(first, second, live):
    """Move the live entries of every row to the front (stable), drop all-dead columns."""
    idx = np.argsort(~live, axis=1, kind="stable")
    first, second = np.take_along_axis(first, idx, 1), np.take_along_axis(second, idx, 1)
    live = np.take_along_axis(live, idx, 1)
    count = live.sum(axis=1)
    m = int(count.max(initial=0))
    return (np.where(live, first, 0)[:, :m], np.where(live, second, 0)[:, :m],
            live[:, :m], count)


def _row_major_strides(shape) -> list[int]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return out[::-1]


@lru_cache(maxsize=128)
def _table(kind: str, g: Geometry, compact: bool = True):
    """``(first, second, count)`` int64 arrays for the sums of ``kind`` over ``g``.

    * ``"taps"``: rows = output positions ``o``; entries ``(input position o·s + k − p,
      kernel offset k)``, ``k`` row-major (dense with ``first = −1`` for padding if not
      ``compact``);
    * ``"hits"``: rows = input positions ``i``; entries ``(output position o, kernel offset
      k)`` with ``o·s + k = i + p``, ``o`` row-major; ``"hits_by_kernel"``: the same, ``k``
      row-major;
    * ``"kernel"``: rows = kernel offsets ``k``; entries ``(input position o·s + k − p,
      output position o)``, ``o`` row-major.
    """
    d = len(g.kernel)
    axes = []
    for a in range(d):
        f, s, live = _axis_pairs(kind, g.in_spatial[a], g.kernel[a], g.stride[a], g.padding[a],
                                 g.out_spatial[a])
        axes.append(_compact(f, s, live)[:3] if compact else (f, s, live))
    first_shape = {"taps": g.in_spatial, "hits": g.out_spatial, "hits_by_kernel": g.out_spatial,
                   "kernel": g.in_spatial}[kind]
    second_shape = {"taps": g.kernel, "hits": g.kernel, "hits_by_kernel": g.kernel,
                    "kernel": g.out_spatial}[kind]
    fs, ss = _row_major_strides(first_shape), _row_major_strides(second_shape)
    T = [ax[0].shape[0] for ax in axes]
    M = [ax[0].shape[1] for ax in axes]
    full = tuple(T) + tuple(M)
    first = np.zeros(full, dtype=np.int64)
    second = np.zeros(full, dtype=np.int64)
    live = np.ones(full, dtype=bool)
    for a, (f, s, lv) in enumerate(axes):
        shape = [1] * (2 * d)
        shape[a], shape[d + a] = T[a], M[a]
        first = first + f.reshape(shape) * fs[a]
        second = second + s.reshape(shape) * ss[a]
        live = live & lv.reshape(shape)
    P, Mt = math.prod(T), math.prod(M)
    first, second, live = first.reshape(P, Mt), second.reshape(P, Mt), live.reshape(P, Mt)
    if compact:
        first, second, _, count = _compact(first, second, live)
    else:
        first, count = np.where(live, first, -1), live.sum(axis=1)
    out = tuple(np.ascontiguousarray(a, dtype=np.int64) for a in (first, second, count))
    for a in out:
        a.setflags(write=False)
    return out


# == generic engine: any format, any order =====================================================
def _zero(x) -> np.ndarray:
    a = np.asarray(x)
    return np.vectorize(lambda v: v == 0, otypes=[bool])(a) if a.dtype == object else a == 0


def _zeros(shape, obj: bool) -> np.ndarray:
    return np.full(shape, mpq(0), dtype=object) if obj else np.zeros(shape)


def _combine(fmt: Format, x, y, with_bound: bool):
    """Add two partial sums ``(s, e, live)``: ``RN(s₁ + s₂)`` and ``e₁ + e₂ + r`` where both
    are live (``r = 0`` if an operand is 0: exact), else the live one unchanged (an exact
    0 is added)."""
    s1, e1, l1 = x
    s2, e2, l2 = y
    both = l1 & l2
    if not both.any():
        s = np.where(l2, s2, s1)
        e = np.where(l2, e2, e1) if with_bound else None
        return s, e, l1 | l2
    s = fmt.add(s1, s2)
    out_s = np.where(both, s, np.where(l1, s1, s2))
    out_e = None
    if with_bound:
        e = add_up(e1, e2, rounding_term(fmt, s, _zero(s1) | _zero(s2)))
        out_e = np.where(both, e, np.where(l1, e1, e2))
    return out_s, out_e, l1 | l2


def _reduce(fmt: Format, shape, n_steps: int, term, order: str, with_bound: bool, obj: bool):
    """Fold ``term(0), …, term(n_steps − 1)`` (each ``(t, ε_t, live)``, dead entries exact
    zeros) in ``order``; returns the state ``(s, e, live)`` (``e`` None without bounds)."""
    def sanitize(t, et, live):
        live = np.broadcast_to(live, shape)
        t = np.where(live, t, mpq(0) if obj else 0.0)
        et = np.where(live, et, 0.0) if with_bound else None
        return t, et, live

    def fold(state, steps):
        for k in steps:
            state = _combine(fmt, state, sanitize(*term(k)), with_bound)
        return state

    dead = (_zeros(shape, obj), np.zeros(shape) if with_bound else None, np.zeros(shape, bool))
    if order == "sequential":
        return fold(dead, range(n_steps))
    if order == "reversed":
        return fold(dead, range(n_steps - 1, -1, -1))
    if order == "pairwise":
        parts = [sanitize(*term(k)) for k in range(n_steps)] or [dead]
        while len(parts) > 1:
            nxt = [_combine(fmt, parts[i], parts[i + 1], with_bound)
                   for i in range(0, len(parts) - 1, 2)]
            if len(parts) % 2:
                nxt.append(parts[-1])
            parts = nxt
        return parts[0]
    B = int(order.split(":", 1)[1])
    state = dead
    for b0 in range(0, n_steps, B):
        state = _combine(fmt, state, fold(dead, range(b0, min(b0 + B, n_steps))), with_bound)
    return state


def _product(fmt: Format, a, ea, w, ew, with_bound: bool):
    if with_bound:
        return mul_error(fmt, a, ea, w, ew)
    return fmt.mul(a, w), None


def _compact_step(k: int, count: np.ndarray, n_outer: int):
    """Step ``k`` of the compacted sequence ``(outer, j)``, ``j < count``, per row:
    ``outer = k // count``, ``j = k % count``, live iff ``k < n_outer·count``."""
    cnt = np.maximum(count, 1)
    live = k < n_outer * count
    return np.where(live, k // cnt, 0), np.where(live, k % cnt, 0), live


def _gather_reduce_generic(fmt, A, eA, W, eW, b, eb, table, order, with_bound, obj):
    first, second, count = table
    N, C = A.shape[:2]
    Co = W.shape[1]
    P, M = first.shape
    rows = np.arange(P)

    def term(k):
        c, j, live = _compact_step(k, count, C)
        fi, ki = first[rows, j], second[rows, j]
        a, w = A[:, c, fi][:, None, :], W[c, :, ki].T[None]
        ea = eA[:, c, fi][:, None, :] if with_bound else None
        ew = eW[c, :, ki].T[None] if with_bound else None
        return (*_product(fmt, a, ea, w, ew, with_bound), live)

    shape = (N, Co, P)
    state = _reduce(fmt, shape, C * M, term, order, with_bound, obj)
    if b is not None:
        bias = (np.broadcast_to(b[None, :, None], shape),
                np.broadcast_to(eb[None, :, None], shape) if with_bound else None,
                np.ones(shape, bool))
        state = _combine(fmt, state, bias, with_bound)
    return state[0], state[1]


def _weight_grad_generic(fmt, X, eX, D, eD, table, order, with_bound, obj):
    first, second, count = table
    N, Ci = X.shape[:2]
    Co = D.shape[1]
    K, M = first.shape
    rows = np.arange(K)
    ci, co = np.arange(Ci)[:, None], np.arange(Co)[:, None]

    def term(k):
        n, j, live = _compact_step(k, count, N)
        fi, si = first[rows, j], second[rows, j]
        x, d = X[n[None, :], ci, fi[None, :]][None], D[n[None, :], co, si[None, :]][:, None]
        ex = eX[n[None, :], ci, fi[None, :]][None] if with_bound else None
        ed = eD[n[None, :], co, si[None, :]][:, None] if with_bound else None
        return (*_product(fmt, x, ex, d, ed, with_bound), live)

    s, e, _ = _reduce(fmt, (Co, Ci, K), N * M, term, order, with_bound, obj)
    return s, e


def _bias_grad_generic(fmt, D, eD, order, with_bound, obj):
    N, Co, P = D.shape

    def term(k):
        n, o = divmod(k, P)
        return D[n, :, o], (eD[n, :, o] if with_bound else None), np.ones(Co, bool)

    s, e, _ = _reduce(fmt, (Co,), N * P, term, order, with_bound, obj)
    return s, e


# == order-free bounds: any summation order, blocking, FMA =====================================
def _order_free(fmt: Format, S, P, n_terms) -> np.ndarray:
    """:func:`~nfbound.ops.linalg.order_free_dot_bound` of every entry, from ``S ≥ Σ|â ŵ|``,
    ``P ≥ Σ(|â|ε_w + |ŵ|ε_a + ε_aε_w)`` and the number ``n_terms`` of live terms of its sum
    (one per row of the index table: the last axis)."""
    n_full = np.broadcast_to(n_terms, S.shape)
    bound = np.empty(S.shape)
    for n in np.unique(n_terms):
        at = n_full == n
        bound[at] = order_free_dot_bound(fmt, S[at], int(n), P[at])
    return bound


def _abs_sums_step(S, P, a, ea, w, ew):
    """One term of ``S += |a||w|`` and ``P += (|a| + ε_a)·ε_w + |w|·ε_a``, rounded upward
    (``(|a| + ε_a)ε_w + |w|ε_a = |a|ε_w + |w|ε_a + ε_aε_w``, the mul rule's propagated part)."""
    return add_up(S, mul_up(a, w)), add_up(P, mul_up(add_up(a, ea), ew), mul_up(w, ea))


def _gather_order_free(fmt, A, eA, W, eW, b, eb, table):
    """Order-free bound of ``out[n, co, t] = Σ_c Σ_j A[n, c, first[t, j]]·W[c, co,
    second[t, j]] (+ b[co])`` (the sums of :func:`_gather_reduce`): each sum has ``C·count[t]``
    live terms, the bias one more (the exact product ``b·1``)."""
    first, second, count = table
    N, C = A.shape[:2]
    Co = W.shape[1]
    Pn, M = first.shape
    absA, absW = abs_up(A), abs_up(W)
    S, P = np.zeros((N, Co, Pn)), np.zeros((N, Co, Pn))
    for j in range(M):
        live = j < count
        fi, ki = first[:, j], second[:, j]
        for c in range(C):
            a = np.where(live, absA[:, c, fi], 0.0)[:, None, :]
            ea = np.where(live, eA[:, c, fi], 0.0)[:, None, :]
            S, P = _abs_sums_step(S, P, a, ea, absW[c][:, ki][None], eW[c][:, ki][None])
    n_terms = C * count
    if b is not None:
        S = add_up(S, abs_up(b)[None, :, None])
        P = add_up(P, eb[None, :, None])
        n_terms = n_terms + 1
    return _order_free(fmt, S, P, n_terms)


def _weight_grad_order_free(fmt, X, eX, D, eD, table):
    """Order-free bound of ``g[co, ci, k] = Σ_n Σ_j X[n, ci, first[k, j]]·D[n, co,
    second[k, j]]`` (the sums of :func:`_weight_grad`; ``N·count[k]`` live terms)."""
    first, second, count = table
    N, Ci = X.shape[:2]
    Co = D.shape[1]
    K, M = first.shape
    absX, absD = abs_up(X), abs_up(D)
    S, P = np.zeros((Co, Ci, K)), np.zeros((Co, Ci, K))
    for j in range(M):
        live = j < count
        fi, si = first[:, j], second[:, j]
        for n in range(N):
            x = np.where(live, absX[n][:, fi], 0.0)[None]
            ex = np.where(live, eX[n][:, fi], 0.0)[None]
            S, P = _abs_sums_step(S, P, x, ex, absD[n][:, si][:, None], eD[n][:, si][:, None])
    return _order_free(fmt, S, P, N * count)


def _bias_grad_order_free(fmt, D, eD):
    """:func:`~nfbound.ops.reduce.order_free_sum_bound` of ``g[co] = Σ_{n, o} D[n, co, o]``
    (``N·P`` terms, format values with errors ``eD``)."""
    N, Co, Pn = D.shape
    flat = (lambda a: np.moveaxis(a, 1, 0).reshape(Co, N * Pn))
    return order_free_sum_bound(fmt, sum_up(flat(abs_up(D)), axis=1), N * Pn,
                                sum_up(flat(eD), axis=1))


# == dispatch ==================================================================================
def _compiled(fmt: Format, order: str, engine: str, arrays) -> bool:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    ok = fmt.fast_ops and order == "sequential" and not any(
        np.asarray(a).dtype == object for a in arrays if a is not None)
    if engine == "compiled" and not ok:
        raise ValueError("engine='compiled' needs a format with fast_ops, order='sequential' "
                         "and float64 inputs")
    return ok if engine == "auto" else engine == "compiled"


def _kernel_args(fmt: Format) -> tuple:
    return (*fmt.kernel_params, fmt.is_nearest, _saturates(fmt))


def _f64(a) -> np.ndarray:
    """A writeable C-contiguous float64 array (read-only views, e.g. from ``broadcast_to``,
    are copied: Numba types them apart, and each extra signature costs a compilation)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a if a.flags.writeable else a.copy()


_DUMMY3 = np.zeros((1, 1, 1))


def _gather_reduce(fmt, A, eA, W, eW, b, eb, table, order, with_bound, engine, obj,
                   order_free=False):
    """``out[n, co, t] = Σ_c Σ_j RN(A[n, c, first]·W[c, co, second]) (+ b[co])`` with its
    replay bound, or its order-free bound (``order_free``); ``inf`` where ``out`` overflowed
    (:func:`_guarded`)."""
    if with_bound and order_free:
        out = _gather_reduce(fmt, A, None, W, None, b, None, table, order, False, engine, obj)[0]
        return _guarded(fmt, out, _gather_order_free(fmt, A, eA, W, eW, b, eb, table))
    if _compiled(fmt, order, engine, (A, W, b)):
        Co = W.shape[1]
        bias = _f64(b) if b is not None else np.zeros(Co)
        ebias = _f64(eb) if (b is not None and with_bound) else np.zeros(Co)
        out, bnd = conv_kernels.gather_reduce(
            _f64(A), _f64(eA) if with_bound else _DUMMY3, _f64(W.transpose(0, 2, 1)),
            _f64(eW.transpose(0, 2, 1)) if with_bound else _DUMMY3, bias, ebias, *table,
            b is not None, with_bound, *_kernel_args(fmt))
        return _guarded(fmt, out, bnd if with_bound else None)
    return _guarded(fmt, *_gather_reduce_generic(fmt, A, eA, W, eW, b, eb, table, order,
                                                 with_bound, obj))


def _weight_grad(fmt, X, eX, D, eD, table, order, with_bound, engine, obj, order_free=False):
    """``g[co, ci, k] = Σ_n Σ_j RN(X[n, ci, first[k, j]]·D[n, co, second[k, j]])`` with its
    replay (or order-free) bound (:func:`_guarded`)."""
    if with_bound and order_free:
        out = _weight_grad(fmt, X, None, D, None, table, order, False, engine, obj)[0]
        return _guarded(fmt, out, _weight_grad_order_free(fmt, X, eX, D, eD, table))
    if _compiled(fmt, order, engine, (X, D)):
        out, bnd = conv_kernels.weight_grad(
            _f64(X), _f64(eX) if with_bound else _DUMMY3, _f64(D.transpose(0, 2, 1)),
            _f64(eD.transpose(0, 2, 1)) if with_bound else _DUMMY3, *table, with_bound,
            *_kernel_args(fmt))
        return _guarded(fmt, out, bnd if with_bound else None)
    return _guarded(fmt, *_weight_grad_generic(fmt, X, eX, D, eD, table, order, with_bound, obj))


def _bias_grad(fmt, D, eD, order, with_bound, engine, obj, order_free=False):
    """``g[co] = Σ_{n, o} D[n, co, o]`` with its replay (or order-free) bound
    (:func:`_guarded`)."""
    if with_bound and order_free:
        out = _bias_grad(fmt, D, None, order, False, engine, obj)[0]
        return _guarded(fmt, out, _bias_grad_order_free(fmt, D, eD))
    if _compiled(fmt, order, engine, (D,)):
        out, bnd = conv_kernels.bias_grad(_f64(D), _f64(eD) if with_bound else _DUMMY3,
                                          with_bound, *_kernel_args(fmt))
        return _guarded(fmt, out, bnd if with_bound else None)
    return _guarded(fmt, *_bias_grad_generic(fmt, D, eD, order, with_bound, obj))


def _guarded(fmt: Format, out, bound):
    """``(out, bound)`` with the bound ``inf`` where ``out`` overflowed
    (``bounds.rounding.guard_nonfinite``; ``bound`` None without bounds)."""
    return out, (None if bound is None else guard_nonfinite(fmt, out, bound))


# == argument handling =========================================================================
def _value(name: str, x, fmt: Format) -> np.ndarray:
    """A runtime input as an array of values of ``fmt`` (``checks.format_value``: the kernels
    round exact results of format values; off-grid data would be rounded twice), float64
    unless it holds exact objects."""
    a = checks.format_value(name, x, fmt)
    if a.dtype == object:
        return a
    return np.asarray(a, dtype=np.float64)


def _flat(a: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) → (N, C, S) (a view when possible)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _is_obj(fmt: Format, *arrays) -> bool:
    return (not fmt.fits_binary64) or any(np.asarray(a).dtype == object
                                          for a in arrays if a is not None)


def _eps(name: str, eps, x, with_bound: bool):
    if not with_bound or x is None:
        return None
    return np.ascontiguousarray(checks.eps_like(name, eps, x), dtype=np.float64)


def _split_xs(xs, what: str):
    xs = tuple(xs)
    if len(xs) not in (2, 3):
        raise ValueError(f"{what} takes (input, weight) or (input, weight, bias), got {len(xs)} inputs")
    return xs if len(xs) == 3 else (*xs, None)


def _unpack_eps(eps, n: int, with_bound: bool):
    if not with_bound:
        return (None,) * 3
    eps = tuple(eps) if eps is not None else ()
    if len(eps) != n:
        raise ValueError(f"eps must hold one error bound per input ({n}), got {len(eps)}")
    return eps if n == 3 else (*eps, None)


# == conv: runtime and bounds ==================================================================
def conv_forward(fmt: Format, input, weight, bias=None, eps=None, *, stride=1, padding=0,
                 order: str = "sequential", engine: str = "auto", order_free: bool = False):
    """Runtime conv and (if ``eps`` is given) its replay bound, in one pass.

    ``eps`` = ``(ε_input, ε_weight)`` or ``(ε_input, ε_weight, ε_bias)`` (one per given
    input). Returns ``(y, bound)`` (``bound`` None without ``eps``); ``y`` has shape
    (N, C_out, *out). The bound is the replay of the accumulation in ``order`` with the mul
    rule per term (module docstring), so ``|ŷ − y| ≤ bound`` for every spec ``(x, W, b)``
    within ``eps`` of the runtime inputs. ``order_free``: the order-free bound instead (module
    docstring), which also holds for a conv evaluated in any other order.
    """
    order = check_order(order)
    order_free = _check_bool("order_free", order_free)
    x, w = _value("input", input, fmt), _value("weight", weight, fmt)
    b = None if bias is None else _value("bias", bias, fmt)
    g, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding)
    with_bound = eps is not None
    ex, ew, eb = _unpack_eps(eps, 2 if b is None else 3, with_bound)
    ex, ew, eb = _eps("eps[0] (input)", ex, x, with_bound), _eps("eps[1] (weight)", ew, w, with_bound), \
        _eps("eps[2] (bias)", eb, b, with_bound)
    C, K = x.shape[1], g.n_kernel
    Wt = np.ascontiguousarray(w.reshape(co, C, K).transpose(1, 0, 2))
    eWt = np.ascontiguousarray(ew.reshape(co, C, K).transpose(1, 0, 2)) if with_bound else None
    y, e = _gather_reduce(fmt, _flat(x), None if ex is None else _flat(ex), Wt, eWt, b, eb,
                          _table("taps", g), order, with_bound, engine, _is_obj(fmt, x, w, b),
                          order_free)
    shape = (x.shape[0], co) + g.out_spatial
    return y.reshape(shape), (None if e is None else e.reshape(shape))


def conv_backward(fmt: Format, xs, g_out, eps=None, eps_g=None, *, stride=1, padding=0,
                  order: str = "sequential", engine: str = "auto", order_free: bool = False):
    """Runtime VJPs of conv and (if ``eps`` is given) their replay bounds.

    ``xs`` = ``(input, weight)`` or ``(input, weight, bias)``; ``g_out`` = ``δ``, the
    gradient of the output. Returns ``(grads, bounds)``: ``grads = (gX, gK[, gB])`` in the
    orders of the module docstring; ``bounds`` the same-shaped replay bounds from
    ``eps = (ε_input, ε_weight[, ε_bias])`` and ``eps_g`` (``None`` without ``eps``):

    * ``gB``: replay of ``Σ δ`` with per-term errors ``ε_δ``;
    * ``gK``: replay of ``Σ x_pad·δ`` with the mul rule on ``(x, ε_x)``, ``(δ, ε_δ)``;
    * ``gX``: replay of ``Σ δ·W`` with the mul rule on ``(δ, ε_δ)``, ``(W, ε_W)``;

    with ``order_free``, the order-free bounds of the same three sums (module docstring).
    """
    order = check_order(order)
    order_free = _check_bool("order_free", order_free)
    x, w, b = _split_xs(xs, "conv VJP")
    x, w = _value("input", x, fmt), _value("weight", w, fmt)
    b = None if b is None else _value("bias", b, fmt)
    geo, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding)
    d = _value("g", g_out, fmt)
    N, C = x.shape[:2]
    if d.shape != (N, co) + geo.out_spatial:
        raise ValueError(f"g (output gradient) must have shape {(N, co) + geo.out_spatial}, "
                         f"got {d.shape}")
    with_bound = eps is not None
    ex, ew, _ = _unpack_eps(eps, 2 if b is None else 3, with_bound)
    ex, ew = _eps("eps[0] (input)", ex, x, with_bound), _eps("eps[1] (weight)", ew, w, with_bound)
    ed = _eps("eps_g", 0.0 if eps_g is None else eps_g, d, with_bound)
    obj = _is_obj(fmt, x, w, d)
    K = geo.n_kernel
    D, eD = _flat(d), None if ed is None else _flat(ed)
    gx, bx = _gather_reduce(fmt, D, eD, w.reshape(co, C, K),
                            None if ew is None else ew.reshape(co, C, K), None, None,
                            _table("hits", geo), order, with_bound, engine, obj, order_free)
    gk, bk = _weight_grad(fmt, _flat(x), None if ex is None else _flat(ex), D, eD,
                          _table("kernel", geo), order, with_bound, engine, obj, order_free)
    grads = [gx.reshape(x.shape), gk.reshape(w.shape)]
    bounds = [None if bx is None else bx.reshape(x.shape), None if bk is None else bk.reshape(w.shape)]
    if b is not None:
        gb, bb = _bias_grad(fmt, D, eD, order, with_bound, engine, obj, order_free)
        grads.append(gb)
        bounds.append(bb)
    return tuple(grads), (tuple(bounds) if with_bound else None)


# == conv_transpose: runtime and bounds ========================================================
def conv_transpose_forward(fmt: Format, input, weight, bias=None, eps=None, *, stride=1,
                           padding=0, order: str = "sequential", engine: str = "auto",
                           order_free: bool = False):
    """Runtime transpose conv and (if ``eps`` is given) its replay (or order-free) bound (see
    :func:`conv_forward`); order per output: ``ic`` outer, ``k`` row-major, bias last."""
    order = check_order(order)
    order_free = _check_bool("order_free", order_free)
    x, w = _value("input", input, fmt), _value("weight", weight, fmt)
    b = None if bias is None else _value("bias", bias, fmt)
    g, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding,
                          transpose=True)
    with_bound = eps is not None
    ex, ew, eb = _unpack_eps(eps, 2 if b is None else 3, with_bound)
    ex, ew, eb = _eps("eps[0] (input)", ex, x, with_bound), _eps("eps[1] (weight)", ew, w, with_bound), \
        _eps("eps[2] (bias)", eb, b, with_bound)
    C, K = x.shape[1], g.n_kernel
    y, e = _gather_reduce(fmt, _flat(x), None if ex is None else _flat(ex), w.reshape(C, co, K),
                          None if ew is None else ew.reshape(C, co, K), b, eb,
                          _table("hits_by_kernel", g), order, with_bound, engine,
                          _is_obj(fmt, x, w, b), order_free)
    shape = (x.shape[0], co) + g.in_spatial
    return y.reshape(shape), (None if e is None else e.reshape(shape))


def conv_transpose_backward(fmt: Format, xs, g_out, eps=None, eps_g=None, *, stride=1,
                            padding=0, order: str = "sequential", engine: str = "auto",
                            order_free: bool = False):
    """Runtime VJPs of conv_transpose and their replay (or order-free) bounds (see
    :func:`conv_backward`).

    ``gX`` is the conv of ``δ`` with ``W`` (``oc`` outer, ``k`` row-major); ``gW[ic, oc, k] =
    Σ_{n, j} x[n, ic, j]·δ[n, oc, j·stride + k − padding]`` (``n`` outer, ``j`` row-major);
    ``gB = Σ_{n, o} δ[n, oc, o]``.
    """
    order = check_order(order)
    order_free = _check_bool("order_free", order_free)
    x, w, b = _split_xs(xs, "conv_transpose VJP")
    x, w = _value("input", x, fmt), _value("weight", w, fmt)
    b = None if b is None else _value("bias", b, fmt)
    geo, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding,
                            transpose=True)
    d = _value("g", g_out, fmt)
    N, C = x.shape[:2]
    if d.shape != (N, co) + geo.in_spatial:
        raise ValueError(f"g (output gradient) must have shape {(N, co) + geo.in_spatial}, "
                         f"got {d.shape}")
    with_bound = eps is not None
    ex, ew, _ = _unpack_eps(eps, 2 if b is None else 3, with_bound)
    ex, ew = _eps("eps[0] (input)", ex, x, with_bound), _eps("eps[1] (weight)", ew, w, with_bound)
    ed = _eps("eps_g", 0.0 if eps_g is None else eps_g, d, with_bound)
    obj = _is_obj(fmt, x, w, d)
    K = geo.n_kernel
    D, eD = _flat(d), None if ed is None else _flat(ed)
    Wt = np.ascontiguousarray(w.reshape(C, co, K).transpose(1, 0, 2))
    eWt = None if ew is None else np.ascontiguousarray(ew.reshape(C, co, K).transpose(1, 0, 2))
    gx, bx = _gather_reduce(fmt, D, eD, Wt, eWt, None, None, _table("taps", geo), order,
                            with_bound, engine, obj, order_free)
    gw, bw = _weight_grad(fmt, D, eD, _flat(x), None if ex is None else _flat(ex),
                          _table("kernel", geo), order, with_bound, engine, obj, order_free)
    grads = [gx.reshape(x.shape), gw.reshape(w.shape)]
    bounds = [None if bx is None else bx.reshape(x.shape), None if bw is None else bw.reshape(w.shape)]
    if b is not None:
        gb, bb = _bias_grad(fmt, D, eD, order, with_bound, engine, obj, order_free)
        grads.append(gb)
        bounds.append(bb)
    return tuple(grads), (tuple(bounds) if with_bound else None)


# == spec: exact rationals, intervals in midpoint–radius form ==================================
def _im2col(x: np.ndarray, g: Geometry) -> np.ndarray:
    """(N, C, S) exact → (N, C, P, K) with ``x_pad[n, c, o·s + k − p]`` (0 in the padding)."""
    taps = _table("taps", g, compact=False)[0]
    S = x.shape[2]
    xe = np.concatenate([x, np.full(x.shape[:2] + (1,), mpq(0), dtype=object)], axis=2)
    return xe[:, :, np.where(taps < 0, S, taps)]


def _conv_exact(x, w, g: Geometry) -> np.ndarray:
    """Exact ``Σ_{c,k} x_pad[n, c, o·s + k]·W[oc, c, k]``: (N, C, S), (Co, C, K) → (N, Co, P)."""
    return np.tensordot(_im2col(x, g), w, axes=([1, 3], [1, 2])).transpose(0, 2, 1)


def _input_grad_exact(d, w, g: Geometry) -> np.ndarray:
    """Exact ``Σ_{oc, o, k: o·s + k − p = i} δ[n, oc, o]·W[oc, c, k]``: (N, Co, P), (Co, C, K)
    → (N, C, S) (col2im: for a fixed ``k`` the map ``o ↦ o·s + k − p`` is injective)."""
    taps = _table("taps", g, compact=False)[0]
    S = g.n_in
    cols = np.tensordot(d, w, axes=([1], [0]))                   # (N, P, C, K)
    out = np.full((d.shape[0], w.shape[1], S + 1), mpq(0), dtype=object)
    for k in range(g.n_kernel):
        idx = np.where(taps[:, k] < 0, S, taps[:, k])
        out[:, :, idx] += cols[:, :, :, k].transpose(0, 2, 1)   # column S collects the padding
    return out[:, :, :S]


def _kernel_grad_exact(x, d, g: Geometry) -> np.ndarray:
    """Exact ``Σ_{n, o} x_pad[n, c, o·s + k]·δ[n, oc, o]``: (N, C, S), (N, Co, P) → (Co, C, K)."""
    return np.tensordot(d, _im2col(x, g), axes=([0, 2], [0, 2]))


def _bilinear(f, a: Interval, b: Interval) -> Interval:
    """Enclosure of ``f(a, b)`` for ``f`` bilinear with nonnegative coefficients (a sum of
    products ``a_i·b_j``, as every conv map here is): with ``a = m_a + α``, ``|α| ≤ r_a`` and
    ``b = m_b + β``, ``|β| ≤ r_b``, ``f(a, b) − f(m_a, m_b) = f(m_a, β) + f(α, m_b) + f(α, β)``
    whose modulus is at most ``f(|m_a|, r_b) + f(r_a, |m_b|) + f(r_a, r_b)`` (exact rationals)."""
    ea, eb = a.is_exact, b.is_exact
    if ea and eb:
        v = f(a.lo, b.lo)
        return Interval(v, v)
    ma, mb = a.mid, b.mid
    mid = f(ma, mb)
    rad = None
    if not eb:
        rad = f(np.abs(ma), b.rad)
    if not ea:
        t = f(a.rad, np.abs(mb))
        rad = t if rad is None else rad + t
    if not (ea or eb):
        rad = rad + f(a.rad, b.rad)
    return Interval(mid - rad, mid + rad)


def _interval(name: str, v) -> Interval:
    if isinstance(v, Interval):
        return v
    try:
        return Interval.exact(v)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _flat_interval(v: Interval) -> Interval:
    return v.map_exact(_flat)


def _add_bias(y: Interval, b: Interval) -> Interval:
    """``y[n, oc, …] + b[oc]`` (exact interval addition)."""
    return y + b.map_exact(lambda a: a.reshape((1, -1) + (1,) * (len(y.shape) - 2)))


def _sum_interval(v: Interval, axis) -> Interval:
    """``Σ`` along ``axis`` (monotone: endpoints add up)."""
    if v.lo is v.hi:
        s = np.asarray(v.lo.sum(axis=axis), dtype=object)
        return Interval(s, s)
    return Interval(np.asarray(v.lo.sum(axis=axis), dtype=object),
                    np.asarray(v.hi.sum(axis=axis), dtype=object))


def conv_spec(input, weight, bias=None, *, stride=1, padding=0, order: str = "sequential",
              order_free: bool = False) -> Interval:
    """The conv over the reals (exact rationals; intervals in midpoint–radius form)."""
    x, w = _interval("input", input), _interval("weight", weight)
    b = None if bias is None else _interval("bias", bias)
    g, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding)
    C = x.shape[1]
    wf = w.map_exact(lambda a: a.reshape(co, C, g.n_kernel))
    y = _bilinear(lambda a, c: _conv_exact(a, c, g), _flat_interval(x), wf)
    if b is not None:
        y = _add_bias(y, b)
    return y.map_exact(lambda a: a.reshape((x.shape[0], co) + g.out_spatial))


def conv_vjp_spec(xs, g_out, *, stride=1, padding=0, order: str = "sequential",
                  order_free: bool = False) -> tuple:
    """Exact VJPs of conv: ``(gX, gK[, gB])`` as intervals (see :func:`conv_backward`)."""
    x, w, b = _split_xs(xs, "conv VJP")
    x, w = _interval("input", x), _interval("weight", w)
    d = _interval("g", g_out)
    geo, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding)
    N, C = x.shape[:2]
    if d.shape != (N, co) + geo.out_spatial:
        raise ValueError(f"g (output gradient) must have shape {(N, co) + geo.out_spatial}, "
                         f"got {d.shape}")
    wf = w.map_exact(lambda a: a.reshape(co, C, geo.n_kernel))
    df = _flat_interval(d)
    gx = _bilinear(lambda dd, ww: _input_grad_exact(dd, ww, geo), df, wf)
    gk = _bilinear(lambda xx, dd: _kernel_grad_exact(xx, dd, geo), _flat_interval(x), df)
    out = [gx.map_exact(lambda a: a.reshape(x.shape)), gk.map_exact(lambda a: a.reshape(w.shape))]
    if b is not None:
        out.append(_sum_interval(df, (0, 2)))
    return tuple(out)


def conv_transpose_spec(input, weight, bias=None, *, stride=1, padding=0,
                        order: str = "sequential", order_free: bool = False) -> Interval:
    """The transpose conv over the reals: the conv input-gradient map applied to ``input``."""
    x, w = _interval("input", input), _interval("weight", weight)
    b = None if bias is None else _interval("bias", bias)
    g, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding,
                          transpose=True)
    C = x.shape[1]
    wf = w.map_exact(lambda a: a.reshape(C, co, g.n_kernel))
    y = _bilinear(lambda a, c: _input_grad_exact(a, c, g), _flat_interval(x), wf)
    if b is not None:
        y = _add_bias(y, b)
    return y.map_exact(lambda a: a.reshape((x.shape[0], co) + g.in_spatial))


def conv_transpose_vjp_spec(xs, g_out, *, stride=1, padding=0, order: str = "sequential",
                            order_free: bool = False) -> tuple:
    """Exact VJPs of conv_transpose: ``gX = conv(δ, W)``, ``gW[ic, oc, k] = Σ x·δ``, ``gB``."""
    x, w, b = _split_xs(xs, "conv_transpose VJP")
    x, w = _interval("input", x), _interval("weight", w)
    d = _interval("g", g_out)
    geo, co = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding,
                            transpose=True)
    N, C = x.shape[:2]
    if d.shape != (N, co) + geo.in_spatial:
        raise ValueError(f"g (output gradient) must have shape {(N, co) + geo.in_spatial}, "
                         f"got {d.shape}")
    wf = w.map_exact(lambda a: a.reshape(C, co, geo.n_kernel))
    df = _flat_interval(d)
    gx = _bilinear(lambda dd, ww: _conv_exact(dd, ww, geo), df, wf)   # W as (C_out', C_in', K)
    gw = _bilinear(lambda dd, xx: _kernel_grad_exact(dd, xx, geo), df, _flat_interval(x))
    out = [gx.map_exact(lambda a: a.reshape(x.shape)), gw.map_exact(lambda a: a.reshape(w.shape))]
    if b is not None:
        out.append(_sum_interval(df, (0, 2)))
    return tuple(out)


# == primitive rules ===========================================================================
# Every rule takes ``order`` and ``order_free`` (the spec ignores both): the runtime is that of
# ``order``; the bounds are its replay, or with ``order_free`` the order-free bounds.
def conv_runtime(fmt: Format, input, weight, bias=None, *, stride=1, padding=0,
                 order: str = "sequential", order_free: bool = False):
    """Runtime conv (module docstring for the order)."""
    return conv_forward(fmt, input, weight, bias, stride=stride, padding=padding, order=order,
                        order_free=order_free)[0]


def conv_bound(fmt: Format, xs, eps, *, stride=1, padding=0, order: str = "sequential",
               order_free: bool = False):
    """Replay (or order-free) bound of the conv forward (see :func:`conv_forward`)."""
    return conv_fused(fmt, xs, eps, stride=stride, padding=padding, order=order,
                      order_free=order_free)[1]


def conv_vjp_runtime(fmt: Format, xs, g, *, stride=1, padding=0, order: str = "sequential",
                     order_free: bool = False):
    return conv_backward(fmt, xs, g, stride=stride, padding=padding, order=order,
                         order_free=order_free)[0]


def conv_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, stride=1, padding=0,
                   order: str = "sequential", order_free: bool = False):
    return conv_vjp_fused(fmt, xs, eps, g, eps_g, stride=stride, padding=padding, order=order,
                          order_free=order_free)[1]


def conv_transpose_runtime(fmt: Format, input, weight, bias=None, *, stride=1, padding=0,
                           order: str = "sequential", order_free: bool = False):
    """Runtime transpose conv (module docstring for the order)."""
    return conv_transpose_forward(fmt, input, weight, bias, stride=stride, padding=padding,
                                  order=order, order_free=order_free)[0]


def conv_transpose_bound(fmt: Format, xs, eps, *, stride=1, padding=0, order: str = "sequential",
                         order_free: bool = False):
    return conv_transpose_fused(fmt, xs, eps, stride=stride, padding=padding, order=order,
                                order_free=order_free)[1]


def conv_transpose_vjp_runtime(fmt: Format, xs, g, *, stride=1, padding=0,
                               order: str = "sequential", order_free: bool = False):
    return conv_transpose_backward(fmt, xs, g, stride=stride, padding=padding, order=order,
                                   order_free=order_free)[0]


def conv_transpose_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, stride=1, padding=0,
                             order: str = "sequential", order_free: bool = False):
    return conv_transpose_vjp_fused(fmt, xs, eps, g, eps_g, stride=stride, padding=padding,
                                    order=order, order_free=order_free)[1]


def _sample_shapes(rng, transpose: bool):
    d = int(rng.integers(1, 4))
    N, C, Co = (int(v) for v in rng.integers(1, 3 if d == 3 else 4, size=3))
    kernel = tuple(int(v) for v in rng.integers(1, 4 if d < 3 else 3, size=d))
    stride = tuple(int(v) for v in rng.integers(1, 3, size=d))
    padding = tuple(int(min(v, k - 1)) for v, k in zip(rng.integers(0, 2, size=d), kernel))
    hi = 7 if d == 1 else (5 if d == 2 else 4)
    spatial = tuple(int(max(k, v)) for k, v in zip(kernel, rng.integers(2, hi, size=d)))
    wshape = (C, Co) + kernel if transpose else (Co, C) + kernel
    return (N, C) + spatial, wshape, Co, {"stride": stride, "padding": padding}


def _sample(transpose: bool):
    def sample(rng, fmt: Format):
        xshape, wshape, co, params = _sample_shapes(rng, transpose)
        x = fmt.round(rng.standard_normal(xshape) * 2)
        w = fmt.round(rng.standard_normal(wshape) / math.sqrt(math.prod(wshape[1:])))
        b = fmt.round(rng.standard_normal(co))
        return (x, w, b), {**params, "order_free": bool(rng.random() < 0.25)}
    return sample


def conv_fused(fmt: Format, xs, eps, *, stride=1, padding=0, order: str = "sequential",
               order_free: bool = False):
    """``(conv_runtime, conv_bound)`` in one pass of the kernel."""
    x, w, b = _split_xs(xs, "conv")
    return conv_forward(fmt, x, w, b, eps=eps, stride=stride, padding=padding, order=order,
                        order_free=order_free)


def conv_vjp_fused(fmt: Format, xs, eps, g, eps_g, *, stride=1, padding=0,
                   order: str = "sequential", order_free: bool = False):
    """``(conv_vjp_runtime, conv_vjp_bound)`` in one pass."""
    return conv_backward(fmt, xs, g, eps, eps_g, stride=stride, padding=padding, order=order,
                         order_free=order_free)


def conv_transpose_fused(fmt: Format, xs, eps, *, stride=1, padding=0,
                         order: str = "sequential", order_free: bool = False):
    x, w, b = _split_xs(xs, "conv_transpose")
    return conv_transpose_forward(fmt, x, w, b, eps=eps, stride=stride, padding=padding,
                                  order=order, order_free=order_free)


def conv_transpose_vjp_fused(fmt: Format, xs, eps, g, eps_g, *, stride=1, padding=0,
                             order: str = "sequential", order_free: bool = False):
    return conv_transpose_backward(fmt, xs, g, eps, eps_g, stride=stride, padding=padding,
                                   order=order, order_free=order_free)


conv = register(Primitive("conv", conv_runtime, conv_spec, conv_bound, conv_vjp_runtime,
                          conv_vjp_spec, conv_vjp_bound, _sample(False),
                          fused=conv_fused, vjp_fused=conv_vjp_fused, contraction=True))

conv_transpose = register(Primitive(
    "conv_transpose", conv_transpose_runtime, conv_transpose_spec, conv_transpose_bound,
    conv_transpose_vjp_runtime, conv_transpose_vjp_spec, conv_transpose_vjp_bound, _sample(True),
    fused=conv_transpose_fused, vjp_fused=conv_transpose_vjp_fused, contraction=True))
