"""Context-wise addition: the bound of accumulating two gradient contributions.

TorchLean ``ctxAddBound`` (``NN.Proofs.RuntimeApprox.NF.BackwardOps``, ``approxCtx_add``): when
reverse mode adds two contributions ``x̂`` and ``ŷ`` of the same value's gradient (the value
is consumed by several nodes), the runtime computes ``RN(x̂ + ŷ)`` and, if ``|x̂ − x| ≤ ε_x``
and ``|ŷ − y| ≤ ε_y``,

    |RN(x̂ + ŷ) − (x + y)| ≤ |RN(x̂ + ŷ) − (x̂ + ŷ)| + |x̂ − x| + |ŷ − y| ≤ r + ε_x + ε_y,

where ``r = rounding_term(RN(x̂ + ŷ))`` (half an ulp of the result for nearest modes, Flocq
``error_le_half_ulp``; ``inf`` on overflow/saturation) and ``r = 0`` when an operand is
exactly 0 (then the addition is exact). All bound arithmetic is rounded upward.

``x̂`` and ``ŷ`` are runtime values of the format — gradient contributions computed by the VJP
rules, which check their own inputs — or ±inf/NaN from an overflow, which give the bound
``inf``; they are not re-checked here (reverse mode calls this for every accumulation).
"""
from __future__ import annotations

import numpy as np

from ..formats import Format
from .rounding import rounding_term
from .upward import add_up


def _is_zero(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object:
        return np.vectorize(lambda v: v == 0, otypes=[bool])(a)
    return a == 0


def ctx_add(fmt: Format, x, ex, y, ey):
    """``(RN(x̂ + ŷ), ε_x + ε_y + r)``: the runtime sum and its certified bound."""
    if np.shape(x) != np.shape(y):
        raise ValueError(f"ctx_add: x and y must have the same shape, got {np.shape(x)} and "
                         f"{np.shape(y)}")
    s = fmt.add(x, y)
    return s, np.asarray(add_up(ex, ey, rounding_term(fmt, s, _is_zero(x) | _is_zero(y))),
                         dtype=np.float64)


def ctx_add_bound(fmt: Format, x, ex, y, ey, out=None) -> np.ndarray:
    """Bound ``ε_x + ε_y + r(RN(x̂ + ŷ))`` of ``|RN(x̂ + ŷ) − (x + y)|`` (``r = 0`` when
    ``x̂ = 0`` or ``ŷ = 0``). ``out`` may pass the already computed runtime sum ``RN(x̂ + ŷ)``."""
    if out is None:
        return ctx_add(fmt, x, ex, y, ey)[1]
    return np.asarray(add_up(ex, ey, rounding_term(fmt, out, _is_zero(x) | _is_zero(y))),
                      dtype=np.float64)
