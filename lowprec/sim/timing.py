"""Honest step times for recipe comparisons: every recipe's model takes its timed steps in
turn (round robin), after warm-up, and each recipe reports the median.  A slow spell of a
shared machine then lands on all recipes instead of on whichever happened to be training,
which is what made one-pass timings (the mean over a training run) unreliable."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..convert import convert_model
from .sources import build_model, keep_heads_high_precision


class StepTimer:
    """One recipe's converted model, optimizer and batch stream; ``step()`` times one step."""

    def __init__(self, recipe, corpus, cfg, batch, source: str = "builtin"):
        torch.manual_seed(0)
        self.model = convert_model(build_model(source, cfg), recipe, module_filter_fn=keep_heads_high_precision)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.g = torch.Generator().manual_seed(0)
        self.corpus, self.cfg, self.batch = corpus, cfg, batch

    def step(self) -> float:
        x, y = self.corpus.batch("train", self.batch, self.cfg.seq_len, self.g)
        t0 = time.perf_counter()
        loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def step_times(recipes: dict, steps, corpus, cfg, batch, warmup: int = 2, source: str = "builtin") -> dict:
    """{name: median seconds per training step}, the recipes stepping in turn."""
    timers = {name: StepTimer(r, corpus, cfg, batch, source) for name, r in recipes.items()}
    times = {name: [] for name in recipes}
    for i in range(steps + warmup):
        for name, t in timers.items():
            dt = t.step()
            if i >= warmup:
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}
