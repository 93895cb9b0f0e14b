"""Shared by the sparse tests: a SparseTrainer on the tiny LM, a few steps on random tokens."""

import torch

from lowprec import sparse
from lowprec.sim.model import TinyLM, TinyLMConfig

CFG = TinyLMConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=16)


def train_tiny(config, steps=5):
    """(trainer, losses) after ``steps`` steps of ``config`` on the tiny LM (head left dense)."""
    torch.manual_seed(0)
    tr = sparse.SparseTrainer(TinyLM(CFG), config, total_steps=steps, lr=3e-3,
                              module_filter_fn=lambda m, n: n != "head")
    g = torch.Generator().manual_seed(1)
    losses = [tr.step(torch.randint(0, 256, (4, 16), generator=g), torch.randint(0, 256, (4, 16), generator=g))
              for _ in range(steps)]
    return tr, losses
