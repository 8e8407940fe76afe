"""Argument checks shared by the ops: clear ``ValueError``s that name the argument."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import numpy as np

from ..formats import Format

_TRUSTED: ContextVar[bool] = ContextVar("nfbound_trusted_format_values", default=False)


def finite(name: str, x) -> np.ndarray:
    """``x`` as an array; raises if it holds NaN or ±inf (object arrays: non-rational entries)."""
    a = np.asarray(x)
    if a.dtype == object:
        bad = [v for v in a.reshape(-1) if isinstance(v, float) and not np.isfinite(v)]
        if bad:
            raise ValueError(f"{name} contains non-finite values ({bad[0]!r})")
        return a
    a = np.asarray(a, dtype=np.float64) if a.dtype.kind in "biuf" else a
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def format_value(name: str, x, fmt: Format) -> np.ndarray:
    """``x`` as an array of values of ``fmt``; raises if it holds NaN/±inf or a number that is
    not a value of the format.

    Every runtime rule takes format values: the compiled elementary operations round the exact
    result of two *format values* once (for p ≤ 25 through one binary64 operation, innocuous
    only for such operands), so an off-grid operand would be rounded twice and its error missed
    by the bound. Off-grid data is rounded first, with ``fmt.round``, its representation error
    becoming the input's ``eps`` (the graphs do this for inputs and parameters).
    """
    a = finite(name, x)
    if _TRUSTED.get():
        return a
    on_grid = np.asarray(fmt.is_representable(a), dtype=bool)
    if not on_grid.all():
        bad = np.asarray(a).reshape(-1)[np.flatnonzero(~on_grid.reshape(-1))[0]]
        raise ValueError(f"{name} holds values that are not {fmt} values (e.g. {bad}); "
                         f"round them with the format's round() first")
    return a


@contextmanager
def trusted_format_values() -> Iterator[None]:
    """Within this block :func:`format_value` checks finiteness only, not the grid.

    For composers whose every runtime value is a format value by construction: the graphs,
    whose leaves are rounded with ``fmt.round`` (or checked once on entry) and whose other
    values are outputs of runtime rules (every rule returns values of its format: the
    registry-wide test checks it). The grid test then runs once per leaf instead of once per
    rule call.
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def same_shape(names: tuple[str, str], a, b) -> None:
    """Elementwise binary ops do not broadcast silently: shapes must be equal."""
    sa, sb = np.shape(a), np.shape(b)
    if sa != sb:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {sa} and {sb}")


def eps_like(name: str, eps, x) -> np.ndarray:
    """An error bound for ``x``: a nonnegative float64 array broadcastable to ``x``'s shape."""
    e = np.asarray(eps, dtype=np.float64)
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError(f"{name} must be nonnegative (an error bound), got negative or NaN entries")
    try:
        return np.broadcast_to(e, np.shape(x))
    except ValueError:
        raise ValueError(f"{name} has shape {e.shape}, not broadcastable to {np.shape(x)}") from None
