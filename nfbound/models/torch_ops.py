"""PyTorch's own ops for nfbound's primitives: the real library computation that an arithmetic
preset claims to bound (``nfbound verify --against torch``, ``tests/test_hardware.py``).

:func:`run` calls the PyTorch op of a registered primitive on storage values in a torch dtype
and returns its output; :func:`run_vjp` returns PyTorch autograd's gradients of
``⟨op(xs), g⟩``. nfbound's parameters are translated (conv and pooling take the 1-, 2- or 3-D
op from the input's rank; reductions take ``axis``/``keepdims`` as ``dim``/``keepdim``;
``order``/``order_free`` describe nfbound's bound, not the op, and are dropped). Ops PyTorch
has no op for as such (``scale``, ``safe_div``, ``safe_log``) are absent (:data:`OPS`). The
op runs as PyTorch is configured (oneDNN on by default; callers may wrap the call in
``torch.backends.mkldnn.flags``).

Values cross exactly: inputs are storage values of a format whose values are exactly those of
a torch dtype (:func:`torch_dtype`: bfloat16, float16, float32), converted through float64 and
checked unchanged (:func:`to_torch`); labels (the target of ``cross_entropy``) go as int64.
Outputs are read back as float64, which holds every value of those dtypes.
"""
from __future__ import annotations

from functools import cache
from typing import Callable

import numpy as np

from ..arith import contains
from ..formats import Format
from ..formats import get as get_format
from . import require

#: The torch dtypes nfbound reads and writes, by the name of the format with their values.
DTYPES = {"bfloat16": "bfloat16", "binary16": "float16", "binary32": "float32"}
#: Input positions that are integer labels, per op (passed as int64, never differentiated).
LABEL_SLOTS = {"cross_entropy": (1,)}
#: Parameters of nfbound's rules that are not arguments of the PyTorch op.
BOUND_ONLY = ("order", "order_free")


def _torch():
    return require("torch", "running PyTorch ops")


def torch_dtype(fmt: Format):
    """The torch dtype whose values are exactly the values of ``fmt`` (the subnormal mode may
    differ: it is how an op reads and writes values, not which values exist); ``ValueError``
    when there is none that PyTorch computes in on CPU."""
    torch = _torch()
    for name, dtype in DTYPES.items():
        ref = get_format(name)
        if contains(ref, fmt) and contains(fmt, ref):
            return getattr(torch, dtype)
    raise ValueError(f"storage format {fmt} has no PyTorch dtype (PyTorch computes in "
                     f"{', '.join(DTYPES.values())}; e.g. fp8 tensors have no CPU ops)")


def to_torch(x, dtype) -> "torch.Tensor":
    """``x`` (storage values, float64 or exact rationals) as a tensor of ``dtype``; a value
    that ``dtype`` does not hold exactly is a ``ValueError``."""
    torch = _torch()
    a = np.asarray(x)
    a64 = np.asarray(a, dtype=np.float64) if a.dtype != object else \
        np.array([float(v) for v in a.reshape(-1)]).reshape(a.shape)
    t = torch.tensor(a64, dtype=torch.float64).to(dtype)
    back = t.to(torch.float64).numpy()
    exact = np.array_equal(back, a64) if a.dtype != object else \
        all(v == w for v, w in zip(a.reshape(-1), back.reshape(-1)))
    if not exact:
        raise ValueError(f"input values are not all {dtype} values (round them to the storage "
                         f"format first)")
    return t


def _by_rank(F, prefix: str) -> Callable:
    """``F.{prefix}{1,2,3}d`` chosen by the input's rank (batch and channel dims first)."""
    def call(x, *args, **kwargs):
        d = x.dim() - 2
        if d not in (1, 2, 3):
            raise ValueError(f"{prefix}: PyTorch has 1-, 2- and 3-D {prefix}, the input has "
                             f"{d} spatial dimensions")
        return getattr(F, f"{prefix}{d}d")(x, *args, **kwargs)
    return call


def _reduction(f) -> Callable:
    """``f(x, dim=…, keepdim=…)`` from nfbound's ``axis`` (``None``: every axis), ``keepdims``."""
    def call(x, axis=None, keepdims=False):
        dims = tuple(range(x.dim())) if axis is None else axis
        return f(x, dim=dims, keepdim=keepdims)
    return call


@cache
def _ops() -> dict[str, Callable]:
    torch = _torch()
    F = torch.nn.functional
    table = {name: getattr(torch, name) for name in
             ("abs", "neg", "relu", "sqrt", "exp", "tanh", "sigmoid", "add", "sub", "mul", "div",
              "matmul", "dot", "flatten", "reshape")}
    table.update(
        softplus=F.softplus, matvec=torch.mv, linear=F.linear,
        conv=_by_rank(F, "conv"), conv_transpose=_by_rank(F, "conv_transpose"),
        max_pool=_by_rank(F, "max_pool"), avg_pool=_by_rank(F, "avg_pool"),
        sum=_reduction(torch.sum), mean=_reduction(torch.mean), max=_reduction(torch.amax),
        softmax=lambda x, dim: torch.softmax(x, dim=dim),
        cross_entropy=F.cross_entropy, mse_loss=F.mse_loss)
    return table


#: The registry ops that have a PyTorch op here.
OPS = ("abs", "add", "avg_pool", "conv", "conv_transpose", "cross_entropy", "div", "dot", "exp",
       "flatten", "linear", "matmul", "matvec", "max", "max_pool", "mean", "mse_loss", "mul",
       "neg", "relu", "reshape", "sigmoid", "softmax", "softplus", "sqrt", "sub", "sum", "tanh")


def op(name: str) -> Callable:
    """The PyTorch function of registry op ``name`` (``ValueError`` listing :data:`OPS`)."""
    if name not in OPS:
        raise ValueError(f"op {name!r} has no PyTorch counterpart here; these do: "
                         f"{', '.join(OPS)}")
    return _ops()[name]


def _tensors(name: str, xs, dtype, grad: bool = False) -> list:
    torch = _torch()
    labels = LABEL_SLOTS.get(name, ())
    out = []
    for i, x in enumerate(xs):
        if i in labels:
            out.append(torch.tensor(np.asarray(x, dtype=np.int64)))
        else:
            out.append(to_torch(x, dtype).requires_grad_(grad))
    return out


def _params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in BOUND_ONLY}


def _numpy(t) -> np.ndarray:
    return t.detach().to(_torch().float64).numpy()


def run(name: str, xs, params: dict, dtype) -> np.ndarray:
    """PyTorch's output of op ``name`` on ``xs`` (storage values) in ``dtype``, as float64."""
    f = op(name)
    return _numpy(f(*_tensors(name, xs, dtype), **_params(params)))


def run_vjp(name: str, xs, params: dict, g, dtype) -> list:
    """PyTorch autograd's gradients of ``⟨op(xs), g⟩`` w.r.t. every input (``None`` for
    labels), in ``dtype``, as float64."""
    f = op(name)
    ts = _tensors(name, xs, dtype, grad=True)
    f(*ts, **_params(params)).backward(to_torch(g, dtype))
    labels = LABEL_SLOTS.get(name, ())
    return [None if i in labels else _numpy(t.grad) for i, t in enumerate(ts)]
