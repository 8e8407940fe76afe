"""Per-node report rows: the certified bound next to the error actually observed.

For each node: ``max_bound = max ε``; ``max_observed = max |runtime − x|`` over the spec
enclosure (exact rational distance, converted upward to float64, so it is never understated);
``ratio = max_bound / max_observed`` (how loose the bound is; ``inf`` when nothing was
observed but the bound is positive, ``1`` when both are 0); ``holds``: the exact enclosure test
``|runtime − x| ≤ ε`` everywhere; ``reason``: why a bound is infinite (``None`` otherwise);
``arith``: the arithmetic the node computed in (a leaf: the one whose storage it is rounded
to; :mod:`nfbound.graph.arith`).
"""
from __future__ import annotations

import math

import numpy as np

from ..bounds.upward import exact_up
from ..formats import Format
from .arith import NodeArithmetics


def nonfinite(x) -> bool:
    """Whether a runtime value holds ±inf or NaN (an overflowed result)."""
    a = np.asarray(x)
    if a.dtype == object:
        return any(isinstance(v, float) and not math.isfinite(v) for v in a.reshape(-1))
    if a.dtype.kind != "f":
        return False
    return not bool(np.all(np.isfinite(a)))


def _saturated(fmt: Format, x) -> bool:
    a = np.asarray(x)
    if fmt.max_finite is None or a.dtype.kind not in "fO":
        return False
    if a.dtype == object:
        return any(not isinstance(v, float) and abs(v) == fmt.max_finite for v in a.reshape(-1))
    return bool(np.any(np.abs(a) == float(fmt.max_finite)))


def _first_inf(e: np.ndarray) -> tuple[int, ...]:
    """The first position (row-major) of an infinite bound."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(np.isinf(e))), np.shape(e)))


def inf_reason(graph, name: str, runtime, eps, fmt: Format, gradient: bool = False) -> str | None:
    """Why ``eps[name]`` has an infinite entry (``None`` if it has none), with the first
    position where it is infinite."""
    e = eps[name]
    if not np.any(np.isinf(e)):
        return None
    where = f" at index {_first_inf(e)}" if np.ndim(e) else ""
    what = "gradient" if gradient else "value"
    if nonfinite(runtime[name]):
        return f"runtime {what} overflowed (inf/NaN) in {fmt}{where}"
    if _saturated(fmt, runtime[name]):
        return (f"runtime {what} reaches ±max_finite of {fmt}{where}: the exact value may be "
                f"larger")
    node = graph.nodes[name]
    if node.kind in ("data", "param", "const"):
        if gradient:
            return "infinite bound of a gradient contribution from a consumer"
        return f"rounding the {node.kind} overflows {fmt}{where}"
    if gradient:
        return "infinite bound inherited from the upstream gradient or an input of a consumer"
    bad = [i for i in node.inputs if i in eps and np.any(np.isinf(eps[i]))]
    if bad:
        return f"infinite bound inherited from input {bad[0]!r}{where}"
    return (f"the {node.op} bound rule gave inf{where} (rounding term overflow or bound "
            f"arithmetic beyond binary64)")


def _max(e) -> float:
    e = np.asarray(e, dtype=np.float64)
    return float(np.max(e)) if e.size else 0.0


def row(graph, name: str, runtime, spec, eps, arith: NodeArithmetics,
        gradient: bool = False) -> dict:
    node = graph.nodes[name]
    fmt = arith.storage(name)
    op = node.op or node.kind
    max_bound = _max(eps[name]) if eps is not None else None
    max_observed = holds = ratio = None
    rt = runtime[name]
    if node.kind == "label":             # integer labels: compare as the reals they denote
        rt = np.asarray(rt, dtype=np.float64)
    if spec is not None:
        d = spec[name].distance(rt).reshape(-1)
        max_observed = max((exact_up(v) if not isinstance(v, float) else v for v in d),
                           default=0.0)
        if eps is not None:
            holds = bool(spec[name].encloses(rt, eps[name]).all())
            if max_observed == 0:
                ratio = 1.0 if max_bound == 0 else math.inf
            elif math.isinf(max_observed):
                ratio = math.nan
            else:
                ratio = max_bound / max_observed
    return {"node": name, "op": op, "arith": str(arith[name]),
            "shape": tuple(np.shape(runtime[name])),
            "max_bound": max_bound, "max_observed": max_observed, "ratio": ratio,
            "holds": holds,
            "reason": inf_reason(graph, name, runtime, eps, fmt, gradient) if eps is not None
            else None}


def rows(graph, names, runtime, spec, eps, arith: NodeArithmetics,
         gradient: bool = False) -> list[dict]:
    """Report rows for ``names`` (see the module docstring for the columns)."""
    return [row(graph, n, runtime, spec, eps, arith, gradient) for n in names]


def format_table(rows_: list[dict]) -> str:
    """The rows as a fixed-width text table; an ``arith`` column when the rows' arithmetics
    differ (a per-node map)."""
    mixed = len({r.get("arith") for r in rows_}) > 1
    head = f"{'node':<24} {'op':<14} " + (f"{'arith':<20} " if mixed else "") + \
        f"{'shape':<16} {'max bound':>11} {'observed':>11} {'ratio':>9} holds"
    lines = [head]
    for r in rows_:
        def num(v):
            return "-" if v is None else f"{v:.3e}"
        lines.append(f"{r['node']:<24.24} {r['op']:<14.14} "
                     + (f"{r['arith']:<20.20} " if mixed else "")
                     + f"{str(r['shape']):<16.16} "
                     f"{num(r['max_bound']):>11} {num(r['max_observed']):>11} "
                     f"{num(r['ratio']):>9} {'-' if r['holds'] is None else r['holds']}"
                     + (f"  ({r['reason']})" if r['reason'] else ""))
    return "\n".join(lines)
