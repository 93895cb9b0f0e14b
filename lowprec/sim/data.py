"""Batches of byte windows from the built-in corpus, reproducible from a seed."""

from __future__ import annotations

import torch

from .corpus import byte_tokens, stdlib_docstrings


class ByteCorpus:
    """Train/validation split (last ``val_fraction`` of the bytes) of the stdlib docstrings."""

    def __init__(self, val_fraction: float = 0.1):
        tokens = byte_tokens(stdlib_docstrings())
        n_val = int(len(tokens) * val_fraction)
        self.train, self.val = tokens[:-n_val], tokens[-n_val:]
        self.description = f"{len(self.train)} train / {len(self.val)} val bytes of Python stdlib docstrings"

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator):
        data = self.train if split == "train" else self.val
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(seq_len + 1)
        w = data[idx]
        return w[:, :-1], w[:, 1:]
