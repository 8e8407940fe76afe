"""Named arithmetics of real deployments, each with where its facts come from.

Where the hardware's behaviour is not published (the order of a BLAS or oneDNN reduction, its
blocking and use of FMA, whether a kernel flushes subnormals), the preset says ``any``: the
bounds then hold for every choice (``order=any``; the ``ftz+daz`` accumulator's bounds also
cover the same computation without flushing, see :mod:`nfbound.ops.arithmetic`). The runtime
of such a preset is one representative evaluation: the sequential order, with flushing.

| preset | storage | operands | accumulator | compute | order |
|---|---|---|---|---|---|
| ``torch-cpu-float32`` | binary32 | — | binary32, ftz+daz | binary32 | any |
| ``torch-cpu-bfloat16`` | bfloat16 | — | binary32, ftz+daz | binary32 | any |
| ``torch-cpu-float16`` | binary16 | — | binary32, ftz+daz | binary32 | any |
| ``amp-bfloat16`` | bfloat16 | — | binary32, ftz+daz | binary32 | any |
| ``amp-float16`` | binary16 | — | binary32, ftz+daz | binary32 | any |
| ``tf32`` | binary32 | tf32 | binary32, ftz+daz | binary32 | any |
| ``fp8-e4m3`` | float8_e4m3fn | — | binary32, ftz+daz | binary32 | any |
| ``fp8-e5m2`` | float8_e5m2 | — | binary32, ftz+daz | binary32 | any |

Every preset takes the library's elementwise functions to be within ``libm_ulps = 4`` ulps of
the compute format (nfbound's own runtime rounds them correctly; PyTorch's do not: see
``_LIBM_ULPS``).

Sources:

* PyTorch CPU (``torch-cpu-*``): bfloat16/float16 matmul, linear and conv multiply exactly and
  accumulate in binary32, rounding once to the storage format; elementwise bfloat16/float16 ops
  convert to binary32, compute there and round once (ATen's ``Vectorized<BFloat16>`` converts
  to ``float``) — measured on this project's CI machines (``tests/test_hardware.py``). With
  oneDNN (the default on AVX512-BF16/AMX CPUs), bfloat16 subnormal inputs are read as zero and
  binary32 subnormal products and partial sums are flushed (DAZ/FTZ); with
  ``torch.backends.mkldnn.enabled = False`` they are not: ``ftz+daz`` bounds cover both.
  The reduction order (oneDNN's and MKL's blocking, FMA) is not published: ``any``.
  Without oneDNN, ``conv_transpose`` and the input and weight gradients of both convolutions
  round partial sums to storage (a GEMM rounded to bfloat16/float16, then columns or
  per-sample results summed in storage: ``col2im``):
  ``storage_sums={conv_transpose, conv_transpose.vjp.0, conv_transpose.vjp.1, conv.vjp.0,
  conv.vjp.1}`` (input and weight gradients; the bias gradient sums in binary32).
* Autocast (``amp-*``): contractions take bfloat16/float16 operands and accumulate in binary32
  (CUDA: cuBLAS/cuDNN with ``CUBLAS_COMPUTE_32F``; tensor cores per Fasi, Higham, Mikaitis &
  Pranesh 2021 form products exactly and accumulate in at least binary32 for these inputs).
  Autocast's float32 op list (softmax, norms, losses) runs in binary32: give those nodes
  ``torch-cpu-float32`` through a per-node arithmetic map. Whether a tensor core flushes
  subnormals is generation-dependent: ``ftz+daz`` bounds cover both.
* ``tf32``: NVIDIA Ampere's TF32 mode rounds binary32 contraction operands to 10 fraction bits
  (the ``tf32`` format), multiplies exactly and accumulates in binary32 (NVIDIA A100 whitepaper,
  2020). The rounding of that conversion is modelled as round-to-nearest-even.
* ``fp8-*``: OCP 8-bit formats for storage; the accumulator defaults to binary32 (what
  cuBLASLt's FP8 GEMM documents); published measurements (Khattak & Mikaitis 2025) suggest
  narrower accumulators on some tensor cores: override it, e.g.
  ``fp8-e4m3:acc=[flt:p=14,emin=-149,emax=128]``.
"""
from __future__ import annotations

from ..formats import get as get_format
from .arithmetic import Arithmetic, with_subnormals
from .order import Order

_ANY = Order("any")
#: Error of the library's binary32 elementwise functions, in ulps: PyTorch 2.13 CPU measured on
#: 3·10^6 arguments against binary64 references — exp 0.56, tanh 0.57, log 0.55, sqrt 0.56,
#: softplus 1.47, sigmoid 2.39 — with a margin for other CPUs' SLEEF paths (``libm_ulps``).
_LIBM_ULPS = 4.0
_FLUSHING_B32 = with_subnormals(get_format("binary32"), "ftz+daz")

PRESETS: dict[str, Arithmetic] = {}


#: PyTorch CPU kernels measured to round partial sums to storage (``tests/test_hardware.py``).
_TORCH_CPU_STORAGE_SUMS = frozenset({"conv_transpose", "conv_transpose.vjp.0",
                                     "conv_transpose.vjp.1", "conv.vjp.0", "conv.vjp.1"})


def _preset(name: str, storage: str, operands: str | None = None,
            storage_sums: frozenset = frozenset()) -> None:
    PRESETS[name] = Arithmetic(get_format(storage), _FLUSHING_B32, get_format("binary32"), _ANY,
                               None if operands is None else get_format(operands), storage_sums,
                               _LIBM_ULPS, name=name)


_preset("torch-cpu-float32", "binary32", storage_sums=_TORCH_CPU_STORAGE_SUMS)
_preset("torch-cpu-bfloat16", "bfloat16", storage_sums=_TORCH_CPU_STORAGE_SUMS)
_preset("torch-cpu-float16", "binary16", storage_sums=_TORCH_CPU_STORAGE_SUMS)
_preset("amp-bfloat16", "bfloat16")
_preset("amp-float16", "binary16")
_preset("tf32", "binary32", operands="tf32")
_preset("fp8-e4m3", "float8_e4m3fn")
_preset("fp8-e5m2", "float8_e5m2")
