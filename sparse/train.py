"""A small training helper that wires the converted student, the frozen dense teacher,
the method's loss and its optimizer, for users who do not want to.

    trainer = sparse.SparseTrainer(model, sparse.CASTConfig(), total_steps=1000, lr=1e-4)
    for x, y in batches:
        loss = trainer.step(x, y)
    dense_24 = trainer.export()
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowprec.convert import convert_model

from .ast import ASTAdamW
from .cast import AdamS, cast_param_groups
from .configs import ASTConfig, CASTConfig, SparseFP4Config, SRSTEConfig
from .distill import distillation_loss
from .export import export


def _default_forward(model, inputs):
    return model(inputs), None


class SparseTrainer:
    """Student = ``model`` converted under ``config``; teacher = a frozen copy of the dense model.

    ``forward(model, inputs) -> (logits, hidden_states or None)``; hidden states are only
    needed for AST's optional hidden-state MSE.
    """

    def __init__(self, model: nn.Module, config, *, total_steps: int, lr: float = 1e-3,
                 weight_decay: float = 0.0, betas=(0.9, 0.999), teacher: Optional[nn.Module] = None,
                 distill: bool = True, forward: Callable = _default_forward,
                 module_filter_fn=None, seed: int = 0, backend: str = "auto"):
        self.config = config
        self.forward = forward
        base = config.sparse if isinstance(config, SparseFP4Config) else config
        self.method = {SRSTEConfig: "srste", ASTConfig: "ast", CASTConfig: "cast"}.get(type(base))
        if self.method is None:
            raise TypeError(f"unknown sparse config {type(config).__name__}")
        self.teacher = None
        if distill and self.method != "srste":
            self.teacher = teacher if teacher is not None else copy.deepcopy(model)
            self.teacher.eval().requires_grad_(False)
        self.model, self.report = convert_model(model, config, module_filter_fn, seed=seed, return_report=True)
        if self.method == "srste":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=betas,
                                               weight_decay=weight_decay)
        elif self.method == "ast":
            self.optimizer = ASTAdamW.for_model(self.model, lr=lr, betas=betas, weight_decay=weight_decay,
                                                lam=base.lam, ramp_steps=base.ramp_steps, backend=backend)
        else:
            self.optimizer = AdamS(cast_param_groups(self.model, weight_decay), lr=lr, betas=betas, lam=base.lam,
                                   total_steps=total_steps, mask_interval=base.mask_interval, backend=backend)
        self.steps_done = 0

    def loss(self, inputs, labels) -> torch.Tensor:
        logits, hidden = self.forward(self.model, inputs)
        if self.teacher is None:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        with torch.no_grad():
            t_logits, t_hidden = self.forward(self.teacher, inputs)
        base = self.config.sparse if isinstance(self.config, SparseFP4Config) else self.config
        if self.method == "ast":
            return distillation_loss(logits, t_logits, labels, base.alpha, base.temperature,
                                     student_hidden=hidden, teacher_hidden=t_hidden,
                                     hidden_weight=base.hidden_weight)
        return distillation_loss(logits, t_logits, labels, 1.0 - base.eta, base.temperature)

    def step(self, inputs, labels) -> float:
        loss = self.loss(inputs, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps_done += 1
        return float(loss.detach())

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def export(self, low_rank=None) -> nn.Module:
        """``sparse.export`` of the trained model (``low_rank``: what becomes of SLoRB's side path)."""
        return export(self.model, self.optimizer if self.method == "cast" else None, low_rank=low_rank)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = int(state["steps_done"])
