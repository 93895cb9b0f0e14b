"""The automatic precision plan (lowprec.plan) and diagnose on real models: the plan stays
within its budget, keeps a layer made sensitive on purpose, converts through its recipe map,
and measures what its docstring says; diagnose takes a transformers model with dict inputs
and its own loss, and a factory from the current directory."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lowprec
from lowprec.plan import baseline_plan, fnmatch_escape, gemm_quality, plan


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(6))
        with torch.no_grad():       # layer 3 ignores its 4 huge input channels (below), so its output
            self.layers[3].weight[:, :4] = 0      # rests on the 12 small ones that share their FP4 blocks

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            h = x
            if i == 3:       # 4 huge input channels: the 16-element blocks around them flush the rest
                h = x * torch.cat([torch.full((4,), 300.0), torch.ones(60)])
            x = torch.tanh(layer(h))
        return x


def batches(n=2):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(32, 64, generator=g) for _ in range(n)]


def test_plan_keeps_the_sensitive_layer_within_budget():
    net = Net()
    p = plan(net, batches(), "nvfp4", budget=0.2)
    assert p.keep[0] == "layers.3"                          # the outlier layer is the most sensitive
    assert p.used <= 0.2 and len(p.keep) == 1               # 1 of 6 equal layers fits 20%
    assert [r["layer"] for r in p.layers][0] == "layers.3"
    assert all(p.layers[i]["score"] >= p.layers[i + 1]["score"] for i in range(len(p.layers) - 1))
    model = lowprec.convert_model(Net(), p.recipe_map())
    assert type(model.layers[3]) is nn.Linear
    assert all(type(model.layers[i]).__name__ == "QuantLinear" for i in (0, 1, 2, 4, 5))
    assert plan(Net(), batches(), "nvfp4", budget=0.0).keep == ()
    p_layers = plan(Net(), batches(), "nvfp4", budget=0.5, unit="layers")
    assert len(p_layers.keep) == 3 and p_layers.used == 0.5
    high = plan(Net(), batches(), "nvfp4", budget=0.2, high="mxfp8")
    model = lowprec.convert_model(Net(), high.recipe_map())
    assert model.layers[3].recipe.name == "mxfp8" and model.layers[0].recipe.name == "nvfp4"


def test_baselines_spend_the_same_budget():
    p = plan(Net(), batches(), "nvfp4", budget=0.34)
    names = [f"layers.{i}" for i in range(6)]
    assert baseline_plan(p, names, "ends").keep == ("layers.0", "layers.5")
    rnd = baseline_plan(p, names, "random", seed=1)
    assert len(rnd.keep) == 2 and rnd.used <= 0.34
    with pytest.raises(ValueError):
        baseline_plan(p, names, "middle")


def test_gemm_quality_definitions():
    exact = torch.randn(50, 40, dtype=torch.float64)
    assert gemm_quality(exact, [exact * 0.9])["gain"] == pytest.approx(0.9)
    q = gemm_quality(exact, [exact * 0.9])
    assert q["bias"] == pytest.approx(q["rel_err"]) == pytest.approx(0.1)      # one draw: bias is the error
    noise = [exact + torch.randn_like(exact) * 0.1 for _ in range(64)]
    q = gemm_quality(exact, noise)
    assert abs(q["gain"] - 1) < 0.01 and q["bias"] < q["rel_err"] / 4        # zero-mean noise averages out


def test_plan_validation_and_converted_models():
    with pytest.raises(ValueError, match="budget"):
        plan(Net(), batches(), "nvfp4", budget=1.5)
    with pytest.raises(ValueError, match="unit"):
        plan(Net(), batches(), "nvfp4", unit="params")
    with pytest.raises(ValueError, match="at least one batch"):
        plan(Net(), [], "nvfp4")
    converted = lowprec.convert_model(Net(), "nvfp4")
    with pytest.warns(UserWarning, match="already converted"):
        p = plan(converted, batches(), "nvfp4", budget=0.2)
    assert p.keep == ("layers.3",)
    assert fnmatch_escape("a[0].b*") == "a[[]0[]].b[*]"


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "labels": ids}


def test_plan_and_diagnose_a_transformers_model_with_dict_inputs():
    from lowprec.diagnose import default_loss, diagnose
    model, inputs = _tiny_llama()
    p = plan(model, [inputs], "nvfp4", budget=0.15, module_filter_fn=lambda m, n: "lm_head" not in n)
    names = {r["layer"] for r in p.layers}
    assert "model.layers.0.self_attn.q_proj" in names and "lm_head" not in names and len(names) == 14
    assert p.used <= 0.15 and p.keep
    converted = lowprec.convert_model(model, p.recipe_map(), module_filter_fn=lambda m, n: "lm_head" not in n)
    assert converted(**inputs).loss.isfinite()
    model, inputs = _tiny_llama()
    rows = diagnose(model, inputs, default_loss, "nvfp4")
    assert {r["layer"] for r in rows} >= {"model.layers.1.mlp.down_proj", "lm_head"}       # full names
    for r in rows:
        assert math.isfinite(r["sqnr_fprop_Y"]) and 0.5 < r["dW_gain"] < 1.5 and r["dX_rel_err"] > 0


@pytest.mark.slow
def test_cli_plan_and_diagnose_with_a_factory_from_the_current_directory(tmp_path):
    (tmp_path / "my_factory.py").write_text(textwrap.dedent("""
        import torch, transformers
        def build():
            torch.manual_seed(0)
            cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
            ids = torch.randint(0, 128, (2, 16))
            return transformers.LlamaForCausalLM(cfg), {"input_ids": ids, "labels": ids}
    """))
    for cmd in (["plan", "--model", "my_factory:build", "--json", "plan.json"],
                ["diagnose", "--model", "my_factory:build", "--json", "diag.json"]):
        out = subprocess.run([sys.executable, "-m", "lowprec.cli", *cmd], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": ""})
        assert out.returncode == 0, out.stderr[-3000:]
    assert "legend:" in out.stdout and "model.layers.0.self_attn.q_proj" in out.stdout
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["used"] <= 0.15 and saved["keep"]
