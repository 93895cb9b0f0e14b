"""Train the tiny LM once under a recipe; returns the loss curve and timings."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..convert import convert_model
from .data import ByteCorpus
from .model import TinyLMConfig
from .sources import build_model, keep_heads_high_precision


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 150
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 15
    weight_decay: float = 0.01
    eval_batches: int = 8
    model: TinyLMConfig = field(default_factory=TinyLMConfig)   # the built-in model's size; seq_len for all
    source: str = "builtin"        # the model: builtin, a transformers config, or package.module:factory


@dataclass
class RunResult:
    recipe: str
    seed: int
    losses: list
    val_loss: float
    final_loss: float
    tokens_per_s: float
    step_time_s: float
    skipped_layers: dict

    def to_dict(self):
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * p))


def evaluate(model, corpus: ByteCorpus, cfg: TrainConfig, seed: int) -> float:
    g = torch.Generator().manual_seed(10_000 + seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(cfg.eval_batches):
            x, y = corpus.batch("val", cfg.batch_size, cfg.model.seq_len, g)
            total += F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    return total / cfg.eval_batches


def run_steps(model, opt, corpus: ByteCorpus, cfg: TrainConfig, generator: torch.Generator, step_fn=None,
              progress=None):
    """``cfg.steps`` steps on training batches under the warmup-cosine lr of ``cfg``.

    ``step_fn(x, y) -> loss`` replaces the plain cross-entropy / backward / ``opt.step()``.
    Returns (losses, seconds spent inside the steps).
    """
    losses, t_train = [], 0.0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = corpus.batch("train", cfg.batch_size, cfg.model.seq_len, generator)
        t0 = time.perf_counter()
        if step_fn is None:
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss = loss.item()
        else:
            loss = step_fn(x, y)
        t_train += time.perf_counter() - t0
        losses.append(loss)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}")
    return losses, t_train


def train_once(recipe, seed: int, cfg: TrainConfig, corpus: Optional[ByteCorpus] = None,
               progress=None, module_filter_fn=keep_heads_high_precision, name: str = None,
               setup=None) -> RunResult:
    """Same init, same batches for every recipe with the same seed.  ``recipe``: a recipe (or
    name), or a per-layer map for convert_model (then ``name`` labels the run)."""
    corpus = corpus or ByteCorpus()
    torch.manual_seed(seed)
    model = build_model(cfg.source, cfg.model)
    model, report = convert_model(model, recipe, module_filter_fn=module_filter_fn, seed=seed, return_report=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if setup is not None:                  # e.g. attach a precision schedule to the optimizer
        setup(model, opt)
    losses, t_train = run_steps(model, opt, corpus, cfg, torch.Generator().manual_seed(seed), progress=progress)
    tail = max(1, cfg.steps // 10)
    name = name or (recipe if isinstance(recipe, str) else recipe.name)
    return RunResult(name, seed, losses, evaluate(model, corpus, cfg, seed), sum(losses[-tail:]) / tail,
                     cfg.steps * cfg.batch_size * cfg.model.seq_len / t_train, t_train / cfg.steps,
                     dict(report.skipped))
