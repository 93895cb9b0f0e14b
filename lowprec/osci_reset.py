"""OsciReset (TetraJet-v2): find weights whose FP4 value oscillates between two grid points
and reset them to the midpoint of the two.

A master weight near a rounding boundary of the forward quantizer can flip its quantized value
back and forth from step to step. The forward pass then sees a weight jumping by a whole grid
step while the master weight barely moves. That is a source of noise in low-precision
training which no optimizer state accounts for. ``OsciReset`` watches the quantized forward
weight Q(W) of every converted layer after each optimizer step, over windows of ``window``
steps. Per weight it tracks:

- a: its quantized value at the start of the window, b: the first value different from a
  (NaN while there is none),
- flips: how many steps changed the quantized value,
- third: whether any value other than a and b occurred.

At the end of a window, a weight is **oscillating** when flips >= ``min_flips``, b was seen,
and no third value occurred. Each oscillating master weight is set to (a + b) / 2, the
midpoint of the two grid values (in weight units, under the scales of the last step). The
window state then starts afresh from the current values. A weight drifting steadily across
one boundary changes value once, and across several boundaries it visits a third value, so
neither counts. The state is kept in buffers of each layer (``osci_*``, in ``state_dict()``),
so a resumed run detects exactly what an uninterrupted one does.

The watched quantizer is the fprop weight operand's (round to nearest, no Hadamard
transform). A transformed forward weight has no per-weight grid, and a stochastic one
oscillates by design, so both are refused.

    reset = OsciReset(model, OsciResetConfig(window=16, min_flips=4))
    reset.attach(optimizer)         # or reset.step() after each optimizer.step()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BUFFERS = ("osci_a", "osci_b", "osci_flips", "osci_third", "osci_prev", "osci_count")


@dataclass(frozen=True)
class OsciResetConfig:
    window: int = 16        # optimizer steps per detection window
    min_flips: int = 4      # value changes within a window that make an oscillation

    def __post_init__(self):
        if self.window < 2 or not 1 <= self.min_flips < self.window:
            raise ValueError(f"need window >= 2 and 1 <= min_flips < window, got {self.window}, {self.min_flips}")


def forward_weight_values(layer) -> torch.Tensor:
    """Q(W) as the layer's forward GEMM quantizes it (fp32, W's shape)."""
    from .functional import fake_quantize
    op = layer.recipe.fprop.rhs
    return fake_quantize(layer.weight.detach().float(), op.effective_format, rounding=op.rounding)


def _watchable(layer) -> str:
    """Why OsciReset cannot watch this layer ('' when it can)."""
    r = layer.recipe
    if not r.fprop.rhs.quantized:
        return "its forward weight is not quantized"
    if r.fprop.hadamard:
        return "its forward weight is Hadamard-transformed (no per-weight grid)"
    if r.fprop.rhs.rounding != "nearest":
        return "its forward weight is rounded stochastically (it changes value by design)"
    return ""


class OsciReset:
    """Detects and resets oscillating weights of ``model``'s converted layers (see module doc)."""

    def __init__(self, model: nn.Module, config: OsciResetConfig = OsciResetConfig()):
        from .nn import _QuantGEMM
        self.config = config
        self.layers, self.skipped = [], {}
        for name, m in model.named_modules():
            if isinstance(m, _QuantGEMM):
                why = _watchable(m)
                if why:
                    self.skipped[name] = why
                else:
                    self.layers.append((name, m))
        if not self.layers:
            raise ValueError("no converted layer with a round-to-nearest, untransformed forward weight to watch"
                             + (f" ({self.skipped})" if self.skipped else ""))
        for _, m in self.layers:
            if "osci_prev" not in m._buffers:
                q = forward_weight_values(m)
                m.register_buffer("osci_prev", q)
                m.register_buffer("osci_a", q.clone())
                m.register_buffer("osci_b", torch.full_like(q, float("nan")))
                m.register_buffer("osci_flips", torch.zeros_like(q, dtype=torch.int32))
                m.register_buffer("osci_third", torch.zeros_like(q, dtype=torch.bool))
                m.register_buffer("osci_count", torch.zeros((), dtype=torch.int64, device=q.device))
        self.resets = []          # per window end: {layer: number of weights reset}

    @torch.no_grad()
    def step(self) -> dict:
        """After an optimizer step: update the windows; at a window's end reset the oscillating
        weights. Returns {layer name: weights reset} at a window's end, else {}."""
        done = {}
        for name, m in self.layers:
            q = forward_weight_values(m)
            b = m._buffers
            changed = q != b["osci_prev"]
            b["osci_flips"].add_(changed.to(torch.int32))
            no_b = torch.isnan(b["osci_b"])
            new_b = changed & no_b & (q != b["osci_a"])
            b["osci_b"].copy_(torch.where(new_b, q, b["osci_b"]))
            b["osci_third"].logical_or_(changed & (q != b["osci_a"]) & ~new_b & (q != b["osci_b"]))
            b["osci_prev"].copy_(q)
            b["osci_count"].add_(1)
            if int(b["osci_count"]) < self.config.window:
                continue
            osc = (b["osci_flips"] >= self.config.min_flips) & ~torch.isnan(b["osci_b"]) & ~b["osci_third"]
            n = int(osc.sum())
            if n:
                mid = (b["osci_a"] + b["osci_b"]) * 0.5
                m.weight.copy_(torch.where(osc, mid, m.weight.float()).to(m.weight.dtype))
                q = forward_weight_values(m)
            b["osci_prev"].copy_(q)
            b["osci_a"].copy_(q)
            b["osci_b"].fill_(float("nan"))
            b["osci_flips"].zero_()
            b["osci_third"].zero_()
            b["osci_count"].zero_()
            done[name] = n
        if done:
            self.resets.append(done)
        return done

    def attach(self, optimizer: torch.optim.Optimizer):
        """Call ``step`` after every ``optimizer.step()``; returns the hook handle."""
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step())


__all__ = ["OsciReset", "OsciResetConfig", "forward_weight_values"]
