"""`lowprec sweep`: the design-space knobs build the recipes they say, the cost model orders
techniques as its docstring states, the Pareto front and the significance note are right on
constructed rows, and a sweep runs in worker processes, caches each run and resumes."""

import argparse
import json

import pytest

import lowprec
from lowprec.sim import space
from lowprec.sim.cost import Machine, layer_time, relative_cost
from lowprec.sim.sweep import pareto_front, reference_layers, significance, sweep
from lowprec.sim.model import TinyLMConfig
from lowprec.sim.train import TrainConfig


def test_knobs_build_the_recipes_they_name():
    r = space.build_recipe({})
    assert r.fprop.rhs.format.block_2d and not r.fprop.lhs.format.block_2d      # defaults: W tiles
    assert r.wgrad.hadamard == 16 and r.fprop.hadamard == 0 and r.dgrad.lhs.stochastic and not r.dgrad.rhs.stochastic
    assert not space.build_recipe({"weight_tiles": False}).fprop.rhs.format.block_2d
    assert space.build_recipe({"hadamard_gemms": "all"}).fprop.hadamard == 16
    assert space.build_recipe({"hadamard": 0}).wgrad.hadamard == 0
    assert not space.build_recipe({"hadamard_random": False}).wgrad.hadamard_random
    b = space.build_recipe({"sr": "backward"})
    assert b.dgrad.rhs.stochastic and b.wgrad.rhs.stochastic
    n = space.build_recipe({"sr": "none"})
    assert not any(getattr(getattr(n, g), s).stochastic for g in ("fprop", "dgrad", "wgrad") for s in ("lhs", "rhs"))
    m = space.build_recipe({"format": "mxfp4", "block_size": 16})
    assert m.fprop.lhs.format.scale.name == "e8m0" and m.fprop.lhs.format.block_size == 16
    assert not space.build_recipe({"tensor_scale": False}).fprop.lhs.format.tensor_scale
    with pytest.raises(ValueError, match="tensor scale needs minifloat"):
        space.build_recipe({"format": "mxfp4", "tensor_scale": True})
    assert space.build_recipe({"format": "ue5m3"}).fprop.lhs.format.scale.name == "ue5m3"
    assert space.build_recipe({"estimator": "clipped_ste"}).estimator == "clipped_ste"
    assert space.build_recipe({"format": "bf16", "hadamard": 32}) == lowprec.recipes.get("bf16")
    with pytest.raises(ValueError, match="unknown knobs"):
        space.normalize({"formats": "nvfp4"})
    with pytest.raises(ValueError, match="sr must be"):
        space.normalize({"sr": "always"})
    assert space.label({"hadamard": 32, "sr": "none"}) == "nvfp4 b16 ts W2d H32r@wgrad SR:none"


def test_knobs_of_the_newer_techniques():
    """four_over_six on the round-to-nearest operands, MS-EDEN for the unbiased ones (never
    both on one operand), OutControl on the recipe; invalid combinations raise."""
    r = space.build_recipe({"four_over_six": "mse", "unbiased": "ms_eden", "sr": "grads", "outlier_channels": 4})
    assert r.fprop.lhs.format.four_over_six == "mse" and r.fprop.rhs.format.four_over_six == "mse"
    assert r.dgrad.lhs.rounding == "ms_eden" and r.dgrad.lhs.format.four_over_six == "off"
    assert r.dgrad.rhs.rounding == "nearest" and r.dgrad.rhs.format.four_over_six == "mse"
    assert r.outlier_channels == 4
    assert space.label({"four_over_six": "mse", "unbiased": "ms_eden", "outlier_channels": 4}).endswith(
        "4/6:mse MS-EDEN out4xbf16")
    with pytest.raises(ValueError, match="minifloat block scale"):
        space.build_recipe({"format": "mxfp4", "four_over_six": "mse"})
    with pytest.raises(ValueError, match="minifloat scales"):
        space.build_recipe({"format": "mxfp4", "unbiased": "ms_eden"})


def test_recorded_sweep_keeps_its_cache_keys():
    """A run's cache key hashes its recipe's JSON. The knobs added later leave that JSON
    unchanged for every point of the recorded LLaMA-256 sweep (no new keys at their
    defaults), so a user's cache of such runs is still found instead of re-run or mixed up."""
    import json
    from pathlib import Path
    recorded = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "sweep_llama256" / "sweep.json"
    points = [r["point"] for r in json.loads(recorded.read_text())["runs"]]
    assert len(points) > 50
    for point in points:
        text = space.build_recipe(point).to_json()
        assert "four_over_six" not in text and "outlier_channels" not in text, point
    context = {"train": {}, "seed": 0}
    assert space.point_key(points[0], context) == space.point_key(
        {**points[0], "four_over_six": "off", "unbiased": "sr", "outlier_channels": 0}, context)


def test_grid_expansion_keys_and_layer_rule():
    pts = space.expand({"format": ["bf16", "nvfp4"], "hadamard": [0, 16]})
    assert [space.label(p) for p in pts] == ["bf16", "nvfp4 b16 ts W2d noH SR:grads",
                                             "nvfp4 b16 ts W2d H16r@wgrad SR:grads"]       # bf16 once
    assert len(space.expand({"hadamard": [0, 16, 32], "sr": ["none", "grads"]}, n_random=4)) == 4
    assert space.parse_grid_flags(["hadamard=0,16", "weight_tiles=false", "block_size=none"]) == \
        {"hadamard": [0, 16], "weight_tiles": [False], "block_size": [None]}
    ctx = {"train": {"steps": 10}, "seed": 0}
    assert space.point_key({}, ctx) == space.point_key(space.normalize({}), ctx)
    assert space.point_key({}, ctx) != space.point_key({}, {**ctx, "seed": 1})
    assert space.point_key({}, ctx) != space.point_key({}, {"train": {"steps": 11}, "seed": 0})
    assert space.point_key({}, ctx) != space.point_key({"hadamard": 32}, ctx)
    names = ["blocks.0.qkv", "blocks.0.ff1", "blocks.1.qkv", "blocks.2.ff2"]
    keep = space.high_precision_rule({"high_layers": "first_last"}, names)
    assert [keep(n) for n in names] == [True, True, False, True]
    conv = space.conversion({"high_layers": "first_last"}, names)
    assert conv["blocks.0.qkv"] is None and conv["*"].name.startswith("nvfp4")
    assert space.block_index("model.layers.12.mlp.up_proj") == 12 and space.block_index("head") is None


def test_cost_model_orders_the_techniques():
    layers, t = reference_layers(), 8192
    cost = {name: relative_cost(layers, t, lambda n, r=lowprec.recipes.get(name): r)
            for name in ("bf16", "mxfp8", "mxfp4", "nvfp4", "ue5m3")}
    assert cost["bf16"] == pytest.approx(1.0)
    assert cost["mxfp4"] < cost["nvfp4"] < cost["mxfp8"] < 1.0       # tensor scale and SR cost; 8-bit GEMMs more
    base = space.build_recipe({"sr": "none", "hadamard": 0})

    def c(**knobs):
        return relative_cost(layers, t, lambda n: space.build_recipe({"sr": "none", "hadamard": 0, **knobs}))
    assert c(sr="grads") > c() and c(sr="backward") > c(sr="grads")
    assert c(hadamard=16) > c() and c(hadamard=128) > c(hadamard=16)
    assert c(hadamard=16, hadamard_gemms="all") > c(hadamard=16)
    assert c(tensor_scale=False) < c()
    assert c(estimator="clipped_ste") > c()
    assert c(weight_tiles=False) > c()                                 # tiles share fprop's W codes with dgrad
    assert layer_time(None, t, 4096, 4096) == pytest.approx(3 * 2 * t * 4096 * 4096 / Machine().bf16_flops)
    assert layer_time(base, t, 4096, 4096) < layer_time(None, t, 4096, 4096)


def test_pareto_front_and_significance():
    rows = [{"label": "a", "cost": 1.0, "gap": 0.0}, {"label": "b", "cost": 0.5, "gap": 0.1},
            {"label": "c", "cost": 0.6, "gap": 0.2}, {"label": "d", "cost": 0.4, "gap": 0.3},
            {"label": "e", "cost": 0.5, "gap": 0.1}]
    assert pareto_front(rows) == ["a", "b", "d", "e"]                    # c is beaten by b; b and e tie
    assert significance([0.1]) == "one seed: no test"
    assert significance([0.10, 0.11, 0.12]) == "worse than bf16"
    assert significance([-0.10, -0.11, -0.12]) == "better than bf16"
    assert significance([0.1, -0.1, 0.02]) == "within noise of bf16"


@pytest.mark.slow
def test_sweep_runs_in_workers_caches_and_resumes(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=4, model=TinyLMConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32))
    points = [{"hadamard": 0}, {"hadamard": 16, "high_layers": "first_last"}, {"format": "mxfp4", "tensor_scale": True}]
    out = tmp_path / "sweep"
    first = sweep(points, [0, 1], cfg, out, workers=2, progress=False)
    assert first["ran"] == 6 and first["cached"] == 0                     # bf16 added as the baseline
    assert len(first["invalid"]) == 1 and "minifloat" in first["invalid"][0][1]     # reported, not run
    labels = {r["label"] for r in first["rows"]}
    assert labels == {"bf16", "nvfp4 b16 ts W2d noH SR:grads", "nvfp4 b16 ts W2d H16r@wgrad SR:grads first_last"}
    again = sweep(points, [0, 1], cfg, out, workers=2, progress=False)
    assert again["ran"] == 0 and again["cached"] == 6
    assert [r["gap"] for r in again["rows"]] == [r["gap"] for r in first["rows"]]
    cache = sorted((out / "cache").glob("*.json"))
    cache[0].unlink()                                                      # an interrupted sweep
    resumed = sweep(points, [0, 1], cfg, out, workers=1, progress=False)
    assert resumed["ran"] == 1 and resumed["cached"] == 5
    assert [r["gap"] for r in resumed["rows"]] == [r["gap"] for r in first["rows"]]   # deterministic re-run
    longer = sweep(points, [0, 1], TrainConfig(**{**cfg.__dict__, "steps": 4}), out, progress=False)
    assert longer["ran"] == 6                                              # a changed setting is a new run
    row = next(r for r in first["rows"] if "first_last" in r["label"])
    plain = next(r for r in first["rows"] if r["label"] == "nvfp4 b16 ts W2d noH SR:grads")
    assert row["cost"] > plain["cost"]                                     # its kept layers cost bf16 time
    rec = next(r for r in first["records"] if "first_last" in r["label"])
    assert rec["skipped"]                                                  # the first and last blocks stayed nn.Linear


@pytest.mark.slow
def test_sweep_cli_with_a_spec_file(tmp_path):
    from lowprec.sim import sweep as sweep_cli
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"grid": {"format": ["nvfp4", "mxfp4"]}, "fixed": {"hadamard": 0}, "seeds": [0],
                                "steps": 2, "batch_size": 4, "seq_len": 32, "d_model": 32, "layers": 1}))
    p = argparse.ArgumentParser()
    sweep_cli.add_arguments(p)
    args = p.parse_args(["--spec", str(spec), "--out", str(tmp_path / "o"), "--no-progress"])
    result = sweep_cli.run(args)
    assert len(result["rows"]) == 3
    saved = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert set(saved["pareto"]) <= {r["label"] for r in saved["rows"]} and saved["settings"]["steps"] == 2
    assert (tmp_path / "o" / "sweep_pareto.png").exists()
    with pytest.raises(ValueError, match="unknown keys"):
        spec.write_text(json.dumps({"grids": {}}))
        sweep_cli.run(args)


def test_late_switch_knob_schedules_a_bf16_forward():
    import torch
    from torch import nn
    ctx = {"train": {"steps": 10}, "seed": 0}
    assert space.point_key({"late_switch": 0}, ctx) == space.point_key({}, ctx)   # no schedule: the same run
    assert space.point_key({"late_switch": 0.2}, ctx) != space.point_key({}, ctx)
    assert space.label({"late_switch": 0.2}).endswith("late-bf16-fwd:0.2")
    with pytest.raises(ValueError, match="late_switch"):
        space.normalize({"late_switch": 1.5})
    assert space.schedule_setup({}, 10) is None
    model = lowprec.convert_model(nn.Sequential(nn.Linear(32, 32)), space.build_recipe({}))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    space.schedule_setup({"late_switch": 0.2}, 10)(model, opt)
    names = []
    for _ in range(10):
        names.append(model[0].recipe.fprop.lhs.format)
        model(torch.randn(4, 32)).sum().backward()
        opt.step()
    assert names[7] != "bf16" and names[8] == "bf16" and names[9] == "bf16"


def test_zero_gradient_points_are_flagged():
    """nvfp4 blocks without a tensor scale and with nearest rounding flush the gradients of a
    freshly initialized model entirely (UE4M3's smallest scale is far above their blocks'
    amax / 6): every converted layer's dW is exactly 0.  Such a run only trains the
    unconverted parameters; it must be marked, not plotted as a cheap accurate recipe (the
    LLaMA-256 sweep put it on its Pareto front, 'better than bf16')."""
    from lowprec.sim.sweep import zero_gradient_layers
    cfg = TrainConfig(steps=1, batch_size=4, model=TinyLMConfig(d_model=64, n_layers=2, seq_len=32))
    dead = zero_gradient_layers({"tensor_scale": False, "sr": "none", "hadamard": 0}, cfg)
    assert len(dead) == 8                                        # all four linears of both blocks
    assert zero_gradient_layers({}, cfg) == []                   # with the tensor scale, gradients survive
