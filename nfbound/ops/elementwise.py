"""Elementwise arithmetic primitives: add, mul (the template for every op module), sub, neg,
scale, div, safe_div, abs, relu, sqrt.

Each op is one :class:`~nfbound.ops.primitive.Primitive` whose six rules sit together.
Binary ops require equal shapes (no silent broadcasting), and a VJP's upstream gradient ``g``
must have the output's shape. Exact ops (neg, abs, relu) charge no rounding; the others charge
the rounding term of each rounded step (``bounds.rounding``). Constants (``c`` of scale and
safe_div) are taken as the exact rationals they denote.

Inputs. Every runtime, bound and VJP rule takes *runtime values*: the inputs and the upstream
gradient ``g`` must be finite values of the format (``checks.format_value``; a ``ValueError``
names the argument otherwise). Off-grid data must be rounded first (``fmt.round``), its
representation error becoming the input's ``eps``. The ``*_error`` helpers (``mul_error``,
``div_error``, ``scale_error``, ``sqrt_error``), which other modules use to compose rules on
values they computed themselves, do not re-check.

Overflow and domain errors. A runtime result that overflows (±inf, NaN, or a saturated
±max_finite) gets the bound ``inf`` — never a finite wrong number: every rule, and every
``*_error`` helper, passes its ``(runtime, bound)`` through ``bounds.rounding.guard_nonfinite``
(a composed bound alone can miss it: ``0·inf = NaN`` charges no rounding for the exact zero
factor, and ``mul_up(0, inf) = 0``). Runtime division by zero
follows IEEE 754 (±inf, NaN) with an ``inf`` bound; ``sqrt`` of a negative runtime value raises
``ValueError``. The spec rules raise ``ValueError`` for a domain error of the enclosure: a
divisor enclosure containing 0 (div, its VJP), a sqrt argument enclosure reaching below 0 (or
reaching 0, for the VJP's ``1/(2√x)``). safe_div never refuses: its clamped denominator is
at least ``c > 0``.
"""
from __future__ import annotations

import math

import gmpy2
import numpy as np
from gmpy2 import mpq

from ..bounds.rounding import guard_nonfinite, rounding_term
from ..bounds.upward import abs_up, add_up, div_up, exact_array_up, exact_up, mul_up, up
from ..formats import Format, fast
from ..formats import reference
from ..formats.reference import round_rational, to_exact
from . import checks
from .interval import Interval
from .primitive import Primitive, register


def _zero(x) -> np.ndarray:
    a = np.asarray(x)
    return np.vectorize(lambda v: v == 0, otypes=[bool])(a) if a.dtype == object else a == 0


def _binary(fmt: Format, x, y) -> tuple[np.ndarray, np.ndarray]:
    """The operands of a binary op: same shape, both runtime values of ``fmt``."""
    checks.same_shape(("x", "y"), x, y)
    return checks.format_value("x", x, fmt), checks.format_value("y", y, fmt)


def _unary(fmt: Format, xs) -> tuple[np.ndarray]:
    """The one input of a unary op's rule (``xs = (x,)``), a runtime value of ``fmt``."""
    (x,) = xs
    return (checks.format_value("x", x, fmt),)


def _grad(fmt: Format, g, x) -> np.ndarray:
    """The upstream gradient of an elementwise op: the output's (= ``x``'s) shape, runtime
    values of ``fmt``."""
    checks.same_shape(("g", "x"), g, x)
    return checks.format_value("g", g, fmt)


def _grad_eps(eps_g, g) -> np.ndarray:
    """The bound of the upstream gradient as a nonnegative float64 array of ``g``'s shape."""
    return np.asarray(checks.eps_like("eps_g", eps_g, g), dtype=np.float64)


def _sample_pair(rng, fmt: Format):
    shape = tuple(rng.integers(1, 5, size=rng.integers(1, 3)))
    x, y = (fmt.round(rng.standard_normal(shape) * 4) for _ in range(2))
    return (x, y), {}


# -- add: z = x + y ---------------------------------------------------------------------------
def add_runtime(fmt: Format, x, y):
    """``RN(x + y)`` elementwise."""
    return fmt.add(*_binary(fmt, x, y))


def add_spec(x: Interval, y: Interval) -> Interval:
    return x + y


def add_bound(fmt: Format, xs, eps):
    """``ε_x + ε_y + r``, ``r = rounding_term(RN(x̂ + ŷ))`` (0 when an operand is 0: exact)."""
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    z = fmt.add(x, y)
    return guard_nonfinite(fmt, z, add_up(ex, ey, rounding_term(fmt, z, _zero(x) | _zero(y))))


def add_vjp_runtime(fmt: Format, xs, g):
    """``(g, g)`` (exact)."""
    x, _ = _binary(fmt, *xs)
    g = _grad(fmt, g, x)
    return g, g


def add_vjp_spec(xs, g: Interval):
    return g, g


def add_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """``(ε_g, ε_g)``: both gradients are copies of ``g``."""
    x, _ = _binary(fmt, *xs)
    g = _grad(fmt, g, x)
    eg = guard_nonfinite(fmt, g, _grad_eps(eps_g, g))
    return eg, eg


add = register(Primitive("add", add_runtime, add_spec, add_bound, add_vjp_runtime, add_vjp_spec,
                         add_vjp_bound, _sample_pair))


# -- mul: z = x · y ---------------------------------------------------------------------------
def mul_runtime(fmt: Format, x, y):
    """``RN(x · y)`` elementwise."""
    return fmt.mul(*_binary(fmt, x, y))


def mul_spec(x: Interval, y: Interval) -> Interval:
    return x * y


def mul_error(fmt: Format, x, ex, y, ey):
    """Bound of ``|RN(x̂ŷ) − x·y|``: ``|x̂|·ε_y + |ŷ|·ε_x + ε_x·ε_y + r``.

    From ``x̂ŷ − xy = x̂(ŷ − y) + ŷ(x̂ − x) − (x̂ − x)(ŷ − y)``; ``r`` is the rounding term of
    ``RN(x̂ŷ)``, 0 when a factor is 0. Tighter than TorchLean's ``(|x̂|+ε_x)ε_y + (|ŷ|+ε_y)ε_x + r``
    by ``ε_x·ε_y``. Returns ``(RN(x̂ŷ), bound)``, the bound ``inf`` where ``RN(x̂ŷ)`` overflowed
    (``bounds.rounding.guard_nonfinite``: ``0·inf = NaN`` has ``r = 0`` and ``0·ε = 0``).
    """
    z = fmt.mul(x, y)
    r = rounding_term(fmt, z, _zero(x) | _zero(y))
    return z, guard_nonfinite(fmt, z, add_up(mul_up(abs_up(x), ey), mul_up(abs_up(y), ex),
                                             mul_up(ex, ey), r))


def mul_bound(fmt: Format, xs, eps):
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    return mul_error(fmt, x, ex, y, ey)[1]


def mul_vjp_runtime(fmt: Format, xs, g):
    """``(RN(g·y), RN(g·x))``."""
    x, y = _binary(fmt, *xs)
    g = _grad(fmt, g, x)
    return fmt.mul(g, y), fmt.mul(g, x)


def mul_vjp_spec(xs, g: Interval):
    x, y = xs
    return g * y, g * x


def mul_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """The product rule for each of ``RN(g·y)`` and ``RN(g·x)``."""
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    g = _grad(fmt, g, x)
    eg = _grad_eps(eps_g, g)
    return mul_error(fmt, g, eg, y, ey)[1], mul_error(fmt, g, eg, x, ex)[1]


mul = register(Primitive("mul", mul_runtime, mul_spec, mul_bound, mul_vjp_runtime, mul_vjp_spec,
                         mul_vjp_bound, _sample_pair))


# =============================================================================================
# Shared pieces of the rules below
# =============================================================================================
def _check_eps(names: tuple[str, ...], eps, xs) -> tuple[np.ndarray, ...]:
    """Each input bound as a nonnegative float64 array of its input's shape."""
    if len(eps) != len(xs):
        raise ValueError(f"expected {len(xs)} input bounds, got {len(eps)}")
    return tuple(checks.eps_like(n, e, x) for n, e, x in zip(names, eps, xs))


def _float_lo_hi(x) -> tuple[np.ndarray, np.ndarray]:
    """float64 arrays ``(lo, hi)`` with ``lo ≤ x ≤ hi`` elementwise (both ``x`` itself for
    float64 runtime values; directed conversions of exact rationals otherwise)."""
    a = np.asarray(x)
    if a.dtype != object:
        a = np.asarray(a, dtype=np.float64)
        return a, a
    hi = exact_array_up(a)
    lo = -exact_array_up(np.vectorize(lambda v: -v, otypes=[object])(a))
    return lo, hi


def _abs_down(x) -> np.ndarray:
    """A float64 lower bound of ``|x|`` (exact for float64 values)."""
    a = np.asarray(x)
    if a.dtype != object:
        return np.abs(np.asarray(a, dtype=np.float64))
    return -exact_array_up(np.vectorize(lambda v: -abs(v), otypes=[object])(a))


def _down(x) -> np.ndarray:
    """One binary64 step toward −inf: a lower bound of any real that ``x`` is the RN of."""
    return np.nextafter(np.asarray(x, dtype=np.float64), -np.inf)


def _sub_down(a, b) -> np.ndarray:
    """A lower bound of ``a − b`` (float64 operands, one step down after the subtraction)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return _down(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def _sqrt_down(a) -> np.ndarray:
    """A lower bound ``≥ 0`` of ``√a`` for ``a ≥ 0`` (IEEE ``sqrt`` is correctly rounded, so
    one step down is below the exact root)."""
    return np.maximum(_down(np.sqrt(np.maximum(np.asarray(a, dtype=np.float64), 0.0))), 0.0)


def _sqrt_up(a) -> np.ndarray:
    """An upper bound of ``√a`` for ``a ≥ 0`` (correctly rounded ``sqrt``, one step up)."""
    return up(np.sqrt(np.maximum(np.asarray(a, dtype=np.float64), 0.0)))


def _zero_of(x):
    """The zero scalar of ``x``'s runtime representation (``0.0`` or ``mpq(0)``)."""
    return mpq(0) if np.asarray(x).dtype == object else 0.0


def _neg(x) -> np.ndarray:
    """``−x`` elementwise: exact in every format (formats are symmetric)."""
    return np.negative(np.asarray(x))


def _constant(name: str, c) -> mpq:
    """A finite scalar constant as the exact rational it denotes (a float64 is the dyadic
    rational it holds: ``0.1`` means ``3602879701896397/2^55``, not ``1/10``)."""
    if isinstance(c, np.ndarray):
        if c.shape != ():
            raise ValueError(f"{name} must be a scalar, got an array of shape {c.shape}")
        c = c.item()
    if isinstance(c, bool) or c is None:
        raise ValueError(f"{name} must be a finite number, got {c!r}")
    try:
        q = to_exact(c)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {c!r}") from None
    if isinstance(q, float):
        raise ValueError(f"{name} must be finite, got {c!r}")
    return q


# How one rounded operation with a constant operand ``c`` is evaluated:
#   "format": ``c`` is a value of the format: the format's own operation (``fmt.mul``/``fmt.div``);
#   "kernel": ``c`` is a binary64 value of moderate size (2^−100 ≤ |c| ≤ 2^100) but not of the
#             format, and the compiled engine applies: its residual ("sticky") path — TwoProduct
#             for ×, the exact remainder ``a − s·b`` for ÷ — rounds the exact result once for
#             any binary64 operands whose residual is exact, which the size limits on ``c``
#             and the format's range (|v| ∈ [2^−480, 2^480]) guarantee;
#   "exact":  anything else: exact rationals and the reference engine (slow, always correct).
_KERNEL_RANGE = (mpq(2) ** -100, mpq(2) ** 100)


def _constant_mode(fmt: Format, c: mpq) -> str:
    r = round_rational(c, fmt)
    if not isinstance(r, float) and r == c:
        return "format"
    if (fmt.fast_ops and _KERNEL_RANGE[0] <= abs(c) <= _KERNEL_RANGE[1]
            and mpq(float(c)) == c):
        return "kernel"
    return "exact"


def _constant_array(c: mpq, like, mode: str):
    """``c`` in the representation of the runtime array ``like`` (float64 when exact)."""
    if np.asarray(like).dtype != object and mode != "exact":
        return np.float64(float(c))
    return c


def _rn_op(fmt: Format, op: str, a, b, mode: str) -> np.ndarray:
    """``RN(a ∘ b)`` elementwise (``op`` in ``"mul"``, ``"div"``), rounded once from the exact
    result, where ``a``/``b`` may contain the constant of a :func:`_constant_mode` ``mode``."""
    a_obj = np.asarray(a).dtype == object
    b_obj = np.asarray(b).dtype == object
    if mode == "format" or not fmt.fits_binary64:
        return getattr(fmt, op)(a, b)
    if mode == "kernel" and not (a_obj or b_obj):
        p, emin, mx, rnd, ovf, _ = fmt.kernel_params
        aa, bb = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        flat = [np.ascontiguousarray(v).reshape(-1) for v in (aa, bb)]   # one compiled signature
        with np.errstate(all="ignore"):
            out = fast.op_array(fast.OPS[op], *flat, p, emin, mx, rnd, ovf, False)
        return out.reshape(aa.shape)
    aa, bb = np.broadcast_arrays(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    out = np.frompyfunc(lambda s, t: float(reference.apply(op, fmt, to_exact(s), to_exact(t))),
                        2, 1)(aa, bb)
    out = np.asarray(out, dtype=np.float64).reshape(aa.shape)
    # IEEE sign of a zero result (mpq has no −0): the sign of the exact product/quotient,
    # which the binary64 evaluation of the operands' sign pattern reproduces
    signs = np.frompyfunc(lambda v: math.copysign(1.0, float(v)) if v != 0 else
                          math.copysign(1.0, v) if isinstance(v, float) else 1.0, 1, 1)
    sa = np.asarray(signs(aa), dtype=np.float64)
    sb = np.asarray(signs(bb), dtype=np.float64)
    return np.where(out == 0, np.copysign(0.0, sa * sb), out)


def div_error(fmt: Format, x, ex, y, ey, floor=0.0, divide=None):
    """Bound of ``|RN(x̂/ŷ) − x/y|`` given ``|x̂ − x| ≤ ε_x``, ``|ŷ − y| ≤ ε_y``:

        (ε_x + |q̂|·ε_y) / D + r,    q̂ = x̂/ŷ (exact),   D = max(floor, |ŷ| − ε_y),

    ``inf`` where ``D ≤ 0``. Why: ``x − q̂·y = (x − x̂) + q̂·(ŷ − y)`` because ``q̂ŷ = x̂``, so
    ``|x/y − q̂| ≤ (ε_x + |q̂|ε_y)/|y|``; and ``|y| ≥ |ŷ| − ε_y`` (when positive, ``y`` has the
    sign of ``ŷ``) and ``|y| ≥ floor`` (a known lower bound of the spec denominator, e.g. the
    ``c`` of :data:`safe_div`). ``r`` is the rounding term of ``RN(q̂)``, 0 when ``x̂ = 0 ≠ ŷ``.
    ``D`` is rounded down and every other step up. ``divide`` computes the runtime quotient
    (default ``fmt.div``). Returns ``(RN(x̂/ŷ), bound)``, the bound ``inf`` where ``RN(x̂/ŷ)``
    overflowed (``bounds.rounding.guard_nonfinite``).
    """
    z = (divide or fmt.div)(x, y)
    exact = _zero(x) & ~_zero(y)
    r = rounding_term(fmt, z, exact)
    ay = _abs_down(y)
    den = np.maximum(_sub_down(ay, ey), floor)
    q = div_up(abs_up(x), ay)                     # |x̂/ŷ| rounded up (inf where ŷ = 0)
    return z, guard_nonfinite(fmt, z, add_up(div_up(add_up(ex, mul_up(q, ey)), den), r))


def scale_error(fmt: Format, c: mpq, x, ex, mode: str | None = None):
    """Bound of ``|RN(c·x̂) − c·x|`` for an exact constant ``c``: ``|c|·ε_x + r``, ``r`` the
    rounding term of ``RN(c·x̂)`` (0 when ``c = 0`` or ``x̂ = 0``). Returns ``(RN(c·x̂), bound)``,
    the bound ``inf`` where ``RN(c·x̂)`` overflowed (``bounds.rounding.guard_nonfinite``)."""
    mode = mode or _constant_mode(fmt, c)
    z = _rn_op(fmt, "mul", _constant_array(c, x, mode), x, mode)
    exact = _zero(x) | (c == 0)
    return z, guard_nonfinite(fmt, z, add_up(mul_up(exact_up(abs(c)), ex),
                                             rounding_term(fmt, z, exact)))


def _indicator(lo_mask, hi_mask) -> Interval:
    """The interval ``[lo_mask, hi_mask]`` of 0/1 rationals (the image of an interval under a
    monotone step function such as ``1[x > 0]``)."""
    one, zero = mpq(1), mpq(0)
    lo = np.asarray(np.where(lo_mask, one, zero), dtype=object)
    if np.array_equal(lo_mask, hi_mask):
        return Interval(lo, lo)
    return Interval(lo, np.asarray(np.where(hi_mask, one, zero), dtype=object))


def _sample_unary(rng, fmt: Format):
    shape = tuple(rng.integers(1, 5, size=rng.integers(1, 3)))
    return (fmt.round(rng.standard_normal(shape) * 4),), {}


# -- sub: z = x − y ---------------------------------------------------------------------------
def sub_runtime(fmt: Format, x, y):
    """``RN(x − y)`` elementwise."""
    return fmt.sub(*_binary(fmt, x, y))


def sub_spec(x: Interval, y: Interval) -> Interval:
    return x - y


def _sterbenz(fmt: Format, x, y) -> np.ndarray:
    """Where ``x̂ − ŷ`` is exact by Sterbenz's lemma (Flocq ``sterbenz``: ``y/2 ≤ x ≤ 2y`` in
    a FLX/FLT/FIX format of any radix): same signs and ``|ŷ|/2 ≤ |x̂| ≤ 2|ŷ|``. The doubled
    magnitudes are exact in binary64 (or ``inf``, which keeps the comparison's truth)."""
    if fmt.fexp.kind not in ("FLX", "FLT", "FIX"):
        return np.zeros(np.shape(x), dtype=bool)
    xa, ya = np.asarray(x), np.asarray(y)
    if xa.dtype == object or ya.dtype == object:
        f = np.vectorize(lambda a, b: ((a > 0 and b > 0) or (a < 0 and b < 0))
                         and 2 * abs(a) >= abs(b) and abs(a) <= 2 * abs(b), otypes=[bool])
        return f(xa, ya)
    a, b = np.abs(xa), np.abs(ya)
    with np.errstate(over="ignore"):
        return (np.sign(xa) * np.sign(ya) > 0) & (2 * a >= b) & (a <= 2 * b)


def sub_bound(fmt: Format, xs, eps):
    """``ε_x + ε_y + r``, ``r = rounding_term(RN(x̂ − ŷ))``; the subtraction is exact (``r = 0``)
    when ``x̂ = 0`` (result ``−ŷ``), ``ŷ = 0`` (result ``x̂``) or by Sterbenz's lemma
    (:func:`_sterbenz`; includes ``x̂ = ŷ``) — the catastrophic-cancellation case, where the
    bound is then the input errors alone. Sterbenz's difference is a value of the format, but
    one below ``b_min`` is flushed to 0 in the FTZ modes: a zero result counts as exact only
    for ``x̂ = ŷ``."""
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    z = fmt.sub(x, y)
    exact = _zero(x) | _zero(y) | (_sterbenz(fmt, x, y) & (~_zero(z) | (x == y)))
    return guard_nonfinite(fmt, z, add_up(ex, ey, rounding_term(fmt, z, exact)))


def sub_vjp_runtime(fmt: Format, xs, g):
    """``(g, −g)`` (negation is exact)."""
    x, _ = _binary(fmt, *xs)
    g = _grad(fmt, g, x)
    return g, _neg(g)


def sub_vjp_spec(xs, g: Interval):
    return g, -g


def sub_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """Both gradients are ``±g`` exactly: ``(ε_g, ε_g)`` (``inf`` where ``ĝ`` may be an
    overflow: ``−ĝ`` is one exactly where ``ĝ`` is, formats being symmetric)."""
    x, _ = _binary(fmt, *xs)
    g = _grad(fmt, g, x)
    eg = guard_nonfinite(fmt, g, _grad_eps(eps_g, g))
    return eg, eg


sub = register(Primitive("sub", sub_runtime, sub_spec, sub_bound, sub_vjp_runtime, sub_vjp_spec,
                         sub_vjp_bound, _sample_pair))


# -- neg: z = −x ------------------------------------------------------------------------------
def neg_runtime(fmt: Format, x):
    """``−x`` elementwise (exact: every format is symmetric about 0)."""
    return _neg(checks.format_value("x", x, fmt))


def neg_spec(x: Interval) -> Interval:
    return -x


def neg_bound(fmt: Format, xs, eps):
    """``ε_x``: an exact, 1-Lipschitz op charges no rounding."""
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    return guard_nonfinite(fmt, _neg(x), ex)


def neg_vjp_runtime(fmt: Format, xs, g):
    """``(−g,)``."""
    return (_neg(_grad(fmt, g, _unary(fmt, xs)[0])),)


def neg_vjp_spec(xs, g: Interval):
    return (-g,)


def neg_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """``(ε_g,)``: negation is exact."""
    g = _grad(fmt, g, _unary(fmt, xs)[0])
    return (guard_nonfinite(fmt, _neg(g), _grad_eps(eps_g, g)),)


neg = register(Primitive("neg", neg_runtime, neg_spec, neg_bound, neg_vjp_runtime, neg_vjp_spec,
                         neg_vjp_bound, _sample_unary))


# -- scale: z = c · x for an exact constant c ------------------------------------------------------
def scale_runtime(fmt: Format, x, *, c):
    """``RN(c·x)`` elementwise, one rounding of the exact product.

    ``c`` is any finite number taken exactly (float64, int, ``mpq``, ``Fraction``). When ``c``
    is a value of the format (the usual case: the runtime stores the constant in the format)
    this is the format's multiplication; otherwise it is still one rounding of the exact
    ``c·x`` (not ``RN(RN(c)·x)``), so the spec ``c·x`` needs no representation-error term.
    To model a runtime that stores ``RN(c)``, pass ``c = RN(c)``.
    """
    return scale_error(fmt, _constant("c", c), checks.format_value("x", x, fmt), 0.0)[0]


def scale_spec(x: Interval, *, c) -> Interval:
    return x * _constant("c", c)


def scale_bound(fmt: Format, xs, eps, *, c):
    """``|c|·ε_x + r`` (:func:`scale_error`)."""
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    return scale_error(fmt, _constant("c", c), x, ex)[1]


def scale_vjp_runtime(fmt: Format, xs, g, *, c):
    """``(RN(c·g),)``."""
    return (scale_error(fmt, _constant("c", c), _grad(fmt, g, _unary(fmt, xs)[0]), 0.0)[0],)


def scale_vjp_spec(xs, g: Interval, *, c):
    return (g * _constant("c", c),)


def scale_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, c):
    """``(|c|·ε_g + r,)`` with ``r`` the rounding term of ``RN(c·ĝ)``."""
    g = _grad(fmt, g, _unary(fmt, xs)[0])
    return (scale_error(fmt, _constant("c", c), g, _grad_eps(eps_g, g))[1],)


def _sample_scale(rng, fmt: Format):
    (x,), _ = _sample_unary(rng, fmt)
    kind = rng.integers(3)
    if kind == 0:    # a value of the format
        c = float(np.asarray(fmt.round(np.array([rng.standard_normal() * 2])), dtype=np.float64)[0])
    elif kind == 1:  # an arbitrary binary64 constant
        c = float(rng.standard_normal() * 2)
    else:            # a rational that no binary format holds
        c = mpq(int(rng.integers(-7, 8)), 3)
    return (x,), {"c": c}


scale = register(Primitive("scale", scale_runtime, scale_spec, scale_bound, scale_vjp_runtime,
                           scale_vjp_spec, scale_vjp_bound, _sample_scale))


# -- div: z = x / y ---------------------------------------------------------------------------
def div_runtime(fmt: Format, x, y):
    """``RN(x / y)`` elementwise. ``ŷ = 0`` follows IEEE 754 (±inf, ``0/0`` NaN); the bound is
    then ``inf`` and the spec refuses (its ``y`` enclosure contains 0)."""
    return fmt.div(*_binary(fmt, x, y))


def div_spec(x: Interval, y: Interval) -> Interval:
    """``x / y``; raises ``ValueError`` when an enclosure of ``y`` contains 0."""
    if np.any((y.lo <= 0) & (y.hi >= 0)):
        raise ValueError("div: the enclosure of the divisor y contains 0")
    return x / y


def div_bound(fmt: Format, xs, eps):
    """``(ε_x + |x̂/ŷ|·ε_y)/(|ŷ| − ε_y) + r``, ``inf`` where ``|ŷ| ≤ ε_y`` (:func:`div_error`)."""
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    return div_error(fmt, x, ex, y, ey)[1]


def div_vjp_runtime(fmt: Format, xs, g):
    """PyTorch's ``DivBackward0`` order: ``g_x = RN(g/ŷ)``,
    ``g_y = RN(−g · RN(RN(x̂/ŷ)/ŷ))``."""
    x, y = _binary(fmt, *xs)
    g = _grad(fmt, g, x)
    return fmt.div(g, y), fmt.mul(_neg(g), fmt.div(fmt.div(x, y), y))


def div_vjp_spec(xs, g: Interval):
    """``(g/y, −g·(x/y)/y)``."""
    x, y = xs
    if np.any((y.lo <= 0) & (y.hi >= 0)):
        raise ValueError("div VJP: the enclosure of the divisor y contains 0")
    return g / y, -g * ((x / y) / y)


def div_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """Replay of the runtime steps: ``g_x`` by the division rule on ``(ĝ, ε_g) / (ŷ, ε_y)``;
    ``t₁ = RN(x̂/ŷ)`` and ``t₂ = RN(t₁/ŷ)`` by the division rule (``t₁``'s spec is ``x/y``, so
    its bound feeds the next division as ``ε_x``), then the product rule for ``−ĝ·t₂``."""
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    g = _grad(fmt, g, x)
    eg = _grad_eps(eps_g, g)
    _, egx = div_error(fmt, g, eg, y, ey)
    t1, e1 = div_error(fmt, x, ex, y, ey)
    t2, e2 = div_error(fmt, t1, e1, y, ey)
    return egx, mul_error(fmt, _neg(g), eg, t2, e2)[1]


def _sample_div(rng, fmt: Format):
    shape = tuple(rng.integers(1, 5, size=rng.integers(1, 3)))
    x = fmt.round(rng.standard_normal(shape) * 4)
    y = fmt.round(rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 4.0, size=shape))
    return (x, y), {}


div = register(Primitive("div", div_runtime, div_spec, div_bound, div_vjp_runtime, div_vjp_spec,
                         div_vjp_bound, _sample_div))


# -- safe_div: z = x / max(y, c), c > 0 -----------------------------------------------------------
# Choice: the denominator is clamped from below, ``d = max(y, c)`` (PyTorch
# ``x / y.clamp(min=c)``), rather than ``y + c`` or ``max(|y|, c)``: it leaves ``x/y`` unchanged
# wherever ``y ≥ c`` and makes the quotient defined and bounded everywhere (``|z| ≤ |x|/c``), so
# neither the spec nor the bound ever refuses. ``c`` is taken exactly, as in :data:`scale`; the
# runtime divides by the exact ``max(ŷ, c)`` and rounds once. The derivative in ``y`` follows
# PyTorch's ``clamp`` convention ``∂max(y, c)/∂y = 1[y ≥ c]`` (1 at the kink ``y = c``), in the
# runtime and the spec alike.
def _at_least(y, c: mpq, mode: str) -> np.ndarray:
    """``ŷ ≥ c`` elementwise, compared exactly."""
    ca = _constant_array(c, y, mode)
    if isinstance(ca, np.float64):
        return np.asarray(y) >= ca
    return np.vectorize(lambda v: to_exact(v) >= c, otypes=[bool])(np.asarray(y, dtype=object))


def _safe_denominator(y, c: mpq, mode: str):
    """``max(ŷ, c)`` (exact), in the runtime representation of ``y`` (object when ``c`` is not a
    binary64 value)."""
    ca = _constant_array(c, y, mode)
    keep = _at_least(y, c, mode)
    if isinstance(ca, np.float64):
        return np.where(keep, y, ca)
    ya = np.asarray(y, dtype=object)
    out = np.empty(ya.shape, dtype=object)
    out[...] = c
    out[keep] = ya[keep]
    return out


def _safe_setup(fmt: Format, c):
    cq = _constant("c", c)
    if cq <= 0:
        raise ValueError(f"safe_div: c must be positive, got {c!r}")
    mode = _constant_mode(fmt, cq)
    return cq, mode, (lambda a, b: _rn_op(fmt, "div", a, b, mode))


def safe_div_runtime(fmt: Format, x, y, *, c):
    """``RN(x / max(y, c))`` elementwise (``c > 0`` exact; see the note above)."""
    x, y = _binary(fmt, x, y)
    cq, mode, divide = _safe_setup(fmt, c)
    return divide(x, _safe_denominator(y, cq, mode))


def safe_div_spec(x: Interval, y: Interval, *, c) -> Interval:
    cq = _constant("c", c)
    if cq <= 0:
        raise ValueError(f"safe_div: c must be positive, got {c!r}")
    return x / y.maximum(cq)


def _safe_den_eps(y, ey, c: mpq) -> np.ndarray:
    """Bound of ``|max(ŷ, c) − max(y, c)|``: ``ε_y`` (max is 1-Lipschitz), 0 where
    ``ŷ + ε_y ≤ c`` (then both are ``c``)."""
    _, y_hi = _float_lo_hi(y)
    c_lo = -exact_up(-c)
    return np.where(add_up(y_hi, ey) <= c_lo, 0.0, ey)


def safe_div_bound(fmt: Format, xs, eps, *, c):
    """The division rule with the spec denominator ``d = max(y, c) ≥ c``:
    ``(ε_x + |q̂|·ε_d)/max(c, d̂ − ε_d) + r`` with ``d̂ = max(ŷ, c)``, ``ε_d`` from
    :func:`_safe_den_eps`; always finite unless the runtime overflows."""
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    cq, mode, divide = _safe_setup(fmt, c)
    d = _safe_denominator(y, cq, mode)
    return div_error(fmt, x, ex, d, _safe_den_eps(y, ey, cq), -exact_up(-cq), divide)[1]


def safe_div_vjp_runtime(fmt: Format, xs, g, *, c):
    """With ``d̂ = max(ŷ, c)``: ``g_x = RN(g/d̂)``; ``g_y = 1[ŷ ≥ c] · RN(−g · RN(RN(x̂/d̂)/d̂))``
    (PyTorch: ``DivBackward0`` then ``ClampMinBackward``, which passes the gradient where
    ``ŷ ≥ c``)."""
    x, y = _binary(fmt, *xs)
    g = _grad(fmt, g, x)
    cq, mode, divide = _safe_setup(fmt, c)
    d = _safe_denominator(y, cq, mode)
    gy = fmt.mul(_neg(g), divide(divide(x, d), d))
    return divide(g, d), _where_at_least(y, cq, mode, gy)


def _where_at_least(y, c: mpq, mode: str, G) -> np.ndarray:
    """``G·1[ŷ ≥ c]``: ``ClampMinBackward`` passes the gradient where ``ŷ ≥ c`` (exact)."""
    return np.where(_at_least(y, c, mode), G, _zero_of(G))


def safe_div_vjp_spec(xs, g: Interval, *, c):
    """``(g/d, −g·(x/d)/d · 1[y ≥ c])`` with ``d = max(y, c)``."""
    x, y = xs
    cq = _constant("c", c)
    if cq <= 0:
        raise ValueError(f"safe_div: c must be positive, got {c!r}")
    d = y.maximum(cq)
    return g / d, (-g * ((x / d) / d)) * _indicator(y.lo >= cq, y.hi >= cq)


def safe_div_vjp_bound(fmt: Format, xs, eps, g, eps_g, *, c):
    """``g_x``: the division rule (denominator floor ``c``). ``g_y``: the division rule twice
    and the product rule give ``e`` for ``G = RN(−g·RN(RN(x̂/d̂)/d̂))`` against the spec ``G_S``;
    then the indicator ``1[y ≥ c]``. It surely agrees with the runtime's where
    ``ŷ − ε_y ≥ c`` (both 1: bound ``e``) or ``ŷ + ε_y < c`` (both 0: bound 0); elsewhere the
    four cases give ``|G − G_S| ≤ e``, ``|G|``, ``|G_S| ≤ |G| + e`` or 0, so ``|G| + e``."""
    x, y = _binary(fmt, *xs)
    ex, ey = _check_eps(("eps_x", "eps_y"), eps, (x, y))
    g = _grad(fmt, g, x)
    eg = _grad_eps(eps_g, g)
    cq, mode, divide = _safe_setup(fmt, c)
    d = _safe_denominator(y, cq, mode)
    ed = _safe_den_eps(y, ey, cq)
    floor = -exact_up(-cq)
    _, egx = div_error(fmt, g, eg, d, ed, floor, divide)
    t1, e1 = div_error(fmt, x, ex, d, ed, floor, divide)
    t2, e2 = div_error(fmt, t1, e1, d, ed, floor, divide)
    G, e = mul_error(fmt, _neg(g), eg, t2, e2)
    y_lo, y_hi = _float_lo_hi(y)
    c_hi = exact_up(cq)
    both_one = _sub_down(y_lo, ey) >= c_hi
    both_zero = add_up(y_hi, ey) < floor
    egy = np.where(both_one, e, np.where(both_zero, 0.0, add_up(abs_up(G), e)))
    return egx, guard_nonfinite(fmt, _where_at_least(y, cq, mode, G), egy)


def _sample_safe_div(rng, fmt: Format):
    (x, y), _ = _sample_pair(rng, fmt)
    c = [0.5, 1.0, 0.1, 0.75][int(rng.integers(4))]   # 0.1 and (in fp8) 0.75 are not format values
    return (x, y), {"c": c}


safe_div = register(Primitive("safe_div", safe_div_runtime, safe_div_spec, safe_div_bound,
                              safe_div_vjp_runtime, safe_div_vjp_spec, safe_div_vjp_bound,
                              _sample_safe_div))


# -- abs: z = |x| ------------------------------------------------------------------------------
def abs_runtime(fmt: Format, x):
    """``|x|`` elementwise (exact)."""
    return np.abs(checks.format_value("x", x, fmt))


def abs_spec(x: Interval) -> Interval:
    return x.abs()


def abs_bound(fmt: Format, xs, eps):
    """``ε_x``: ``|·|`` is exact and 1-Lipschitz (``||x̂| − |x|| ≤ |x̂ − x|``)."""
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    return guard_nonfinite(fmt, np.abs(x), ex)


def abs_vjp_runtime(fmt: Format, xs, g):
    """``(g·sgn(x̂),)`` with ``sgn(0) = 0`` (PyTorch ``AbsBackward0``: ``grad * self.sgn()``);
    exact: the result is ``g``, ``−g`` or 0."""
    (x,) = _unary(fmt, xs)
    return (_abs_vjp_values(x, _grad(fmt, g, x)),)


def _abs_vjp_values(x, g) -> np.ndarray:
    """``ĝ·sgn(x̂)`` of checked runtime values (``sgn(0) = 0``)."""
    return np.where(x > 0, g, np.where(x < 0, _neg(g), _zero_of(g)))


def abs_vjp_spec(xs, g: Interval):
    """``g·sgn(x)`` (``sgn(0) = 0``); ``sgn`` is nondecreasing, so over an enclosure its values
    lie in ``[sgn(lo), sgn(hi)]`` and ``g·[sgn(lo), sgn(hi)]`` encloses the gradient."""
    (x,) = xs
    sgn = np.frompyfunc(lambda v: mpq((v > 0) - (v < 0)), 1, 1)
    lo = np.asarray(sgn(x.lo), dtype=object).reshape(x.shape)
    s = Interval(lo, lo) if x.lo is x.hi else Interval(
        lo, np.asarray(sgn(x.hi), dtype=object).reshape(x.shape))
    return (g * s,)


def abs_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """Where ``|x̂| > ε_x`` the spec ``x`` has the sign of ``x̂``: ``ε_g``. Where ``x̂ = 0``
    the runtime gradient is 0 and the spec's is ``s·g_S`` with ``|g_S| ≤ |ĝ| + ε_g`` (0 when
    also ``ε_x = 0``). Where ``0 < |x̂| ≤ ε_x`` the signs may differ:
    ``|sgn(x̂)ĝ − s·g_S| ≤ |ĝ| + |g_S| ≤ 2|ĝ| + ε_g``."""
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    g = _grad(fmt, g, x)
    eg = _grad_eps(eps_g, g)
    ag = abs_up(g)
    zero = _zero(x)
    sure = _abs_down(x) > ex
    b = np.where(sure, eg, np.where(zero, np.where(ex == 0, 0.0, add_up(ag, eg)),
                                    add_up(ag, ag, eg)))
    return (guard_nonfinite(fmt, _abs_vjp_values(x, g), b),)


abs_ = register(Primitive("abs", abs_runtime, abs_spec, abs_bound, abs_vjp_runtime, abs_vjp_spec,
                          abs_vjp_bound, _sample_unary))


# -- relu: z = max(x, 0) -------------------------------------------------------------------------
def relu_runtime(fmt: Format, x):
    """``max(x, 0)`` elementwise (exact; +0 for ``x ≤ 0``)."""
    return _relu_values(checks.format_value("x", x, fmt))


def _relu_values(x) -> np.ndarray:
    """``max(x̂, 0)`` of checked runtime values (+0 for ``x̂ ≤ 0``)."""
    return np.where(np.asarray(x) > 0, x, _zero_of(x))


def relu_spec(x: Interval) -> Interval:
    return x.maximum(0)


def relu_bound(fmt: Format, xs, eps):
    """``ε_x``: relu is exact and 1-Lipschitz."""
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    return guard_nonfinite(fmt, _relu_values(x), ex)


def relu_vjp_runtime(fmt: Format, xs, g):
    """``(g·1[x̂ > 0],)`` — PyTorch's ``threshold_backward``: ``relu'(0) = 0`` (exact)."""
    (x,) = _unary(fmt, xs)
    return (_relu_vjp_values(x, _grad(fmt, g, x)),)


def _relu_vjp_values(x, g) -> np.ndarray:
    """``ĝ·1[x̂ > 0]`` of checked runtime values."""
    return np.where(np.asarray(x) > 0, g, _zero_of(g))


def relu_vjp_spec(xs, g: Interval):
    """``g·1[x > 0]`` with the same convention at 0 (the subgradient 0); over an enclosure the
    indicator lies in ``[1[lo > 0], 1[hi > 0]]`` (it is nondecreasing)."""
    (x,) = xs
    return (g * _indicator(x.lo > 0, x.hi > 0),)


def relu_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """The indicators ``1[x̂ > 0]`` and ``1[x > 0]`` surely agree where ``x̂ > ε_x`` (both 1:
    ``ε_g``) or ``x̂ ≤ −ε_x`` (both 0: 0). Elsewhere (``x̂`` within ``ε_x`` of 0, where the spec
    input may sit on the other side of the kink): if ``x̂ > 0`` the runtime gradient is ``ĝ``
    and the spec's ``g_S`` or 0, so ``max(ε_g, |ĝ|)``; if ``x̂ ≤ 0`` it is 0 and the spec's 0 or
    ``g_S``, so ``|ĝ| + ε_g``."""
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    g = _grad(fmt, g, x)
    eg = _grad_eps(eps_g, g)
    lo, hi = _float_lo_hi(x)
    ag = abs_up(g)
    positive = np.asarray(x) > 0
    both_one = lo > ex
    both_zero = hi <= -ex
    unsure = np.where(positive, np.maximum(ag, eg), add_up(ag, eg))
    b = np.where(both_one, eg, np.where(both_zero, 0.0, unsure))
    return (guard_nonfinite(fmt, _relu_vjp_values(x, g), b),)


relu = register(Primitive("relu", relu_runtime, relu_spec, relu_bound, relu_vjp_runtime,
                          relu_vjp_spec, relu_vjp_bound, _sample_unary))


# -- sqrt: z = √x -------------------------------------------------------------------------------
_SQRT_PRECISION = 200


def _sqrt_rational(q: mpq, upward: bool) -> mpq:
    """A rational enclosing endpoint of ``√q`` (``q ≥ 0``): MPFR at 200 bits with directed
    rounding of both the conversion of ``q`` and the root (monotone), read back exactly.
    Exact when ``√q`` is a 200-bit binary number (e.g. ``q`` a square of a dyadic)."""
    rnd = gmpy2.RoundUp if upward else gmpy2.RoundDown
    with gmpy2.context(precision=_SQRT_PRECISION, round=rnd):
        return mpq(gmpy2.sqrt(gmpy2.mpfr(q)))


def _sqrt_interval(x: Interval, who: str) -> Interval:
    if np.any(x.lo < 0):
        raise ValueError(f"{who}: the enclosure of x reaches below 0 (sqrt is undefined there)")
    f_lo = np.frompyfunc(lambda v: _sqrt_rational(v, False), 1, 1)
    f_hi = np.frompyfunc(lambda v: _sqrt_rational(v, True), 1, 1)
    lo = np.asarray(f_lo(x.lo), dtype=object).reshape(x.shape)
    hi = np.asarray(f_hi(x.hi), dtype=object).reshape(x.shape)
    if x.lo is x.hi and np.all(lo == hi):
        return Interval(lo, lo)   # every root exact
    return Interval(lo, hi)


def _sqrt_values(fmt: Format, x):
    """``RN(√x̂)`` of runtime values; ``ValueError`` for a negative entry (not a silent NaN)."""
    if np.any(np.asarray(x) < 0):
        raise ValueError("sqrt: x has negative entries")
    return fmt.sqrt(x)


def sqrt_runtime(fmt: Format, x):
    """``RN(√x)`` elementwise; ``ValueError`` for a negative entry (not a silent NaN)."""
    return _sqrt_values(fmt, checks.format_value("x", x, fmt))


def sqrt_spec(x: Interval) -> Interval:
    """``√x`` (monotone): ``[√lo↓, √hi↑]`` from MPFR; ``ValueError`` if ``lo < 0``."""
    return _sqrt_interval(x, "sqrt")


def sqrt_error(fmt: Format, x, ex):
    """Bound of ``|RN(√x̂) − √x|`` for spec ``x ≥ 0`` (the spec refuses otherwise):

        min( ε_x / (√x̂ + √max(x̂ − ε_x, 0)),  √ε_x ) + r.

    First term: ``√x̂ − √x = (x̂ − x)/(√x̂ + √x)`` and ``x ≥ max(x̂ − ε_x, 0)``; second:
    ``|√a − √b| ≤ √|a − b|`` (finite even at ``x̂ = 0``). ``r`` is the rounding term of
    ``RN(√x̂)``, 0 at ``x̂ = 0``. Denominator rounded down, the rest up.
    Returns ``(RN(√x̂), bound)``.
    """
    z = _sqrt_values(fmt, x)
    r = rounding_term(fmt, z, _zero(x))
    lo, _ = _float_lo_hi(x)
    den = np.maximum(_down(_sqrt_down(lo) + _sqrt_down(_sub_down(lo, ex))), 0.0)
    prop = np.minimum(div_up(ex, den), _sqrt_up(ex))
    return z, guard_nonfinite(fmt, z, add_up(np.where(ex == 0, 0.0, prop), r))


def sqrt_bound(fmt: Format, xs, eps):
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    return sqrt_error(fmt, x, ex)[1]


def sqrt_vjp_runtime(fmt: Format, xs, g):
    """PyTorch's ``SqrtBackward0``, ``g / (2·result)``: ``RN(g / RN(2·RN(√x̂)))``
    (``x̂ = 0`` gives ±inf or NaN, and an infinite bound)."""
    (x,) = _unary(fmt, xs)
    g = _grad(fmt, g, x)
    return (fmt.div(g, scale_error(fmt, mpq(2), _sqrt_values(fmt, x), 0.0)[0]),)


def sqrt_vjp_spec(xs, g: Interval):
    """``g / (2√x)``; ``ValueError`` if an enclosure of ``x`` reaches 0 (unbounded slope)."""
    (x,) = xs
    if np.any(x.lo <= 0):
        raise ValueError("sqrt VJP: the enclosure of x reaches 0, where 1/(2√x) is unbounded")
    return (g / (_sqrt_interval(x, "sqrt VJP") * mpq(2)),)


def sqrt_vjp_bound(fmt: Format, xs, eps, g, eps_g):
    """Replay: ``ŝ = RN(√x̂)`` (:func:`sqrt_error`), ``t̂ = RN(2ŝ)`` (:func:`scale_error`,
    ``c = 2``), then the division rule for ``ĝ / t̂`` (``inf`` where ``t̂ ≤ ε_t``)."""
    (x,) = _unary(fmt, xs)
    (ex,) = _check_eps(("eps_x",), eps, (x,))
    g = _grad(fmt, g, x)
    s, es = sqrt_error(fmt, x, ex)
    t, et = scale_error(fmt, mpq(2), s, es)
    return (div_error(fmt, g, _grad_eps(eps_g, g), t, et)[1],)


def _sample_sqrt(rng, fmt: Format):
    shape = tuple(rng.integers(1, 5, size=rng.integers(1, 3)))
    return (fmt.round(np.abs(rng.standard_normal(shape)) * 4 + 0.125),), {}


sqrt = register(Primitive("sqrt", sqrt_runtime, sqrt_spec, sqrt_bound, sqrt_vjp_runtime,
                          sqrt_vjp_spec, sqrt_vjp_bound, _sample_sqrt, libm=True))
