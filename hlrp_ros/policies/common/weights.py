"""Strict checks of loaded weights, shared by every family: each problem named, all of them at once."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def _listed(keys: list[str], limit: int | None) -> str:
    if limit is None or len(keys) <= limit:
        return f"{keys}"
    return f"{keys[:limit]} ..."


def tensor_problems(expected: Mapping[str, Tensor], tensors: Mapping[str, Tensor], *, extra: str = "unexpected",
                    check_finite: bool = False, limit: int | None = 10) -> list[str]:
    """What keeps ``tensors`` from loading strictly into a model whose ``state_dict()`` is ``expected``.

    Args:
        expected: The model's tensors by name (shapes are compared).
        tensors: The checkpoint's tensors by name.
        extra: The word for a checkpoint tensor the model does not have ("unexpected", "unknown").
        check_finite: Also name floating-point tensors holding NaN or infinity (a corrupted file).
        limit: Names listed per kind of problem (None: every one).

    Returns:
        One sentence per problem ("missing tensor(s) [...]", "tensor 'x' has shape (2,), model expects (3,)"),
        empty when the tensors load.
    """
    missing = sorted(set(expected) - set(tensors))
    surplus = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {_listed(missing, limit)}")
    if surplus:
        problems.append(f"{extra} tensor(s) {_listed(surplus, limit)}")
    for key in sorted(set(tensors) & set(expected)):
        value = tensors[key]
        if tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"tensor {key!r} has shape {tuple(value.shape)}, model expects {tuple(expected[key].shape)}")
        elif check_finite and value.is_floating_point() and not torch.isfinite(value).all():
            problems.append(f"tensor {key!r} contains non-finite values (corrupted checkpoint?)")
    return problems
