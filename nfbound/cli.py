"""``nfbound`` command line: certified error bounds of a model, format tables, single-op checks.

Subcommands (``nfbound SUBCOMMAND --help`` for details):

* ``bound``: forward (and with ``--gradients`` backward) pass of a model in a format or an
  arithmetic (``--arith``, per node ``--arith-map``); one row per node: max certified bound,
  max observed error against the exact spec, their ratio, whether the enclosure held.
  Default: the built-in demo CNN on its 8 demo digits, bfloat16.
* ``formats [NAME]``: the preset formats, or one format (preset or spec string) in detail.
* ``arith [NAME]``: the preset arithmetics with their facts, or one arithmetic in detail.
* ``verify --op OP --format NAME | --arith PRESET``: one random instance of one op (or a VJP,
  ``OP_grad_ARG``): runtime, spec, bound and the exact enclosure verdict; ``--against torch``
  checks PyTorch's own output instead of nfbound's runtime; ``--save`` writes it to an npz.

Exit codes: 0 every enclosure held, 1 an enclosure failed, 2 usage or input error — or any
other failure, reported as ``internal error`` — in one line on stderr, never a traceback
(130 on Ctrl-C).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Seed of the random input ``bound`` derives for a model given without ``--input``.
DERIVED_INPUT_SEED = 0


class UsageError(Exception):
    """A command-line or input error: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors → one line, exit 2
        raise UsageError(f"{message} (see {self.prog} --help)")


# -- shared helpers -------------------------------------------------------------------------------
def _fmt(name: str):
    from .formats import get
    return get(name)


def _arith_of(args, command: str, default: str | None):
    """``(the arithmetic to evaluate in, its description)`` from ``--format`` (a Format:
    TorchLean's semantics, ``--order`` applies) or ``--arith`` (a preset or spec string: its
    order is its own); both is a usage error, neither gives ``default`` (a format name)."""
    from . import arith
    if args.format is not None and args.arith is not None:
        raise UsageError(f"{command}: give --format or --arith, not both")
    if args.arith is None:
        name = args.format if args.format is not None else default
        if name is None:
            raise UsageError(f"{command}: give --format NAME or --arith PRESET|SPEC")
        return _fmt(name)
    try:
        return arith.get(args.arith)
    except ValueError as e:
        raise UsageError(f"{command}: --arith {args.arith!r}: {e}") from None


def _load_arith_map(path: str | None) -> dict | None:
    """The ``--arith-map`` JSON file: an object mapping node names to preset or spec strings
    (checked against the graph by the caller); ``ValueError`` naming the file otherwise."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--arith-map file not found: {p}")
    try:
        table = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"--arith-map {p}: not a JSON file ({e})") from None
    if not isinstance(table, dict):
        raise ValueError(f"--arith-map {p}: expected a JSON object mapping node names to "
                         f"arithmetics, got {type(table).__name__}")
    for k, v in table.items():
        if not isinstance(v, str):
            raise ValueError(f"--arith-map {p}: node {k!r}: expected a preset or spec string, "
                             f"got {v!r}")
    return table


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.3e}"


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if isinstance(v, (np.floating,)):
        return _jsonable(float(v))
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _sci(q, digits: int = 4) -> str:
    """An exact rational as a short decimal (scientific) string, any magnitude."""
    if q is None:
        return "-"
    if q.denominator == 1 and abs(q) < 10**7:
        return str(int(q))
    import mpmath
    with mpmath.workdps(20):
        return mpmath.nstr(mpmath.mpf(int(q.numerator)) / int(q.denominator), digits, min_fixed=-3,
                           max_fixed=5)


def _power(q, radix: int) -> str:
    """``q`` as ``radix^k`` or ``radix^k/2`` when it is one (else the decimal)."""
    from gmpy2 import mpq
    for half, suffix in ((1, ""), (2, "/2")):
        v = q * half
        if v <= 0:
            break
        k, r = 0, mpq(v)
        while r >= radix and r.denominator == 1 and r % radix == 0:
            r, k = r / radix, k + 1
        while r < 1 and (r * radix).denominator <= r.denominator:
            r, k = r * radix, k - 1
        if r == 1:
            return f"{radix}^{k}{suffix}"
    return _sci(q)


# -- formats ----------------------------------------------------------------------------------------
def _format_row(name: str, f) -> dict:
    return {"name": name, "radix": f.radix, "p": f.precision, "emin": f.emin, "rounding": f.rounding,
            "overflow": f.overflow, "subnormals": f.subnormals,
            "u": _sci(f.unit_roundoff_exact), "eta": _sci(f.eta_exact),
            "smallest_subnormal": _sci(f.smallest_subnormal), "smallest_normal": _sci(f.smallest_normal),
            "max_finite": _sci(f.max_finite, 7)}


def cmd_formats(args) -> int:
    from .formats import PRESETS
    if args.name:
        f = _fmt(args.name)
        r = _format_row(str(f), f)
        detail = {
            "name": str(f), "spec": f.spec, "radix": f.radix, "p": f.precision, "emin": f.emin,
            "rounding": f.rounding, "overflow": f.overflow, "subnormals": f.subnormals,
            "u": None if f.unit_roundoff_exact is None else _power(f.unit_roundoff_exact, f.radix),
            "u_float_up": f.u if f.precision is not None else None, "eta": _power(f.eta_exact, f.radix),
            "eta_float_up": f.eta, "underflow_term": _power(f.underflow_term_exact, f.radix),
            "smallest_subnormal": r["smallest_subnormal"], "smallest_normal": r["smallest_normal"],
            "max_finite": r["max_finite"],
            "runtime_storage": "float64 arrays" if f.fits_binary64 else "object arrays of exact rationals",
            "compiled_kernels": bool(f.fast_ops)}
        if args.json:
            print(json.dumps(_jsonable(detail), indent=2))
        else:
            for k, v in detail.items():
                print(f"{k:<20} {v}")
        return EXIT_OK
    rows = [_format_row(n, f) for n, f in PRESETS.items()]
    if args.json:
        print(json.dumps(_jsonable(rows), indent=2))
        return EXIT_OK
    print(f"{'name':<14} {'radix':>5} {'p':>3} {'emin':>6} {'u':>10} {'eta':>10} "
          f"{'min subnormal':>13} {'min normal':>11} {'max finite':>13}  overflow")
    for r in rows:
        print(f"{r['name']:<14} {r['radix']:>5} {r['p']:>3} {r['emin']:>6} {r['u']:>10} "
              f"{r['eta']:>10} {r['smallest_subnormal']:>13} {r['smallest_normal']:>11} "
              f"{r['max_finite']:>13}  {r['overflow']}")
    print("u = unit roundoff β^(1−p)/2, eta = underflow term β^emin/2 (round to nearest even); "
          "any format: 'flt:p=7,emin=-20,emax=15'; flush modes: 'bfloat16:subnormals=ftz+daz'")
    return EXIT_OK


# -- arithmetics ------------------------------------------------------------------------------------
def _arith_row(A) -> dict:
    return {"name": str(A), "storage": str(A.storage),
            "operands": None if A.operands is None else str(A.operands),
            "accumulator": str(A.accumulator), "compute": str(A.compute), "order": str(A.order),
            "storage_sums": sorted(A.storage_sums), "libm_ulps": A.libm_ulps, "spec": A.spec}


def cmd_arith(args) -> int:
    from . import arith
    if args.name:
        try:
            A = arith.get(args.name)
        except ValueError as e:
            raise UsageError(f"arith: {e}") from None
        detail = _arith_row(A)
        detail["semantics"] = ("TorchLean NF: every step rounded to the storage format"
                               if A.is_nf else "contractions in the accumulator, other ops in "
                               "the compute format, each result rounded once to storage")
        detail["order_free"] = A.order.is_any
        if args.json:
            print(json.dumps(_jsonable(detail), indent=2))
        else:
            for k, v in detail.items():
                shown = (", ".join(v) or "-") if isinstance(v, list) else ("-" if v is None else v)
                print(f"{k:<13} {shown}")
        return EXIT_OK
    rows = [_arith_row(A) for A in arith.PRESETS.values()]
    if args.json:
        print(json.dumps(_jsonable(rows), indent=2))
        return EXIT_OK
    print(f"{'name':<20} {'storage':<14} {'operands':<9} {'accumulator':<28} {'compute':<9} "
          f"{'order':<6} storage sums")
    for r in rows:
        print(f"{r['name']:<20} {r['storage']:<14} {r['operands'] or '-':<9} "
              f"{r['accumulator']:<28} {r['compute']:<9} {r['order']:<6} "
              f"{'+'.join(r['storage_sums']) or '-'}")
    print("facts and their sources: nfbound/arith/presets.py; order any: the bounds hold for "
          "every summation order, tree, blocking and FMA use. A spec: "
          "'store=bfloat16,acc=binary32,order=any,subnormals=ftz+daz'; a preset with "
          "overrides: 'torch-cpu-bfloat16:order=sequential'")
    return EXIT_OK


# -- verify -----------------------------------------------------------------------------------------
#: CLI op names → (registry op, PyTorch argument names of its inputs, default params, default shapes)
VERIFY_OPS = {
    "conv2d": ("conv", ("input", "weight", "bias"), {"stride": (1, 1), "padding": (1, 1)},
               ((2, 3, 6, 6), (4, 3, 3, 3), (4,))),
    "matmul": ("matmul", ("input", "other"), {}, ((4, 6), (6, 3))),
    "linear": ("linear", ("input", "weight", "bias"), {}, ((4, 6), (3, 6), (3,))),
}
_UNARY_TORCH_NAME = "input"


def _verify_ops() -> dict:
    """CLI op name → (registry op, argument names, default params, default shapes or None)."""
    from .graph import load_ops
    ops = load_ops()
    table = {}
    for name, P in ops.REGISTRY.items():
        sig = [p.name for p in inspect.signature(P.runtime).parameters.values()
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
        if len(sig) == 1:
            sig = [_UNARY_TORCH_NAME]
        table[name] = (name, tuple(sig), {}, None)
    for k, v in VERIFY_OPS.items():
        if v[0] in ops.REGISTRY:
            table[k] = v
    return table


def _parse_op(op: str):
    table = _verify_ops()
    base, grad = op, None
    if "_grad_" in op:
        base, _, grad = op.partition("_grad_")
    if base not in table:
        raise UsageError(f"verify: unknown --op {op!r}; known: {', '.join(sorted(table))} "
                         f"(VJPs: OP_grad_ARG, e.g. conv2d_grad_weight)")
    reg, argnames, defaults, shapes = table[base]
    if grad is not None and grad not in argnames:
        raise UsageError(f"verify: {base} has no argument {grad!r} (arguments: {', '.join(argnames)})")
    return reg, argnames, defaults, shapes, grad


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace(",", "x").split("x") if d != "")
    except ValueError:
        raise UsageError(f"verify: --shape {text!r}: expected dimensions like 2x3x8x8") from None
    if any(d < 1 for d in dims):
        raise UsageError(f"verify: --shape {text!r}: dimensions must be positive")
    return dims


def _instance(args, fmt, P, argnames, defaults, shapes):
    """A random instance ``(xs, params)``: inputs are values of ``fmt`` (the storage format)."""
    rng = np.random.default_rng(args.seed)
    params = dict(defaults)
    if args.shape:
        shapes = tuple(_parse_shape(s) for s in args.shape)
        if len(shapes) != len(argnames):
            raise UsageError(f"verify: --shape gives {len(shapes)} shapes, the op takes "
                             f"{len(argnames)} inputs ({', '.join(argnames)})")
        if not defaults:
            _, params = P.sample(np.random.default_rng(args.seed), fmt)
            params = dict(params)
    if shapes is not None:
        xs = tuple(fmt.round(rng.standard_normal(s)) for s in shapes)
    else:
        xs, params = P.sample(rng, fmt)
        params = dict(params)
    for key in ("stride", "padding"):
        v = getattr(args, key)
        if v is not None:
            if key not in params:
                raise UsageError(f"verify: --{key} does not apply to this op")
            params[key] = (v,) * len(params[key])
    return xs, params


def _order_param(args, A, P, reg: str, params: dict) -> None:
    """``--order`` into ``params`` (a format), or checked against the arithmetic's order (an
    arithmetic states it; the sample's own order parameters are dropped)."""
    from .arith import Arithmetic, Order
    from .graph.forward import _takes_order
    if args.order is not None and not _takes_order(P.runtime):
        raise UsageError(f"verify: --order does not apply to {args.op} ({reg} has no "
                         f"reduction order)")
    if not isinstance(A, Arithmetic):
        if args.order is not None:
            params["order"] = args.order      # validated by the op's rules (ValueError: exit 2)
        return
    params.pop("order", None)
    params.pop("order_free", None)
    if args.order is not None and Order.parse(args.order) != A.order:
        raise UsageError(f"verify: --order {args.order} contradicts the order {A.order} of "
                         f"arithmetic {A} (state it in the arithmetic)")


def _to_float64(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object:
        return np.array([float(v) for v in a.reshape(-1)], dtype=np.float64).reshape(a.shape)
    return np.asarray(a, dtype=np.float64)


def _saved_bound(runtime, runtime64, bound) -> np.ndarray:
    """The bound for the float64 copy of the runtime: ``bound + |runtime64 − runtime|`` upward
    (the second term is 0 for formats whose values are float64 values)."""
    from .bounds.upward import add_up, exact_array_up
    r = np.asarray(runtime)
    b = np.broadcast_to(np.asarray(bound, dtype=np.float64), r.shape)
    if r.dtype != object:
        return np.array(b, dtype=np.float64)
    from gmpy2 import mpq
    diff = np.array([abs(mpq(f) - v) if not isinstance(v, float) else 0
                     for f, v in zip(runtime64.reshape(-1), r.reshape(-1))], dtype=object)
    return add_up(b, np.asarray(exact_array_up(diff.reshape(r.shape)), dtype=np.float64))


def _torch_output(args, A, reg: str, xs, params: dict, grad: str | None, argnames, g):
    """PyTorch's output (or gradient of input ``grad``) on the instance, in the torch dtype of
    the arithmetic's storage format."""
    from .arith import Arithmetic
    from .models import torch_ops
    if not isinstance(A, Arithmetic):
        raise UsageError("verify: --against torch needs --arith PRESET|SPEC (PyTorch does not "
                         "compute TorchLean's every-step-rounded semantics of --format)")
    if reg not in torch_ops.OPS:
        raise UsageError(f"verify: --against torch: {args.op} has no PyTorch op; these do: "
                         f"{', '.join(torch_ops.OPS)}")
    dtype = torch_ops.torch_dtype(A.storage)
    try:
        if grad is None:
            return torch_ops.run(reg, xs, params, dtype)
        return torch_ops.run_vjp(reg, xs, params, g, dtype)[argnames.index(grad)]
    except (RuntimeError, NotImplementedError) as e:   # PyTorch's own refusal, e.g. no kernel
        raise UsageError(f"verify: PyTorch cannot run {reg} in {dtype}: {e}") from None


def _violation(spec, runtime, bound) -> dict | None:
    """The first position (row-major) where ``runtime`` leaves ``bound`` around ``spec``, with
    the exact distance rounded up, the bound and the number of such positions."""
    from .bounds.upward import exact_up
    bad = ~np.asarray(spec.encloses(runtime, bound))
    if not bad.any():
        return None
    pos = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
    d = np.asarray(spec.distance(runtime))[pos]
    return {"position": list(pos), "distance": d if isinstance(d, float) else exact_up(d),
            "bound": float(np.asarray(bound)[pos]), "count": int(bad.sum())}


def cmd_verify(args) -> int:
    from .arith import Arithmetic
    from .ops.interval import Interval
    A = _arith_of(args, "verify", None)
    fmt = A.storage if isinstance(A, Arithmetic) else A
    reg, argnames, defaults, shapes, grad = _parse_op(args.op)
    from .graph.forward import primitive
    P = primitive(reg)
    xs, params = _instance(args, fmt, P, argnames, defaults, shapes)
    _order_param(args, A, P, reg, params)
    zeros = tuple(np.zeros(np.shape(x)) for x in xs)
    t0 = time.perf_counter()
    y = P.runtime(A, *xs, **params)
    extra = {}
    if grad is None:
        runtime = y
        t1 = time.perf_counter()
        spec = P.spec(*(Interval.exact(x) for x in xs), **params)
        t2 = time.perf_counter()
        bound = P.bound(A, xs, zeros, **params)
        t3 = time.perf_counter()
    else:
        k = argnames.index(grad)
        g = fmt.round(np.random.default_rng(args.seed + 1).standard_normal(np.shape(y)))
        extra["grad_output"] = g
        t0 = time.perf_counter()
        runtime = P.vjp_runtime(A, xs, g, **params)[k]
        t1 = time.perf_counter()
        spec = P.vjp_spec(tuple(Interval.exact(x) for x in xs), Interval.exact(g), **params)[k]
        t2 = time.perf_counter()
        bound = P.vjp_bound(A, xs, zeros, g, np.zeros(np.shape(g)), **params)[k]
        t3 = time.perf_counter()
        if runtime is None:
            raise UsageError(f"verify: {reg} is not differentiable in {grad!r}")
    if args.against == "torch":
        runtime = _torch_output(args, A, reg, xs, params, grad, argnames,
                                extra.get("grad_output"))
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), np.shape(runtime))
    violation = _violation(spec, runtime, bound)
    held = violation is None
    t4 = time.perf_counter()
    from .bounds.upward import exact_up
    dist = spec.distance(runtime).reshape(-1)
    observed = max((exact_up(v) if not isinstance(v, float) else v for v in dist), default=0.0)
    max_bound = float(np.max(bound)) if bound.size else 0.0
    ratio = (max_bound / observed) if observed > 0 else (1.0 if max_bound == 0 else math.inf)
    info = {"op": args.op, "primitive": reg, "format": str(fmt), "arith": str(A),
            "against": args.against, "seed": args.seed,
            "inputs": {n: list(np.shape(x)) for n, x in zip(argnames, xs)},
            "params": {k: v for k, v in params.items()}, "output_shape": list(np.shape(runtime)),
            "max_bound": max_bound, "max_observed": observed, "ratio": ratio, "holds": held,
            "violation": violation,
            "seconds": {"runtime": t1 - t0, "spec": t2 - t1, "bound": t3 - t2, "check": t4 - t3}}
    if args.save:
        runtime64 = _to_float64(runtime)
        arrays = {n: _to_float64(x) for n, x in zip(argnames, xs)}
        arrays.update({k: _to_float64(v) for k, v in extra.items()})
        from .bounds.upward import exact_array_up
        mid = spec.mid
        spec64 = _to_float64(np.vectorize(float, otypes=[object])(mid) if mid.dtype == object else mid)
        from gmpy2 import mpq
        radius = np.array([max(abs(lo - mpq(f)), abs(hi - mpq(f))) for lo, hi, f in
                           zip(spec.lo.reshape(-1), spec.hi.reshape(-1), spec64.reshape(-1))],
                          dtype=object).reshape(spec.shape)
        arrays.update(runtime=runtime64, bound=_saved_bound(runtime, runtime64, bound), spec=spec64,
                      spec_radius=np.asarray(exact_array_up(radius), dtype=np.float64),
                      op=np.array(args.op), format=np.array(str(args.format or args.arith)))
        for key in ("stride", "padding"):
            if key in params:
                arrays[key] = np.array(params[key], dtype=np.int64)
        try:
            np.savez(args.save, **arrays)
        except OSError as e:
            raise UsageError(f"verify: cannot write {args.save}: {e}") from None
        info["saved"] = str(args.save)
    n = int(np.size(runtime))
    if held:
        verdict = (f"verdict: enclosure held for all {n} values"
                   + (" of PyTorch's output" if args.against == "torch" else "")
                   + " (exact rational test)")
    else:
        v = violation
        verdict = (f"verdict: ENCLOSURE FAILED for {args.op}: "
                   + ("PyTorch's output" if args.against == "torch" else "the runtime")
                   + f" at index {tuple(v['position'])} is {_num(v['distance'])} from the spec"
                   f" > bound {_num(v['bound'])} ({v['count']} of {n} values; exact rational "
                   f"test)")
    if args.json:
        print(json.dumps(_jsonable(info), indent=2))
    elif args.quiet:
        print(verdict)
    else:
        print(f"op {args.op} ({reg}) in {A}, seed {args.seed}"
              + (", against PyTorch" if args.against == "torch" else ""))
        print("inputs: " + ", ".join(f"{n} {tuple(np.shape(x))}" for n, x in zip(argnames, xs))
              + (f", grad_output {tuple(np.shape(extra['grad_output']))}" if extra else ""))
        if params:
            print("params: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        s = info["seconds"]
        print(f"time: runtime {s['runtime']:.3g} s, spec {s['spec']:.3g} s, bound {s['bound']:.3g} s")
        what = "torch" if args.against == "torch" else "runtime"
        print(f"max bound {_num(max_bound)}, max observed |{what} − spec| {_num(observed)}, "
              f"ratio {_num(ratio)}")
        if args.save:
            print(f"saved {args.save}")
        print(verdict)
    return EXIT_OK if held else EXIT_FAILED


# -- bound ------------------------------------------------------------------------------------------
def _load_npy(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{p}: not a readable .npy file ({e})") from None


def _model(args):
    """``(program, x, labels, description)``.

    Without ``--model``: the demo CNN (and its 8 digits unless ``--input``). With ``--model``
    but no ``--input``: an ONNX model declaring a static input shape (a symbolic batch dimension
    counts as 1) gets a standard-normal input of that shape drawn with seed
    :data:`DERIVED_INPUT_SEED`; a PyTorch module declares no input shape, so it is a usage error.
    """
    from .models import demo_input, demo_labels, demo_program, load_model
    x = _load_npy(args.input, "input") if args.input else None
    labels = _load_npy(args.labels, "labels") if args.labels else None
    if x is not None and x.dtype.kind not in "fiu":
        raise ValueError(f"--input {args.input}: expected a numeric array, got dtype {x.dtype}")
    if args.model is None:
        if x is None:
            x, labels = demo_input(), demo_labels() if labels is None else labels
        return demo_program(), x, labels, "built-in demo CNN (digits)"
    desc = str(args.model)
    if x is None:
        if Path(args.model).suffix.lower() != ".onnx":
            raise UsageError(f"bound: --model {args.model} needs --input FILE.npy (an example input "
                             f"with its batch dimension: a PyTorch module does not declare its "
                             f"input shape; ONNX files do)")
        program = load_model(args.model)
        if program.input_shape is None:
            raise UsageError(f"bound: {args.model} does not declare a static input shape: give "
                             f"--input FILE.npy")
        x = np.random.default_rng(DERIVED_INPUT_SEED).standard_normal(program.input_shape)
        return program, x, labels, f"{desc} (random N(0,1) input, seed {DERIVED_INPUT_SEED})"
    return load_model(args.model, x), x, labels, desc


def _verdict(rows: list[dict]) -> tuple[bool, str]:
    failed = [r["node"] for r in rows if r["holds"] is False]
    infinite = [r["node"] for r in rows if r["max_bound"] is not None and math.isinf(r["max_bound"])]
    if failed:
        return False, f"ENCLOSURE FAILED at {len(failed)} node(s): {', '.join(failed)}"
    msg = f"all {len(rows)} enclosures held (|runtime − spec| ≤ bound, exact rational test)"
    if infinite:
        msg += f"; infinite bounds (overflow) at {', '.join(infinite)}"
    return True, msg


def cmd_bound(args) -> int:
    from .formats import Format
    A = _arith_of(args, "bound", "bfloat16")
    arith_map = _load_arith_map(args.arith_map)
    program, x, labels, desc = _model(args)
    loss = None
    if args.gradients:
        loss = "cross_entropy" if labels is not None else "sum"
    graph = program.to_graph(loss)
    try:
        plan = graph.arithmetics(A, args.order, arith_map)
    except ValueError as e:
        raise UsageError(f"bound: --arith-map {args.arith_map}: {e}" if args.arith_map and
                         "arith_map" in str(e) else f"bound: {e}") from None
    inputs = {"x": x}   # read at its exact value by the graph (any real dtype)
    if loss == "cross_entropy":
        inputs["target"] = np.asarray(labels)
    progress = False if args.quiet else None
    t0 = time.perf_counter()
    res = graph.forward(plan, inputs=inputs, spec=True, progress=progress)
    shown = [n for n in graph.topological_order() if graph.nodes[n].kind != "label"]
    rows = [r for r in res.report() if r["node"] in shown]
    t1 = time.perf_counter()
    back_rows = None
    if loss is not None:
        back = graph.backward(plan, res, loss="loss", progress=progress)
        back_rows = back.report()
    t2 = time.perf_counter()
    ok, msg = _verdict(rows + (back_rows or []))
    out_node = program.output
    runtime_out = np.asarray(res.runtime[out_node])
    agree = None
    if runtime_out.ndim == 2:
        spec_out = res.spec[out_node].to_float()
        rt = _to_float64(runtime_out)
        agree = int(np.sum(np.argmax(rt, axis=1) == np.argmax(spec_out, axis=1)))
    fmt = A if isinstance(A, Format) else A.storage
    if isinstance(A, Format):
        setting = f"format {A}; order {res.order}"
    else:
        setting = (f"arithmetic {A} (storage {A.storage}, accumulator {A.accumulator}, compute "
                   f"{A.compute}); order {res.order}")
    if arith_map:
        setting += f"; per-node arithmetics from {args.arith_map}"
    if args.json:
        out = {"model": desc, "format": str(fmt), "arith": str(A), "order": res.order,
               "arith_map": arith_map, "input_shape": list(np.shape(x)),
               "loss": loss, "forward": rows, "backward": back_rows, "holds": ok, "verdict": msg,
               "argmax_agree": agree, "seconds": {"forward": t1 - t0, "backward": t2 - t1}}
        print(json.dumps(_jsonable(out), indent=2))
    else:
        from .graph import format_table
        if not args.quiet:
            print(f"model: {desc}; input {tuple(np.shape(x))}; {setting}")
            print(format_table(rows))
            if back_rows is not None:
                what = "cross_entropy against the labels" if loss == "cross_entropy" else "sum of outputs"
                print(f"\ngradients of loss = {what}:")
                print(format_table(back_rows))
            if agree is not None:
                print(f"argmax of the {A} runtime output equals the exact argmax on {agree}/"
                      f"{runtime_out.shape[0]} inputs")
            print(f"time: forward {t1 - t0:.2f} s" + (f", backward {t2 - t1:.2f} s" if loss else ""))
        print(f"verdict: {msg}")
    return EXIT_OK if ok else EXIT_FAILED


# -- main -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="nfbound", description="Certified error bounds of neural networks computed in "
                                             "low-precision number formats.")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    b = sub.add_parser("bound", help="per-node certified bounds of a model (default: the demo CNN)")
    b.add_argument("--model", help="a .pt/.pth file (whole module saved with torch.save(model, path); "
                                   "TorchScript is not supported) or an .onnx file")
    b.add_argument("--input", help=".npy example input with its batch dimension (default: the demo "
                                   "digits; for an .onnx model, random N(0,1) data of its declared "
                                   "input shape, batch 1; required for .pt models)")
    b.add_argument("--labels", help=".npy integer class labels for --gradients (default: demo labels)")
    b.add_argument("--format", help="preset name or spec string (default bfloat16): TorchLean's "
                                    "semantics, every step rounded to it")
    b.add_argument("--arith", help="an arithmetic instead of --format: a preset (nfbound arith) or "
                                   "spec 'store=bfloat16,acc=binary32,order=any'")
    b.add_argument("--arith-map", help="JSON file mapping node names to arithmetics (presets or "
                                       "specs), e.g. {\"0\": \"torch-cpu-float32\"}")
    b.add_argument("--order", default=None,
                   help="reduction order with --format: sequential (default), reversed, "
                        "pairwise, blocked:B, any (an arithmetic states its own)")
    b.add_argument("--gradients", action="store_true",
                   help="also backpropagate: loss = cross_entropy against the labels "
                        "(mean over the batch), or the sum of all outputs when there are no labels")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--quiet", action="store_true", help="no tables, no progress bar: verdict line only")
    b.set_defaults(func=cmd_bound)
    f = sub.add_parser("formats", help="table of preset formats, or one format in detail")
    f.add_argument("name", nargs="?", help="preset name or spec string like 'flt:p=7,emin=-20,emax=15'")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_formats)
    a = sub.add_parser("arith", help="table of preset arithmetics, or one arithmetic in detail")
    a.add_argument("name", nargs="?", help="preset name or spec string like "
                                           "'store=bfloat16,acc=binary32,order=any'")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_arith)
    v = sub.add_parser("verify", help="check one op (or one of its VJPs) on a random instance")
    v.add_argument("--op", required=True, help="conv2d, conv2d_grad_input/_weight/_bias, matmul, linear, "
                                               "relu, tanh, sigmoid, softplus, exp, … (any registered op)")
    v.add_argument("--format", help="preset name or spec string (or --arith)")
    v.add_argument("--arith", help="a preset arithmetic or spec string (or --format)")
    v.add_argument("--against", choices=("nfbound", "torch"), default="nfbound",
                   help="check nfbound's runtime (default) or PyTorch's own output (needs "
                        "--arith with a bfloat16, float16 or float32 storage)")
    v.add_argument("--shape", nargs="+", help="one shape per input, e.g. 2x3x8x8 4x3x3x3 4")
    v.add_argument("--stride", type=int, help="stride (conv ops)")
    v.add_argument("--padding", type=int, help="padding (conv ops)")
    v.add_argument("--order", default=None, help="reduction order (only ops that reduce: "
                                                 "sequential, reversed, pairwise, blocked:B; "
                                                 "with --arith: must be the arithmetic's)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--save", help="write inputs, runtime, bound, spec to this .npz")
    v.add_argument("--json", action="store_true")
    v.add_argument("--quiet", action="store_true", help="verdict line only")
    v.set_defaults(func=cmd_verify)
    return ap


def _error(msg: str) -> int:
    print("nfbound: error: " + " ".join(str(msg).split()), file=sys.stderr)
    return EXIT_USAGE


def main(argv=None) -> int:
    """Run the command line; returns the exit code (module docstring). Every exception ends as
    one line on stderr: usage and input errors as themselves, a missing optional dependency
    with the install hint, anything else as ``internal error`` — exit 2 in all cases, so that
    exit 1 always means an enclosure failed."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except (UsageError, ValueError, FileNotFoundError, OSError) as e:
        return _error(e)
    except ImportError as e:
        from .models import INSTALL_HINT
        return _error(e if INSTALL_HINT in str(e) else f"{e} (optional dependencies: {INSTALL_HINT})")
    except KeyboardInterrupt:
        print("nfbound: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: still one line and not exit 1 (which means "enclosure failed")
        return _error(f"internal error: {type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
