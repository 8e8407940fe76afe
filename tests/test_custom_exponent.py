"""Valid but non-monotone exponent functions (issue 11, hole 1).

Flocq's ``Valid_exp`` does not make ``fexp`` monotone, so ``ulp(z) ≤ ulp(RN z)`` can fail: with
``fexp(e) = e − 3`` for odd ``e`` and ``e − 5`` for even ``e``, ``7 + 5/8 = 61/8`` lies in the
binade ``[4, 8)`` (``fexp(3) = 0``: quantum 1) and rounds up to ``8 = 2^3``, whose binade
``[8, 16)`` has the finer quantum ``2^(4−5) = 1/2``. The rounding term must be taken from the
binade the exact result can lie in, not from the rounded result's alone.
"""
from __future__ import annotations

import zlib
from fractions import Fraction

import numpy as np
import pytest
from gmpy2 import mpq

import nfbound.ops as ops
from nfbound.bounds.rounding import rounding_term
from nfbound.formats import Format
from nfbound.formats.exponent import FLT, custom

from test_registry import check_enclosure

WINDOW = range(-60, 61)
ROUNDINGS = ("nearest_even", "nearest_away", "toward_zero", "upward", "downward")


def _odd_even(e: int) -> int:
    return e - 3 if e % 2 else e - 5


def _audit_format(rounding: str = "nearest_even") -> Format:
    return Format(2, custom(_odd_even, window=WINDOW), rounding, name="odd/even fexp")


def _random_fexp(seed: int, emin: int = -40, window: range = WINDOW):
    """A valid exponent function with ``d_k ∈ {1, …, 6}`` digits in binade ``k > emin``
    (``fexp(k) = k − d_k``) and the underflow region ``fexp(k) = emin`` for ``k ≤ emin``: both
    ``Valid_exp`` conditions hold for any such choice (``fexp(k + 1) = k + 1 − d ≤ k``), and
    the digits jump, so ``fexp`` is not monotone."""
    digits = np.random.default_rng(seed).integers(1, 7, size=len(window))
    table = {k: (emin if k <= emin else k - int(d)) for k, d in zip(window, digits)}
    return custom(table.__getitem__, window=window, precision=1)


def test_valid_nonmonotone_exponent_functions_are_flagged():
    assert not _audit_format().fexp.monotone
    assert not any(_random_fexp(seed).monotone for seed in range(5))
    assert custom(lambda e: max(e - 5, -20)).monotone
    assert FLT(24, -149).monotone


def test_audit_case_add_7_and_5_8():
    """``add(7, 5/8)`` returns 8; the true error is 3/8, the old bound was ``ulp(8)/2 = 1/4``."""
    fmt = _audit_format()
    x = fmt.round(np.array([7], dtype=object))
    y = fmt.round(np.array([Fraction(5, 8)], dtype=object))
    add = ops.get("add")
    out = add.runtime(fmt, x, y)
    assert out[0] == 8
    bound = add.bound(fmt, (x, y), (np.zeros(1), np.zeros(1)))
    assert bound[0] >= 0.375
    assert rounding_term(fmt, out)[0] >= 0.375


def _rationals(rng, n: int) -> list[mpq]:
    """Exact rationals spread over ``2^−45 … 2^45``, both signs, with some exactly at powers of
    two and just below them (the rounding-up-onto-a-power case)."""
    out = []
    for _ in range(n):
        e = int(rng.integers(-45, 45))
        kind = rng.integers(4)
        if kind == 0:
            q = mpq(2) ** e
        elif kind == 1:
            q = mpq(2) ** e * (1 - mpq(1, int(rng.integers(2, 200))))
        else:
            q = mpq(int(rng.integers(1, 2 ** 40)), 2 ** 40) * mpq(2) ** e
        out.append(q if rng.random() < 0.5 else -q)
    return out


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("seed", range(4))
def test_rounding_term_bounds_the_error_for_nonmonotone_fexp(seed, rounding):
    """``|RN(z) − z| ≤ rounding_term(RN z)`` exactly, for exact ``z`` near and at powers of
    two, in every rounding mode, for random valid non-monotone exponent functions."""
    fmt = Format(2, _random_fexp(seed), rounding)
    rng = np.random.default_rng(zlib.crc32(f"{seed}{rounding}".encode()))
    z = np.array(_rationals(rng, 400), dtype=object)
    zhat = fmt.round(z)
    term = rounding_term(fmt, zhat)
    err = np.array([abs(a - b) for a, b in zip(zhat, z)], dtype=object)
    bad = [(z[i], zhat[i], err[i], term[i]) for i in range(z.size) if err[i] > mpq(term[i])]
    assert not bad, f"rounding term below the error: {bad[:3]}"


def test_precision_beyond_a_binades_digits_is_refused():
    """``u = β^(1−p)/2`` needs every binade above the underflow range to have ≥ p digits."""
    with pytest.raises(ValueError, match="precision"):
        custom(_odd_even, window=WINDOW, precision=5)
    assert custom(_odd_even, window=WINDOW, precision=3).precision == 3
    with pytest.raises(ValueError, match="precision"):
        custom(lambda e: max(e - 3, -20), window=WINDOW, precision=4)
    with pytest.raises(ValueError, match="precision"):   # FLX-like: no underflow binades
        custom(lambda e: e - 3, window=WINDOW, precision=4)


OPS = ["add", "sub", "mul", "div", "sqrt", "scale", "sum", "dot", "matmul", "exp", "tanh"]


@pytest.mark.parametrize("rounding", ["nearest_even", "upward", "toward_zero"])
@pytest.mark.parametrize("op_name", [o for o in OPS if o in ops.REGISTRY])
def test_registry_enclosure_under_nonmonotone_fexp(op_name, rounding):
    fmt = Format(2, custom(_odd_even, window=range(-200, 201), precision=3), rounding,
                 name=f"odd/even fexp {rounding}")
    check_enclosure(op_name, fmt, trials=3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("op_name", sorted(ops.REGISTRY))
def test_registry_enclosure_under_random_nonmonotone_fexp_sweep(op_name, seed):
    fexp = _random_fexp(seed, emin=-150, window=range(-200, 201))
    rounding = ROUNDINGS[seed % len(ROUNDINGS)]
    check_enclosure(op_name, Format(2, fexp, rounding, name=f"random fexp {seed}"), trials=6)
