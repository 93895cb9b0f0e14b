"""Full training recipes: a recipe, the layers it keeps in high precision, and its late switch.

NVIDIA's NVFP4 pretraining recipe is more than its quantizers (the ``nvfp4`` preset). It also
keeps the linear layers of a few blocks at both ends of the network in BF16 (about 15% of the
linear layers), and it runs the forward GEMMs in higher precision for the last part of
training. A ``FullRecipe`` holds all three and applies them to a model:

    full = lowprec.full_recipes.get("nvfp4_full")
    model = full.convert(model)                       # BF16 ends and head, nvfp4 elsewhere
    scheduler = full.scheduler(model, total_steps=10_000, optimizer=opt)   # the late switch

Which layers stay in BF16: the repeated blocks are found from the layer names (the first
integer in a name is its block index, as in ``model.layers.3.mlp.up_proj``). The first
``round(n_blocks * high_fraction)`` blocks are kept (at least one). Of those, a share
``first_share`` comes from the start (rounded down) and the rest from the end. Linear layers
outside the numbered blocks (an output head) stay in BF16 too. The late switch runs
``switch_to`` (by default the recipe with a BF16 forward GEMM) for the last
``switch_fraction`` of the optimizer steps, through ``lowprec.schedule``. It is resumable: the
step counters are saved in the model's state_dict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from .recipe import Recipe, get as get_recipe


def block_index(name: str) -> Optional[int]:
    """The index of the repeated block a layer sits in: the first integer part of its name."""
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class FullRecipe:
    name: str
    recipe: Union[Recipe, str]
    high_fraction: float = 0.15       # share of the repeated blocks kept in BF16
    first_share: float = 0.2          # of the kept blocks, the share taken from the start
    switch_fraction: float = 0.18     # last share of the optimizer steps on ``switch_to``
    switch_to: Optional[Union[Recipe, str]] = None   # default: the recipe with a BF16 forward
    osci_reset: Optional[object] = None   # an OsciResetConfig: TetraJet-v2's oscillation reset

    def __post_init__(self):
        object.__setattr__(self, "recipe", get_recipe(self.recipe))
        if self.switch_to is None:
            from .schedule import high_precision_forward
            object.__setattr__(self, "switch_to", high_precision_forward(self.recipe, "bf16"))
        else:
            object.__setattr__(self, "switch_to", get_recipe(self.switch_to))
        if not 0 <= self.high_fraction < 1 or not 0 <= self.first_share <= 1:
            raise ValueError(f"need 0 <= high_fraction < 1 and 0 <= first_share <= 1, got "
                             f"{self.high_fraction}, {self.first_share}")
        if not 0 <= self.switch_fraction < 1:
            raise ValueError(f"switch_fraction is a share of the steps in [0, 1), got {self.switch_fraction}")

    def kept_blocks(self, n_blocks: int) -> List[int]:
        """Indices (0 .. n_blocks - 1) of the blocks kept in BF16."""
        if n_blocks <= 0 or self.high_fraction == 0:
            return []
        n_keep = min(n_blocks, max(1, round(n_blocks * self.high_fraction)))
        first = int(n_keep * self.first_share)
        return sorted(set(range(first)) | set(range(n_blocks - (n_keep - first), n_blocks)))

    def conversion(self, linear_names: List[str]) -> Dict[str, Optional[Recipe]]:
        """The per-layer map for ``convert_model`` over these layer names (the model's linear
        layers, in order): kept blocks and layers outside the blocks -> None, else the recipe."""
        from .plan import fnmatch_escape
        idx = sorted({i for i in (block_index(n) for n in linear_names) if i is not None})
        if not idx:
            raise ValueError("a full recipe needs numbered blocks in the layer names (e.g. 'layers.3.mlp')")
        kept_positions = set(self.kept_blocks(len(idx)))
        kept = {b for pos, b in enumerate(idx) if pos in kept_positions}
        rules: Dict[str, Optional[Recipe]] = {}
        for n in linear_names:
            b = block_index(n)
            if b is None or b in kept:
                rules[fnmatch_escape(n)] = None
        rules["*"] = self.recipe
        return rules

    def convert(self, model, **kwargs):
        """``convert_model`` with this recipe's per-layer map (kwargs pass through)."""
        from .convert import convert_model
        return convert_model(model, self.conversion(linear_layer_names(model)), **kwargs)

    def schedule(self, total_steps: int):
        """The late switch as a PrecisionSchedule (a single phase when switch_fraction is 0)."""
        from .schedule import PrecisionSchedule
        if self.switch_fraction == 0:
            return PrecisionSchedule(((0, self.recipe),))
        return PrecisionSchedule.late_switch(self.recipe, self.switch_to, total_steps, self.switch_fraction)

    def scheduler(self, model, total_steps: int, optimizer=None):
        """A PrecisionScheduler over the model's converted layers (attached to ``optimizer``)."""
        from .schedule import PrecisionScheduler
        s = PrecisionScheduler(model, self.schedule(total_steps))
        if optimizer is not None:
            s.attach(optimizer)
        return s

    def attach(self, model, total_steps: int, optimizer) -> list:
        """Everything that runs with the optimizer: the late switch (a PrecisionScheduler)
        and, when set, OsciReset; returns them."""
        hooks = [self.scheduler(model, total_steps, optimizer)]
        if self.osci_reset is not None:
            from .osci_reset import OsciReset
            reset = OsciReset(model, self.osci_reset)
            reset.attach(optimizer)
            hooks.append(reset)
        return hooks

    def to_dict(self) -> dict:
        import dataclasses
        return {"name": self.name, "recipe": self.recipe.to_dict(), "high_fraction": self.high_fraction,
                "first_share": self.first_share, "switch_fraction": self.switch_fraction,
                "switch_to": self.switch_to.to_dict(),
                "osci_reset": dataclasses.asdict(self.osci_reset) if self.osci_reset is not None else None}

    @classmethod
    def from_dict(cls, d: dict) -> "FullRecipe":
        from .osci_reset import OsciResetConfig
        osci = d.get("osci_reset")
        return cls(d["name"], Recipe.from_dict(d["recipe"]), d["high_fraction"], d["first_share"],
                   d["switch_fraction"], Recipe.from_dict(d["switch_to"]),
                   OsciResetConfig(**osci) if osci is not None else None)


def linear_layer_names(model) -> List[str]:
    """Names of the layers convert_model can convert, in module order."""
    from .nn import QuantLinear
    return [n for n, m in model.named_modules() if n and QuantLinear.accepts(m)]


PRESETS = {
    # NVIDIA's full NVFP4 recipe: the nvfp4 quantizers, BF16 ends, a BF16 forward at the end
    "nvfp4_full": FullRecipe("nvfp4_full", "nvfp4"),
    # the same with Four Over Six block scaling
    "nvfp4_4over6_full": FullRecipe("nvfp4_4over6_full", "nvfp4_4over6"),
}


def _tetrajet2() -> FullRecipe:
    """TetraJet-v2: the nvfp4 quantizers with OutControl (4 input channels of largest |x| per
    layer in bf16) and OsciReset (windows of 16 steps, 4 flips), no BF16 blocks, no late switch."""
    from .osci_reset import OsciResetConfig
    from .recipe import get as recipe
    return FullRecipe("tetrajet2", recipe("nvfp4").replace(outlier_channels=4, name="nvfp4+outcontrol4"), high_fraction=0.0,
                      switch_fraction=0.0, osci_reset=OsciResetConfig(window=16, min_flips=4))


PRESETS["tetrajet2"] = _tetrajet2()


def get(name: Union[str, FullRecipe]) -> FullRecipe:
    if isinstance(name, FullRecipe):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown full recipe {name!r}; presets: {sorted(PRESETS)}") from None


def names() -> List[str]:
    return list(PRESETS)


__all__ = ["FullRecipe", "block_index", "get", "linear_layer_names", "names", "PRESETS"]
