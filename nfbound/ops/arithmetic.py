"""Every primitive in an :class:`~nfbound.arith.Arithmetic`: compute in the working format,
round to storage.

An op ``f`` in an arithmetic ``A`` with storage ``S`` and working format ``W`` (the
accumulator for contractions, the compute format otherwise; :meth:`Arithmetic.working_format`)
is evaluated as

    ŷ = RN_S(z),     z = f evaluated in W: every step rounded to W, reductions in A's order,

on runtime inputs that are values of ``S`` — hence of ``W`` (``S ⊆ W``, checked when the
arithmetic is built). For contractions with an ``operands`` format ``T`` (TF32), the operands
are first rounded to ``T``: ``x' = RN_T(x̂)``, an input error ``|x' − x̂|`` (exact, rounded up)
added to ``ε_x``; the bias is not an operand of a product and is not converted.

Bounds. The op's own rules in ``W`` give ``|z − f(x)| ≤ e_W`` for the spec inputs ``x`` within
``ε`` of the runtime ones (the rule's theorem, with ``W``'s subnormal mode). Then:

* stated order (or an op without an order):
  ``|ŷ − f(x)| ≤ |RN_S(z) − z| + |z − f(x)| ≤ r_S(ŷ) + e_W`` with ``r_S`` the rounding term of
  ``S`` (:func:`~nfbound.bounds.rounding.rounding_term`, computed from ``ŷ`` alone);
* ``order=any`` (the op's ``order_free`` bound in ``W``, which holds for every evaluation tree,
  blocking and FMA use): a library's accumulator value ``z'`` satisfies ``|z' − f(x)| ≤ e_W``
  as the emulated ``z`` does, so ``|z'| ≤ |z| + 2e_W =: M`` and its conversion errs by at most
  ``u_S·M + τ_S`` (``RN(s) = s(1 + δ) + θ``: ``|δ| ≤ u_S``, ``|θ| ≤ τ_S``, the storage
  format's underflow term; Flocq ``relative_error_N_FLT`` and its directed analogue), unless
  ``M`` reaches the largest finite of ``S`` (then ``inf``: the conversion may overflow). The
  bound is ``e_W + u_S·M + τ_S``, independent of which evaluation the library chose.

Partial sums in storage (``A.storage_sums``: rule names such as ``conv_transpose`` for a
forward rule, ``conv.vjp`` for every gradient of a VJP and ``conv.vjp.0`` for the gradient of
input 0 only; measured for PyTorch CPU without oneDNN, whose
``col2im`` adds GEMM columns — sums in ``W`` rounded to ``S`` — into the output in ``S``): under
``order=any`` the bound is the op's order-free bound in ``S`` *with flushing* (``ftz+daz``).
Model: each output is a sum in ``S`` (any order) of columns, each column a sum in ``W`` (any
order) of products converted once to ``S``. A leaf's path then has at most ``m + 1`` roundings
(its product, the additions of its column and of the columns, one conversion: ``c + k ≤ ck + 1``
for ``c`` columns of ``k`` products), each with ``|δ| ≤ u_S`` (``u_W ≤ u_S``); the roundings
that may carry a ``θ`` are the ``m`` products, at most ``m`` conversions and, in ``W``'s flush
mode, the additions: at most ``2m``, which is the count of the flushing lemma
(``accumulate.order_free_bound``: ``m`` products, one conversion, ``m − 1`` additions), each
``|θ| ≤ b_min(S)`` — this needs ``W``'s underflow term at most ``b_min(S)``, else the rule is
refused (docs/design.md §11.8).

Library functions (``A.libm_ulps = k``, primitives flagged ``libm``): a library's ``f`` may be
``k`` ulps of ``W`` from the exact value instead of correctly rounded; the bound adds
:func:`libm_error` to ``e_W`` and bounds the conversion as for ``order=any``.

When every value of ``W`` is a value of ``S`` (the same format with another subnormal mode,
``torch-cpu-float32``), ``RN_S(z) = z`` and no conversion term is charged.

Flushing: ``W``'s subnormal mode is applied by the primitive's rules in ``W`` (DAZ: subnormal
operands read as 0 with the difference added to their ``ε``). A library that does *not* flush
is covered by the same bound under ``order=any``: reading ``x̂`` as ``x̂' = 0`` with
``ε' = ε + |x̂|`` increases the propagated part ``Σ |x̂'|ε'_y + |ŷ'|ε'_x + ε'_xε'_y`` of a
contraction's bound by ``Σ |x̂'|d_y + |ŷ'|d_x + d_xd_y`` (``d`` the flushed magnitudes), which
is at least what the unflushed magnitudes add to ``γ·Σ|x̂ŷ|`` (``γ ≤ 1``, else the bound is
``inf``), and the flushing underflow terms (``β^emin_normal`` per rounding) dominate the
gradual ones (``η``, or 0 for additions).
"""
from __future__ import annotations

import inspect
from functools import lru_cache

import numpy as np

from ..arith import Arithmetic, contains, with_subnormals
from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import abs_up, add_up, mul_up
from ..formats import Format
from .accumulate import overflow_guard


@lru_cache(maxsize=None)
def _parameters(rule) -> frozenset:
    return frozenset(inspect.signature(rule).parameters)


def _order_params(A: Arithmetic, rule, params: dict, name: str) -> tuple[dict, bool]:
    """The rule's keyword parameters under ``A``: its ``order`` (and ``order_free`` for
    ``any``). Returns ``(params, any_order)``; refuses an ``order`` that contradicts ``A``'s and
    ``order=any`` on an op that has no order-free bound."""
    takes = _parameters(rule)
    params = dict(params)
    if "order" not in takes:
        return params, False
    given = params.pop("order", None)
    if given is not None and str(given) != str(A.order.stated) and str(given) != str(A.order):
        raise ValueError(f"order={given!r} contradicts the arithmetic's order {A.order} "
                         f"({A}); state the order in the arithmetic only")
    params["order"] = str(A.order.stated)
    if params.pop("order_free", False) and not A.order.is_any:
        raise ValueError(f"order_free=True contradicts the arithmetic's stated order "
                         f"{A.order} ({A}); use an arithmetic with order=any")
    if A.order.is_any:
        if "order_free" not in takes:
            raise ValueError(f"op {name!r} has no order-free bound yet: arithmetic {A} "
                             f"(order=any) cannot bound it; use a stated order, e.g. "
                             f"'{A}:order=sequential'")
        params["order_free"] = True
    return params, A.order.is_any


def _operands(A: Arithmetic, contraction: bool, operand_slots: tuple[int, ...], xs, eps):
    """Contraction operands rounded to ``A.operands`` (TF32), their errors grown by the
    exact conversion error (rounded up). ``eps=None``: runtime only."""
    if A.operands is None or not contraction:
        return xs, eps
    xs, eps = list(xs), None if eps is None else list(eps)
    for i in operand_slots:
        if i >= len(xs) or xs[i] is None:
            continue
        converted = A.operands.round(xs[i])
        if eps is not None:
            eps[i] = add_up(eps[i], _distance_up(converted, xs[i]))
        xs[i] = converted
    return tuple(xs), None if eps is None else tuple(eps)


def _distance_up(a, b) -> np.ndarray:
    """``|a − b|`` rounded up, for two arrays of exact values (float64 or rationals)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != object and b.dtype != object:
        d = np.abs(a - b)   # both binary64 values within a factor 2: Sterbenz-exact or tiny
        return np.where(d == 0, 0.0, np.nextafter(d, np.inf))
    from ..bounds.upward import exact_array_up
    return exact_array_up(np.vectorize(lambda s, t: abs(s - t), otypes=[object])(
        np.asarray(a, dtype=object), np.asarray(b, dtype=object)))


def to_storage(A: Arithmetic, W: Format, z):
    """``RN_S(z)`` for a runtime value ``z`` of ``W`` (``None`` stays ``None``)."""
    if z is None or contains(A.storage, W):
        return z
    return A.storage.round(z)


def conversion_bound(A: Arithmetic, W: Format, z, y, e, any_order: bool) -> np.ndarray:
    """Bound of ``|ŷ − f(x)|`` from ``e ≥ |z − f(x)|`` (see the module doc)."""
    if z is None:
        return None
    e = np.asarray(e, dtype=np.float64)
    if contains(A.storage, W):
        return e
    S = A.storage
    if not any_order:
        return guard_nonfinite(S, y, add_up(e, rounding_term(S, y)))
    M = add_up(abs_up(z), mul_up(2.0, e))
    rel = mul_up(S.u, M) if S.precision is not None else np.zeros_like(M)
    b = overflow_guard(S, add_up(M, rel, S.underflow_term), add_up(e, rel, S.underflow_term))
    return guard_nonfinite(S, y, b)


def runtime(P, A: Arithmetic, *xs, **params):
    """``RN_S(f_W(xs))`` — :attr:`Primitive.runtime` in an arithmetic."""
    W = A.working_format(P.contraction)
    params, _ = _order_params(A, P.rules.runtime, params, P.name)
    xs, _ = _operands(A, P.contraction, P.operand_slots, xs, None)
    return to_storage(A, W, P.rules.runtime(W, *xs, **params))


def _storage_sums(rule: str, A: Arithmetic, W: Format, any_order: bool) -> Format | None:
    """The storage format whose order-free bound covers a library that may round partial sums
    to storage in ``rule`` (``"conv_transpose"``, ``"conv.vjp"``; module doc), or ``None``."""
    if not any_order or rule not in A.storage_sums or contains(A.storage, W):
        return None
    S = with_subnormals(A.storage, "ftz+daz")
    if W.underflow_term_exact > S.underflow_term_exact:
        raise ValueError(f"storage_sums: {rule} in {A} needs the working format's underflow "
                         f"term ({W}: {float(W.underflow_term_exact):.3g}) at most the storage's "
                         f"smallest normal ({float(S.underflow_term_exact):.3g})")
    return S


def fused(P, A: Arithmetic, xs, eps, **params):
    """``(ŷ, bound)`` of the forward rule in ``A`` (the working format's fused rule if any)."""
    W = A.working_format(P.contraction)
    params, any_order = _order_params(A, P.rules.runtime, params, P.name)
    xs, eps = _operands(A, P.contraction, P.operand_slots, xs, eps)
    if P.rules.fused is not None:
        z, e = P.rules.fused(W, xs, eps, **params)
    else:
        z, e = P.rules.runtime(W, *xs, **params), P.rules.bound(W, xs, eps, **params)
    y = to_storage(A, W, z)
    S = _storage_sums(P.name, A, W, any_order)
    if S is not None:
        return y, P.rules.bound(S, xs, eps, **params)
    if P.libm and A.libm_ulps:
        return y, conversion_bound(A, W, z, y, add_up(e, libm_error(A, W, z)), True)
    return y, conversion_bound(A, W, z, y, e, any_order)


def libm_error(A: Arithmetic, W: Format, z) -> np.ndarray:
    """Bound of ``|z' − z|`` for a library value ``z'`` within ``k = A.libm_ulps`` ulps of the
    exact ``f(x̂)`` and ``z = RN_W(f(x̂))``: ``k·ulp(f) + |f − z| ≤ (k + 1/2)·ulp(z)`` (nearest;
    ``ulp(f) ≤ ulp(z)`` by the binade lemma, docs/design.md §2), i.e. ``(2k + 1)·r_W(z)`` with
    ``r_W`` the rounding term (``ulp/2``); for a directed ``W`` ``r_W = ulp`` and
    ``(k + 1)·r_W`` suffices. The library value then differs from nfbound's, so its
    conversion to storage is bounded as for ``order=any`` (any value within the bound)."""
    r = rounding_term(W, z)
    factor = 2 * A.libm_ulps + 1 if W.is_nearest else A.libm_ulps + 1
    return mul_up(float(factor), r)


def vjp_runtime(P, A: Arithmetic, xs, g, **params):
    W = A.working_format(P.contraction)
    params, _ = _order_params(A, P.rules.vjp_runtime, params, P.name)
    xs, _ = _operands(A, P.contraction, P.operand_slots, xs, None)
    g = _operands(A, P.contraction, (0,), (g,), None)[0][0]
    return tuple(to_storage(A, W, gr) for gr in P.rules.vjp_runtime(W, xs, g, **params))


def vjp_fused(P, A: Arithmetic, xs, eps, g, eps_g, **params):
    W = A.working_format(P.contraction)
    params, any_order = _order_params(A, P.rules.vjp_runtime, params, P.name)
    xs, eps = _operands(A, P.contraction, P.operand_slots, xs, eps)
    (g,), (eps_g,) = _operands(A, P.contraction, (0,), (g,), (eps_g,))
    if P.rules.vjp_fused is not None:
        grads, bounds = P.rules.vjp_fused(W, xs, eps, g, eps_g, **params)
    else:
        grads = P.rules.vjp_runtime(W, xs, g, **params)
        bounds = P.rules.vjp_bound(W, xs, eps, g, eps_g, **params)
    ys = tuple(to_storage(A, W, gr) for gr in grads)
    out = [conversion_bound(A, W, gr, y, b, any_order) for gr, y, b in zip(grads, ys, bounds)]
    stored = [i for i in range(len(out)) if out[i] is not None and
              (_storage_sums(f"{P.name}.vjp", A, W, any_order) is not None or
               _storage_sums(f"{P.name}.vjp.{i}", A, W, any_order) is not None)]
    if stored:   # the gradients whose library kernels may store partial sums (module doc)
        S = with_subnormals(A.storage, "ftz+daz")
        in_storage = P.rules.vjp_bound(S, xs, eps, g, eps_g, **params)
        for i in stored:
            out[i] = in_storage[i]
    return ys, tuple(out)


def bound(P, A: Arithmetic, xs, eps, **params):
    """The bound of :func:`fused` (the runtime is needed for the conversion term)."""
    return fused(P, A, xs, eps, **params)[1]


def vjp_bound(P, A: Arithmetic, xs, eps, g, eps_g, **params):
    """The bounds of :func:`vjp_fused`."""
    return vjp_fused(P, A, xs, eps, g, eps_g, **params)[1]
