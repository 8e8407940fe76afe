"""Accumulation orders, parsed once into an :class:`Order`.

A reduction ``Σ_k t_k`` evaluated with a rounding after every addition depends on the order of
the additions; the order is part of the semantics of a rounded reduction. The stated orders
(``sequential``, ``reversed``, ``pairwise``, ``blocked:B``) define one evaluation tree each and
are emulated bit for bit. ``any`` stands for every evaluation a library may choose: any
summation tree over the terms, any blocking, products fused into additions (FMA) or not. Its
runtime is one representative evaluation (``sequential``) and its bounds hold for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("sequential", "reversed", "pairwise", "blocked", "any")


@dataclass(frozen=True)
class Order:
    """One accumulation order. ``block`` is the block size ``B ≥ 1`` of ``blocked`` (sequential
    inside consecutive blocks of ``B`` terms, then sequential over the block sums) and ``None``
    for every other kind."""

    kind: str
    block: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"order must be one of sequential, reversed, pairwise, blocked:B, "
                             f"any; got {self.kind!r}")
        if self.kind == "blocked":
            if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
                raise ValueError(f"order blocked:B needs a block size B ≥ 1, got {self.block!r}")
        elif self.block is not None:
            raise ValueError(f"order {self.kind} takes no block size")

    @classmethod
    def parse(cls, order: "str | Order") -> "Order":
        """An :class:`Order` from its name (``"blocked:64"``, ``"any"``, …) or itself."""
        if isinstance(order, Order):
            return order
        if not isinstance(order, str):
            raise ValueError(f"order must be a string such as 'sequential' or 'blocked:64', "
                             f"got {order!r}")
        head, sep, tail = order.strip().partition(":")
        if head == "blocked":
            try:
                block = int(tail)
            except ValueError:
                raise ValueError(f"order blocked:B needs an integer block size, got {order!r}") \
                    from None
            return cls("blocked", block)
        if sep:
            raise ValueError(f"order {head!r} takes no ':' argument, got {order!r}")
        return cls(head)

    @property
    def is_any(self) -> bool:
        """Whether the order stands for every evaluation (bounds must hold for all of them)."""
        return self.kind == "any"

    @property
    def stated(self) -> "Order":
        """The order the runtime emulates: itself, or ``sequential`` for ``any``."""
        return SEQUENTIAL if self.is_any else self

    def __str__(self) -> str:
        return f"blocked:{self.block}" if self.kind == "blocked" else self.kind


SEQUENTIAL = Order("sequential")
