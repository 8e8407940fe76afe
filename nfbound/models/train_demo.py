"""Train the built-in demo CNN on scikit-learn's ``load_digits`` and save ``demo_cnn.npz``.

Run as ``python -m nfbound.models.train_demo`` (needs torch and scikit-learn). The model is
``Conv2d(1, 4, 3, padding=1) → ReLU → MaxPool2d(2) → Flatten → Linear(64, 10)`` (690
parameters) on 8×8 grayscale digits scaled to ``[0, 1]``. Training is deterministic: fixed seed,
one thread, full-batch Adam, a fixed split (``train_test_split(random_state=0)``, 25 % test).

The npz holds the parameters under their PyTorch state-dict names (float32 values, stored as
float64 so that the spec reads exactly the trained numbers), the first 8 test digits
(``inputs``, shape (8, 1, 8, 8), float64 in ``[0, 1]``) and their ``labels`` (int64).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 0
EPOCHS = 300
N_DEMO = 8
DEFAULT_PATH = Path(__file__).with_name("demo_cnn.npz")


def build_model():
    """The demo architecture (untrained)."""
    import torch.nn as nn
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 10))


def load_data():
    """``(x_train, x_test, y_train, y_test)``: digits as (N, 1, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    return train_test_split(x, d.target.astype(np.int64), test_size=0.25, random_state=SEED)


def train(epochs: int = EPOCHS):
    """Train the demo model; returns ``(model, test_accuracy, x_test, y_test)``."""
    import torch
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = load_data()
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    return model, float((pred == y_test).mean()), x_test, y_test


def save(model, x_test, y_test, path: Path = DEFAULT_PATH) -> None:
    """Write the state dict (as float64) and the first ``N_DEMO`` test digits to ``path``."""
    arrays = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    arrays["inputs"] = x_test[:N_DEMO].astype(np.float64)
    arrays["labels"] = y_test[:N_DEMO].astype(np.int64)
    np.savez_compressed(path, **arrays)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nfbound.models.train_demo", description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = ap.parse_args(argv)
    model, acc, x_test, y_test = train(args.epochs)
    save(model, x_test, y_test, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"demo CNN: {n} parameters, test accuracy {acc:.4f} ({len(y_test)} digits); saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
