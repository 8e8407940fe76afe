"""The built-in demo model: a small CNN trained on scikit-learn's 8×8 digits.

``Conv2d(1, 4, 3, padding=1) → ReLU → MaxPool2d(2) → Flatten → Linear(64, 10)``; the weights
and the first 8 test digits (scaled to ``[0, 1]``) with their labels are stored in
``demo_cnn.npz`` (written by ``python -m nfbound.models.train_demo``).

:func:`demo_graph` builds the nfbound graph straight from the npz with the graph API — no torch
needed at runtime; :func:`demo_model` builds the same network as a ``torch.nn.Module`` (needs
torch). ``tests/test_models.py`` checks that importing :func:`demo_model` gives the same program.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .program import INPUT, Program

DEMO_PATH = Path(__file__).with_name("demo_cnn.npz")
PARAM_NAMES = ("0.weight", "0.bias", "4.weight", "4.bias")


@lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    if not DEMO_PATH.exists():
        raise FileNotFoundError(f"{DEMO_PATH} is missing: run python -m nfbound.models.train_demo")
    with np.load(DEMO_PATH) as z:
        return {k: z[k].copy() for k in z.files}


def demo_params() -> dict[str, np.ndarray]:
    """The trained parameters (float64 copies of the float32 weights), PyTorch names."""
    a = _arrays()
    return {k: a[k].copy() for k in PARAM_NAMES}


def demo_input() -> np.ndarray:
    """The first 8 test digits, shape (8, 1, 8, 8), float64 in ``[0, 1]``."""
    return _arrays()["inputs"].copy()


def demo_labels() -> np.ndarray:
    """Their labels, shape (8,), int64."""
    return _arrays()["labels"].copy()


def demo_program() -> Program:
    """The demo network as a :class:`~nfbound.models.program.Program` (the same steps, names
    and params the PyTorch importer produces for :func:`demo_model`)."""
    p, w = Program(source="demo"), demo_params()
    for k in PARAM_NAMES:
        p.add_param(k, w[k])
    p.add_step("0", "conv", (INPUT, "0.weight", "0.bias"), stride=(1, 1), padding=(1, 1))
    p.add_step("1", "relu", ("0",))
    p.add_step("2", "max_pool", ("1",), kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))
    p.add_step("3", "flatten", ("2",), start_dim=1, end_dim=-1)
    p.add_step("4", "linear", ("3", "4.weight", "4.bias"))
    return p


def demo_graph(loss: str | None = None):
    """The demo :class:`nfbound.graph.Graph` (input ``"x"``; with ``loss="cross_entropy"`` also
    a label input ``"target"`` and the scalar node ``"loss"``)."""
    return demo_program().to_graph(loss)


def demo_model():
    """The demo network as a ``torch.nn.Sequential`` in float64 with the trained weights."""
    import torch
    from .train_demo import build_model
    m = build_model().double()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in demo_params().items()})
    return m.eval()
