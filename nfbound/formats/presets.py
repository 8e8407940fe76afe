"""Named formats (docs/design.md §1) and the spec-string syntax of user formats.

Spec strings: ``KIND:key=value,...`` with ``KIND`` one of ``flt``, ``flx``, ``fix`` and keys
``radix`` (default 2), ``p`` (precision), ``emin`` (exponent of the smallest subnormal /
quantum), ``emax`` (values below ``radix^emax``: largest finite ``(β^p − 1)·β^(emax − p)`` for
flt, ``β^emax − β^emin`` for fix) or ``max`` (largest finite, an integer or ``n/d``; not both),
``rounding`` (``even``, ``away``, ``zero``, ``up``, ``down`` or the full names) and ``overflow``
(``ieee``, ``saturate``, ``nan``, ``none``) and ``subnormals`` (``gradual``, the default,
``ftz``, ``daz``, ``ftz+daz``: see ``Format``; only ``flt`` has subnormals to flush). ``flt``
needs ``p`` and ``emin``; ``fix`` needs
``emin`` and takes no ``p``; ``flx`` needs ``p`` and takes no ``emin``, ``emax``, ``max`` (its
exponents are unbounded; ``overflow`` can only be ``none``). A key a kind does not take is an
error, never ignored.
Example: ``flt:p=7,emin=-20,emax=15`` or ``flt:radix=10,p=4,emin=-20,emax=10,rounding=away``.
A preset name followed by options overrides them: ``float8_e4m3fn:overflow=saturate``,
``bfloat16:subnormals=ftz+daz``.
"""
from __future__ import annotations

from gmpy2 import mpq

from .format import Format, ROUNDINGS, SUBNORMALS

_two = mpq(2)
_ten = mpq(10)

PRESETS: dict[str, Format] = {}
ALIASES = {"float16": "binary16", "half": "binary16", "fp16": "binary16", "bf16": "bfloat16",
           "float32": "binary32", "fp32": "binary32", "single": "binary32",
           "float64": "binary64", "fp64": "binary64", "double": "binary64",
           "e4m3": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn",
           "e5m2": "float8_e5m2", "fp8_e5m2": "float8_e5m2"}


def _preset(name: str, radix: int, p: int, emin: int, max_finite: mpq, overflow: str = "ieee") -> None:
    PRESETS[name] = Format.flt(radix, p, emin, max_finite=max_finite, overflow=overflow, name=name)


_preset("binary16", 2, 11, -24, mpq(65504))
_preset("bfloat16", 2, 8, -133, (2 - _two ** -7) * _two ** 127)
_preset("tf32", 2, 11, -136, (2 - _two ** -10) * _two ** 127)
_preset("binary32", 2, 24, -149, (2 - _two ** -23) * _two ** 127)
_preset("binary64", 2, 53, -1074, (2 - _two ** -52) * _two ** 1023)
_preset("float8_e4m3fn", 2, 4, -9, mpq(448), overflow="nan")
_preset("float8_e5m2", 2, 3, -16, mpq(57344))
_preset("decimal32", 10, 7, -101, (_ten ** 7 - 1) * _ten ** 90)
_preset("decimal64", 10, 16, -398, (_ten ** 16 - 1) * _ten ** 369)

_ROUNDING_SHORT = {"even": "nearest_even", "away": "nearest_away", "zero": "toward_zero",
                   "up": "upward", "down": "downward"}


def names() -> list[str]:
    """The preset names (aliases excluded)."""
    return list(PRESETS)


def get(name: str | Format) -> Format:
    """A preset by name or alias (case-insensitive), or a format spec string (see module doc).

    Raises ``ValueError`` naming the unknown preset or the malformed key.
    """
    if isinstance(name, Format):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a format is a preset name or a spec string, got {name!r}")
    text = name.strip()
    head, _, options = text.partition(":")
    key = head.strip().lower()
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return _override(PRESETS[key], options) if options else PRESETS[key]
    if key in ("flt", "flx", "fix"):
        return _parse(key, options, text)
    raise ValueError(f"unknown format {name!r}: expected one of {', '.join(PRESETS)} "
                     f"(aliases {', '.join(ALIASES)}) or a spec like 'flt:p=7,emin=-20,emax=15'")


def _options(options: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in options.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not v.strip():
            raise ValueError(f"malformed format spec {text!r}: expected key=value, got {item!r}")
        k = k.strip().lower()
        if k not in ("radix", "p", "precision", "emin", "emax", "max", "rounding", "overflow",
                     "subnormals"):
            raise ValueError(f"malformed format spec {text!r}: unknown key {k!r}")
        out["p" if k == "precision" else k] = v.strip()
    return out


def _int(opts: dict[str, str], key: str, text: str) -> int | None:
    if key not in opts:
        return None
    try:
        return int(opts[key])
    except ValueError:
        raise ValueError(f"malformed format spec {text!r}: {key} must be an integer, got {opts[key]!r}") from None


def _rounding(opts: dict[str, str], text: str) -> str:
    r = opts.get("rounding", "nearest_even").lower()
    r = _ROUNDING_SHORT.get(r, r)
    if r not in ROUNDINGS:
        raise ValueError(f"malformed format spec {text!r}: rounding must be one of "
                         f"{', '.join(_ROUNDING_SHORT)}, got {opts['rounding']!r}")
    return r


def _subnormals(opts: dict[str, str], text: str) -> str:
    m = opts.get("subnormals", "gradual").lower()
    if m not in SUBNORMALS:
        raise ValueError(f"malformed format spec {text!r}: subnormals must be one of "
                         f"{', '.join(SUBNORMALS)}, got {opts['subnormals']!r}")
    return m


def _max(opts: dict[str, str], text: str):
    if "max" not in opts:
        return None
    try:
        return mpq(opts["max"])
    except ValueError:
        raise ValueError(f"malformed format spec {text!r}: max must be an integer or n/d, got {opts['max']!r}") from None


#: Keys each kind of spec string takes (``radix`` and ``rounding`` are common to all;
#: ``subnormals`` is checked apart, so that flx/fix refuse it with the reason).
_KIND_KEYS = {"flt": {"p", "emin", "emax", "max", "overflow", "subnormals"},
              "fix": {"emin", "emax", "max", "overflow"},
              "flx": {"p", "overflow"}}


def _parse(kind: str, options: str, text: str) -> Format:
    opts = _options(options, text)
    if kind != "flt" and _subnormals(opts, text) != "gradual":
        raise ValueError(f"malformed format spec {text!r}: {kind} has no subnormals, so "
                         f"subnormals must be gradual, got {opts['subnormals']!r}")
    extra = sorted(set(opts) - _KIND_KEYS[kind] - {"radix", "rounding", "subnormals"})
    if extra:
        raise ValueError(f"malformed format spec {text!r}: {kind} takes no {', '.join(extra)}")
    radix = _int(opts, "radix", text)
    radix = 2 if radix is None else radix
    p, emin, emax = _int(opts, "p", text), _int(opts, "emin", text), _int(opts, "emax", text)
    rounding, overflow, mx = _rounding(opts, text), opts.get("overflow"), _max(opts, text)
    if kind == "flx":
        if p is None:
            raise ValueError(f"malformed format spec {text!r}: flx needs p")
        if overflow not in (None, "none"):
            raise ValueError(f"malformed format spec {text!r}: flx has no overflow threshold, "
                             f"so overflow must be none, got {overflow!r}")
        return Format.flx(radix, p, rounding, name=None)
    if emin is None:
        raise ValueError(f"malformed format spec {text!r}: {kind} needs emin")
    if kind == "fix":
        return Format.fix(radix, emin, rounding, max_finite=mx, overflow=overflow, emax=emax)
    if p is None:
        raise ValueError(f"malformed format spec {text!r}: flt needs p and emin")
    return Format.flt(radix, p, emin, emax, rounding, overflow, max_finite=mx,
                      subnormals=_subnormals(opts, text))


def _override(base: Format, options: str) -> Format:
    text = f"{base.name}:{options}"
    opts = _options(options, text)
    if set(opts) - {"rounding", "overflow", "subnormals"}:
        raise ValueError(f"malformed format spec {text!r}: a preset takes only rounding=, "
                         "overflow= and subnormals=")
    rounding = _rounding(opts, text) if "rounding" in opts else base.rounding
    overflow = opts.get("overflow", base.overflow)
    subnormals = _subnormals(opts, text) if "subnormals" in opts else base.subnormals
    return Format(base.radix, base.fexp, rounding, overflow, base.max_finite, name=text,
                  subnormals=subnormals)
