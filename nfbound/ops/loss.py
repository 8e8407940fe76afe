"""Loss primitives: ``mse_loss`` and ``cross_entropy`` (``reduction='mean'``, torch semantics).

Both return a 0-d array. The mean divides the rounded sum by the exact element count ``n``
(:func:`~nfbound.ops.pool.divide_by_count`: one rounding of ``ŝ/n``; ``n`` is not rounded to
the format). Reductions take ``order`` (default sequential, TorchLean) and ``order_free``:
with it (what an ``order=any`` arithmetic passes) the bounds hold for *every* evaluation of
the sums — mse_loss's ``Σ d̂²`` with the squares rounded or fused into the additions,
cross_entropy's exponential sums and its sum over rows — and every step after a sum is
bounded for every value that sum may take (``pool.order_free_mean_bound``,
``pool.any_rounding``, ``softmax.mul_any``). Targets are not differentiable: their gradient
is ``None``.

Library kernels (measured, ``tests/test_order_free_reductions.py``): PyTorch's binary32
losses lie within the ``torch-cpu-float32`` bounds. Its bfloat16/float16 kernels are not these
single ops: ``F.mse_loss`` rounds ``x − t`` and its square to storage (three ops: ``sub``,
``mul``, ``mean``), and ``F.cross_entropy`` is ``nll_loss`` of a stored ``log_softmax`` with
storage partial sums.

Inputs. The runtime, bound and VJP rules take runtime values: ``input``, the ``target`` of
``mse_loss`` and the upstream gradient ``g`` (a 0-d array, the loss's shape) must be finite
values of the format (``checks.format_value``; a ``ValueError`` names the argument
otherwise). The ``target`` of ``cross_entropy`` holds class indices, not format values:
integers (or integral numbers) in ``[0, C)``, with error bound 0.

Overflow and domain errors. A runtime step that overflows (±inf, NaN or a saturated
±max_finite: a squared difference, a sum, an exponential) makes the bound ``inf`` — never a
finite wrong number. Neither loss has a domain error for finite inputs: the logarithm of
cross_entropy is taken of a sum ``≥ 1`` (spec and runtime alike).
"""
from __future__ import annotations

import numpy as np
from gmpy2 import mpq

from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import abs_up, add_up, div_up, mul_up, sum_up
from ..formats import Format
from . import checks
from .accumulate import check_order, overflow_guard
from .elementwise import _abs_down, _sterbenz, _sub_down, _zero, mul_error
from .interval import Interval
from .linalg import _sample_order
from .pool import (any_rounding, divide_by_count, divide_by_count_error, order_free_mean_bound,
                   sequential_sum)
from .primitive import Primitive, register
from .reduce import _check_bool
from .softmax import (_excluded_max, _exp_down, _finite, box_factors, exp_enclosure, mul_any,
                      softmax_last, softmax_last_error, softmax_last_spec, stable_exp_sum,
                      stable_exp_sum_error)
from .transcendental import safe_log_spec, safe_log_values


def _const(c: int, like):
    """The small integer ``c`` (a value of every preset) shaped like the runtime ``like``."""
    a = np.asarray(like)
    if a.dtype == object:
        return np.full(a.shape, mpq(c), dtype=object)
    return np.full(a.shape, float(c))


def _square(d: Interval) -> Interval:
    """Exact image of ``d ↦ d²`` on an enclosure (not ``d·d``, which forgets the dependency)."""
    if d.lo is d.hi:
        v = d.lo * d.lo
        return Interval(v, v)
    lo2, hi2 = d.lo * d.lo, d.hi * d.hi
    straddle = (d.lo <= 0) & (d.hi >= 0)
    lo = np.where(straddle, mpq(0), np.where(d.lo > 0, lo2, hi2))
    hi = np.where(lo2 > hi2, lo2, hi2)
    return Interval(np.asarray(lo, dtype=object), np.asarray(hi, dtype=object))


def _scalar_g(fmt: Format, g) -> np.ndarray:
    """The upstream gradient of a loss: a 0-d array (the loss's shape) holding a runtime value
    of ``fmt``."""
    if np.shape(g) != ():
        raise ValueError(f"g must be a scalar (the loss is 0-d), got shape {np.shape(g)}")
    return checks.format_value("g", g, fmt)


# -- mse_loss: mean((x − t)²) --------------------------------------------------------------
def _check_mse(fmt: Format, input, target):
    checks.same_shape(("input", "target"), input, target)
    x = checks.format_value("input", input, fmt)
    t = checks.format_value("target", target, fmt)
    if np.size(x) == 0:
        raise ValueError("mse_loss of an empty input (the mean of no terms is undefined)")
    return x, t


def _diff_error(fmt: Format, x, ex, t, et):
    """``(d̂, ε_d)`` with ``d̂ = RN(x̂ − t̂)``: ``ε_d = ε_x + ε_t + r`` (``r = 0`` when an operand
    is 0: the subtraction is then exact), ``inf`` where ``d̂`` overflowed."""
    d = fmt.sub(x, t)
    return d, guard_nonfinite(fmt, d, add_up(ex, et,
                                             rounding_term(fmt, d, _zero(x) | _zero(t))))


def mse_loss_runtime(fmt: Format, input, target, *, order: str = "sequential",
                     order_free: bool = False):
    """``L = RN(Ŝ / n)``, ``Ŝ`` the rounded sum in ``order`` (row-major element order) of
    ``q̂_i = RN(d̂_i · d̂_i)``, ``d̂_i = RN(x̂_i − t̂_i)``; ``n`` the number of elements.
    ``order_free`` only selects the bound (validated here)."""
    x, t = _check_mse(fmt, input, target)
    check_order(order)
    _check_bool("order_free", order_free)
    d = fmt.sub(x, t)
    q = fmt.mul(d, d)
    total, _ = sequential_sum(fmt, np.reshape(q, -1), None, order=order)
    return divide_by_count(fmt, total, np.size(x))


def mse_loss_spec(input: Interval, target: Interval, *, order: str = "sequential",
                  order_free: bool = False) -> Interval:
    """``Σ (x − t)² / n`` exactly (the image of the enclosure: each square on its own)."""
    check_order(order)
    if input.shape != target.shape:
        raise ValueError(f"input and target must have the same shape, got {input.shape} and {target.shape}")
    sq = _square(input - target)
    n = mpq(int(np.prod(input.shape, dtype=np.int64)))
    return sq.map_exact(lambda a: np.asarray(np.sum(a.reshape(-1)) / n, dtype=object).reshape(()))


def mse_loss_bound(fmt: Format, xs, eps, *, order: str = "sequential", order_free: bool = False):
    """Composition of the step rules, every step on the runtime values:

    * ``d̂ = RN(x̂ − t̂)``: ``ε_d = ε_x + ε_t + r``;
    * ``q̂ = RN(d̂²)``: the product rule with both factors ``d̂`` (``d̂² − d² = 2d̂(d̂ − d) − (d̂ − d)²``):
      ``ε_q = 2|d̂|ε_d + ε_d² + r``;
    * ``Ŝ``: the replay of the rounded sum, ``e_S = Σ ε_q + Σ r_k``;
    * ``L = RN(Ŝ/n)``: ``e_S/n + r``.

    ``order_free``: ``Σ d̂_i²`` evaluated in any way — every square rounded or fused into an
    addition (FMA), any order — is a sum of the ``n`` exact products ``d̂_i·d̂_i``, which no
    order changes: ``pool.order_free_mean_bound`` with ``products``, ``Σ d̂²`` and
    ``Σ |d̂² − d²| ≤ Σ (2|d̂|ε_d + ε_d²)``, divided by ``n``.
    """
    (x, t), (ex, et) = xs, eps
    x, t = _check_mse(fmt, x, t)
    check_order(order)
    order_free = _check_bool("order_free", order_free)
    ex, et = checks.eps_like("eps[0]", ex, x), checks.eps_like("eps[1]", et, t)
    d, ed = _diff_error(fmt, x, ex, t, et)
    n = np.size(x)
    if not order_free:
        q, eq = mul_error(fmt, d, ed, d, ed)
        total, es = sequential_sum(fmt, np.reshape(q, -1), np.reshape(eq, -1), order=order)
        return np.asarray(divide_by_count_error(fmt, total, es, n)[1], dtype=np.float64)
    total, _ = sequential_sum(fmt, np.reshape(fmt.mul(d, d), -1), None, order=order)
    a, e = np.reshape(abs_up(d), -1), np.reshape(ed, -1)
    b = order_free_mean_bound(fmt, sum_up(mul_up(a, a)), n,
                              sum_up(add_up(mul_up(mul_up(2.0, a), e), mul_up(e, e))), n,
                              products=True)
    return np.asarray(guard_nonfinite(fmt, divide_by_count(fmt, total, n), b), dtype=np.float64)


def mse_loss_vjp_runtime(fmt: Format, xs, g, *, order: str = "sequential",
                         order_free: bool = False):
    """``∂L/∂x_i = (2/n)(x_i − t_i)·g`` (seed MlpMse ``mseGrad``), computed as
    ``h = RN(RN(2·ĝ)/n)`` once, then ``RN(d̂_i · h)`` with ``d̂_i = RN(x̂_i − t̂_i)``.
    The target gets ``None``."""
    x, t = _check_mse(fmt, *xs)
    check_order(order)
    _check_bool("order_free", order_free)
    g = _scalar_g(fmt, g)
    h = divide_by_count(fmt, fmt.mul(_const(2, g), g), np.size(x))
    d = fmt.sub(x, t)
    return fmt.mul(d, np.broadcast_to(h, np.shape(d))), None


def mse_loss_vjp_spec(xs, g: Interval, *, order: str = "sequential", order_free: bool = False):
    x, t = xs
    check_order(order)
    n = mpq(int(np.prod(x.shape, dtype=np.int64)))
    h = g * Interval.exact(np.asarray(2 / n, dtype=object).reshape(()))
    return (x - t) * h.map_exact(lambda a: np.broadcast_to(a, x.shape)), None


def mse_loss_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, order: str = "sequential",
                       order_free: bool = False):
    """* ``2ĝ``: ``2ε_g + r`` (``r = 0`` when ``ĝ = 0``, and in radix 2 when the doubling did
      not overflow: it is then exact);
    * ``ĥ = RN(2ĝ/n)``: ``ε_h = ε_{2g}/n + r``;
    * ``RN(d̂_i · ĥ)``: the product rule ``|d̂|ε_h + |ĥ|ε_d + ε_d ε_h + r``.

    No step sums: the bound holds for every order (``order_free`` changes nothing)."""
    (x, t), (ex, et) = xs, eps
    x, t = _check_mse(fmt, x, t)
    check_order(order)
    _check_bool("order_free", order_free)
    g = _scalar_g(fmt, g)
    ex, et = checks.eps_like("eps[0]", ex, x), checks.eps_like("eps[1]", et, t)
    eg = checks.eps_like("eps_g", eps_g, g)
    g2 = fmt.mul(_const(2, g), g)
    exact = _zero(g)
    if fmt.radix == 2 and g2.dtype != object:
        mx = float(fmt.max_finite) if fmt.max_finite is not None else np.inf
        exact = exact | (np.isfinite(g2) & (np.abs(g2) < mx))
    eg2 = add_up(mul_up(2.0, eg), rounding_term(fmt, g2, exact))
    h, eh = divide_by_count_error(fmt, g2, eg2, np.size(x))
    d, ed = _diff_error(fmt, x, ex, t, et)
    shape = np.shape(d)
    _, egrad = mul_error(fmt, d, ed, np.broadcast_to(h, shape), np.broadcast_to(eh, shape))
    return np.asarray(egrad, dtype=np.float64), None


def _sample_mse(rng, fmt: Format):
    shape = tuple(int(v) for v in rng.integers(1, 5, size=rng.integers(1, 3)))
    x, t = (fmt.round(rng.standard_normal(shape) * 2) for _ in range(2))
    return (x, t), {"order": _sample_order(rng), "order_free": bool(rng.random() < 0.25)}


mse_loss = register(Primitive("mse_loss", mse_loss_runtime, mse_loss_spec, mse_loss_bound,
                              mse_loss_vjp_runtime, mse_loss_vjp_spec, mse_loss_vjp_bound,
                              _sample_mse))


# -- cross_entropy: mean_n (logsumexp(x_n) − x_n[t_n]) ----------------------------------------
def _targets(target, N: int, C: int) -> np.ndarray:
    """Class indices as int64, shape ``(N,)``, values in ``[0, C)``; accepts integer arrays,
    integral float/rational arrays and exact ``Interval`` s (spec side)."""
    if isinstance(target, Interval):
        if not target.is_exact:
            raise ValueError("cross_entropy: target must be exact class indices (a point, not an interval)")
        target = target.lo
    t = checks.finite("target", target)          # exact values, whatever the dtype
    if t.shape != (N,):
        raise ValueError(f"target must have shape (N,) = ({N},), got {t.shape}")
    vals = [mpq(v) for v in t.reshape(-1)]
    if any(v.denominator != 1 for v in vals):
        raise ValueError("target must hold integer class indices")
    if any(v < 0 or v >= C for v in vals):
        raise ValueError(f"target class indices must lie in [0, {C}), got {[int(v) for v in vals]}")
    return np.array([int(v) for v in vals], dtype=np.int64)


def _check_ce(fmt: Format, input, target):
    """The logits and targets of a cross-entropy rule. The rules take ``1`` to be a value of
    the format (``ŝ = Σ RN(e^(x̂_c − m̂)) ≥ RN(e^0) = 1``, Sterbenz on ``ŷ − 1``): a format
    without 1 (fixed point with a quantum above 1, ``emin > 0``) is refused."""
    if not np.asarray(fmt.is_representable(np.array([1.0]))).all():
        raise ValueError(f"cross_entropy needs 1 to be a value of the format; {fmt} has no 1")
    x = np.asarray(input)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"input must be logits of shape (N, C) with N, C ≥ 1, got {x.shape}")
    x = checks.format_value("input", x, fmt)
    return x, _targets(target, *x.shape)


def _target_eps(eps_t, N: int) -> None:
    if eps_t is None:
        return
    e = np.asarray(eps_t, dtype=np.float64)
    if np.any(e != 0):
        raise ValueError("target holds exact class indices: its error bound must be 0")


def _ce_rows(fmt: Format, x, t, order: str):
    """Runtime per-row losses ``ℓ̂_n = RN(l̂_n − d̂_{n,t})`` with ``l̂ = RN(log ŝ)`` (the stable
    steps of :mod:`~nfbound.ops.softmax`: ``d̂ = RN(x̂ − m̂)``, ``ê = RN(exp d̂)``, ``ŝ`` their
    rounded sum)."""
    _, d, _, s = stable_exp_sum(fmt, x, order)
    l = _log_safe(fmt, s)
    dt = np.take_along_axis(d, t[:, None], axis=1)[:, 0]
    return fmt.sub(l, dt)


def _log_safe(fmt: Format, s):
    """``RN(log ŝ)`` (``safe_log_values``; ``ŝ ≥ 1`` when finite, so its clamp never acts);
    an overflowed ``ŝ`` (±inf, NaN) passes through (``log ∞ = ∞``; the bound is then ``inf``)."""
    s = np.asarray(s)
    ok = _finite(s)
    if ok.all():
        return np.asarray(safe_log_values(fmt, s))
    out = s.copy()
    if ok.any():
        out[ok] = safe_log_values(fmt, s[ok])
    return out


def cross_entropy_runtime(fmt: Format, input, target, *, order: str = "sequential",
                          order_free: bool = False):
    """``L = RN(Ŝ/N)``, ``Ŝ`` the rounded sum (``order``) of the per-row losses
    ``ℓ̂_n = RN(RN(log ŝ_n) − d̂_{n,t_n})``: ``−log_softmax(x)_t`` as torch computes it
    (``x − m − log Σ e^(x − m)``), ``logsumexp = m + log ŝ`` never formed (no large
    cancellation). ``log`` is ``transcendental.safe_log_values`` (correctly rounded;
    ``ŝ ≥ 1`` so its clamp never acts). ``order_free`` only selects the bound (validated
    here)."""
    x, t = _check_ce(fmt, input, target)
    check_order(order)
    _check_bool("order_free", order_free)
    rows = _ce_rows(fmt, x, t, order)
    total, _ = sequential_sum(fmt, rows, None, order=order)
    return divide_by_count(fmt, total, x.shape[0])


def _logsumexp_minus(z: np.ndarray, t: np.ndarray):
    """Enclosure ``(lo, hi)`` of ``log Σ_c e^(z_c) − z_t`` per row for exact points ``z``
    (object ``(N, C)``): shifted by the row maximum ``M`` (the shift cancels:
    ``log Σ e^z − z_t = log Σ e^(z − M) − (z_t − M)``), so the sum is ``≥ 1`` (its ``e^0``)."""
    M = np.max(z, axis=1, keepdims=True)
    E = exp_enclosure(z - M, z - M)
    lg = _log_enclosure(np.sum(E.lo, axis=1), np.sum(E.hi, axis=1))
    off = np.take_along_axis(z - M, t[:, None], axis=1)[:, 0]
    return lg.lo - off, lg.hi - off


def _log_enclosure(s_lo, s_hi) -> Interval:
    """``log S`` for ``S ∈ [s_lo, s_hi]``, ``s_lo ≥ 1``: ``safe_log_spec`` (MPFR) intersected
    with the rational bounds ``1 − 1/S ≤ log S ≤ S − 1``. Near ``S = 1`` (a confident
    prediction) MPFR's enclosure has absolute width ``≈ 2^−199`` (its argument is rounded to
    200 bits), while the rational ones have width ``≈ (S − 1)²``."""
    lg = safe_log_spec(Interval(np.asarray(s_lo, dtype=object), np.asarray(s_hi, dtype=object)))
    lo = np.vectorize(lambda a, s: max(a, 1 - 1 / s), otypes=[object])(lg.lo, s_lo)
    hi = np.vectorize(lambda b, s: min(b, s - 1), otypes=[object])(lg.hi, s_hi)
    return Interval(np.asarray(lo, dtype=object), np.asarray(hi, dtype=object))


def cross_entropy_spec(input: Interval, target, *, order: str = "sequential",
                       order_free: bool = False) -> Interval:
    """``mean_n (log Σ_c exp(x_{n,c}) − x_{n,t_n})`` enclosed. Each row's loss is increasing in
    ``x_c`` (``c ≠ t``: derivative ``y_c ≥ 0``) and decreasing in ``x_t`` (``y_t − 1 ≤ 0``), so
    its range over the box is attained at ``z⁻ = (lo_c, hi_t)`` and ``z⁺ = (hi_c, lo_t)``."""
    check_order(order)
    if len(input.shape) != 2:
        raise ValueError(f"input must be logits of shape (N, C), got {input.shape}")
    N, C = input.shape
    t = _targets(target, N, C)
    is_t = np.arange(C)[None, :] == t[:, None]
    z_lo = np.where(is_t, input.hi, input.lo)
    lo, _ = _logsumexp_minus(z_lo, t)
    if input.lo is input.hi:
        hi = _logsumexp_minus(z_lo, t)[1]
    else:
        hi = _logsumexp_minus(np.where(is_t, input.lo, input.hi), t)[1]
    n = mpq(N)
    return Interval(np.asarray(np.sum(lo) / n, dtype=object).reshape(()),
                    np.asarray(np.sum(hi) / n, dtype=object).reshape(()))


def _ce_rows_error(fmt: Format, x, ex, t, order: str, order_free: bool = False):
    """Per-row ``(ℓ̂_n, A_n)``, A the composition of the step rules against the spec shifted by
    the runtime maximum ``m̂`` (the shift cancels):

    * ``δ, η, σ`` of ``softmax.stable_exp_sum_error`` for ``d̂``, ``ê``, ``ŝ``;
    * ``l̂ = RN(log ŝ)``: ``|log ŝ − log s| ≤ |ŝ − s|/min(ŝ, s) ≤ σ/D + r`` (mean value
      theorem), ``D = max(ŝ − σ, e^(−ε_a))``: the spec sum has the term ``e^(x_a − m̂) ≥
      e^(−ε_a)`` of the runtime argmax ``a`` (and ``ŝ ≥ 1 ≥ e^(−ε_a)``); ``r = 0`` at ``ŝ = 1``;
    * ``ℓ̂ = RN(l̂ − d̂_t)``: ``λ + δ_t + r``.

    ``order_free``: every evaluation ``ŝ'`` of the sum, and the steps after it on ``ŝ'``. With
    ``σ`` and ``spread ≥ |ŝ' − ŝ|`` of the order-free ``stable_exp_sum_error``:
    ``min(ŝ', s) ≥ D = max(ŝ − max(σ, spread), e^(−ε_a))`` (``ŝ' ≥ 1``, ``ŝ' ≥ ŝ − spread``,
    ``s ≥ ŝ − σ``); ``0 ≤ log ŝ' ≤ Λ = l̂ + r(l̂) + spread`` (``log ŝ ≤ l̂ + r(l̂)``, and
    ``|log ŝ' − log ŝ| ≤ |ŝ' − ŝ|`` as both are ``≥ 1``), so ``RN(log ŝ')`` errs by at most
    ``pool.any_rounding(Λ)`` and has magnitude ``≤ M_l = Λ + any_rounding(Λ)``; the row's
    subtraction has an operand ``|l̂' − d̂_t| ≤ M_l + |d̂_t|`` and errs by at most
    ``any_rounding`` of that (``inf`` beyond the largest finite value). The runtime's rounding
    terms, computed from its own results, need not bound another evaluation's.
    """
    S = stable_exp_sum_error(fmt, x, ex, order, order_free)
    l = _log_safe(fmt, S.s)
    a = np.argmax(x, axis=1)[:, None]
    floor = _exp_down(-np.take_along_axis(ex, a, axis=1)[:, 0])
    D = np.fmax(_sub_down(_abs_down(S.s), np.maximum(S.sigma, S.spread)), floor)
    dt = np.take_along_axis(S.d, t[:, None], axis=1)[:, 0]
    et = np.take_along_axis(S.delta, t[:, None], axis=1)[:, 0]
    rows = fmt.sub(l, dt)
    if order_free:
        Lam = add_up(abs_up(l), rounding_term(fmt, l), S.spread)
        r_log = any_rounding(fmt, Lam)
        M = add_up(Lam, r_log, abs_up(dt))
        r_row = overflow_guard(fmt, M, any_rounding(fmt, M))
    else:
        r_log = rounding_term(fmt, l, _is_one(S.s))
        r_row = rounding_term(fmt, rows, _zero(l) | _zero(dt))
    A = add_up(div_up(S.sigma, D), r_log, et, r_row)
    return rows, guard_nonfinite(fmt, rows, A)


def _is_one(s) -> np.ndarray:
    a = np.asarray(s)
    if a.dtype == object:
        return np.vectorize(lambda v: v == 1, otypes=[bool])(a)
    return a == 1


def _ce_rows_bound(fmt: Format, x, ex, t, order: str, order_free: bool = False):
    """Per-row ``(ℓ̂_n, min(A_n, B_n))``; B is the Lipschitz bound plus the runtime's own error:
    ``∂ℓ/∂z_c = y_c − 1[c = t]``, so on the segment from the spec ``x`` to ``x̂`` (inside the
    box ``|z − x̂| ≤ ε``) ``|ℓ(x̂) − ℓ(x)| ≤ sup Σ_c |y_c − 1[c=t]| ε_c ≤ sup(1 − y_t)·(ε_t + ε*_t)``
    (``Σ_{c≠t} y_c = 1 − y_t``; ``ε*_t = max_{c≠t} ε_c``), with ``sup(1 − y_t) ≤ min(1, Λ_t)``
    (``softmax.box_factors``); plus ``A`` with ``ε = 0`` (order-free with ``order_free``: the
    Lipschitz term has no rounding)."""
    rows, A = _ce_rows_error(fmt, x, ex, t, order, order_free)
    if not np.any(ex):
        return rows, A
    _, A0 = _ce_rows_error(fmt, x, np.zeros(x.shape), t, order, order_free)
    _, Lam = box_factors(x, ex)
    lam_t = np.fmin(1.0, np.take_along_axis(Lam, t[:, None], axis=1)[:, 0])
    e_star = np.take_along_axis(_excluded_max(ex), t[:, None], axis=1)[:, 0]
    e_t = np.take_along_axis(ex, t[:, None], axis=1)[:, 0]
    B = add_up(mul_up(lam_t, add_up(e_t, e_star)), A0)
    return rows, guard_nonfinite(fmt, rows, np.fmin(A, B))


def cross_entropy_bound(fmt: Format, xs, eps, *, order: str = "sequential",
                        order_free: bool = False):
    """Per-row bounds (``min(A, B)`` of :func:`_ce_rows_bound`), the replay of the rounded sum
    over rows, and the exact-divisor division by ``N``; with ``order_free``, the order-free
    row bounds, then :func:`cross_entropy_fused`'s order-free mean."""
    return cross_entropy_fused(fmt, xs, eps, order=order, order_free=order_free)[1]


def cross_entropy_fused(fmt: Format, xs, eps, *, order: str = "sequential",
                        order_free: bool = False):
    """``(cross_entropy_runtime, cross_entropy_bound)`` in one pass.

    ``order_free``: a library's rows ``ℓ̂'_n`` (any order inside each row) are within ``er_n``
    (the order-free row bound) of the spec rows, as the runtime rows are, so
    ``|ℓ̂'_n| ≤ |ℓ̂_n| + 2·er_n``; their sum in any order, divided by ``N``:
    ``pool.order_free_mean_bound`` with ``Σ (|ℓ̂_n| + 2·er_n)`` and ``Σ er_n``."""
    (x, t), (ex, et) = xs, eps
    x, t = _check_ce(fmt, x, t)
    check_order(order)
    order_free = _check_bool("order_free", order_free)
    _target_eps(et, x.shape[0])
    ex = np.asarray(checks.eps_like("eps[0]", ex, x), dtype=np.float64)
    rows, er = _ce_rows_bound(fmt, x, ex, t, order, order_free)
    N = x.shape[0]
    if not order_free:
        total, es = sequential_sum(fmt, rows, er, order=order)
        L, eL = divide_by_count_error(fmt, total, es, N)
        return L, np.asarray(eL, dtype=np.float64)
    L = divide_by_count(fmt, sequential_sum(fmt, rows, None, order=order)[0], N)
    eL = order_free_mean_bound(fmt, sum_up(add_up(abs_up(rows), mul_up(2.0, er))), N,
                               sum_up(er), N)
    return L, np.asarray(guard_nonfinite(fmt, L, eL), dtype=np.float64)


def cross_entropy_vjp_runtime(fmt: Format, xs, g, *, order: str = "sequential",
                              order_free: bool = False):
    """``∂L/∂x_{n,c} = (g/N)(y_{n,c} − 1[c = t_n])`` as ``RN(v̂ · k̂)`` with
    ``v̂ = RN(ŷ − onehot)`` (``ŷ`` the runtime softmax of each row) and ``k̂ = RN(ĝ/N)``.
    The target gets ``None``."""
    x, t = _check_ce(fmt, *xs)
    check_order(order)
    _check_bool("order_free", order_free)
    g = _scalar_g(fmt, g)
    y = softmax_last(fmt, x, order)
    v = fmt.sub(y, _onehot(t, x.shape, y))
    k = divide_by_count(fmt, g, x.shape[0])
    return fmt.mul(v, np.broadcast_to(k, v.shape)), None


def _onehot(t, shape, like):
    hot = np.arange(shape[1])[None, :] == t[:, None]
    if np.asarray(like).dtype == object:
        return np.where(hot, mpq(1), mpq(0))
    return hot.astype(np.float64)


def cross_entropy_vjp_spec(xs, g: Interval, *, order: str = "sequential",
                           order_free: bool = False):
    x, target = xs
    if len(x.shape) != 2:
        raise ValueError(f"input must be logits of shape (N, C), got {x.shape}")
    N, C = x.shape
    t = _targets(target, N, C)
    y = softmax_last_spec(x)
    hot = Interval.exact(np.asarray(_onehot(t, x.shape, np.empty(0, dtype=object)), dtype=object))
    k = g * Interval.exact(np.asarray(1 / mpq(N), dtype=object).reshape(()))
    return (y - hot) * k.map_exact(lambda a: np.broadcast_to(a, x.shape)), None


def cross_entropy_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, order: str = "sequential",
                            order_free: bool = False):
    """``ε_y`` from the softmax bound (``softmax.softmax_last_error``); ``v̂ = RN(ŷ − 1[c=t])``:
    ``ε_y + r`` with ``r = 0`` off the target (subtracting 0) and where ``ŷ ≥ 1/2`` (Sterbenz:
    ``ŷ − 1`` is exact for ``1/2 ≤ ŷ ≤ 1``; it needs a monotone exponent function,
    ``elementwise._sterbenz`` applies it to FLX/FLT/FIX only — docs/design.md §11.7); ``k̂ = RN(ĝ/N)``: ``ε_g/N + r``; the product rule.

    ``order_free``: a library's softmax ``ŷ'`` (its sum in any order) is within the order-free
    ``ε_y`` of ``y`` and in ``[0, 1]``; ``v̂' = RN(ŷ' − 1[c=t])`` errs by ``ε_y`` plus 0 off the
    target and where ``ŷ − 2ε_y ≥ 1/2`` (then ``ŷ' ≥ 1/2``: Sterbenz), else
    ``pool.any_rounding(1)`` (``|ŷ' − 1| ≤ 1``); so ``|v̂'| ≤ 1``. ``k̂`` depends on no order;
    the output ``RN(v̂'·k̂)``: ``softmax.mul_any``."""
    return cross_entropy_vjp_fused(fmt, xs, eps, g, eps_g, order=order, order_free=order_free)[1]


def cross_entropy_vjp_fused(fmt: Format, xs, eps, g, eps_g, *, order: str = "sequential",
                            order_free: bool = False):
    """``(cross_entropy_vjp_runtime, cross_entropy_vjp_bound)`` in one pass."""
    (x, t), (ex, et) = xs, eps
    x, t = _check_ce(fmt, x, t)
    check_order(order)
    order_free = _check_bool("order_free", order_free)
    _target_eps(et, x.shape[0])
    g = _scalar_g(fmt, g)
    ex = np.asarray(checks.eps_like("eps[0]", ex, x), dtype=np.float64)
    eg = checks.eps_like("eps_g", eps_g, g)
    y, ey = softmax_last_error(fmt, x, ex, order, order_free)
    hot = _onehot(t, x.shape, y)
    v = fmt.sub(y, hot)
    off = np.arange(x.shape[1])[None, :] != t[:, None]
    k, ek = divide_by_count_error(fmt, g, eg, x.shape[0])
    kb, ekb = np.broadcast_to(k, v.shape), np.broadcast_to(ek, v.shape)
    if not order_free:
        ev = add_up(ey, rounding_term(fmt, v, off | _sterbenz(fmt, y, hot) | _zero(y)))
        out, eo = mul_error(fmt, v, ev, kb, ekb)
        return (out, None), (eo, None)
    sterbenz = (_sub_down(_abs_down(y), mul_up(2.0, ey)) >= 0.5) & \
        (fmt.fexp.kind in ("FLX", "FLT", "FIX"))   # Sterbenz needs a monotone fexp (§11.7)
    ev = add_up(ey, np.where(off | sterbenz, 0.0, any_rounding(fmt, 1.0)))
    out = fmt.mul(v, kb)
    return (out, None), (guard_nonfinite(fmt, out, mul_any(fmt, v, ev, kb, ekb, a_cap=1.0)),
                         None)


def _sample_ce(rng, fmt: Format):
    N, C = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    x = fmt.round(rng.standard_normal((N, C)) * 3)
    t = rng.integers(0, C, size=N).astype(np.int64)
    return (x, t), {"order": _sample_order(rng), "order_free": bool(rng.random() < 0.25)}


cross_entropy = register(Primitive("cross_entropy", cross_entropy_runtime, cross_entropy_spec,
                                   cross_entropy_bound, cross_entropy_vjp_runtime,
                                   cross_entropy_vjp_spec, cross_entropy_vjp_bound, _sample_ce,
                                   fused=cross_entropy_fused,
                                   vjp_fused=cross_entropy_vjp_fused))
