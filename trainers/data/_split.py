"""The validation split: carved from the training pool, fixed by ``DataSpec.seed`` alone.

A split that depended on the training seed would hand each re-trained finalist a different
validation set (and a different training set), so finalists would not be compared on the same
data. The split draws from its own generator, derived from ``DataSpec.seed`` and a constant
stream tag: digits already draws its train/test permutation from ``seed``, and the two draws
stay unrelated.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

# SeedSequence entropy word that names the validation-split stream ("val" in ASCII).
_VAL_STREAM = 0x76616C


def val_generator(seed: int) -> torch.Generator:
    """The CPU generator of the validation split; depends on ``seed`` only."""
    state = np.random.SeedSequence([seed % 2**64, _VAL_STREAM]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def split_indices(
    y: Tensor, n_val: int, method: Literal["stratified", "last"], seed: int
) -> tuple[Tensor, Tensor]:
    """``(train_idx, val_idx)`` into a pool labelled ``y``: disjoint, sorted, covering it.

    ``last`` holds out the last ``n_val`` examples. ``stratified`` gives each class c a share
    within one example of ``n_val * count_c / len(y)`` (floor, then the leftover examples to the
    largest remainders, ties to the lower class) and draws its examples at random with
    :func:`val_generator`. Both keep the pool's order within each part.
    """
    n = len(y)
    if not 0 <= n_val < n:
        raise ValueError(f"n_val must be in 0..{n - 1} for a pool of {n}, but got {n_val}")
    if method == "last":
        return torch.arange(n - n_val), torch.arange(n - n_val, n)
    if method != "stratified":
        raise ValueError(f"method must be 'stratified' or 'last', but got {method!r}")
    classes, counts = torch.unique(y, return_counts=True)
    # Integer arithmetic: the floor and remainder of n_val * count_c / n, exactly.
    take = counts * n_val // n
    remainder = counts * n_val % n
    leftover = n_val - int(take.sum())
    take[torch.argsort(remainder, descending=True, stable=True)[:leftover]] += 1
    g = val_generator(seed)
    val = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        idx = (y == c).nonzero().flatten()
        # One permutation per class even when k is 0, so each class's draw does not depend
        # on the shares of the classes before it.
        val.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().flatten(), val_idx
