"""Arithmetics: storage, accumulator and compute formats, accumulation order, flushing.

``get(preset_or_spec)`` returns an :class:`Arithmetic`: a preset (``torch-cpu-bfloat16``, …;
:data:`PRESETS`, documented in :mod:`nfbound.arith.presets`), a spec string
(``store=bfloat16,acc=binary32,order=any,subnormals=ftz+daz``; a format spec with commas goes
in brackets: ``acc=[flt:p=13,emin=-149,emax=128]``), a preset with overrides
(``fp8-e4m3:acc=binary16``), or a format (name, spec or :class:`~nfbound.formats.Format`),
which means TorchLean's semantics: every step rounded to that format, sequential order.
"""
from __future__ import annotations

from ..formats import Format
from ..formats import get as get_format
from .arithmetic import Arithmetic, apply_options, contains, nf, split_options, with_subnormals
from .order import KINDS, SEQUENTIAL, Order
from .presets import PRESETS


def get(arith: "str | Format | Arithmetic") -> Arithmetic:
    """An arithmetic from a preset name, a spec string, a format, or itself (see module doc).
    Raises ``ValueError`` naming what is wrong."""
    if isinstance(arith, Arithmetic):
        return arith
    if isinstance(arith, Format):
        return nf(arith)
    if not isinstance(arith, str) or not arith.strip():
        raise ValueError(f"an arithmetic is a preset name, a spec string or a format, got {arith!r}")
    text = arith.strip()
    head, sep, options = text.partition(":")
    if head.strip().lower() in PRESETS:
        base = PRESETS[head.strip().lower()]
        if not sep:
            return base
        fields = {k: getattr(base, k) for k in ("storage", "accumulator", "compute", "order",
                                                 "operands", "storage_sums", "libm_ulps")}
        return apply_options(fields, split_options(options), text)
    if "=" in head:   # a bare spec: store=…,acc=…
        return apply_options({}, split_options(text), text)
    try:
        return nf(get_format(text))
    except ValueError as err:
        raise ValueError(f"unknown arithmetic {arith!r}: not a preset ({', '.join(PRESETS)}), "
                         f"not a spec 'store=…,acc=…,order=…', and not a format ({err})") from None


def names() -> list[str]:
    """The preset names."""
    return list(PRESETS)


__all__ = ["Arithmetic", "Order", "PRESETS", "SEQUENTIAL", "KINDS", "contains", "get", "names",
           "nf", "with_subnormals"]
