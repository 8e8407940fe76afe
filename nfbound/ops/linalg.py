"""Dot products, matrix–vector and matrix products, and linear layers.

Every output entry is a rounded reduction ``Σ_j RN(a_j·b_j)``: each product is rounded once,
then the products are accumulated with a rounding after every addition, in ``order``
(``"sequential"`` — TorchLean's, the default —, ``"reversed"``, ``"pairwise"``,
``"blocked:B"``; :mod:`nfbound.ops.accumulate`). The forward bound is the replay (docs/design.md §4)

    term  ε_j = |â_j|·ε_{b_j} + |b̂_j|·ε_{a_j} + ε_{a_j}·ε_{b_j} + r_mul,j    (mul_error)
    sum   e_k = e_{k−1} + ε_k + r_add,k                                      (accumulate)

with ``r`` the rounding term of each operation (0 when an operand is 0: the operation is
exact). ``order_free=True`` gives instead :func:`order_free_dot_bound`, valid for *any*
evaluation order, blocking and FMA — a bound for BLAS outputs whose order is unknown (for
``linear`` the bias is one more term of that bound, so it may enter anywhere).

Runtime operands and output gradients must be values of the format (finite, on its grid:
:func:`nfbound.ops.checks.format_value`, checked once per call, ``ValueError`` naming the
argument otherwise): the rounded operations and the bounds assume it.

Shapes (PyTorch semantics, never silent broadcasting of the contracted dimension):

* ``dot(x, y)``: two 1-D arrays of the same length → scalar (shape ``()``);
* ``matvec(A, x)``: ``A (m, n)``, ``x (n,)`` → ``(m,)``;
* ``matmul(A, B)``: ``torch.matmul``: ``(..., m, n) @ (..., n, k) → (..., m, k)``; a 1-D ``A``
  is ``(1, n)`` and a 1-D ``B`` is ``(n, 1)`` with that dimension removed from the result;
  batch dimensions broadcast the torch (NumPy) way;
* ``linear(input, weight, bias=None)``: ``torch.nn.functional.linear``: ``input (..., in)``,
  ``weight (out, in)``, ``bias (out,)``; ``y = x·Wᵀ + b`` with the bias added *last*, after
  the rounded sum (TorchLean's order: ``RN(RN(Σ_j RN(x_j W_oj)) + b_o)``).

VJPs (``δ`` the output gradient) are rounded reductions with the same rules and ``order``:
``dA = δ·Bᵀ`` (sum over the columns of ``δ``), ``dB = Aᵀ·δ`` (sum over the rows); where an
operand was broadcast along batch dimensions its gradient also sums over them, as one
reduction over ``(broadcast batch indices…, row/column)`` in row-major order (batch outer).
For ``linear``: ``d_input = δ·W``, ``d_weight = δᵀ·x`` summed over all leading (batch)
positions in row-major order (batch outer, then rows), ``d_bias = Σ δ`` over the same
positions.

Speed: reductions are evaluated one reduction index at a time, vectorised over all outputs
(:func:`~nfbound.ops.reduce.stream_reduce`); for compiled formats (``fmt.fast_ops``) the
sequential, reversed and blocked orders run a fused Numba kernel computing the runtime and the
replay bound in one pass, bit for bit equal to the generic path (tested) — with one deliberate
exception: for binary64 products that underflow (``ulp = 2^−1074``) the kernel charges
``2^−1074`` where ``bounds.rounding.rounding_term`` computes ``ulp·0.5``, which rounds to 0.
The pairwise order uses the generic path.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..bounds.rounding import _saturates, guard_nonfinite
from ..bounds.upward import abs_up, add_up, mul_up, sum_up
from ..formats import Format
from ..formats.fast import _ABS, FTZ, _bits, _from_bits, op_scalar, smallest_normal
from . import checks
from .accumulate import check_order, order_free_bound, overflow_guard, rounded_add
from .elementwise import mul_error
from .interval import Interval, exact_array
from .primitive import Primitive, register
from .reduce import _check_bool, _zeros_like_runtime, order_free_sum_bound, stream_reduce


# =============================================================================================
# The fused kernel (compiled formats): runtime and replay bound of (Bt, m, n) @ (Bt, n, k)
# =============================================================================================
_INF_BITS = np.int64(0x7FF0000000000000)


@numba.njit(cache=True, nogil=True)
def _op(op, a, b, p, emin, mx, rnd, ovf, simple):
    """One rounded operation (a non-inlined wrapper: keeps the kernels quick to compile)."""
    return op_scalar(op, a, b, p, emin, mx, rnd, ovf, simple)


@numba.njit(cache=True, nogil=True)
def _rounding_term(t, p, emin, mx, rnd, nearest, saturates):
    """``bounds.rounding.rounding_term`` for one value of an FLT format that fits binary64:
    ``ulp(t)/2`` (nearest) or ``ulp(t)`` (directed) with ``ulp(t) = 2^max(mag(t) − p, emin)``
    and ``ulp(0) = 2^emin``; ``b_min`` for ``|t| < b_min`` when the rounding code ``rnd``
    carries a subnormal flag (``Format.underflow_term``); ``inf`` for a non-finite ``t`` or a
    saturated ``|t| = max_finite``.

    ``ulp`` is the exact power of two built from the exponent field: ``mag(t) = E − 1022``
    for a normal binary64 ``t`` with biased exponent ``E``; a binary64 subnormal or zero ``t``
    has ``max(mag − p, emin) = emin`` (only binary64 itself has such format values, and its
    ``p = 53``). Same value as ``rounding_term`` bit for bit, except where ``ulp/2 = 2^−1075``
    (binary64 products that underflow): that is not a binary64 number, NumPy's ``ulp * 0.5``
    rounds it to an unsound 0, and this returns ``2^−1074``.
    """
    bits = _bits(t) & _ABS
    E = bits >> 52
    if E == 0x7FF:
        return math.inf
    if saturates and abs(t) == mx:
        return math.inf
    if rnd >= FTZ and abs(t) < smallest_normal(p, emin):
        return smallest_normal(p, emin)
    c = emin
    if E != 0:
        c = max(E - 1022 - p, emin)
    if c >= -1022:
        u = _from_bits(np.int64(c + 1023) << 52)
    else:
        u = _from_bits(np.int64(1) << (c + 1074))
    if not nearest:
        return u
    if c == -1074:
        return u            # ulp/2 = 2^−1075 is not a binary64 number: round it up
    return u * 0.5


@numba.njit(cache=True, nogil=True)
def _up(v):
    """``np.nextafter(v, +inf)`` for ``v ≥ +0`` (bounds are nonnegative and never −0 here):
    the next bit pattern; ``inf`` and NaN stay."""
    b = _bits(v)
    if b >= _INF_BITS:          # +inf or NaN (negative patterns do not occur)
        return v
    return _from_bits(b + 1)


@numba.njit(cache=True, nogil=True)
def _mul_up(a, b):
    """``upward.mul_up``: 0 if a factor is 0, else one step up of ``RN(a·b)``."""
    if a == 0.0 or b == 0.0:
        return 0.0
    return _up(a * b)


@numba.njit(cache=True, nogil=True)
def _add_step(acc, t):
    """``upward.add_up``'s step: adding an exact 0 is exact (no step), else ``up(acc + t)``."""
    if t == 0.0:
        return acc
    if acc == 0.0:
        return t
    return _up(acc + t)


@numba.njit(cache=True, nogil=True)
def _matmul_rows(A, EA, BT, EBT, with_bound, p, emin, mx, rnd, ovf, simple, nearest,
                 saturates, C, E, r0, r1):
    """Sequential ``C[b,i,l] = Σ_j RN(A[b,i,j]·BT[b,l,j])`` and its replay bound ``E`` for the
    flattened rows ``r0 ≤ b·m + i < r1``.

    Exactly the generic path's operations, in the same order: the term bound is
    ``add_up(|a|ε_x, |x|ε_a, ε_aε_x, r_mul)`` (``mul_error``), the accumulation
    ``e ← add_up(e, ε_t, r_add)`` (``rounded_add``), ``t_0`` taken exactly (``0 + t_0``);
    ``add_up`` steps up after every addition of a nonzero term (:func:`_add_step`).
    """
    m, n = A.shape[1], A.shape[2]
    k = BT.shape[1]
    for r in range(r0, r1):
        b = r // m
        i = r - b * m
        for col in range(k):
            s = 0.0
            e = 0.0
            for j in range(n):
                a = A[b, i, j]
                x = BT[b, col, j]
                t = _op(2, a, x, p, emin, mx, rnd, ovf, simple)
                et = 0.0
                if with_bound:
                    ea = EA[b, i, j]
                    ex = EBT[b, col, j]
                    rt = 0.0
                    if a != 0.0 and x != 0.0:
                        rt = _rounding_term(t, p, emin, mx, rnd, nearest, saturates)
                    et = _mul_up(abs(a), ex)
                    et = _add_step(et, _mul_up(abs(x), ea))
                    et = _add_step(et, _mul_up(ea, ex))
                    et = _add_step(et, rt)
                    if et != et:                     # mul_error: a NaN bound is inf
                        et = math.inf
                if j == 0:
                    s = t
                    e = et
                else:
                    s2 = _op(0, s, t, p, emin, mx, rnd, ovf, simple)
                    if with_bound:
                        ra = 0.0
                        if s != 0.0 and t != 0.0:
                            ra = _rounding_term(s2, p, emin, mx, rnd, nearest, saturates)
                        e = _add_step(_add_step(e, et), ra)
                    s = s2
            C[b, i, col] = s
            E[b, i, col] = e


@numba.njit(cache=True, nogil=True, parallel=True)
def _matmul_parallel(A, EA, BT, EBT, with_bound, p, emin, mx, rnd, ovf, simple, nearest,
                     saturates, C, E, chunk):
    """:func:`_matmul_rows` over chunks of rows in parallel (outputs are independent)."""
    rows = A.shape[0] * A.shape[1]
    nchunks = (rows + chunk - 1) // chunk
    for c in numba.prange(nchunks):
        _matmul_rows(A, EA, BT, EBT, with_bound, p, emin, mx, rnd, ovf, simple, nearest,
                     saturates, C, E, c * chunk, min(rows, (c + 1) * chunk))


_PARALLEL_WORK = 1 << 17   # multiply-adds below which the serial kernel is faster


def _kernel_mm3(fmt: Format, A, EA, B, EB, need_bound: bool):
    p, emin, mx, rnd, ovf, simple = fmt.kernel_params
    req = (lambda a: np.require(a, np.float64, ["C", "W"]))   # one compiled specialisation
    A = req(A)
    BT = req(np.swapaxes(B, -1, -2))
    if need_bound:
        EA, EBT = req(EA), req(np.swapaxes(EB, -1, -2))
    else:
        EA = EBT = np.zeros((1, 1, 1))
    nb, m, n = A.shape
    k = BT.shape[1]
    C = np.zeros((nb, m, k))
    E = np.zeros((nb, m, k))
    args = (A, EA, BT, EBT, need_bound, p, emin, mx, rnd, ovf, bool(simple), fmt.is_nearest,
            fmt.max_finite is not None and _saturates(fmt), C, E)
    rows = nb * m
    if rows > 1 and rows * k * n >= _PARALLEL_WORK:
        _matmul_parallel(*args, max(1, rows // (4 * numba.get_num_threads())))
    else:
        _matmul_rows(*args, 0, rows)
    return fmt._no_inf(C), (E if need_bound else None)


# =============================================================================================
# The contraction engine: (Bt, m, n) @ (Bt, n, k)
# =============================================================================================
def _use_kernel(fmt: Format, A, B) -> bool:
    return fmt.fast_ops and np.asarray(A).dtype != object and np.asarray(B).dtype != object


def _mm3(fmt: Format, A, EA, B, EB, order: str = "sequential", need_bound: bool = True,
         kernel: bool = True):
    """Runtime ``C = A @ B`` (every product and partial sum rounded, in ``order`` along ``n``)
    and its replay bound, for ``A (Bt, m, n)``, ``B (Bt, n, k)`` (``EA``, ``EB`` their bounds,
    unused when ``need_bound`` is false). ``kernel=False`` forces the generic path."""
    order = check_order(order)
    nb, m, n = A.shape
    k = B.shape[-1]
    if n == 0:
        return _zeros_like_runtime(A, (nb, m, k)), (np.zeros((nb, m, k)) if need_bound else None)
    if kernel and _use_kernel(fmt, A, B) and order != "pairwise":
        if order == "sequential":
            return _kernel_mm3(fmt, A, EA, B, EB, need_bound)
        if order == "reversed":
            return _kernel_mm3(fmt, A[..., ::-1], None if EA is None else EA[..., ::-1],
                               B[:, ::-1, :], None if EB is None else EB[:, ::-1, :], need_bound)
        size = int(order.split(":", 1)[1])
        blocks = [_kernel_mm3(fmt, A[..., i:i + size], None if EA is None else EA[..., i:i + size],
                              B[:, i:i + size, :], None if EB is None else EB[:, i:i + size, :],
                              need_bound) for i in range(0, n, size)]
        return stream_reduce(fmt, len(blocks), blocks.__getitem__, "sequential", need_bound)

    def term(j: int):
        a, b = A[:, :, j, None], B[:, None, j, :]
        if not need_bound:
            return fmt.mul(a, b), None
        return mul_error(fmt, a, EA[:, :, j, None], b, EB[:, None, j, :])
    return stream_reduce(fmt, n, term, order, need_bound, zero=_zeros_like_runtime(A, (nb, m, k)))


def order_free_dot_bound(fmt: Format, abs_products_sum, n: int, eps_sum) -> np.ndarray:
    """Bound of ``Σ_{j<n} â_j b̂_j`` evaluated in *any* way (any order or tree, blocking, FMA,
    wider intermediate formats converted once at the end) against the spec ``Σ a_j b_j``,
    given upper bounds ``S ≥ Σ|â_j b̂_j|`` and ``P ≥ Σ (|â_j|ε_{b_j} + |b̂_j|ε_{a_j} +
    ε_{a_j}ε_{b_j})`` (``|â b̂ − a b| ≤ |â|ε_b + |b̂|ε_a + ε_aε_b``). With ``N = n + 1``:

        |ŷ − Σ a b| ≤ γ_N·S + K·τ·(1 + γ_{N−1}) + P        (when no rounding overflows)

    — ``accumulate.order_free_bound`` over the ``n`` exact products (its proof): a product
    meets at most ``N`` roundings (its own or the FMA's, ``n − 1`` additions, a final
    conversion); ``τ = fmt.underflow_term`` and ``K = N`` in gradual underflow (the product
    roundings and the conversion: additions are exact below ``b_min``), ``K = 2n`` in the flush
    modes (the additions too). ``inf`` where the exact operand of some rounding could exceed
    the largest finite value (:func:`~nfbound.ops.accumulate.overflow_guard`) — otherwise a
    saturating format could hide an overflow. ``γ_N = inf`` once ``N·u ≥ 1`` (bfloat16 from
    ``n = 255``, float8_e4m3fn from ``n = 15``): the bound is then vacuous. Fixed point (no
    precision): ``γ = 0``, only the ``θ``'s.
    """
    if n <= 0:
        return np.asarray(eps_sum, dtype=np.float64) + 0.0
    b, z = order_free_bound(fmt, abs_products_sum, n, eps_sum, products=True)
    return overflow_guard(fmt, z, b)


def _mm3_order_free(fmt: Format, A, EA, B, EB, bias=None) -> np.ndarray:
    """:func:`order_free_dot_bound` of every entry of ``A @ B`` (``S`` and ``P`` accumulated
    upward one reduction index at a time).

    ``bias = (b, ε_b)`` (broadcast to the output) makes ``b`` one more term of every sum: the
    product ``b·1``, exact, so ``S`` gains ``|b|``, ``P`` gains ``ε_b`` and ``n`` becomes
    ``n + 1``. The bound then holds wherever the bias enters the evaluation tree (first,
    last, as the addend of an FMA, as the initial value of a BLAS ``C``)."""
    nb, m, n = A.shape
    k = B.shape[-1]
    absA, absB = abs_up(A), abs_up(B)
    S = np.zeros((nb, m, k))
    P = np.zeros((nb, m, k))
    for j in range(n):
        a, b = absA[:, :, j, None], absB[:, None, j, :]
        ea, eb = EA[:, :, j, None], EB[:, None, j, :]
        S = add_up(S, mul_up(a, b))
        P = add_up(P, mul_up(a, eb), mul_up(b, ea), mul_up(ea, eb))
    if bias is not None:
        S = add_up(S, abs_up(bias[0]))
        P = add_up(P, bias[1])
        n += 1
    return order_free_dot_bound(fmt, S, n, P)


def _contract(fmt: Format, A, EA, B, EB, order: str, order_free: bool, need_bound: bool = True,
              bias=None):
    """``(C, bound)`` for ``A (Bt, m, n) @ B (Bt, n, k)`` — replay or order-free bound.

    ``bias = (b, ε_b)`` (``b`` broadcast to the output; ``ε_b`` unused without bounds) is
    added to the rounded sums at runtime, last (``RN(C + b)``). Its bound: the replay rule of
    that addition (``rounded_add``), or, with ``order_free``, ``b`` as term ``n + 1`` of the
    order-free bound (:func:`_mm3_order_free`) — so that a library adding the bias first, or
    in an FMA, is covered too. The bound is ``inf`` where ``C`` overflowed
    (``bounds.rounding.guard_nonfinite``)."""
    C, E = _mm3(fmt, A, EA, B, EB, order, need_bound and not order_free)
    if bias is not None:
        b = np.broadcast_to(bias[0], C.shape)
        if need_bound and not order_free:
            C, E = rounded_add(fmt, C, E, b, np.broadcast_to(bias[1], C.shape))
        else:
            C = fmt.add(C, b)
    if need_bound and order_free:
        ob = None if bias is None else (np.broadcast_to(bias[0], C.shape),
                                        np.broadcast_to(bias[1], C.shape))
        E = _mm3_order_free(fmt, A, EA, B, EB, ob)
    return C, (None if E is None else guard_nonfinite(fmt, C, E))


# =============================================================================================
# Shapes (torch.matmul semantics)
# =============================================================================================
def _matmul_shapes(sa: tuple, sb: tuple, na: str = "A", nb: str = "B"):
    """``(a2, b2, batch, out)``: the 2-D-or-more shapes of both operands after torch's 1-D
    promotion, the broadcast batch shape and the result's shape. ``ValueError`` naming the
    argument on a scalar operand, a contracted-dimension mismatch or batch dimensions that do
    not broadcast."""
    if len(sa) == 0:
        raise ValueError(f"{na} must have at least one dimension, got a scalar")
    if len(sb) == 0:
        raise ValueError(f"{nb} must have at least one dimension, got a scalar")
    a2 = (1,) + sa if len(sa) == 1 else sa
    b2 = sb + (1,) if len(sb) == 1 else sb
    if a2[-1] != b2[-2]:
        raise ValueError(f"{na} and {nb} do not contract: {na} has shape {sa} ({a2[-1]} columns) "
                         f"but {nb} has shape {sb} ({b2[-2]} rows)")
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        raise ValueError(f"batch dimensions of {na} {a2[:-2]} and {nb} {b2[:-2]} do not "
                         f"broadcast") from None
    out = batch + ((a2[-2],) if len(sa) > 1 else ()) + ((b2[-1],) if len(sb) > 1 else ())
    return a2, b2, batch, out


def _full(x, shape2: tuple, batch: tuple) -> np.ndarray:
    """``x`` reshaped to ``shape2`` then broadcast to ``batch + shape2[-2:]`` (a copy)."""
    return np.array(np.broadcast_to(np.reshape(x, shape2), batch + shape2[-2:]))


def _to3(x: np.ndarray) -> np.ndarray:
    """Batch dimensions flattened (row-major) into one; explicit size so that empty arrays
    reshape too."""
    return x.reshape((int(np.prod(x.shape[:-2])),) + x.shape[-2:])


def _reduced_axes(shape2: tuple, batch: tuple) -> list[int]:
    """Batch axes (of ``batch``) along which an operand of shape ``shape2`` was broadcast."""
    nb = len(batch)
    own = (1,) * (nb - (len(shape2) - 2)) + shape2[:-2]
    return [i for i in range(nb) if own[i] == 1 and batch[i] != 1]


def _grad_contract(fmt: Format, X, EX, Y, EY, red: list[int], order: str, order_free: bool,
                   need_bound: bool):
    """``Σ_{r ∈ red, q} X[..., p, q]·Y[..., q, s]`` for ``X (F…, p, q)``, ``Y (F…, q, s)``:
    a contraction over the batch axes ``red`` and ``q`` — one reduction, row-major over
    ``(red…, q)`` (batch outer). Returns results of shape ``(kept batch…, p, s)``."""
    nF = X.ndim - 2
    kept = [i for i in range(nF) if i not in red]
    F = X.shape[:nF]
    pk = int(np.prod([F[i] for i in kept])) if kept else 1
    pr = int(np.prod([F[i] for i in red])) if red else 1
    p, q, s = X.shape[-2], X.shape[-1], Y.shape[-1]

    def lay_x(a):
        return np.transpose(a, kept + [nF] + red + [nF + 1]).reshape(pk, p, pr * q)

    def lay_y(a):
        return np.transpose(a, kept + red + [nF, nF + 1]).reshape(pk, pr * q, s)
    C, E = _contract(fmt, lay_x(X), None if EX is None else lay_x(EX), lay_y(Y),
                     None if EY is None else lay_y(EY), order, order_free, need_bound)
    shape = tuple(F[i] for i in kept) + (p, s)
    return C.reshape(shape), (None if E is None else E.reshape(shape))


def _place(grad: np.ndarray, shape2: tuple, batch: tuple, shape: tuple) -> np.ndarray:
    """A gradient of shape ``(kept batch…, p, s)`` back to the operand's own shape."""
    nb = len(batch)
    own = (1,) * (nb - (len(shape2) - 2)) + shape2[:-2]
    return grad.reshape(own + shape2[-2:]).reshape(shape)


# =============================================================================================
# matmul
# =============================================================================================
def _eps(name: str, e, x) -> np.ndarray:
    return checks.eps_like(name, e, x).astype(np.float64)


def matmul_error(fmt: Format, A, eA, B, eB, order: str = "sequential",
                 order_free: bool = False, names: tuple[str, str] = ("A", "B")):
    """``(A @ B, bound)``: runtime ``torch.matmul`` with every product and partial sum rounded
    (``order`` along the contracted index) and its replay (or order-free) bound.

    ``A`` and ``B`` must hold values of ``fmt`` (``checks.format_value``; errors name them
    ``names``, and their bounds ``eps_<name>``)."""
    na, nb = names
    A, B = checks.format_value(na, A, fmt), checks.format_value(nb, B, fmt)
    order_free = _check_bool("order_free", order_free)
    a2, b2, batch, out = _matmul_shapes(np.shape(A), np.shape(B), na, nb)
    eA, eB = _eps(f"eps_{na}", eA, A), _eps(f"eps_{nb}", eB, B)
    C, E = _contract(fmt, _to3(_full(A, a2, batch)), _to3(_full(eA, a2, batch)),
                     _to3(_full(B, b2, batch)), _to3(_full(eB, b2, batch)), order, order_free)
    return C.reshape(out), E.reshape(out)


def matmul_runtime(fmt: Format, A, B, *, order: str = "sequential", order_free: bool = False):
    """``torch.matmul(A, B)`` in the format: ``C = Σ_j RN(A_ij·B_jk)`` accumulated in
    ``order`` (each partial sum rounded)."""
    return _matmul_runtime(fmt, A, B, order, order_free, ("A", "B"))


def _matmul_runtime(fmt: Format, A, B, order: str, order_free: bool, names: tuple[str, str]):
    """:func:`matmul_runtime` with the operands named ``names`` in errors."""
    A, B = checks.format_value(names[0], A, fmt), checks.format_value(names[1], B, fmt)
    _check_bool("order_free", order_free)
    a2, b2, batch, out = _matmul_shapes(np.shape(A), np.shape(B), *names)
    C, _ = _mm3(fmt, _to3(_full(A, a2, batch)), None, _to3(_full(B, b2, batch)), None, order,
                need_bound=False)
    return C.reshape(out)


def _imatmul(A: Interval, B: Interval) -> Interval:
    """Exact enclosure of ``A @ B`` (NumPy matmul broadcasting, ≥ 2-D operands): exact
    rational matmul for exact operands, else the sum of the interval products' hulls."""
    if A.lo is A.hi and B.lo is B.hi:
        v = exact_array(np.asarray(np.matmul(A.lo, B.lo), dtype=object))
        return Interval(v, v)
    prod = A.map_exact(lambda a: a[..., :, :, None]) * B.map_exact(lambda b: b[..., None, :, :])
    lo = exact_array(np.asarray(np.sum(prod.lo, axis=-2), dtype=object))
    hi = exact_array(np.asarray(np.sum(prod.hi, axis=-2), dtype=object))
    return Interval(lo, hi)


def _transpose(x: Interval) -> Interval:
    return x.map_exact(lambda a: np.swapaxes(a, -1, -2))


def _reshape(x: Interval, shape: tuple) -> Interval:
    return x.map_exact(lambda a: np.reshape(a, shape))


def _isum_axes(x: Interval, axes: list[int]) -> Interval:
    if not axes:
        return x
    return x.map_exact(lambda a: exact_array(np.asarray(np.sum(a, axis=tuple(axes),
                                                                  keepdims=True), dtype=object)))


def matmul_spec(A: Interval, B: Interval, *, order: str = "sequential",
                order_free: bool = False) -> Interval:
    a2, b2, batch, out = _matmul_shapes(A.shape, B.shape)
    return _reshape(_imatmul(_reshape(A, a2), _reshape(B, b2)), out)


def matmul_bound(fmt: Format, xs, eps, *, order: str = "sequential", order_free: bool = False):
    """Replay bound per output entry (term: ``mul_error``; sum: ``e_k = e_{k−1} + ε_k + r_k``),
    or :func:`order_free_dot_bound` with ``order_free``."""
    return matmul_fused(fmt, xs, eps, order=order, order_free=order_free)[1]


def _matmul_vjp(fmt: Format, A, eA, B, eB, g, eg, order: str, order_free: bool,
                need_bound: bool, names: tuple[str, str] = ("A", "B")):
    """Runtime gradients ``(dA, dB)`` and (if ``need_bound``) their bounds; the operands and
    ``g`` must be values of ``fmt`` (errors name the operands ``names``)."""
    na, nb = names
    A, B = checks.format_value(na, A, fmt), checks.format_value(nb, B, fmt)
    order_free = _check_bool("order_free", order_free)
    sa, sb = np.shape(A), np.shape(B)
    a2, b2, batch, out = _matmul_shapes(sa, sb, na, nb)
    g = checks.format_value("g", g, fmt)
    if np.shape(g) != out:
        raise ValueError(f"g has shape {np.shape(g)}, expected the output shape {out}")
    m, k = a2[-2], b2[-1]
    G = np.reshape(g, batch + (m, k))
    EG = _eps("eps_g", eg, g).reshape(batch + (m, k)) if need_bound else None
    Af, Bf = _full(A, a2, batch), _full(B, b2, batch)
    EAf = _full(_eps(f"eps_{na}", eA, A), a2, batch) if need_bound else None
    EBf = _full(_eps(f"eps_{nb}", eB, B), b2, batch) if need_bound else None
    sw = (lambda x: None if x is None else np.swapaxes(x, -1, -2))
    dA, edA = _grad_contract(fmt, G, EG, sw(Bf), sw(EBf), _reduced_axes(a2, batch), order,
                             order_free, need_bound)
    dB, edB = _grad_contract(fmt, sw(Af), sw(EAf), G, EG, _reduced_axes(b2, batch), order,
                             order_free, need_bound)
    grads = (_place(dA, a2, batch, sa), _place(dB, b2, batch, sb))
    bounds = None if not need_bound else (_place(edA, a2, batch, sa), _place(edB, b2, batch, sb))
    return grads, bounds


def matmul_vjp_runtime(fmt: Format, xs, g, *, order: str = "sequential",
                       order_free: bool = False):
    """``dA = δ·Bᵀ``, ``dB = Aᵀ·δ`` (rounded reductions in ``order``; broadcast batch axes
    summed too, batch outer)."""
    A, B = xs
    return _matmul_vjp(fmt, A, 0.0, B, 0.0, g, 0.0, order, order_free, False)[0]


def matmul_vjp_spec(xs, g: Interval, *, order: str = "sequential", order_free: bool = False):
    A, B = xs
    a2, b2, batch, out = _matmul_shapes(A.shape, B.shape)
    G = _reshape(g, batch + (a2[-2], b2[-1]))
    dA = _isum_axes(_imatmul(G, _transpose(_reshape(B, b2))), _reduced_axes(a2, batch))
    dB = _isum_axes(_imatmul(_transpose(_reshape(A, a2)), G), _reduced_axes(b2, batch))
    # broadcast axes were summed with keepdims: the leading ones are now 1, reshape is exact
    return (_reshape(_reshape(dA, a2), A.shape), _reshape(_reshape(dB, b2), B.shape))


def matmul_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, order: str = "sequential",
                     order_free: bool = False):
    return matmul_vjp_fused(fmt, xs, eps, g, eps_g, order=order, order_free=order_free)[1]


def _sample_matmul(rng, fmt: Format):
    m, n, k = (int(v) for v in rng.integers(1, 6, size=3))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        sa, sb = (m, n), (n, k)
    elif kind == 1:
        b = int(rng.integers(1, 4))
        sa, sb = (b, m, n), (b, n, k)
    elif kind == 2:
        sa, sb = (2, 1, m, n), (3, n, k)
    else:
        sa, sb = (n,), (2, n, k)
    A = fmt.round(rng.standard_normal(sa) * 2)
    B = fmt.round(rng.standard_normal(sb) * 2)
    return (A, B), {"order": _sample_order(rng), "order_free": bool(rng.random() < 0.25)}


def _sample_order(rng) -> str:
    return str(rng.choice(["sequential", "reversed", "pairwise", "blocked:2"]))


def matmul_fused(fmt: Format, xs, eps, *, order: str = "sequential", order_free: bool = False):
    """``(matmul_runtime, matmul_bound)`` in one pass."""
    (A, B), (eA, eB) = xs, eps
    return matmul_error(fmt, A, eA, B, eB, order, order_free)


def matmul_vjp_fused(fmt: Format, xs, eps, g, eps_g, *, order: str = "sequential",
                     order_free: bool = False):
    """``(matmul_vjp_runtime, matmul_vjp_bound)`` in one pass."""
    (A, B), (eA, eB) = xs, eps
    return _matmul_vjp(fmt, A, eA, B, eB, g, eps_g, order, order_free, True)


matmul = register(Primitive("matmul", matmul_runtime, matmul_spec, matmul_bound,
                            matmul_vjp_runtime, matmul_vjp_spec, matmul_vjp_bound,
                            _sample_matmul, fused=matmul_fused, vjp_fused=matmul_vjp_fused,
                            contraction=True))


# =============================================================================================
# dot and matvec: matmul with their own shape contracts and argument names
# =============================================================================================
def _check_dot(x, y) -> None:
    sx, sy = np.shape(x), np.shape(y)
    if len(sx) != 1:
        raise ValueError(f"x must be 1-D, got shape {sx}")
    if len(sy) != 1:
        raise ValueError(f"y must be 1-D, got shape {sy}")
    if sx != sy:
        raise ValueError(f"x and y must have the same length, got {sx[0]} and {sy[0]}")


def dot_runtime(fmt: Format, x, y, *, order: str = "sequential", order_free: bool = False):
    """``Σ_j RN(x_j·y_j)`` accumulated in ``order``."""
    _check_dot(x, y)
    return _matmul_runtime(fmt, x, y, order, order_free, ("x", "y"))


def dot_spec(x: Interval, y: Interval, *, order="sequential", order_free=False) -> Interval:
    _check_dot(x.lo, y.lo)
    return matmul_spec(x, y)


def dot_bound(fmt: Format, xs, eps, *, order="sequential", order_free=False):
    """Replay of the sum with ``mul_error`` terms (or the order-free bound)."""
    (x, y), (ex, ey) = xs, eps
    _check_dot(x, y)
    return matmul_error(fmt, x, ex, y, ey, order, order_free, ("x", "y"))[1]


def dot_vjp_runtime(fmt: Format, xs, g, *, order="sequential", order_free=False):
    """``(RN(g·y), RN(g·x))``."""
    x, y = xs
    _check_dot(x, y)
    return _matmul_vjp(fmt, x, 0.0, y, 0.0, g, 0.0, order, order_free, False, ("x", "y"))[0]


def dot_vjp_spec(xs, g: Interval, *, order="sequential", order_free=False):
    return matmul_vjp_spec(xs, g)


def dot_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, order="sequential", order_free=False):
    (x, y), (ex, ey) = xs, eps
    _check_dot(x, y)
    return _matmul_vjp(fmt, x, ex, y, ey, g, eps_g, order, order_free, True, ("x", "y"))[1]


def _sample_dot(rng, fmt: Format):
    n = int(rng.integers(1, 12))
    x, y = (fmt.round(rng.standard_normal(n) * 2) for _ in range(2))
    return (x, y), {"order": _sample_order(rng), "order_free": bool(rng.random() < 0.25)}


dot = register(Primitive("dot", dot_runtime, dot_spec, dot_bound, dot_vjp_runtime, dot_vjp_spec,
                         dot_vjp_bound, _sample_dot, contraction=True))


def _check_matvec(A, x) -> None:
    sa, sx = np.shape(A), np.shape(x)
    if len(sa) != 2:
        raise ValueError(f"A must be 2-D (m, n), got shape {sa}")
    if len(sx) != 1:
        raise ValueError(f"x must be 1-D (n,), got shape {sx}")
    if sa[1] != sx[0]:
        raise ValueError(f"A has {sa[1]} columns but x has length {sx[0]}")


def matvec_runtime(fmt: Format, A, x, *, order="sequential", order_free=False):
    """``y_i = Σ_j RN(A_ij·x_j)`` accumulated in ``order``."""
    _check_matvec(A, x)
    return _matmul_runtime(fmt, A, x, order, order_free, ("A", "x"))


def matvec_spec(A: Interval, x: Interval, *, order="sequential", order_free=False) -> Interval:
    _check_matvec(A.lo, x.lo)
    return matmul_spec(A, x)


def matvec_bound(fmt: Format, xs, eps, *, order="sequential", order_free=False):
    (A, x), (eA, ex) = xs, eps
    _check_matvec(A, x)
    return matmul_error(fmt, A, eA, x, ex, order, order_free, ("A", "x"))[1]


def matvec_vjp_runtime(fmt: Format, xs, g, *, order="sequential", order_free=False):
    """``dA = δ ⊗ x`` (one rounded product per entry), ``dx = Aᵀδ`` (rounded reduction)."""
    A, x = xs
    _check_matvec(A, x)
    return _matmul_vjp(fmt, A, 0.0, x, 0.0, g, 0.0, order, order_free, False, ("A", "x"))[0]


def matvec_vjp_spec(xs, g: Interval, *, order="sequential", order_free=False):
    return matmul_vjp_spec(xs, g)


def matvec_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, order="sequential", order_free=False):
    (A, x), (eA, ex) = xs, eps
    _check_matvec(A, x)
    return _matmul_vjp(fmt, A, eA, x, ex, g, eps_g, order, order_free, True, ("A", "x"))[1]


def _sample_matvec(rng, fmt: Format):
    m, n = (int(v) for v in rng.integers(1, 8, size=2))
    A = fmt.round(rng.standard_normal((m, n)) * 2)
    x = fmt.round(rng.standard_normal(n) * 2)
    return (A, x), {"order": _sample_order(rng), "order_free": bool(rng.random() < 0.25)}


matvec = register(Primitive("matvec", matvec_runtime, matvec_spec, matvec_bound,
                            matvec_vjp_runtime, matvec_vjp_spec, matvec_vjp_bound,
                            _sample_matvec, contraction=True))


# =============================================================================================
# linear: y = x·Wᵀ + b, bias added last
# =============================================================================================
def _linear_shapes(x, W, b) -> tuple[int, int, int]:
    """``(R, in, out)`` with ``R`` the number of leading (batch) positions of ``input``."""
    sx, sw = np.shape(x), np.shape(W)
    if len(sx) == 0:
        raise ValueError("input must have at least one dimension (..., in), got a scalar")
    if len(sw) != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {sw}")
    if sx[-1] != sw[1]:
        raise ValueError(f"input has {sx[-1]} features (last dimension) but weight has shape "
                         f"{sw} (in = {sw[1]})")
    if b is not None and np.shape(b) != (sw[0],):
        raise ValueError(f"bias must have shape ({sw[0]},), got {np.shape(b)}")
    return int(np.prod(sx[:-1])), sw[1], sw[0]


def _linear_values(fmt: Format, x, W, b):
    """The runtime inputs of ``linear`` as format values (``checks.format_value``)."""
    x, W = checks.format_value("input", x, fmt), checks.format_value("weight", W, fmt)
    return x, W, (None if b is None else checks.format_value("bias", b, fmt))


def linear_error(fmt: Format, x, ex, W, eW, b=None, eb=None, order: str = "sequential",
                 order_free: bool = False):
    """``(y, bound)`` of ``y = RN(RN(Σ_j RN(x_j W_oj)) + b_o)`` (bias last).

    Replay: the sum's replay bound (:func:`matmul_error`), then the bias addition adds
    ``ε_b + r`` (``rounded_add``: ``r = 0`` when the sum or the bias is 0). ``order_free``:
    :func:`order_free_dot_bound` over the ``in + 1`` terms ``x_j·W_oj`` and ``b_o`` (the bias
    as the exact product ``b_o·1``), valid for any evaluation order of the whole expression —
    bias first, last, or inside an FMA — as real libraries use (BLAS ``gemm`` with ``β = 1``
    starts from the bias).
    """
    x, W, b = _linear_values(fmt, x, W, b)
    order_free = _check_bool("order_free", order_free)
    R, nin, nout = _linear_shapes(x, W, b)
    out = np.shape(x)[:-1] + (nout,)
    X3 = np.reshape(x, (1, R, nin))
    WT = np.ascontiguousarray(np.swapaxes(W, 0, 1)).reshape(1, nin, nout)
    EX3 = _eps("eps_input", ex, x).reshape(1, R, nin)
    EWT = np.swapaxes(_eps("eps_weight", eW, W), 0, 1).reshape(1, nin, nout)
    bias = None if b is None else (b, _eps("eps_bias", 0.0 if eb is None else eb, b))
    S, E = _contract(fmt, X3, EX3, WT, EWT, order, order_free, bias=bias)
    return np.asarray(S[0]).reshape(out), np.asarray(E[0], dtype=np.float64).reshape(out)


def linear_runtime(fmt: Format, input, weight, bias=None, *, order: str = "sequential",  # noqa: A002
                   order_free: bool = False):
    """``torch.nn.functional.linear`` in the format: ``RN(RN(Σ_j RN(x_j W_oj)) + b_o)``, the
    sum in ``order``, the bias added last."""
    x, W, b = _linear_values(fmt, input, weight, bias)
    _check_bool("order_free", order_free)
    R, nin, nout = _linear_shapes(x, W, b)
    WT = np.ascontiguousarray(np.swapaxes(W, 0, 1)).reshape(1, nin, nout)
    S, _ = _contract(fmt, np.reshape(x, (1, R, nin)), None, WT, None, order, False,
                     need_bound=False, bias=None if b is None else (b, None))
    return np.asarray(S[0]).reshape(np.shape(x)[:-1] + (nout,))


def linear_spec(input: Interval, weight: Interval, bias: Interval | None = None, *,  # noqa: A002
                order="sequential", order_free=False) -> Interval:
    R, nin, nout = _linear_shapes(input.lo, weight.lo, None if bias is None else bias.lo)
    y = _imatmul(_reshape(input, (R, nin)), _transpose(weight))
    if bias is not None:
        y = y + bias.map_exact(lambda a: np.broadcast_to(a, (R, nout)))
    return _reshape(y, input.shape[:-1] + (nout,))


def linear_bound(fmt: Format, xs, eps, *, order="sequential", order_free=False):
    """Replay bound of the sum, then ``+ ε_b + r`` for the bias; or the order-free bound with
    the bias as one more term (:func:`linear_error`)."""
    return linear_fused(fmt, xs, eps, order=order, order_free=order_free)[1]


def _linear_vjp(fmt: Format, xs, eps, g, eg, order: str, order_free: bool, need_bound: bool):
    if len(xs) not in (2, 3):
        raise ValueError("linear takes (input, weight) or (input, weight, bias)")
    x, W, b = _linear_values(fmt, xs[0], xs[1], None if len(xs) == 2 else xs[2])
    order_free = _check_bool("order_free", order_free)
    R, nin, nout = _linear_shapes(x, W, b)
    out = np.shape(x)[:-1] + (nout,)
    g = checks.format_value("g", g, fmt)
    if np.shape(g) != out:
        raise ValueError(f"g has shape {np.shape(g)}, expected the output shape {out}")
    G = np.reshape(g, (1, R, nout))
    EG = _eps("eps_g", eg, g).reshape(1, R, nout) if need_bound else None
    X = np.reshape(x, (1, R, nin))
    EX = _eps("eps_input", eps[0], x).reshape(1, R, nin) if need_bound else None
    W3 = np.reshape(W, (1, nout, nin))
    EW = _eps("eps_weight", eps[1], W).reshape(1, nout, nin) if need_bound else None
    sw = (lambda a: None if a is None else np.ascontiguousarray(np.swapaxes(a, -1, -2)))
    dx, edx = _contract(fmt, G, EG, W3, EW, order, order_free, need_bound)       # δ·W
    dW, edW = _contract(fmt, sw(G), sw(EG), X, EX, order, order_free, need_bound)  # δᵀ·x
    grads = [np.asarray(dx).reshape(np.shape(x)), np.asarray(dW).reshape(np.shape(W))]
    bounds = None if not need_bound else [edx.reshape(np.shape(x)), edW.reshape(np.shape(W))]
    if b is not None:
        G2 = G[0]

        def term(j: int):
            return G2[j], (EG[0, j] if need_bound else None)
        db, edb = stream_reduce(fmt, R, term, order, need_bound and not order_free,
                                zero=_zeros_like_runtime(G2, (nout,)))
        grads.append(np.asarray(db).reshape(nout))
        if need_bound:
            if order_free:
                edb = guard_nonfinite(fmt, db, order_free_sum_bound(
                    fmt, sum_up(abs_up(G2), axis=0), R, sum_up(EG[0], axis=0)))
            bounds.append(np.asarray(edb, dtype=np.float64).reshape(nout))
    return tuple(grads), (None if bounds is None else tuple(bounds))


def linear_vjp_runtime(fmt: Format, xs, g, *, order="sequential", order_free=False):
    """``d_input = δ·W``; ``d_weight = δᵀ·x`` and ``d_bias = Σ δ`` summed over the leading
    positions of ``input`` in row-major order (batch outer, then rows), in ``order``."""
    return _linear_vjp(fmt, xs, (0.0,) * len(xs), g, 0.0, order, order_free, False)[0]


def linear_vjp_spec(xs, g: Interval, *, order="sequential", order_free=False):
    x, W = xs[0], xs[1]
    b = xs[2] if len(xs) == 3 else None
    R, nin, nout = _linear_shapes(x.lo, W.lo, None if b is None else b.lo)
    G = _reshape(g, (R, nout))
    dx = _reshape(_imatmul(G, W), x.shape)
    dW = _imatmul(_transpose(G), _reshape(x, (R, nin)))
    out = (dx, dW)
    if b is not None:
        out += (G.map_exact(lambda a: exact_array(np.asarray(np.sum(a, axis=0), dtype=object))),)
    return out


def linear_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, order="sequential", order_free=False):
    """Replay (or order-free) bounds of the three reductions."""
    return linear_vjp_fused(fmt, xs, eps, g, eps_g, order=order, order_free=order_free)[1]


def _sample_linear(rng, fmt: Format):
    nin, nout = (int(v) for v in rng.integers(1, 7, size=2))
    lead = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    x = fmt.round(rng.standard_normal(lead + (nin,)) * 2)
    W = fmt.round(rng.standard_normal((nout, nin)))
    xs = (x, W) if rng.random() < 0.3 else (x, W, fmt.round(rng.standard_normal(nout)))
    return xs, {"order": _sample_order(rng), "order_free": bool(rng.random() < 0.25)}


def linear_fused(fmt: Format, xs, eps, *, order="sequential", order_free=False):
    """``(linear_runtime, linear_bound)`` in one pass."""
    if len(xs) not in (2, 3) or len(eps) != len(xs):
        raise ValueError("linear takes (input, weight) or (input, weight, bias) with one bound each")
    b, eb = (xs[2], eps[2]) if len(xs) == 3 else (None, None)
    return linear_error(fmt, xs[0], eps[0], xs[1], eps[1], b, eb, order, order_free)


def linear_vjp_fused(fmt: Format, xs, eps, g, eps_g, *, order="sequential", order_free=False):
    """``(linear_vjp_runtime, linear_vjp_bound)`` in one pass."""
    if len(eps) != len(xs):
        raise ValueError("linear: one input bound per input")
    return _linear_vjp(fmt, xs, eps, g, eps_g, order, order_free, True)


linear = register(Primitive("linear", linear_runtime, linear_spec, linear_bound,
                            linear_vjp_runtime, linear_vjp_spec, linear_vjp_bound,
                            _sample_linear, fused=linear_fused, vjp_fused=linear_vjp_fused,
                            contraction=True))
