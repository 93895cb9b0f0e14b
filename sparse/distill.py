"""Distillation losses from a frozen dense teacher.

    L = w_ce · CE(z_s, y) + (1 − w_ce) · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))
        [+ w_h · Σ_l MSE(h_s^l, h_t^l)]

AST: w_ce = α = 1/3, T = 2, optional hidden-state MSE.  CAST: KL weight η = 1/3
(w_ce = 1 − η), T = 1, logits only.  KL and CE average over tokens.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of KL(softmax(z_t/T) ‖ softmax(z_s/T))."""
    v = student_logits.shape[-1]
    log_ps = F.log_softmax(student_logits.reshape(-1, v).float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.reshape(-1, v).float().detach() / temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      ce_weight: float, temperature: float,
                      student_hidden: Optional[Sequence[torch.Tensor]] = None,
                      teacher_hidden: Optional[Sequence[torch.Tensor]] = None,
                      hidden_weight: float = 0.0) -> torch.Tensor:
    if not 0.0 <= ce_weight <= 1.0 or temperature <= 0:
        raise ValueError(f"need 0 <= ce_weight <= 1 and temperature > 0, got {ce_weight}, {temperature}")
    v = student_logits.shape[-1]
    ce = F.cross_entropy(student_logits.reshape(-1, v).float(), labels.reshape(-1))
    loss = ce_weight * ce
    if ce_weight < 1.0:
        loss = loss + (1.0 - ce_weight) * temperature ** 2 * kl_teacher_student(student_logits, teacher_logits,
                                                                                   temperature)
    if hidden_weight:
        if student_hidden is None or teacher_hidden is None or len(student_hidden) != len(teacher_hidden):
            raise ValueError("the hidden-state term needs matching lists of student and teacher hidden states")
        loss = loss + hidden_weight * sum(F.mse_loss(s.float(), t.float().detach())
                                          for s, t in zip(student_hidden, teacher_hidden))
    return loss


def ast_distillation_loss(student_logits, teacher_logits, labels, alpha: float = 1 / 3, temperature: float = 2.0,
                          **hidden) -> torch.Tensor:
    """α CE + (1 − α) T² KL, with AST's defaults α = 1/3, T = 2."""
    return distillation_loss(student_logits, teacher_logits, labels, alpha, temperature, **hidden)


def cast_distillation_loss(student_logits, teacher_logits, labels, eta: float = 1 / 3,
                           temperature: float = 1.0) -> torch.Tensor:
    """η KL(P_teacher ‖ P_student) + (1 − η) CE, with CAST's defaults η = 1/3, T = 1."""
    return distillation_loss(student_logits, teacher_logits, labels, 1.0 - eta, temperature)
