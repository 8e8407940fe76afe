"""``Format``: a number format ``NF(β, fexp, rounding)`` with an overflow rule.

Runtime values of a format that fits binary64 (radix 2, ``p ≤ 53``, range inside binary64's)
are held as float64 arrays; values of any other format as object arrays of exact rationals
(``gmpy2.mpq``, with ``±inf``/``nan`` as Python floats after overflow).

Inputs are rounded once from their exact value. Arrays (or lists, scalars) whose elements all
convert to binary64 exactly (float16/32/64, bool, integers of magnitude ≤ 2^53, longdoubles
that are binary64 values, ml_dtypes' bfloat16/fp8 arrays) take the compiled engine; anything
else — integers beyond 2^53 (Python, int64, uint64), ``fractions.Fraction``,
``decimal.Decimal``, ``gmpy2.mpq``/``mpfr``, other ``np.longdouble`` values, decimal strings,
object arrays — takes the exact reference engine (never a conversion to float64 first, which
would be a second rounding). Complex, datetime, timedelta and structured dtypes are refused.
"""
from __future__ import annotations

import decimal
import math
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import gmpy2
import numpy as np
from gmpy2 import mpfr, mpq

from . import fast, reference
from .exponent import FIX, FLT, FLX, ExponentFunction, _check_int

ROUNDINGS = ("nearest_even", "nearest_away", "toward_zero", "upward", "downward")
OVERFLOWS = ("none", "ieee", "saturate", "nan")
SUBNORMALS = ("gradual", "ftz", "daz", "ftz+daz")
_DBL_MAX = mpq(float(np.finfo(np.float64).max))
_FAST_OPS_RANGE = 480


@dataclass(frozen=True)
class Format:
    """``NF(radix, fexp, rounding)`` plus an overflow rule (Flocq generic format).

    ``max_finite`` is the largest finite magnitude (exact; ``None`` for no overflow threshold).
    ``overflow`` says what a result whose rounding exceeds it becomes: ``"ieee"`` (±inf for the
    nearest modes, ±max or ±inf by direction for directed modes, IEEE 754 §7.4),
    ``"saturate"`` (±max), ``"nan"`` (fp8 e4m3fn, OCP), or ``"none"``.

    ``subnormals`` says how results and operands below the smallest normal magnitude
    ``b_min = β^(emin + p − 1)`` (:attr:`smallest_normal`) are treated (IEEE 754 gradual
    underflow, or what hardware does in flush modes — x86 MXCSR FTZ/DAZ, ARM FPCR.FZ, oneDNN's
    bf16/fp32 kernels):

    * ``"gradual"`` (default): IEEE 754 gradual underflow, results are rounded onto the
      subnormal grid;
    * ``"ftz"`` (flush to zero): a rounded result whose gradually rounded value is nonzero with
      magnitude ``< b_min`` becomes a zero of its sign. That is tininess detected *after*
      rounding to the subnormal grid; hardware may detect it before rounding or after rounding
      with an unbounded exponent, so a result whose exact value is just below ``b_min`` may come
      out as ``±b_min`` here and ``±0`` there. The bounds cover every convention: any exact
      result of magnitude ``< b_min`` may come out as ``±0`` (:attr:`underflow_term`);
    * ``"daz"`` (denormals are zero): every operand of an operation that is a nonzero subnormal
      is read as a zero of its sign before the operation (:meth:`daz`); results are gradual;
    * ``"ftz+daz"``: both.

    ``round`` (a conversion from an exact value, not an operation on format values) applies the
    result flush only; the elementary operations and every compiled kernel apply both. Only
    formats with subnormals (FLT, or a custom exponent function with an ``emin`` and a
    precision) take a mode other than ``"gradual"``.
    """

    radix: int
    fexp: ExponentFunction
    rounding: str = "nearest_even"
    overflow: str = "none"
    max_finite: object = None
    name: str | None = field(default=None, compare=False)
    subnormals: str = "gradual"

    def __post_init__(self) -> None:
        _check_int("radix", self.radix, minimum=2)
        object.__setattr__(self, "radix", int(self.radix))
        if not isinstance(self.fexp, ExponentFunction):
            raise ValueError(f"fexp must be an ExponentFunction (FLX, FLT, FIX or custom), got {self.fexp!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.overflow not in OVERFLOWS:
            raise ValueError(f"overflow must be one of {OVERFLOWS}, got {self.overflow!r}")
        if self.max_finite is not None:
            try:
                M = None if isinstance(self.max_finite, bool) else reference.to_exact(self.max_finite)
            except ValueError:
                M = None
            if not isinstance(M, type(mpq(0))) or M <= 0:
                raise ValueError(f"max_finite must be a positive finite number, got {self.max_finite!r}")
            if reference.round_rational(M, _unbounded(self)) != M:
                raise ValueError(f"max_finite={self.max_finite} is not representable in the format")
            object.__setattr__(self, "max_finite", M)
        elif self.overflow != "none":
            raise ValueError(f"overflow={self.overflow!r} needs max_finite")
        if self.subnormals not in SUBNORMALS:
            raise ValueError(f"subnormals must be one of {SUBNORMALS}, got {self.subnormals!r}")
        if self.subnormals != "gradual" and (self.fexp.kind in ("FLX", "FIX")
                                             or self.smallest_normal is None):
            raise ValueError(f"subnormals={self.subnormals!r} needs a format with subnormals "
                             f"(FLT or custom with emin and precision), not {self.fexp.kind}")

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def flt(cls, radix: int = 2, precision: int = 24, emin: int = -149, emax: int | None = None,
            rounding: str = "nearest_even", overflow: str | None = None,
            max_finite: object = None, name: str | None = None, *,
            subnormals: str = "gradual") -> "Format":
        """``FLT(p, emin)``: ``β^emin`` is the smallest subnormal. The overflow threshold is
        given by ``emax`` (values below ``β^emax``: the largest finite is
        ``(β^p − 1)·β^(emax − p)``, needs ``emax ≥ emin + p``) or by ``max_finite`` (any
        representable value, e.g. 448 for fp8 e4m3fn), not both; ``overflow`` defaults to
        ``"ieee"`` with a threshold and ``"none"`` without; ``subnormals`` as in the class
        docstring. Raises ``ValueError`` naming the offending parameter."""
        _check_int("radix", radix, minimum=2)
        fexp = FLT(precision, emin)
        radix, precision, emin = int(radix), fexp.precision, fexp.emin
        if emax is not None:
            _check_int("emax", emax)
            emax = int(emax)
            if max_finite is not None:
                raise ValueError(f"give emax or max_finite, not both (emax={emax}, max_finite={max_finite!r})")
            if emax - precision < emin:
                raise ValueError(f"emax={emax} must be ≥ emin + precision = {emin + precision}")
            max_finite = (mpq(radix) ** precision - 1) * mpq(radix) ** (emax - precision)
        if overflow is None:
            overflow = "ieee" if max_finite is not None else "none"
        return cls(radix, fexp, rounding, overflow, max_finite, name, subnormals)

    @classmethod
    def flx(cls, radix: int = 2, precision: int = 24, rounding: str = "nearest_even",
            name: str | None = None) -> "Format":
        """``FLX(p)``: precision ``p``, unbounded exponent range, no overflow."""
        return cls(radix, FLX(precision), rounding, "none", None, name)

    @classmethod
    def fix(cls, radix: int = 2, emin: int = -8, rounding: str = "nearest_even",
            max_finite: object = None, overflow: str | None = None,
            name: str | None = None, *, emax: int | None = None) -> "Format":
        """``FIX(emin)``: fixed point with quantum ``β^emin``. The overflow threshold is
        ``max_finite`` (a multiple of ``β^emin``) or ``emax`` (values below ``β^emax``: the
        largest finite is ``β^emax − β^emin``, needs ``emax > emin``), not both; ``overflow``
        defaults as for :meth:`flt`."""
        _check_int("radix", radix, minimum=2)
        fexp = FIX(emin)
        radix, emin = int(radix), fexp.emin
        if emax is not None:
            _check_int("emax", emax)
            emax = int(emax)
            if max_finite is not None:
                raise ValueError(f"give emax or max_finite, not both (emax={emax}, max_finite={max_finite!r})")
            if emax <= emin:
                raise ValueError(f"emax={emax} must be > emin = {emin}")
            max_finite = mpq(radix) ** emax - mpq(radix) ** emin
        if overflow is None:
            overflow = "ieee" if max_finite is not None else "none"
        return cls(radix, fexp, rounding, overflow, max_finite, name)

    # -- constants --------------------------------------------------------------------------
    @property
    def precision(self) -> int | None:
        """Digits ``p`` of the significand in the normal range (``None`` for fixed point)."""
        return self.fexp.precision

    @property
    def emin(self) -> int | None:
        """Smallest canonical exponent: ``β^emin`` is the smallest positive value."""
        return self.fexp.emin

    @property
    def is_nearest(self) -> bool:
        return self.rounding.startswith("nearest")

    @cached_property
    def unit_roundoff_exact(self) -> mpq | None:
        """``u = β^(1−p)/2`` for the nearest modes, ``β^(1−p)`` for directed ones
        (``|RN(z) − z| ≤ u·|z|`` in the normal range); ``None`` for fixed point."""
        if self.precision is None:
            return None
        u = mpq(self.radix) ** (1 - self.precision)
        return u / 2 if self.is_nearest else u

    @cached_property
    def eta_exact(self) -> mpq:
        """Underflow term ``η = β^emin/2`` (nearest) or ``β^emin`` (directed): the absolute
        error of rounding in the subnormal range (0 for FLX)."""
        if self.emin is None:
            return mpq(0)
        e = mpq(self.radix) ** self.emin
        return e / 2 if self.is_nearest else e

    @property
    def u(self) -> float:
        """Unit roundoff as a float64 rounded upward (``≥`` the exact ``u``)."""
        return _float_up(self.unit_roundoff_exact) if self.unit_roundoff_exact is not None else math.nan

    unit_roundoff = u

    @property
    def eta(self) -> float:
        """``η`` as a float64 rounded upward."""
        return _float_up(self.eta_exact)

    @cached_property
    def smallest_subnormal(self) -> mpq | None:
        return None if self.emin is None else mpq(self.radix) ** self.emin

    @cached_property
    def smallest_normal(self) -> mpq | None:
        """``β^(emin + p − 1)``: the smallest value with a full ``p``-digit significand."""
        if self.emin is None or self.precision is None:
            return None
        return mpq(self.radix) ** (self.emin + self.precision - 1)

    @property
    def flushes_results(self) -> bool:
        """Whether tiny results are flushed to zero (``"ftz"``, ``"ftz+daz"``)."""
        return self.subnormals.startswith("ftz")

    @property
    def flushes_operands(self) -> bool:
        """Whether subnormal operands are read as zero (``"daz"``, ``"ftz+daz"``)."""
        return self.subnormals.endswith("daz")

    @cached_property
    def underflow_term_exact(self) -> mpq:
        """The absolute error a rounding may add to the relative one below ``b_min``
        (``RN(z) = z(1 + δ) + θ``, ``|δ| ≤ u``, ``|θ| ≤`` this): ``η`` in gradual underflow
        (Flocq ``relative_error_N_FLT``), ``b_min`` (:attr:`smallest_normal`) in the flush
        modes. FTZ: a flushed result has ``|z| < b_min`` in every tininess convention, so
        ``|0 − z| < b_min``. DAZ: a nonzero subnormal result ``ẑ`` (``|ẑ| ≤ b_min − β^emin``)
        is read as 0 by the operation that consumes it, so its term must cover both readings:
        ``|ẑ − z| + |ẑ| ≤ η + b_min − β^emin ≤ b_min``."""
        return self.eta_exact if self.subnormals == "gradual" else self.smallest_normal

    @property
    def underflow_term(self) -> float:
        """:attr:`underflow_term_exact` as a float64 rounded upward."""
        return _float_up(self.underflow_term_exact)

    @property
    def largest_finite(self) -> mpq | None:
        return self.max_finite

    max_finite_exact = largest_finite

    # -- engines ----------------------------------------------------------------------------
    @cached_property
    def fits_binary64(self) -> bool:
        """Every value of the format is a binary64 value (so runtimes are float64 arrays)."""
        if not (self.radix == 2 and self.fexp.kind in ("FLT", "FIX") and self.emin >= -1074
                and self.max_finite is not None and self.max_finite <= _DBL_MAX):
            return False
        if self.fexp.kind == "FIX":  # m·2^emin with |m| < 2^53
            return self.max_finite < mpq(2) ** (self.emin + 53)
        return self.precision <= 53

    @cached_property
    def is_binary64(self) -> bool:
        return (self.radix == 2 and self.fexp.kind == "FLT" and self.precision == 53
                and self.emin == -1074 and self.max_finite == _DBL_MAX
                and self.rounding == "nearest_even" and self.overflow == "ieee")

    @cached_property
    def fast_ops(self) -> bool:
        """Whether the compiled engine computes ``+ − × ÷ √`` exactly rounded (see ``fast``)."""
        if self.is_binary64:
            return True
        return (self.fits_binary64 and self.fexp.kind == "FLT" and self.precision <= 51
                and self.emin >= -_FAST_OPS_RANGE and self.max_finite <= mpq(2) ** _FAST_OPS_RANGE)

    @cached_property
    def kernel_params(self) -> tuple:
        """``(p, emin, max_finite, rounding, overflow, simple)`` for the compiled kernels.

        ``rounding`` is the rounding code or-ed with the subnormal-mode flags
        (``fast.SUBNORMAL_CODES``): every kernel that rounds through ``fast.round_scalar``,
        ``op_scalar``, ``round_array`` or ``op_array`` honours the mode, and a kernel's
        ties-to-even shortcut (``rounding == NEAREST_EVEN``) is skipped in the flush modes."""
        if not self.fits_binary64:
            raise ValueError(f"format {self} does not fit binary64: no compiled kernels")
        p = self.precision if self.precision is not None else 10**6
        mx = float(self.max_finite) if self.overflow != "none" else math.inf
        simple = self.is_binary64 or (self.is_nearest and p <= 25)
        rounding = fast.ROUNDING_CODES[self.rounding] | fast.SUBNORMAL_CODES[self.subnormals]
        return (p, self.emin, mx, rounding, fast.OVERFLOW_CODES[self.overflow], simple)

    # -- rounding ---------------------------------------------------------------------------
    def round(self, x, out: np.ndarray | None = None) -> np.ndarray:
        """Round every element of ``x`` once, from its exact value, to the format.

        ``x`` is an array, a list or a scalar of any real numbers (see the module doc: inputs
        that are not exactly binary64 values are rounded by the exact engine, never converted
        to float64 first). For formats that fit binary64 the result is a float64 array
        (compiled engine for binary64-exact inputs); otherwise an object array of exact
        ``mpq`` values (reference engine). NaN stays NaN and ±inf stays ±inf (then the
        overflow rule applies, as for any value beyond the largest finite).
        ``out`` (compiled engine only): a C-contiguous float64 array of ``x``'s shape, not
        overlapping ``x``, that receives the result (no allocation). In the flush modes a
        result below ``b_min`` becomes a zero of its sign (``subnormals``; a conversion reads
        no format operand, so DAZ does not apply).
        """
        a = _as_binary64(x) if self.fits_binary64 else None
        if a is not None:
            p, emin, mx, rnd, ovf, _ = self.kernel_params
            if out is not None and (not isinstance(out, np.ndarray) or out.shape != a.shape):
                raise ValueError(f"out must be a float64 array of shape {a.shape}")
            res = fast.round_array(np.ascontiguousarray(a).reshape(-1), p, emin, mx, rnd, ovf,
                                   out=out)
            return self._no_inf(res.reshape(a.shape) if out is None else out)
        if out is not None:
            raise ValueError(f"out= needs binary64 input and a format that fits binary64 ({self})")
        res = _map(lambda v: _round_exact_value(v, self), x)
        return signed_float_array(res, x) if self.fits_binary64 else res

    def tiny(self, x) -> np.ndarray:
        """Where ``0 < |x| < b_min`` (:attr:`smallest_normal`): the nonzero subnormals of an
        array of format values (float64 or exact); all false for a format without
        subnormals (no ``b_min``)."""
        a = np.asarray(x)
        if self.smallest_normal is None:
            return np.zeros(a.shape, dtype=bool)
        if a.dtype != object:
            a = a.astype(np.float64, copy=False)
            return (a != 0) & (np.abs(a) < float(self.smallest_normal))
        return _map(lambda v: not isinstance(v, float) and reference.is_tiny(v, self), a).astype(bool)

    def daz(self, x):
        """``x`` as an operation of this format reads it: under DAZ (:attr:`flushes_operands`)
        every nonzero subnormal becomes a zero of its sign (``±0.0`` in a float64 array, ``0``
        in an exact one); otherwise ``x`` itself."""
        if not self.flushes_operands:
            return x
        a = np.asarray(x)
        t = self.tiny(a)
        if not t.any():
            return x
        if a.dtype != object:
            return np.where(t, np.copysign(0.0, a), a)
        return np.where(t, mpq(0), a)

    def _no_inf(self, out: np.ndarray) -> np.ndarray:
        """Infinite float64 results (infinite inputs, division by zero) in a format without
        infinities: NaN for ``overflow="nan"``, ±max for ``"saturate"`` (as for overflow)."""
        if self.overflow in ("nan", "saturate"):
            inf = np.isinf(out)
            if inf.any():
                out[inf] = np.nan if self.overflow == "nan" else \
                    np.copysign(float(self.max_finite), out[inf])
        return out

    def _op(self, name: str, a, b=None):
        """``RN(a name b)`` (``RN(√a)`` when ``b`` is None), one rounding of the exact result
        (of the operands as read: :meth:`daz`; then the result flush of ``subnormals``).

        For a format that fits binary64 and operands that are all binary64 values: float64
        out, from the compiled kernel (``fast_ops``) or the exact engine. Otherwise (exact
        operands such as ``mpq``, big ints, ``Fraction``, or a format beyond binary64): the
        exact engine, object array out (``mpq``, or ``±inf``/``nan`` floats).
        """
        fa = _as_binary64(a) if self.fits_binary64 else None
        fb = None if b is None or fa is None else _as_binary64(b)
        if fa is not None and (b is None or fb is not None):
            if self.fast_ops:
                fa, fb = np.broadcast_arrays(fa, fa if fb is None else fb)
                shape = fa.shape
                fa, fb = np.ascontiguousarray(fa).reshape(-1), np.ascontiguousarray(fb).reshape(-1)
                with np.errstate(all="ignore"):
                    out = fast.op_array(fast.OPS[name], fa, fb, *self.kernel_params)
                return self._no_inf(out.reshape(shape))
            out = _map2(lambda s, t: reference.apply(name, self, reference.to_exact(s),
                                                     None if t is None else reference.to_exact(t)),
                        fa, fb)
            return self._no_inf(_signed_zeros(_to_float_array(out), name, self.daz(fa),
                                              None if fb is None else self.daz(fb), self.rounding))
        out = _map2(lambda s, t: reference.apply(name, self, reference.to_exact(s),
                                                 None if t is None else reference.to_exact(t)),
                    a, b)
        if self.overflow in ("nan", "saturate"):
            out = _map(lambda v: _round_exact_value(v, self) if isinstance(v, float) else v, out)
        return out

    def add(self, a, b):
        """``RN(a + b)`` elementwise (one rounding of the exact sum); types as in :meth:`_op`."""
        return self._op("add", a, b)

    def sub(self, a, b):
        """``RN(a − b)`` elementwise; types as in :meth:`_op`."""
        return self._op("sub", a, b)

    def mul(self, a, b):
        """``RN(a · b)`` elementwise; types as in :meth:`_op`."""
        return self._op("mul", a, b)

    def div(self, a, b):
        """``RN(a / b)`` elementwise (``x/0`` follows IEEE: ±inf, ``0/0`` is NaN); types as
        in :meth:`_op`."""
        return self._op("div", a, b)

    def sqrt(self, a):
        """``RN(√a)`` elementwise (NaN for ``a < 0``); types as in :meth:`_op`."""
        return self._op("sqrt", a)

    # -- the grid -----------------------------------------------------------------------------
    def mag(self, x) -> np.ndarray:
        """``mag(x) = e`` with ``β^(e−1) ≤ |x| < β^e`` (int64; 0 where x = 0 or x is not
        finite), from the exact value of ``x``."""
        a = _as_binary64(x) if self.radix == 2 else None
        if a is not None:
            return np.where(a == 0, 0, np.frexp(a)[1]).astype(np.int64)

        def one(v):
            e = reference.to_exact(v)
            return 0 if isinstance(e, float) or e == 0 else reference.mag(e, self.radix)
        return _map(one, x).astype(np.int64)

    def cexp(self, x) -> np.ndarray:
        """Canonical exponent ``fexp(mag(x))``; for ``x = 0``, ``emin`` (the finest quantum)."""
        m = self.mag(x)
        if self.fexp.kind == "FLT":
            c = np.maximum(m - self.precision, self.emin)
        elif self.fexp.kind == "FIX":
            c = np.full_like(m, self.emin)
        else:
            c = np.vectorize(self.fexp, otypes=[np.int64])(m)
        if self.emin is not None:
            a = _as_binary64(x)
            zero = a == 0 if a is not None else \
                _map(lambda v: reference.to_exact(v) == 0, x).astype(bool)
            c = np.where(zero, self.emin, c)
        return c

    def ulp(self, x) -> np.ndarray:
        """``ulp(x) = β^cexp(x)`` (``β^emin`` at 0): float64 for radix-2 formats fitting
        binary64, exact otherwise."""
        c = self.cexp(x)
        if self.fits_binary64:
            return np.ldexp(1.0, c)
        return _map(lambda e: mpq(self.radix) ** int(e), c)

    def is_representable(self, x) -> np.ndarray:
        """Whether each element is a value of the format (finite, on the grid, within range)."""
        def one(v):
            e = reference.to_exact(v)
            if isinstance(e, float):
                return False
            return e == 0 or (reference.round_rational(e, _unbounded(self)) == e
                              and (self.max_finite is None or abs(e) <= self.max_finite))
        a = _as_binary64(x) if self.fits_binary64 else None
        if a is not None:
            p, emin, mx, _, _, _ = self.kernel_params
            with np.errstate(invalid="ignore"):
                r = fast.round_array(np.ascontiguousarray(a).reshape(-1), p, emin, np.inf, 2, 0)
                r = r.reshape(a.shape)
                return np.isfinite(a) & (r == a) & (np.abs(a) <= float(self.max_finite))
        return _map(one, x).astype(bool)

    # -- presentation ---------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name or self.spec

    @property
    def spec(self) -> str:
        """The format as a spec string that :func:`nfbound.formats.get` reads back (FLX, FLT
        and FIX formats; a custom exponent function has no spec syntax, its ``custom:…``
        string is for display only)."""
        parts = [f"radix={self.radix}"]
        if self.precision is not None:
            parts.append(f"p={self.precision}")
        if self.emin is not None and self.fexp.kind != "custom":
            parts.append(f"emin={self.emin}")
        if self.max_finite is not None:
            parts.append(f"max={_rational_str(self.max_finite)}")
        parts += [f"rounding={self.rounding}", f"overflow={self.overflow}"]
        if self.subnormals != "gradual":
            parts.append(f"subnormals={self.subnormals}")
        return f"{self.fexp.kind.lower()}:" + ",".join(parts)


def _unbounded(fmt: Format) -> Format:
    """The same format without an overflow threshold, in gradual underflow (for
    representability checks: a subnormal is a value of the format in every mode)."""
    return Format(fmt.radix, fmt.fexp, fmt.rounding, "none", None)


def _round_exact_value(v, fmt: Format):
    e = reference.to_exact(v)
    if isinstance(e, float):  # nan or ±inf
        if math.isnan(e) or fmt.overflow == "nan":
            return math.nan
        if fmt.overflow == "saturate":
            return math.copysign(1, e) * fmt.max_finite
        return e
    return reference.round_rational(e, fmt)


def _is_negative(v) -> bool:
    """Sign of an input value, including the sign of a zero that has one (``-0.0``,
    ``Decimal("-0")``, ``mpfr("-0")``, ``"-0"``); exact zeros (ints, rationals) are positive."""
    if isinstance(v, (float, np.floating)):
        return math.copysign(1.0, float(v)) < 0
    if isinstance(v, decimal.Decimal):
        return v.is_signed()
    if isinstance(v, type(mpfr(0))):
        return gmpy2.is_signed(v)
    if isinstance(v, (str, np.str_)):
        return v.strip().startswith("-")
    return reference.to_exact(v) < 0


def _signed_zeros(out: np.ndarray, name: str, a, b, rounding: str) -> np.ndarray:
    """IEEE 754 signs for the zeros of a float64 result computed exactly (``mpq`` has no −0),
    and for quotients by a signed zero.

    A nonzero exact result rounded to 0 has its own sign, which the binary64 evaluation of the
    op also has (it is nonzero or an underflowed zero of that sign); so have exact zero
    products, quotients and ``√−0``. An exact zero sum is +0 but for two −0 operands, and −0
    under rounding downward but for two +0 operands (§6.3). ``x/±0`` is the binary64 quotient
    (±inf with the sign xor, or NaN).
    """
    if name == "div":
        fa, fb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if (fb == 0).any():
            with np.errstate(all="ignore"):
                out = np.where(fb == 0, fa / fb, out)
    if not (out == 0).any():
        return out
    fa = np.asarray(a, dtype=np.float64)
    fb = fa if b is None else np.asarray(b, dtype=np.float64)
    if name == "sub":
        name, fb = "add", -fb
    with np.errstate(all="ignore"):
        z = {"add": np.add, "mul": np.multiply, "div": np.divide}[name](fa, fb) \
            if name != "sqrt" else np.sqrt(fa)
    if name == "add" and rounding == "downward":
        both_pos = ~np.signbit(fa) & ~np.signbit(fb)
        z = np.where(z == 0, np.where(both_pos, 0.0, -0.0), z)
    return np.where(out == 0, np.copysign(0.0, z), out)


#: Integers of at most this magnitude are binary64 values.
_INT_EXACT = 2 ** 53


def _as_binary64(x, name: str = "x") -> np.ndarray | None:
    """``x`` as a float64 array, converted exactly, when every element is a binary64 value;
    ``None`` when some element needs the exact engine.

    * Converted: the dtypes NumPy casts to float64 *safely* (bool, float16/32/64, int8..int32,
      uint8..uint32, ml_dtypes' real types such as bfloat16 and the fp8s: widening casts,
      value-preserving), except int64/uint64, which NumPy calls safe although ``2^53 + 1`` is
      not a binary64 value: those when every ``|element| ≤ 2^53``; ``np.longdouble`` when
      every element survives the round trip through float64.
    * ``None``: object arrays, strings (read by the exact engine), larger int64/uint64 values,
      longdoubles that are not binary64 values, and lists or scalars holding an integer beyond
      ``2^53`` (NumPy would promote a list mixing it with floats to float64, a rounding).
    * ``ValueError`` naming ``name``: complex, datetime64, timedelta64, void/structured
      dtypes (and ml_dtypes' complex types).
    """
    if isinstance(x, np.ndarray) and x.dtype == np.float64:
        return x
    if not isinstance(x, np.ndarray) and _has_big_integer(x):
        return None
    a = np.asarray(x)
    kind = a.dtype.kind
    if kind in "iu" and a.dtype.itemsize > 4:
        exact = a.size == 0 or (int(a.max()) <= _INT_EXACT and int(a.min()) >= -_INT_EXACT)
        return a.astype(np.float64) if exact else None
    if np.can_cast(a.dtype, np.float64):
        return a.astype(np.float64, copy=False)
    if kind == "f":   # longdouble (float128 on x86): exact iff the round trip is
        with np.errstate(over="ignore", invalid="ignore"):
            b = a.astype(np.float64)
            kept = (b.astype(a.dtype) == a) | np.isnan(a)
        return b if kept.all() else None
    if kind in "OUS":
        return None
    raise ValueError(f"{name} must hold real numbers, got an array of dtype {a.dtype}")


def _has_big_integer(x) -> bool:
    """Whether a list or scalar holds an integer beyond ±2^53 (not exactly a binary64)."""
    return any(isinstance(v, numbers.Integral) and abs(int(v)) > _INT_EXACT
               for v in np.asarray(x, dtype=object).reshape(-1))


def signed_float_array(exact: np.ndarray, x) -> np.ndarray:
    """The object array ``exact`` of binary64 values (``mpq``, ±inf/nan floats) as float64,
    converted exactly; a zero takes the sign of the element of ``x`` it comes from (exact
    rationals have no −0: ``-0.0``, ``Decimal("-0")``, ``mpfr("-0")`` keep theirs, and so
    does a nonzero input rounded to 0)."""
    res = _to_float_array(exact)
    neg = _map(_is_negative, x).astype(bool)
    return np.where(res == 0, np.where(neg, -0.0, 0.0), res)


def _map(f: Callable, x) -> np.ndarray:
    a = np.asarray(x, dtype=object) if not isinstance(x, np.ndarray) else x
    out = np.empty(a.shape, dtype=object)
    flat_in, flat_out = a.reshape(-1), out.reshape(-1)
    for i in range(flat_in.size):
        flat_out[i] = f(flat_in[i])
    return out


def _map2(f: Callable, a, b) -> np.ndarray:
    if b is None:
        return _map(lambda v: f(v, None), a)
    a, b = np.broadcast_arrays(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    out = np.empty(a.shape, dtype=object)
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for i in range(fa.size):
        fo[i] = f(fa[i], fb[i])
    return out


def _to_float_array(x: np.ndarray) -> np.ndarray:
    """Exact values that are binary64 values, as float64 (exact conversion)."""
    return np.array([float(v) for v in x.reshape(-1)], dtype=np.float64).reshape(x.shape)


def _float_up(q: mpq) -> float:
    """The smallest float64 ``≥ q``."""
    f = float(q)
    return f if mpq(f) >= q else float(np.nextafter(f, math.inf))


def _rational_str(q: mpq) -> str:
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"
