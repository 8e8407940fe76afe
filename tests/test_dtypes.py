"""Every NumPy dtype is read exactly or refused (issue 11, hole 3).

Runtime values were converted to float64 *before* the grid test: binary32 ``add`` of the int64
``2^53 + 1`` returned ``2^53`` with bound 0, bfloat16 ``sum`` of the longdouble ``1 + 2^−60``
returned 1 with bound 0. Now (``nfbound.ops.checks``, module doc):

* read exactly, then held as the format's runtime values (float64 when it fits binary64, exact
  ``mpq`` otherwise): bool (0/1), every int and uint at any magnitude, float16/32/64,
  longdouble, ml_dtypes' real types (bfloat16, fp8, …; NumPy-registered safe casts, widening
  exactly), NumPy scalars, 0-d arrays, object arrays / lists of Python ints of any size,
  ``Fraction``, ``Decimal``, ``mpq``, ``mpfr``;
* refused with a ``ValueError`` naming the argument: complex (ml_dtypes' too), str, bytes,
  datetime64, timedelta64, void/structured, object elements that are not real numbers;
* error bounds (``eps``) are rounded up from their exact value.

The registry-wide test feeds every runtime input and ``g`` of every primitive as each dtype.
"""
from __future__ import annotations

import inspect
import re
import warnings
import zlib
from decimal import Decimal
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from gmpy2 import mpfr, mpq
from hypothesis import given, settings, strategies as st

import nfbound.ops as ops
from nfbound import formats
from nfbound.bounds.upward import exact_up
from nfbound.formats.reference import round_rational, to_exact
from nfbound.ops import checks

PRESETS = ["bfloat16", "binary16", "binary32", "binary64", "float8_e4m3fn", "decimal32",
           "flt:p=60,emin=-2000,emax=2000"]          # the last two are held as exact rationals

#: Every scalar type NumPy knows (ml_dtypes registers its own on import).
ALL_TYPES = sorted(set(np.sctypeDict.values()), key=lambda t: t.__name__)
#: The decisions: these are refused; every other type is read exactly.
REFUSED = {"complex64", "complex128", "clongdouble", "complex32", "bcomplex32", "str_",
           "bytes_", "datetime64", "timedelta64", "void"}
ACCEPTED = {"bool", "int8", "int16", "int32", "int64", "longlong", "uint8", "uint16", "uint32",
            "uint64", "ulonglong", "float16", "float32", "float64", "longdouble", "object_",
            "bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4"}
LONGDOUBLE_IS_WIDER = np.finfo(np.longdouble).nmant > 52


def _name(t) -> str:
    return t.__name__


def _refused(call, name: str) -> str:
    """``call()`` raises a one-line ``ValueError`` that names the argument ``name``."""
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and re.search(rf"(^|\W){re.escape(name)}(\W|$)", msg), \
        f"the error does not name {name!r}: {msg!r}"
    return msg


def _same(a, b) -> bool:
    """Bit-for-bit equality of rule results (arrays, tuples, ``None``), signs of zeros too."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype == object:
        return all(type(u) is type(v) and (u == v or (u != u and v != v))
                   for u, v in zip(x.reshape(-1), y.reshape(-1)))
    return np.array_equal(x, y, equal_nan=True) and np.array_equal(np.signbit(x), np.signbit(y))


def _in_dtype(values, t) -> np.ndarray | None:
    """``values`` (small exact numbers) as an array of type ``t`` when every one is held
    exactly (signs of zeros too), else ``None``."""
    if t is np.object_:
        return np.array(list(values), dtype=object)
    v = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            a = v.astype(t)
            back = a.astype(np.float64)
        except (TypeError, ValueError):
            return None
    return a if _same(back, v) else None


_REFUSED_ARRAYS = {"str_": np.array(["1", "2"]), "bytes_": np.array([b"1", b"2"]),
                   "datetime64": np.array([1, 2], dtype="datetime64[s]"),
                   "timedelta64": np.array([1, 2], dtype="timedelta64[s]"),
                   "void": np.zeros(2, dtype=[("a", np.float64)])}


def _refused_array(t, shape=(2,)) -> np.ndarray:
    """An array of the refused type ``t``."""
    a = _REFUSED_ARRAYS.get(_name(t))
    return np.resize(np.array([1, 2]).astype(t) if a is None else a, shape)


def _on_grid(fmt, v) -> bool:
    """The reference engine's verdict (the judge): ``v`` is a value of ``fmt``."""
    q = to_exact(v)
    return not isinstance(q, float) and round_rational(q, fmt) == q


# -- the two audit cases ---------------------------------------------------------------------------
def test_audit_int64_beyond_2_53_is_refused_by_binary32_add():
    """Was: ``add(2^53 + 1, 0)`` returned ``2^53`` with bound 0 (int64 made float64 first)."""
    fmt = formats.get("binary32")
    add = ops.get("add")
    x, y = np.array([2 ** 53 + 1], dtype=np.int64), np.zeros(1, dtype=np.int64)
    _refused(lambda: add.runtime(fmt, x, y), "x")
    _refused(lambda: add.bound(fmt, (x, y), (np.zeros(1), np.zeros(1))), "x")
    assert add.runtime(fmt, np.array([2 ** 53], dtype=np.int64), y)[0] == 2.0 ** 53


def test_audit_longdouble_off_the_grid_is_refused_by_bfloat16_sum():
    """Was: ``sum([1 + 2^−60])`` (longdouble) returned 1 with bound 0."""
    if not LONGDOUBLE_IS_WIDER:
        pytest.skip("np.longdouble is binary64 on this machine")
    fmt = formats.get("bfloat16")
    x = np.array([np.longdouble(1) + np.longdouble(2) ** -60])
    assert not fmt.is_representable(x)[0]
    _refused(lambda: ops.get("sum").runtime(fmt, x), "x")
    _refused(lambda: ops.get("sum").bound(fmt, (x,), (np.zeros(1),)), "x")


# -- every dtype, at the check ---------------------------------------------------------------------
def test_the_decisions_cover_known_types():
    names = {_name(t) for t in ALL_TYPES}
    assert ACCEPTED <= names and {"complex128", "str_", "datetime64", "void"} <= names
    assert not ACCEPTED & REFUSED


def check_dtype(t, fmt_name: str) -> None:
    """Small exact values in the dtype ``t`` give the float64 call's result, bit for bit (a
    refused dtype: a ValueError naming the argument); a value of the dtype off the format's
    grid is always refused."""
    fmt = formats.get(fmt_name)
    if _name(t) in REFUSED:
        _refused(lambda: checks.format_value("bias", _refused_array(t), fmt), "bias")
        return
    values = [0.0, 1.0, -1.0, 2.0, -2.0, 3.0, 0.5, -0.0]
    kept = [v for v in values if _in_dtype([v], t) is not None]
    x = _in_dtype(kept, t)
    assert x is not None and len(kept) >= 1
    want = checks.format_value("bias", np.array(kept), fmt)
    assert want.dtype == (np.float64 if fmt.fits_binary64 else object)
    assert _same(checks.format_value("bias", x, fmt), want), f"{_name(t)} in {fmt_name}"
    assert _same(checks.format_value("bias", x[1:2].reshape(()), fmt), want[1:2].reshape(()))
    if t is not np.object_:                                                 # a NumPy scalar
        assert _same(checks.format_value("bias", x[1], fmt), want[1:2].reshape(()))
    for v in _off_grid_values(fmt, t):
        _refused(lambda: checks.format_value("bias", np.concatenate([x, v]), fmt), "bias")


#: One format held as float64, one decimal and one binary format held as exact rationals.
FAST_PRESETS = ["binary32", "decimal32", "flt:p=60,emin=-2000,emax=2000"]


@pytest.mark.parametrize("fmt_name", FAST_PRESETS)
@pytest.mark.parametrize("t", ALL_TYPES, ids=_name)
def test_every_dtype_is_read_exactly_or_refused(t, fmt_name):
    check_dtype(t, fmt_name)


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", sorted(set(PRESETS) - set(FAST_PRESETS)))
@pytest.mark.parametrize("t", ALL_TYPES, ids=_name)
def test_every_dtype_is_read_exactly_or_refused_sweep(t, fmt_name):
    check_dtype(t, fmt_name)


def _off_grid_values(fmt, t) -> list[np.ndarray]:
    """One-element arrays of type ``t`` holding values off ``fmt``'s grid or beyond its range
    (the reference engine decides)."""
    if t is np.object_:
        return [np.array([Fraction(1, 3)], dtype=object)]
    cands = [2 ** 53 + 1, 2 ** 61 + 1, 2 ** 64 - 1, -2 ** 63 + 1, 10 ** 7 + 1, 127, 255, 32767,
             1 + 2 ** -10, 1 + 2 ** -23, 1 + 2 ** -7, 1 + 2 ** -3, 0.1]
    if LONGDOUBLE_IS_WIDER:
        cands.append(np.longdouble(1) + np.longdouble(2) ** -60)
    out = []
    for c in cands:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                a = np.array([c], dtype=object).astype(t)
            except (OverflowError, TypeError, ValueError):
                continue
        q = to_exact(c)
        if to_exact(a[0]) == q and not (_on_grid(fmt, c) and abs(q) <= fmt.max_finite):
            out.append(a)
    return out


@pytest.mark.parametrize("fmt_name", PRESETS)
def test_wide_types_have_off_grid_values(fmt_name):
    """The refusals above are exercised: int64, uint64, longdouble and objects hold values
    off every preset's grid (float32 off bfloat16's, float16 off fp8's)."""
    fmt = formats.get(fmt_name)
    wide = [np.int64, np.uint64, np.object_] + ([np.longdouble] if LONGDOUBLE_IS_WIDER else [])
    for t in wide:
        assert _off_grid_values(fmt, t), f"{_name(t)} in {fmt_name}"
    assert _off_grid_values(formats.get("bfloat16"), np.float32)
    assert _off_grid_values(formats.get("float8_e4m3fn"), np.float16)


@pytest.mark.parametrize("fmt_name", ["binary32", "decimal32"])
def test_refused_object_elements(fmt_name):
    fmt = formats.get(fmt_name)
    nested = np.empty(2, dtype=object)
    nested[:] = [1.0, None]
    for bad in (None, "1.5", b"1", 1 + 0j, np.complex128(1), np.datetime64(1, "s"),
                np.timedelta64(1, "s"), [1.0], object()):
        x = np.array([1.0, 0.0], dtype=object)
        x[1] = bad
        _refused(lambda: checks.format_value("g", x, fmt), "g")
        _refused(lambda: checks.eps_like("eps_g", x, x), "eps_g")
    _refused(lambda: checks.format_value("g", nested, fmt), "g")
    _refused(lambda: checks.format_value("g", [1.0, "2"], fmt), "g")      # a list NumPy makes str


def test_bool_is_read_as_0_and_1():
    """Decision: bool is accepted. NumPy's bool is a numeric type with the exact values 0 and
    1 (it casts safely to float64, ``Format.round`` takes it), and the result is the 0/1 float
    call's, so refusing it would guard no number."""
    for name in PRESETS:
        fmt = formats.get(name)
        got = checks.format_value("x", np.array([False, True]), fmt)
        assert _same(got, checks.format_value("x", np.array([0.0, 1.0]), fmt))


def test_integers_beyond_2_53_are_read_exactly():
    b32, b64, b16 = (formats.get(n) for n in ("binary32", "binary64", "binary16"))
    p60 = formats.get("flt:p=60,emin=-2000,emax=2000")
    u = np.array([2 ** 64 - 2 ** 11, 2 ** 63 + 2 ** 11, 2 ** 63], dtype=np.uint64)
    assert checks.format_value("x", u, b64).tolist() == [2.0 ** 64 - 2 ** 11, 2.0 ** 63 + 2 ** 11, 2.0 ** 63]
    _refused(lambda: checks.format_value("x", u, b32), "x")                # 2^63 + 2^11
    assert checks.format_value("x", u[2:], b32).tolist() == [2.0 ** 63]
    _refused(lambda: checks.format_value("x", np.array([2 ** 64 - 1], dtype=np.uint64), b64), "x")
    imin = np.array([np.iinfo(np.int64).min])
    assert checks.format_value("x", imin, b32).tolist() == [-2.0 ** 63]
    _refused(lambda: checks.format_value("x", imin, b16), "x")             # beyond 65504
    assert checks.format_value("x", imin, p60).tolist() == [mpq(-2 ** 63)]
    # NumPy scalars, 0-d arrays, Python ints beyond 2^64, lists mixing them with floats
    assert checks.format_value("x", np.int64(2 ** 60), b32) == 2.0 ** 60
    assert checks.format_value("x", np.array(2 ** 60), b32).shape == ()
    for bad in (np.int64(2 ** 60 + 1), np.array(2 ** 60 + 1), np.uint64(2 ** 64 - 1), 2 ** 70 + 1,
                [2 ** 70 + 1, 0.5], [np.int64(2 ** 53 + 1), np.float32(0.5)]):
        _refused(lambda: checks.format_value("x", bad, b32), "x")
    assert checks.format_value("x", [2 ** 70, 0.5], b32).tolist() == [2.0 ** 70, 0.5]
    assert checks.format_value("x", [2 ** 70, 2 ** 59 + 1], p60).tolist() == [mpq(2 ** 70), mpq(2 ** 59 + 1)]
    _refused(lambda: checks.format_value("x", [2 ** 70 + 1], p60), "x")


def test_longdouble_and_float16_subnormals():
    b16, bf, e4 = (formats.get(n) for n in ("binary16", "bfloat16", "float8_e4m3fn"))
    sub = np.array([2.0 ** -24, -2.0 ** -24], dtype=np.float16)
    assert checks.format_value("x", sub, b16).tolist() == [2.0 ** -24, -2.0 ** -24]
    assert checks.format_value("x", sub, bf).tolist() == [2.0 ** -24, -2.0 ** -24]
    _refused(lambda: checks.format_value("x", sub, e4), "x")
    ld = np.array([0.5, -0.0, 3.0], dtype=np.longdouble)
    got = checks.format_value("x", ld, bf)
    assert got.dtype == np.float64 and _same(got, np.array([0.5, -0.0, 3.0]))
    assert checks.format_value("x", np.longdouble(0.5), bf) == 0.5
    if LONGDOUBLE_IS_WIDER:
        for name in PRESETS:
            _refused(lambda: checks.format_value("x", np.longdouble(1) + np.longdouble(2) ** -60,
                                                 formats.get(name)), "x")
        big = np.array([np.longdouble(2) ** 1500])                          # beyond binary64
        _refused(lambda: checks.format_value("x", big, formats.get("binary64")), "x")
        p60 = formats.get("flt:p=60,emin=-2000,emax=2000")
        assert checks.format_value("x", big, p60).tolist() == [mpq(2) ** 1500]


def test_exact_objects_and_signed_zeros():
    b32, d32 = formats.get("binary32"), formats.get("decimal32")
    x = np.array([Fraction(1, 2), Decimal("0.25"), mpq(3, 4), mpfr(1.5), 2, np.float32(0.125)],
                 dtype=object)
    assert _same(checks.format_value("x", x, b32), np.array([0.5, 0.25, 0.75, 1.5, 2.0, 0.125]))
    zeros = np.array([Decimal("-0"), mpfr("-0"), np.float64(-0.0), np.longdouble(-0.0), -0.0, 0],
                     dtype=object)
    assert np.signbit(checks.format_value("x", zeros, b32)).tolist() == [True] * 5 + [False]
    for bad in (Fraction(1, 3), Decimal("0.1"), mpfr(mpq(2 ** 60 + 1, 2 ** 60), 100)):
        _refused(lambda: checks.format_value("x", np.array([bad], dtype=object), b32), "x")
    assert checks.format_value("x", np.array([Decimal("0.1")], dtype=object), d32).tolist() == [mpq(1, 10)]
    _refused(lambda: checks.format_value("x", np.array([0.1]), d32), "x")  # binary 0.1 ≠ 1/10


def test_ml_dtypes_arrays_are_read_exactly():
    """Decision: ml_dtypes' real types are read (their casts to float64 are widenings, exact:
    checked here for every bfloat16 bit pattern); their complex types are refused."""
    bits = np.arange(2 ** 16, dtype=np.uint32)
    with np.errstate(invalid="ignore"):                                     # the NaN patterns
        widened = bits.astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
        decoded = (bits << 16).view(np.float32).astype(np.float64)
    assert _same(widened, decoded)
    bf, e4 = formats.get("bfloat16"), formats.get("float8_e4m3fn")
    x = np.array([1.5, -0.0, 2.0 ** -133, 3.0e38], dtype=ml_dtypes.bfloat16)
    assert _same(checks.format_value("x", x, bf), x.astype(np.float64))
    _refused(lambda: checks.format_value("x", x, e4), "x")
    y = np.array([448, -0.0, 2.0 ** -9], dtype=ml_dtypes.float8_e4m3fn)
    assert _same(checks.format_value("x", y, e4), np.array([448.0, -0.0, 2.0 ** -9]))
    _refused(lambda: checks.format_value("x", np.array([np.nan], dtype=ml_dtypes.float8_e4m3fn), e4), "x")
    _refused(lambda: checks.format_value("x", np.ones(2, dtype=ml_dtypes.complex32), bf), "x")


def test_trusted_block_checks_every_other_dtype():
    """``trusted_format_values`` skips the grid test only for arrays already held as the
    format's runtime values; another dtype is checked and converted."""
    b32 = formats.get("binary32")
    with checks.trusted_format_values():
        _refused(lambda: checks.format_value("x", np.array([2 ** 53 + 1]), b32), "x")
        _refused(lambda: checks.format_value("x", np.array([mpq(1, 3)], dtype=object), b32), "x")
        got = checks.format_value("x", np.array([3], dtype=np.int8), b32)
        assert got.dtype == np.float64 and got.tolist() == [3.0]
        _refused(lambda: checks.format_value("x", np.array([1 + 1j]), b32), "x")


# -- error bounds ----------------------------------------------------------------------------------
def test_eps_is_rounded_up_from_its_exact_value():
    x = np.zeros(1)
    assert checks.eps_like("eps", np.array([2 ** 53 + 1]), x)[0] == 2.0 ** 53 + 2
    assert checks.eps_like("eps", [2 ** 70 + 1], x)[0] == np.nextafter(2.0 ** 70, np.inf)
    assert checks.eps_like("eps", np.array([2 ** 64 - 1], dtype=np.uint64), x)[0] == 2.0 ** 64
    assert checks.eps_like("eps", np.array([Fraction(1, 3)], dtype=object), x)[0] > Fraction(1, 3)
    assert checks.eps_like("eps", np.array([np.inf]), x)[0] == np.inf
    if LONGDOUBLE_IS_WIDER:
        got = checks.eps_like("eps", np.longdouble(1) + np.longdouble(2) ** -60, x)[0]
        assert got == np.nextafter(1.0, 2.0)
    for bad in (np.array([-1], dtype=np.int64), np.array([mpq(-1, 2 ** 2000)], dtype=object),
                np.array([np.nan]), np.array([1 + 0j]), np.array(["1e-3"]),
                np.array([1], dtype="timedelta64[s]"), np.array([Decimal("NaN")], dtype=object)):
        _refused(lambda: checks.eps_like("eps_x", bad, x), "eps_x")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1).map(lambda v: np.array([v], dtype=np.int64)),
                 st.integers(0, 2 ** 64 - 1).map(lambda v: np.array([v], dtype=np.uint64)),
                 st.integers(-2 ** 90, 2 ** 90).map(lambda v: [v]),
                 st.tuples(st.integers(-2 ** 63, 2 ** 63), st.integers(-80, 80)).map(
                     lambda t: np.array([np.ldexp(np.longdouble(t[0]), t[1])]))),
       st.sampled_from(["bfloat16", "binary16", "binary32", "binary64", "float8_e4m3fn",
                        "decimal32", "flt:p=60,emin=-2000,emax=2000"]))
def test_integers_and_longdoubles_are_accepted_iff_on_the_grid(x, fmt_name):
    """Property over the whole class: a value is accepted exactly when the reference engine
    says it is a value of the format, and then it comes back unchanged (exactly); its eps is
    the smallest float64 at least its exact value."""
    fmt = formats.get(fmt_name)
    v = x[0] if isinstance(x, list) else x.reshape(-1)[0]
    q = to_exact(v)
    ok = _on_grid(fmt, v) and abs(q) <= fmt.max_finite
    if ok:
        assert to_exact(checks.format_value("x", x, fmt).reshape(-1)[0]) == q
    else:
        _refused(lambda: checks.format_value("x", x, fmt), "x")
    if q >= 0:
        assert checks.eps_like("eps", x, np.zeros(1))[0] == exact_up(q)


# -- every registered primitive ------------------------------------------------------------------
def _seed(*parts: str) -> int:
    return zlib.crc32("|".join(parts).encode())


def _input_names(P) -> list[str]:
    """The names of the runtime inputs: the positional parameters of ``runtime`` after ``fmt``."""
    params = inspect.signature(P.runtime).parameters.values()
    return [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD][1:]


def _is_label(x) -> bool:
    return np.asarray(x).dtype.kind in "iu"


def _small_integers(x) -> np.ndarray:
    """``x`` with each entry replaced by an integer of the same sign in ``[−3, 3]``, nonzero
    where ``x`` is (values of every preset; domains such as ``y ≠ 0`` stay valid)."""
    a = np.array([float(to_exact(v)) for v in np.asarray(x).reshape(-1)]).reshape(np.shape(x))
    return np.sign(a) * np.clip(np.ceil(np.abs(a)), 1, 3)


def _fit(values: np.ndarray, t) -> np.ndarray | None:
    """The small integers ``values`` held in type ``t``: each as is, or its magnitude, or 1, or 0,
    whichever ``t`` holds first; ``None`` if ``t`` holds none of them."""
    flat = []
    for v in values.reshape(-1):
        held = next((w for w in (v, abs(v), 1.0, 0.0) if _in_dtype([w], t) is not None), None)
        if held is None:
            return None
        flat.append(held)
    return _in_dtype(np.array(flat), t).reshape(values.shape)


def _rules(P, fmt, params, eps, eg):
    rules = [("runtime", False, lambda xs, g: P.runtime(fmt, *xs, **params)),
             ("bound", False, lambda xs, g: P.bound(fmt, xs, eps, **params)),
             ("vjp_runtime", True, lambda xs, g: P.vjp_runtime(fmt, xs, g, **params)),
             ("vjp_bound", True, lambda xs, g: P.vjp_bound(fmt, xs, eps, g, eg, **params))]
    if P.fused is not None:
        rules.append(("fused", False, lambda xs, g: P.fused(fmt, xs, eps, **params)))
    if P.vjp_fused is not None:
        rules.append(("vjp_fused", True, lambda xs, g: P.vjp_fused(fmt, xs, eps, g, eg, **params)))
    return rules


def _named(r, name: str) -> bool:
    return isinstance(r, ValueError) and bool(re.search(rf"(^|\W){re.escape(name)}(\W|$)", str(r)))


def check_every_dtype_on_every_rule(op_name: str, fmt_name: str, types) -> None:
    """Each runtime input (and ``g``), given as each type in ``types``: every rule that takes
    it returns the float64 call's result bit for bit, or raises a ``ValueError`` naming the
    argument — always for a refused type and for a value of the type off the format's grid.

    The inputs are small integers (values of every preset and of most types); labels (the
    class indices of cross_entropy) are given as each type too, but have no grid."""
    fmt = formats.get(fmt_name)
    P = ops.get(op_name)
    rng = np.random.default_rng(_seed(op_name, fmt_name, "dtypes"))
    xs, params = P.sample(rng, fmt)
    labels = [x is not None and _is_label(x) for x in xs]
    xs = tuple(x if x is None or lab else fmt.round(_small_integers(x))
               for x, lab in zip(xs, labels))
    eps = tuple(np.zeros(np.shape(x)) for x in xs)
    out = P.runtime(fmt, *xs, **params)
    g = fmt.round(_small_integers(rng.standard_normal(np.shape(out))))
    eg = np.zeros(np.shape(out))
    rules = _rules(P, fmt, params, eps, eg)
    names = _input_names(P)
    slots = [(i, names[i], labels[i]) for i, x in enumerate(xs) if x is not None]
    for i, name, is_label in slots + [(None, "g", False)]:
        base = np.asarray(g if i is None else xs[i])
        base = np.array([float(to_exact(v)) for v in base.reshape(-1)]).reshape(base.shape)
        takes = [(label, rule) for label, is_vjp, rule in rules if i is not None or is_vjp]

        def call(rule, value):
            try:
                if i is None:
                    return rule(xs, value)
                return rule(xs[:i] + (value,) + xs[i + 1:], g)
            except ValueError as e:
                return e

        for t in types:
            where = f"{op_name} in {fmt_name}: {name} as {_name(t)}"
            if _name(t) in REFUSED:
                for label, rule in takes:
                    r = call(rule, _refused_array(t, base.shape))
                    assert _named(r, name), f"{where}, {label} gave {r!r}"
                continue
            held = _fit(base, t)
            if held is None:
                continue
            for label, rule in takes:
                want, got = call(rule, held.astype(np.float64)), call(rule, held)
                assert _same(got, want) or (isinstance(want, ValueError)
                                            and isinstance(got, ValueError)), f"{where}, {label}"
            if is_label:
                continue
            for v in _off_grid_values(fmt, t)[:1]:
                bad = held.copy().reshape(-1)
                bad[0] = v[0]
                for label, rule in takes:
                    r = call(rule, bad.reshape(held.shape))
                    assert _named(r, name), f"{where}, off the grid: {label} gave {r!r}"


def _bound_rules(P, fmt, params, xs, g):
    """The rules that take error bounds, as functions of ``(eps, eps_g)``."""
    rules = [("bound", lambda e, eg: P.bound(fmt, xs, e, **params)),
             ("vjp_bound", lambda e, eg: P.vjp_bound(fmt, xs, e, g, eg, **params))]
    if P.fused is not None:
        rules.append(("fused", lambda e, eg: P.fused(fmt, xs, e, **params)))
    if P.vjp_fused is not None:
        rules.append(("vjp_fused", lambda e, eg: P.vjp_fused(fmt, xs, e, g, eg, **params)))
    return rules


def check_eps_on_every_bound(op_name: str, fmt_name: str) -> None:
    """Each input bound (and ``eps_g``) given as exact rationals that are not binary64 values
    gives the bounds of those values rounded **up** to float64, bit for bit; a complex bound is
    refused (by the forward rules for an input's, the VJP rules for ``eps_g``)."""
    fmt = formats.get(fmt_name)
    P = ops.get(op_name)
    rng = np.random.default_rng(_seed(op_name, fmt_name, "eps"))
    xs, params = P.sample(rng, fmt)
    labels = [x is not None and _is_label(x) for x in xs]
    out = P.runtime(fmt, *xs, **params)
    g = fmt.round(rng.standard_normal(np.shape(out)))
    zero = tuple(None if x is None else np.zeros(np.shape(x)) for x in xs)
    third = Fraction(1, 3 * 2 ** 20)                 # ≠ its nearest binary64, which is below
    up = exact_up(mpq(third))
    slots = [k for k, x in enumerate(xs) if x is not None and not labels[k]] + [None]
    for k in slots:
        shape = np.shape(out) if k is None else np.shape(xs[k])
        exact, rounded, bad = (np.full(shape, v, dtype=dt)
                               for v, dt in ((third, object), (up, np.float64), (1j, complex)))

        def with_eps(e):
            return (zero, e) if k is None else (zero[:k] + (e,) + zero[k + 1:], np.zeros(np.shape(out)))

        for label, rule in _bound_rules(P, fmt, params, xs, g):
            if k is None and not label.startswith("vjp"):
                continue
            where = f"{op_name}.{label} in {fmt_name}, bound of input {k}"
            assert _same(rule(*with_eps(exact)), rule(*with_eps(rounded))), where
            if (k is None) == label.startswith("vjp"):   # (a VJP bound may not read eps_x)
                with pytest.raises(ValueError, match="eps"):
                    rule(*with_eps(bad))


#: For the default run: one type read through float64, one through the exact engine, two
#: refused (every rule must pass each input through the check); the slow sweep takes all.
TYPES_FAST = [np.uint64, np.longdouble, np.complex128, np.str_]


@pytest.mark.parametrize("fmt_name", ["bfloat16"])
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_every_rule_reads_every_dtype_exactly_or_refuses_it(op_name, fmt_name):
    check_every_dtype_on_every_rule(op_name, fmt_name, TYPES_FAST)


@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_every_bound_rounds_exact_eps_up(op_name):
    check_eps_on_every_bound(op_name, "bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", PRESETS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_every_bound_rounds_exact_eps_up_sweep(op_name, fmt_name):
    check_eps_on_every_bound(op_name, fmt_name)


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", PRESETS)
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_every_rule_reads_every_dtype_exactly_or_refuses_it_sweep(op_name, fmt_name):
    check_every_dtype_on_every_rule(op_name, fmt_name, ALL_TYPES)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.longdouble, object])
def test_graph_inputs_are_read_at_their_exact_value(dtype):
    """A graph input is a leaf: ``ε = |RN(a) − a|`` of the value given, never of a float64
    conversion of it (int64 ``2^53 + 1`` in binary32 has error 1, not 0)."""
    from nfbound.graph import Graph
    big = 2 ** 53 + 1 if dtype is not np.longdouble else np.longdouble(1) + np.longdouble(2) ** -60
    if dtype is np.longdouble and np.finfo(np.longdouble).nmant < 60:
        pytest.skip("longdouble is not wider than binary64 here")
    x = np.array([big, 3], dtype=dtype)
    g = Graph()
    g.input("x")
    g.output(g.op("sum", "x", name="s"))
    res = g.forward(formats.get("binary32"), inputs={"x": x})
    assert res.holds
    assert res.value("x").eps[0] > 0
