"""GaLore optimizers (docs/galore.md), following torch.optim conventions.

Param groups with a ``rank`` key are projected; the others (and any non-2-D parameter in
such a group) take the plain update.  Group keys: ``rank``, ``update_proj_gap``, ``scale``,
``proj_type``, ``refresh`` ("svd" | "randomized"), ``oversample``, ``power_iters``,
``lazy_threshold``, ``moment_policy`` ("keep" | "reproject" | "reset": what the moments do
when the projector changes), ``state_format`` (moments in "fp32" or a lowprec format,
stochastically rounded) and ``proj_format`` (projector stored in a lowprec format, nearest).

GaLoreAdamW, per projected W (m × n) with gradient G (already all-reduced under DDP):
    R = project(G);   M ← β1 M + (1−β1) R;   V ← β2 V + (1−β2) R²
    N = (M / (1−β1^t)) / (sqrt(V / (1−β2^t)) + ε)
    W ← W (1 − lr·wd) − lr · α · project_back(N)
(the last line is the fused update of ``lowprec.galore.fused``; the full-rank update is
never materialized on the fast backends).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from . import moments
from . import state as lowbit
from .fused import galore_project_q, galore_update_, galore_update_q_
from .projector import GaLoreProjector, ProjectorConfig
from ..optim_state import ExactStateLoad
from ..sharding import gather_state, is_dtensor, local, local_rows, row_shard_only, shard_state

MOMENT_POLICIES = ("keep", "reproject", "reset")
PROJ_KEYS = ("rank", "update_proj_gap", "scale", "proj_type", "refresh", "oversample", "power_iters",
             "lazy_threshold")


def _proj_config(group) -> ProjectorConfig:
    return ProjectorConfig(**{k: group[k] for k in PROJ_KEYS})


class _GaLoreBase(ExactStateLoad, torch.optim.Optimizer):
    def __init__(self, params, defaults: dict, seed: int = 0, backend: str = "auto"):
        gal = dict(update_proj_gap=200, scale=0.25, proj_type="std", refresh="svd", oversample=8, power_iters=2,
                   lazy_threshold=None, moment_policy="keep", state_format="fp32", proj_format=None)
        unknown = sorted(set(defaults) - set(gal) - set(self.OWN_KEYS))
        if unknown:   # like any Python function (and galore-torch): a misspelled option is an error
            raise TypeError(f"{type(self).__name__} got unexpected options {unknown}; it takes "
                            f"{sorted(set(gal) | set(self.OWN_KEYS))}")
        for k, v in gal.items():
            defaults.setdefault(k, v)
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            extra = sorted(set(group) - set(defaults) - {"params", "name"})
            if extra:
                raise KeyError(f"param group {i} has unknown keys {extra}; {type(self).__name__} takes "
                               f"{sorted(defaults)}")
        self.seed, self.backend = int(seed), backend
        self._index = {}
        for group in self.param_groups:
            if group.get("rank") is not None:
                _proj_config(group)                        # validates
                if group["moment_policy"] not in MOMENT_POLICIES:
                    raise ValueError(f"moment_policy must be one of {MOMENT_POLICIES}")
                lowbit.check_state_format(group["state_format"])
                if group["proj_format"] is not None:
                    lowbit.check_state_format(group["proj_format"])
            for p in group["params"]:
                self._index[p] = len(self._index)
        self._projectors = {}

    # -- projector cache over tensor-only state ---------------------------------------------
    def _projector(self, p, group, state) -> GaLoreProjector:
        """The cached projector.  With ``proj_format`` only the microscaled P stays resident:
        left / right projections read it through the ``galore_*_q`` ops, ``full`` dequantizes."""
        proj = self._projectors.get(p)
        if proj is None:
            proj = GaLoreProjector(_proj_config(group), p.shape, seed=self.seed * 65_537 + self._index[p])
            if "projector" in state:
                saved = dict(state["projector"])
                if saved.get("p_stored") is not None and proj.side == "full":
                    saved["p"] = self._stored_p(state, group).dequantize(torch.float32)
                proj.load_state_dict(saved)
            self._projectors[p] = proj
        return proj

    @staticmethod
    def _stored_p(state, group):
        """The microscaled P of ``state`` as a QuantizedTensor, or None."""
        saved = state.get("projector")
        if group["proj_format"] is None or saved is None or saved.get("p_stored") is None:
            return None
        return lowbit.as_quantized(saved["p_stored"], group["proj_format"], saved["p_shape"].tolist())

    def _save_projector(self, proj: GaLoreProjector, group, state, refreshed: bool) -> None:
        """Projector state into ``state``; with ``proj_format`` P is stored microscaled (quantized
        once per refresh, round to nearest) and every later use computes with the stored values."""
        fmt = group["proj_format"]
        stored = None
        if fmt is not None and not proj.identity:
            if refreshed:
                stored, _ = lowbit.store(proj.p, fmt, rounding="nearest", backend=self.backend)
                proj.p = lowbit.load(stored, fmt, proj.p.shape)
            else:
                stored = state["projector"]["p_stored"]
        sd = proj.state_dict()
        if stored is not None:
            shape = proj.p.shape if proj.p is not None else state["projector"]["p_shape"].tolist()
            sd.update(p=None, p_stored=stored, p_shape=torch.tensor(list(shape)))
        state["projector"] = sd

    def _project_grad(self, p, g, group, state, step):
        """Refresh P when due, then R = project(G).  -> (projector, R, refreshed, old (P, P_r),
        stored microscaled P or None)."""
        proj = self._projector(p, group, state)
        stored_p = self._stored_p(state, group) if proj.side != "full" else None
        if stored_p is not None and proj.refresh_due(step):
            proj.p = stored_p.dequantize(torch.float32)        # the old P, for lazy refresh / reproject
        old = (proj.p, proj.p_right)
        refreshed = proj.maybe_refresh(g, step)
        self._save_projector(proj, group, state, refreshed)
        stored_p = self._stored_p(state, group) if proj.side != "full" else None
        r = galore_project_q(g, stored_p, proj.side, self.backend) if stored_p is not None else proj.project(g)
        return proj, r, refreshed, old, stored_p

    def _init_state(self, p, state) -> None:
        """First-step state besides the step counter (subclasses add theirs)."""

    def _begin(self, p, group):
        """Shared start of a step: state (created on the first step), then for projected
        parameters the refresh and R = project(G).  -> (state, R (G when plain), projector
        or None, refreshed, old (P, P_r), stored microscaled P or None)."""
        state = self.state[p]
        g = p.grad.float()
        if not state:
            state["step"] = torch.zeros((), dtype=torch.int64)
            self._init_state(p, state)
        if not self.is_projected(p, group):
            return state, g, None, False, (None, None), None
        proj, r, refreshed, old, stored_p = self._project_grad(p, g, group, state, int(state["step"]))
        return state, r, proj, refreshed, old, stored_p

    def _release_projector(self, p, proj, group) -> None:
        """After a step with ``proj_format``: drop the fp32 P (only the stored one stays)."""
        if proj is None or group["proj_format"] is None or proj.identity:
            return
        if proj.side == "full":
            self._projectors.pop(p, None)
        else:
            proj.p = None

    def _update_weight(self, p, u, group, proj, stored_p) -> None:
        """W ← W (1 − lr·wd) − lr·α·project_back(U) (plain: − lr·U) on the fp32 master."""
        lr, wd = group["lr"], group["weight_decay"]
        master = self.state[p].get("master")
        if master is None and p.dtype != torch.float32:
            master = self.state[p]["master"] = p.detach().float().clone()
        w = master if master is not None else p
        c_wd = 1.0 - lr * wd
        if proj is None:
            w.mul_(c_wd).add_(u, alpha=-lr)
        elif stored_p is not None:
            galore_update_q_(w, stored_p, u, proj.side, lr * group["scale"], c_wd, backend=self.backend)
        else:
            galore_update_(w, proj, u, lr * group["scale"], c_wd, backend=self.backend)
        if master is not None:
            p.copy_(master)

    @torch.no_grad()
    def step(self, closure=None):
        """Every parameter with a gradient through ``step_param`` (also called by layer-wise hooks)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if is_dtensor(p):
                        self._step_sharded(p, group)
                    else:
                        self.step_param(p, group)
        return loss

    def _step_sharded(self, p, group) -> None:
        """An FSDP2-sharded parameter (rows of W on each rank).  The projector needs the whole
        gradient matrix, so G is all-gathered; the state (projector, projected moments, fp32
        master, Adafactor factors) is stored sharded by rows (``sharding.shard_state``) and
        all-gathered for the step.  Every rank then runs the unsharded step on the same inputs
        with the same seeds, hence the same result, and keeps its own rows of W and of the new
        state.  W itself is not gathered: the step reads W only elementwise (decay, update), so
        the other ranks' rows are left zero and discarded.  Persistent state per rank is
        1/world of the replicated state; the transient peak is one parameter's full G and state."""
        row_shard_only(p)
        full = torch.zeros(p.shape, dtype=p.dtype, device=local(p).device)
        local_rows(full, p).copy_(local(p).detach())
        full.grad = p.grad.full_tensor()
        if p in self.state:
            self.state[full] = gather_state(self.state.pop(p))
        for table in (self._index, self._projectors):
            if p in table:
                table[full] = table.pop(p)
        try:
            self.step_param(full, group)
        finally:
            self._projectors.pop(full, None)         # rebuilt from the state: no full-size copy stays
            self._index[p] = self._index.pop(full)
            if full in self.state:
                self.state[p] = shard_state(self.state.pop(full), p)
        local(p).copy_(local_rows(full, p))

    def step_param(self, p: torch.Tensor, group: dict) -> None:
        raise NotImplementedError

    def is_projected(self, p, group) -> bool:
        return group.get("rank") is not None and p.dim() == 2

    # -- moments -----------------------------------------------------------------------------
    def _moment(self, state, name, group, shape, sqrt=False) -> torch.Tensor:
        return lowbit.load(state[name], group["state_format"], shape, sqrt=sqrt)

    def _store_moment(self, state, name, x, group, sqrt=False) -> None:
        stored, used = lowbit.store(x, group["state_format"], int(state["sr_seed"]), int(state["sr_offset"]), sqrt)
        state[name] = stored
        state["sr_offset"] += used

    def _after_state_load(self) -> None:
        self._projectors = {}       # rebuilt from the loaded state on the next step

    def state_bytes(self) -> int:
        return optimizer_state_bytes(self)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes this process holds in an optimizer's state tensors (nested dicts included:
    moments, projectors, quantized codes and scales, master copies), for any torch optimizer;
    a DTensor counts its local shard."""
    return _tensor_bytes(dict(optimizer.state))


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        obj = local(obj)            # a sharded (DTensor) state entry counts this rank's shard
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class GaLoreAdamW(_GaLoreBase):
    OWN_KEYS = ("lr", "betas", "eps", "weight_decay", "rank")
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 rank: Optional[int] = None, seed: int = 0, backend: str = "auto", **galore):
        if lr < 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid lr={lr}, eps={eps} or betas={betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, rank=rank, **galore)
        super().__init__(params, defaults, seed=seed, backend=backend)

    def _init_state(self, p, state) -> None:
        state["sr_seed"] = torch.tensor((self.seed * 1_000_003 + self._index[p]) & 0x7FFFFFFF)
        state["sr_offset"] = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def step_param(self, p: torch.Tensor, group: dict) -> None:
        """One update of ``p`` (used by ``step`` and by layer-wise hooks)."""
        if p.grad.is_sparse:
            raise RuntimeError("GaLoreAdamW does not support sparse gradients")
        state, r, proj, refreshed, old, stored_p = self._begin(p, group)
        fmt = group["state_format"] if proj is not None else "fp32"
        if refreshed and "exp_avg" in state and old[0] is not None:
            self._apply_moment_policy(state, group, proj, old, r.shape)
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = moments.zeros(r.shape, fmt, r.device)
        state["step"] += 1
        sc = moments.MomentScalars.make(int(state["step"]), group["betas"], group["eps"])
        n, state["exp_avg"], state["exp_avg_sq"], used = moments.adam_moments(
            r, state["exp_avg"], state["exp_avg_sq"], fmt, sc, int(state["sr_seed"]), int(state["sr_offset"]),
            backend=self.backend)
        if used:
            state["sr_offset"] += used
        self._update_weight(p, n, group, proj, stored_p)
        self._release_projector(p, proj, group)

    def _apply_moment_policy(self, state, group, proj, old, shape):
        policy = group["moment_policy"]
        if policy == "keep" or proj.identity:
            return
        if policy == "reset":
            del state["exp_avg"], state["exp_avg_sq"]
            return
        # reproject: M_new = project(project_back_old(M)); V likewise, clamped at 0
        old_proj = copy.copy(proj)
        old_proj.p, old_proj.p_right = old
        for name, sq in (("exp_avg", False), ("exp_avg_sq", True)):
            fmt_sqrt = sq and group["state_format"] != "fp32"
            x = self._moment(state, name, group, shape, sqrt=fmt_sqrt)
            x = proj.project(old_proj.project_back(x))
            if sq:
                x = x.clamp_min(0)
            self._store_moment(state, name, x, group, sqrt=fmt_sqrt)


class GaLoreAdafactor(_GaLoreBase):
    """Adafactor on the projected gradient (factored second moment for 2-D states):
        ρ_t = 1 − t^(−0.8);  Vr ← ρ Vr + (1−ρ) mean_col(R² + ε1);  Vc ← ρ Vc + (1−ρ) mean_row(R² + ε1)
        V̂ = Vr Vc^T / mean(Vr);  U = R / sqrt(V̂);  U ← U / max(1, RMS(U) / d)
        [M ← β1 M + (1−β1) U;  U = M]          (when beta1 is given)
        W ← W (1 − lr·wd) − lr · α · project_back(U)
    """

    OWN_KEYS = ("lr", "beta1", "eps1", "clip_threshold", "decay_rate", "weight_decay", "rank")

    def __init__(self, params, lr: float = 1e-3, beta1: Optional[float] = None, eps1: float = 1e-30,
                 clip_threshold: float = 1.0, decay_rate: float = -0.8, weight_decay: float = 0.0,
                 rank: Optional[int] = None, seed: int = 0, backend: str = "auto", **galore):
        defaults = dict(lr=lr, beta1=beta1, eps1=eps1, clip_threshold=clip_threshold, decay_rate=decay_rate,
                        weight_decay=weight_decay, rank=rank, **galore)
        super().__init__(params, defaults, seed=seed, backend=backend)

    @torch.no_grad()
    def step_param(self, p, group):
        state, r, proj, _, _, stored_p = self._begin(p, group)
        state["step"] += 1
        t = int(state["step"])
        rho = 1.0 - t ** group["decay_rate"]
        sq = r * r + group["eps1"]
        if r.dim() >= 2:
            if "row" not in state:
                state["row"] = torch.zeros(r.shape[:-1], dtype=torch.float32, device=r.device)
                state["col"] = torch.zeros(r.shape[:-2] + r.shape[-1:], dtype=torch.float32, device=r.device)
            state["row"].mul_(rho).add_(sq.mean(-1), alpha=1 - rho)
            state["col"].mul_(rho).add_(sq.mean(-2), alpha=1 - rho)
            row, col = state["row"], state["col"]
            v_hat = (row / row.mean(-1, keepdim=True)).unsqueeze(-1) * col.unsqueeze(-2)
        else:
            if "v" not in state:
                state["v"] = torch.zeros_like(r)
            state["v"].mul_(rho).add_(sq, alpha=1 - rho)
            v_hat = state["v"]
        u = r / v_hat.sqrt()
        u.div_(max(1.0, float(u.pow(2).mean().sqrt()) / group["clip_threshold"]))
        if group["beta1"] is not None:
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(u)
            state["exp_avg"].mul_(group["beta1"]).add_(u, alpha=1 - group["beta1"])
            u = state["exp_avg"]
        self._update_weight(p, u, group, proj, stored_p)
        self._release_projector(p, proj, group)


def galore_param_groups(model: torch.nn.Module, rank: int, exclude=("embed", "head", "lm_head", "norm", "ln"),
                        **galore) -> list:
    """Two groups: 2-D weights of linear layers whose names contain none of ``exclude``
    are projected; everything else (embeddings, norms, the head, biases) is plain."""
    proj, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.split(".")
        if p.dim() == 2 and not any(e in part for part in leaf for e in exclude):
            proj.append(p)
        else:
            plain.append(p)
    return [{"params": proj, "rank": rank, **galore}, {"params": plain}]


def optimizer_state_formula(model_or_params, rank: int, proj_type: str = "std") -> dict:
    """Predicted fp32 numbers per projected matrix: 2·m·r or 2·r·n moments plus the projector."""
    from .projector import resolve_side
    out = {}
    for i, p in enumerate(model_or_params):
        m, n = p.shape
        side = resolve_side(proj_type, (m, n))
        r = min(rank, m if side == "left" else n)
        out[i] = (2 * r * n + m * r) if side == "left" else (2 * m * r + r * n)
    return out


__all__ = ["GaLoreAdamW", "GaLoreAdafactor", "galore_param_groups", "optimizer_state_formula",
           "optimizer_state_bytes"]
