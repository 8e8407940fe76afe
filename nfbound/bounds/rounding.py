"""The local rounding term of one elementary operation.

For an operation whose exact result on runtime operands is ``z`` and whose runtime result is
``ẑ = round(z)``:

* nearest modes: ``|ẑ − z| ≤ ulp(z)/2 ≤ ulp(ẑ)/2`` (Flocq ``error_le_half_ulp``; ``ulp`` is
  monotone in ``|·|`` and rounding to nearest never leaves the binade downward past a power
  of β, which is representable), with ``ulp(0) = β^emin`` so ``ẑ = 0`` charges ``η = β^emin/2``;
* directed modes: ``|ẑ − z| < ulp(z) ≤ ulp(ẑ)``;
* flush modes (``fmt.subnormals`` not ``"gradual"``): a result ``|ẑ| < b_min`` (zero or a
  subnormal) charges ``fmt.underflow_term = b_min``. FTZ: ``ẑ = 0`` may stand for any exact
  ``|z| < b_min`` (in every tininess convention), not only ``|z| ≤ η``; DAZ: a subnormal ``ẑ``
  is read as 0 by the operation that consumes it, and ``b_min`` bounds both ``|ẑ − z|`` and
  ``|0 − z|`` (see ``Format.underflow_term_exact``). In gradual underflow the same rule reads
  ``ulp/2 = η`` (or ``ulp``) there, so ``fmt.underflow_term`` is the term below ``b_min`` in
  every mode;
* overflow: ``ẑ = ±inf`` or NaN charges ``inf``; so does a saturated ``|ẑ| = max_finite``
  (saturation, or IEEE directed rounding toward the largest finite), since ``z`` may be
  arbitrarily large.

The term is computed from ``ẑ`` alone, so no exact ``z`` is needed; where the caller knows the
operation was exact (an operand 0, …) it passes ``exact`` and the term is 0. (In the flush
modes ``0 + x̂`` with a subnormal ``x̂`` rounds to 0 although flagged exact: its error ``|x̂|``
is carried by ``x̂``'s own bound — a subnormal result charged ``b_min`` here, a subnormal input
charged ``|x̂|`` by ``Primitive``.)
"""
from __future__ import annotations

import numpy as np

from ..formats import Format
from .upward import exact_array_up


def rounding_term(fmt: Format, out, exact=None) -> np.ndarray:
    """Elementwise upper bound (float64) of ``|out − z|`` where ``out = round(z)`` in ``fmt``."""
    a = np.asarray(out)
    if fmt.fits_binary64 and a.dtype != object:
        a = a.astype(np.float64, copy=False)
        finite = np.isfinite(a)
        h = np.where(finite, _from_binary64_ulp(fmt, fmt.ulp(np.where(finite, a, 0.0))), np.inf)
    else:
        flat = a.reshape(-1)
        finite = np.array([not (isinstance(v, float) and not np.isfinite(v)) for v in flat], dtype=bool)
        safe = np.array([v if f else 0 for v, f in zip(flat, finite)], dtype=object)
        ulp = np.asarray(fmt.ulp(safe))
        if ulp.dtype == object:
            h = exact_array_up(ulp / 2 if fmt.is_nearest else ulp)
        else:   # a format fitting binary64 given exact (object) values: float64 ulps
            h = _from_binary64_ulp(fmt, ulp)
        h = np.where(finite, h, np.inf).reshape(a.shape)
        if fmt.fexp.kind == "FLX":   # no underflow: only an exact 0 rounds to 0
            h = np.where(np.vectorize(lambda v: v == 0, otypes=[bool])(a), 0.0, h)
    if fmt.subnormals != "gradual":
        h = np.where(_below_normal(fmt, a), fmt.underflow_term, h)
    if fmt.max_finite is not None and _saturates(fmt):
        mx = float(fmt.max_finite) if fmt.fits_binary64 else None
        at_max = (np.abs(a) == mx) if mx is not None else np.vectorize(
            lambda v: not isinstance(v, float) and abs(v) == fmt.max_finite, otypes=[bool])(a)
        h = np.where(at_max, np.inf, h)
    if exact is not None:
        h = np.where(exact, 0.0, h)
    return np.asarray(h, dtype=np.float64)


def _below_normal(fmt: Format, a: np.ndarray) -> np.ndarray:
    """Where ``|a| < b_min``: zeros and nonzero subnormals (never inf or NaN)."""
    zero = a == 0 if a.dtype != object else np.vectorize(lambda v: v == 0, otypes=[bool])(a)
    return zero | fmt.tiny(a)


def _from_binary64_ulp(fmt: Format, ulp: np.ndarray) -> np.ndarray:
    """The term from float64 ulps: ``ulp/2`` (nearest) or ``ulp`` (directed). ``ulp/2`` is
    exact except for ``ulp = 2^−1074`` (binary64's own quantum), where it underflows to 0: the
    smallest float64 above ``2^−1075`` is ``2^−1074`` itself."""
    return np.maximum(ulp * 0.5, np.float64(5e-324)) if fmt.is_nearest else ulp


def _saturates(fmt: Format) -> bool:
    """Whether an overflowing result can come out as ``±max_finite`` (so ``|ẑ| = max`` does
    not bound ``|z|``)."""
    return fmt.overflow == "saturate" or (fmt.overflow == "ieee" and not fmt.is_nearest)
