"""An arithmetic: how a deployment computes each op — formats, accumulation order, flushing.

TorchLean's semantics (and nfbound's :class:`~nfbound.formats.Format`) round every step of every
op to one format. Deployments do not: PyTorch on CPU, autocast and tensor cores keep tensors in
a *storage* format (bfloat16, float16, fp8), form products exactly or in a wider format,
*accumulate* in binary32 in an order the library picks, round once to storage at the end, and
may flush subnormals. An :class:`Arithmetic` states each of these facts:

* ``storage`` — the format of every tensor: inputs, parameters, activations, op outputs;
* ``accumulator`` — the format in which contractions (matmul, linear, conv: the ops whose
  primitive is flagged ``contraction``) form their products and partial sums, with its own
  subnormal mode (oneDNN flushes binary32 subnormal products and partial sums: ``ftz+daz``);
* ``compute`` — the format every other op computes in before its result is rounded to storage
  (PyTorch CPU evaluates bfloat16 ``+ − × ÷ exp …`` in binary32 and rounds once to bfloat16);
* ``operands`` — optionally, the format the operands of a contraction are rounded to first
  (TF32 tensor cores round binary32 inputs to 10-bit mantissas);
* ``order`` — the accumulation order of every reduction (:class:`~nfbound.arith.order.Order`);
  ``any`` makes every bound hold for every order, tree, blocking and FMA use;
* ``storage_sums`` — the rules whose library kernels may round *partial* sums to storage
  (``"conv_transpose"`` for a forward rule, ``"conv.vjp"`` for a VJP: PyTorch CPU without
  oneDNN sums overlapping columns after a GEMM rounded to bfloat16; measured,
  ``tests/test_hardware.py``); under ``order=any`` their bounds take every rounding of the
  evaluation tree to be a storage rounding;
* ``libm_ulps`` — how far the library's elementwise functions (``exp``, ``tanh``, ``sigmoid``,
  ``softplus``, ``log``, ``sqrt``: primitives flagged ``libm``) may be from the exact function, in
  ulps of the compute format, before the conversion to storage (0: correctly rounded, as
  nfbound's runtime; PyTorch's binary32 SLEEF-based kernels are not — measured up to 2.4 ulps
  for ``sigmoid``).

An op in an arithmetic is the op computed in its working format (``accumulator`` or
``compute``, every step rounded there, in ``order``), then rounded once to ``storage``. A
``Format`` is the arithmetic with all three formats equal and a stated order — exactly
TorchLean's semantics, so everything that takes a ``Format`` keeps its meaning
(:func:`nf`). The bounds of the composition are derived in :mod:`nfbound.ops.arithmetic`.

Every storage value must be a value of the working formats (same radix, no fewer digits, no
smaller exponent range): inputs of an op are then exact in the format it computes in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..formats import Format
from ..formats import get as get_format
from .order import SEQUENTIAL, Order


@dataclass(frozen=True)
class Arithmetic:
    storage: Format
    accumulator: Format
    compute: Format
    order: Order = SEQUENTIAL
    operands: Format | None = None
    storage_sums: frozenset = frozenset()
    libm_ulps: float = 0.0
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key in ("storage", "accumulator", "compute"):
            if not isinstance(getattr(self, key), Format):
                raise ValueError(f"{key} must be a Format, got {getattr(self, key)!r}")
        if not isinstance(self.order, Order):
            object.__setattr__(self, "order", Order.parse(self.order))
        if not isinstance(self.storage_sums, frozenset) or \
                not all(isinstance(n, str) for n in self.storage_sums):
            raise ValueError(f"storage_sums must be a frozenset of op names, got {self.storage_sums!r}")
        if isinstance(self.libm_ulps, bool) or not isinstance(self.libm_ulps, (int, float)) \
                or not (0 <= self.libm_ulps < float("inf")):
            raise ValueError(f"libm_ulps must be a finite number ≥ 0, got {self.libm_ulps!r}")
        object.__setattr__(self, "libm_ulps", float(self.libm_ulps))
        if self.operands is not None and not isinstance(self.operands, Format):
            raise ValueError(f"operands must be a Format or None, got {self.operands!r}")
        for key in ("accumulator", "compute"):
            wide = getattr(self, key)
            if wide is not None and not contains(wide, self.storage):
                raise ValueError(
                    f"{key}={wide} does not hold every storage value ({self.storage}): it needs "
                    f"the same radix, at least as many digits and at least the exponent range")
        if self.operands is not None and not contains(self.accumulator, self.operands):
            raise ValueError(f"accumulator={self.accumulator} does not hold every value of "
                             f"operands={self.operands}")

    @property
    def is_nf(self) -> bool:
        """Whether every op is rounded at every step to the storage format (TorchLean's NF
        semantics): the three formats are one and no operand conversion."""
        return self.storage == self.accumulator == self.compute and self.operands is None

    def working_format(self, contraction: bool) -> Format:
        """The format an op computes in: ``accumulator`` for contractions, else ``compute``."""
        return self.accumulator if contraction else self.compute

    @property
    def spec(self) -> str:
        """The arithmetic as a spec string that :func:`get` reads back."""
        parts = [f"store={_fmt_spec(self.storage)}", f"acc={_fmt_spec(self.accumulator)}",
                 f"compute={_fmt_spec(self.compute)}", f"order={self.order}"]
        if self.operands is not None:
            parts.append(f"operands={_fmt_spec(self.operands)}")
        if self.storage_sums:
            parts.append(f"storage_sums={'+'.join(sorted(self.storage_sums))}")
        if self.libm_ulps:
            parts.append(f"libm_ulps={self.libm_ulps:g}")
        return ",".join(parts)

    def __str__(self) -> str:
        return self.name or self.spec


def contains(wide: Format, narrow: Format) -> bool:
    """Whether every value of ``narrow`` is a value of ``wide`` — a sufficient test on the
    parameters: the same radix and exponent function (the subnormal mode may differ), or two
    FLT formats of one radix with ``p_wide ≥ p_narrow`` and ``emin_wide ≤ emin_narrow``
    (then ``max(e − p_w, emin_w) ≤ max(e − p_n, emin_n)`` for every ``e``: the wide grid refines
    the narrow one), and in both cases a largest finite at least the narrow one's."""
    if wide.radix != narrow.radix or not _range_ok(wide, narrow):
        return False
    if wide.fexp == narrow.fexp:
        return True
    return (wide.fexp.kind == narrow.fexp.kind == "FLT" and wide.precision >= narrow.precision
            and wide.emin <= narrow.emin)


def _range_ok(wide: Format, narrow: Format) -> bool:
    if wide.max_finite is None:
        return True
    return narrow.max_finite is not None and narrow.max_finite <= wide.max_finite


def nf(fmt: Format, order: "str | Order" = SEQUENTIAL) -> Arithmetic:
    """TorchLean's semantics in ``fmt``: every step of every op rounded to ``fmt``."""
    return Arithmetic(fmt, fmt, fmt, Order.parse(order), None, name=str(fmt))


def with_subnormals(fmt: Format, mode: str) -> Format:
    """``fmt`` with another subnormal mode (same name followed by the mode)."""
    if fmt.subnormals == mode:
        return fmt
    return dataclasses.replace(fmt, subnormals=mode, name=f"{fmt}:subnormals={mode}")


def _fmt_spec(f: Format) -> str:
    s = str(f)
    return f"[{s}]" if "," in s else s


# -- spec strings --------------------------------------------------------------------------------
_KEYS = {"store": "storage", "storage": "storage", "acc": "accumulator",
         "accumulator": "accumulator", "compute": "compute", "operands": "operands",
         "order": "order", "subnormals": "subnormals", "storage_sums": "storage_sums", "libm_ulps": "libm_ulps"}


def split_options(text: str) -> list[tuple[str, str]]:
    """``key=value`` pairs separated by commas; a value in ``[…]`` may contain commas (a format
    spec string such as ``[flt:p=13,emin=-149,emax=128]``)."""
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in arithmetic spec {text!r}")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced '[' in arithmetic spec {text!r}")
    items.append(cur)
    out = []
    for item in filter(None, (s.strip() for s in items)):
        k, eq, v = item.partition("=")
        if not eq or not v.strip():
            raise ValueError(f"arithmetic spec item {item!r} is not key=value (in {text!r})")
        v = v.strip()
        if v.startswith("[") and v.endswith("]"):
            v = v[1:-1]
        out.append((k.strip().lower(), v))
    return out


def apply_options(base: dict, options: list[tuple[str, str]], text: str) -> Arithmetic:
    """An arithmetic from ``base`` (field → value) with the spec ``options`` applied.

    ``store`` also sets ``acc`` and ``compute`` when the spec names neither (a storage format
    alone means that format everywhere); ``subnormals`` sets the accumulator's subnormal mode.
    """
    fields = dict(base)
    given = set()
    subnormals = None
    for key, value in options:
        if key not in _KEYS:
            raise ValueError(f"unknown arithmetic key {key!r} in {text!r}: expected "
                             f"{', '.join(sorted(set(_KEYS)))}")
        name = _KEYS[key]
        if name in given:
            raise ValueError(f"arithmetic key {key!r} given twice in {text!r}")
        given.add(name)
        if name == "order":
            fields["order"] = Order.parse(value)
        elif name == "subnormals":
            subnormals = value
        elif name == "operands" and value.lower() == "none":
            fields["operands"] = None
        elif name == "libm_ulps":
            try:
                fields["libm_ulps"] = float(value)
            except ValueError:
                raise ValueError(f"libm_ulps must be a number, got {value!r} in {text!r}") from None
        elif name == "storage_sums":
            fields["storage_sums"] = frozenset() if value.lower() == "none" else \
                frozenset(v.strip() for v in value.split("+") if v.strip())
        else:
            fields[name] = get_format(value)
    if "storage" in given:
        for dependent in ("accumulator", "compute"):
            if dependent not in given and fields.get(dependent) is None:
                fields[dependent] = fields["storage"]
    missing = [k for k in ("storage", "accumulator", "compute") if fields.get(k) is None]
    if missing:
        raise ValueError(f"arithmetic spec {text!r} needs store= (and optionally acc=, compute=)")
    if subnormals is not None:
        fields["accumulator"] = with_subnormals(fields["accumulator"], subnormals)
    fields.setdefault("order", SEQUENTIAL)
    return Arithmetic(**fields)
