"""Full recipes (lowprec.full_recipes): NVIDIA's full NVFP4 recipe = the nvfp4 quantizers +
BF16 blocks at both ends and the head + a late BF16-forward switch.

What must hold: the kept blocks are the ones the rule names (first share from the start,
the rest from the end, about high_fraction of the blocks); conversion keeps exactly those
layers (and layers outside the blocks) unconverted; the late switch changes the recipe at the
right optimizer step and survives a resume; JSON round-trips; `lowprec simulate` runs it.
"""

import copy

import pytest
import torch
from torch import nn

import lowprec
from lowprec.full_recipe import FullRecipe, block_index, linear_layer_names
from lowprec.nn import QuantLinear
from lowprec.sim.model import TinyLM, TinyLMConfig


@pytest.mark.parametrize("n_blocks,kept", [(1, [0]), (4, [3]), (8, [7]), (10, [8, 9]), (20, [17, 18, 19]),
                                           (40, [0, 35, 36, 37, 38, 39]),
                                           (62, [0, 54, 55, 56, 57, 58, 59, 60, 61])])
def test_kept_blocks(n_blocks, kept):
    """round(15%) of the blocks (at least one); a fifth of them, rounded down, from the start,
    the rest from the end."""
    assert lowprec.full_recipes.get("nvfp4_full").kept_blocks(n_blocks) == kept
    assert FullRecipe("x", "nvfp4", high_fraction=0.0).kept_blocks(n_blocks) == []
    assert FullRecipe("x", "nvfp4", high_fraction=0.5, first_share=0.5).kept_blocks(8) == [0, 1, 6, 7]


class Blocks(nn.Module):
    def __init__(self, n=10, d=32):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)) for _ in range(n))
        self.head = nn.Linear(d, 8)

    def forward(self, x):
        for b in self.layers:
            x = x + b(x)
        return self.head(x)


def test_conversion_keeps_the_ends_and_the_head():
    model = Blocks(10)
    full = lowprec.full_recipes.get("nvfp4_full")
    full.convert(model)
    kept = set(full.kept_blocks(10))
    for name, mod in model.named_modules():
        if name.startswith("layers.") and name.count(".") == 2 and not isinstance(mod, nn.GELU):
            b = block_index(name)
            assert isinstance(mod, QuantLinear) != (b in kept), name
            if isinstance(mod, QuantLinear):
                assert mod.recipe == lowprec.recipes.get("nvfp4")
    assert type(model.head) is nn.Linear
    with pytest.raises(ValueError, match="numbered blocks"):
        full.conversion(["a", "b"])


def test_late_switch_at_the_right_step_and_after_resume():
    torch.manual_seed(0)
    model = Blocks(10)
    full = lowprec.full_recipes.get("nvfp4_full")
    full.convert(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = full.scheduler(model, total_steps=50, optimizer=opt)
    switch = full.schedule(50).phases[1][0]
    assert switch == round(50 * (1 - 0.18))
    layer = model.layers[1][0]
    x = torch.randn(4, 32)
    for step in range(switch):
        assert layer.recipe == full.recipe, step
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert layer.recipe == full.switch_to and layer.recipe.fprop.lhs.format == "bf16"
    # a fresh model resumed from the state_dict switches at the same step
    saved = copy.deepcopy(model.state_dict())
    fresh = Blocks(10)
    full.convert(fresh)
    full.scheduler(fresh, total_steps=50)
    assert fresh.layers[1][0].recipe == full.recipe
    fresh.load_state_dict(saved)
    assert fresh.layers[1][0].recipe == full.switch_to
    assert scheduler.step_count == switch


def test_json_round_trip_and_checks():
    for name in lowprec.full_recipes.names():
        full = lowprec.full_recipes.get(name)
        assert FullRecipe.from_dict(full.to_dict()) == full
    assert lowprec.full_recipes.get("nvfp4_4over6_full").recipe == lowprec.recipes.get("nvfp4_4over6")
    with pytest.raises(ValueError, match="switch_fraction"):
        FullRecipe("x", "nvfp4", switch_fraction=1.0)
    with pytest.raises(ValueError, match="unknown full recipe"):
        lowprec.full_recipes.get("nvfp5_full")


def test_tiny_lm_names_and_simulate(tmp_path):
    """The built-in model's blocks are found, and `lowprec simulate` trains a full recipe
    next to its base recipe (the kept blocks make it a different run)."""
    model = TinyLM(TinyLMConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=16))
    names = linear_layer_names(model)
    assert {block_index(n) for n in names} >= {0, 1}
    from lowprec.cli import main
    out = tmp_path / "sim"
    main(["simulate", "--recipes", "nvfp4", "nvfp4_full", "--steps", "4", "--d-model", "32", "--layers", "2",
          "--heads", "2", "--d-ff", "64", "--seq-len", "16", "--batch-size", "4", "--no-progress",
          "--timing-steps", "1", "--out", str(out)])
    import json
    data = json.loads((out / "simulate.json").read_text())
    runs = {r["recipe"]: r for r in data["runs"]}
    assert set(runs) == {"nvfp4", "nvfp4_full"} and "nvfp4_full" in data["config"]["full_recipes"]
    assert runs["nvfp4_full"]["losses"] != runs["nvfp4"]["losses"]
    assert any("keeps it in high precision" in why for why in runs["nvfp4_full"]["skipped_layers"].values())


def test_tetrajet2_attaches_osci_reset_and_outcontrol():
    """tetrajet2: nvfp4 with OutControl on every converted layer (no BF16 blocks), OsciReset
    attached to the optimizer, and a single schedule phase."""
    from lowprec.osci_reset import OsciReset
    full = lowprec.full_recipes.get("tetrajet2")
    model = Blocks(4)
    full.convert(model)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 8 and all(m.recipe.outlier_channels == 4 for m in layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    hooks = full.attach(model, total_steps=40, optimizer=opt)
    reset = next(h for h in hooks if isinstance(h, OsciReset))
    x = torch.randn(8, 32)
    for _ in range(16):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert len(reset.resets) == 1 and set(reset.resets[0]) == {n for n, m in model.named_modules()
                                                               if isinstance(m, QuantLinear)}
    assert len(full.schedule(40).phases) == 1
