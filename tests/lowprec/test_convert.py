"""convert_model / revert_model on plain, torch and transformers models; state_dict round
trips; reproducibility; torch.compile; DDP."""

import copy
import os
import sys

import pytest
import torch
from torch import nn

import lowprec


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.Linear(64, 10))


def test_convert_swaps_reuses_parameters_and_reports():
    m = mlp()
    params = [p for p in m.parameters()]
    m, rep = lowprec.convert_model(m, "mxfp4", return_report=True)
    assert isinstance(m[0], lowprec.QuantLinear) and isinstance(m[2], lowprec.QuantLinear)
    assert rep.converted == ["0", "2"] and list(rep.skipped) == ["3"]       # 10 outputs: not a multiple of 32
    assert "multiple of 32" in rep.skipped["3"]
    assert all(a is b for a, b in zip(params, m.parameters()))
    assert "mxfp4" in repr(m[0])


def test_filter_is_respected_and_receives_names():
    seen = []

    def keep(module, name):
        seen.append((type(module).__name__, name))
        return name != "2"
    m, rep = lowprec.convert_model(mlp(), "nvfp4", module_filter_fn=keep, return_report=True)
    assert ("Linear", "0") in seen and ("Linear", "2") in seen
    assert rep.filtered == ["2"] and type(m[2]) is nn.Linear and isinstance(m[0], lowprec.QuantLinear)


def test_convert_then_revert_is_identity():
    m = mlp()
    ref = copy.deepcopy(m)
    x = torch.randn(5, 64)
    lowprec.convert_model(m, "nvfp4")
    back = lowprec.revert_model(m)
    assert [type(a) for a in back.modules()] == [type(a) for a in ref.modules()]
    for a, b in zip(back.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(back(x), ref(x))


def test_state_dict_round_trips_both_ways():
    orig = mlp()
    conv = lowprec.convert_model(copy.deepcopy(orig), "nvfp4")
    sr_keys = [k for k in conv.state_dict() if k.endswith(("sr_seed", "sr_offset"))]
    assert [k for k in conv.state_dict() if k not in sr_keys] == list(orig.state_dict())
    assert len(sr_keys) == 2 * len(lowprec.convert.quant_modules(conv))    # the SR stream is in the checkpoint
    fresh = mlp()
    for p in fresh.parameters():
        nn.init.zeros_(p)
    result = fresh.load_state_dict(conv.state_dict(), strict=False)   # converted -> original: only the SR keys
    assert sorted(result.unexpected_keys) == sorted(sr_keys) and not result.missing_keys
    assert list(lowprec.revert_model(copy.deepcopy(conv)).state_dict()) == list(orig.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), orig.state_dict().values()))
    conv2 = lowprec.convert_model(mlp(), "nvfp4")
    for p in conv2.parameters():
        nn.init.zeros_(p)
    conv2.load_state_dict(orig.state_dict())                 # original -> converted, strict: keeps its SR stream
    assert all(torch.equal(conv2.state_dict()[k], v) for k, v in orig.state_dict().items())


def test_bf16_recipe_is_the_unquantized_baseline():
    m = mlp()
    ref = copy.deepcopy(m)
    x = torch.randn(5, 64)
    lowprec.convert_model(m, "bf16")
    assert torch.allclose(m(x), ref(x), rtol=0.02, atol=0.02)


def train(recipe, seed, steps=4):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    lowprec.convert_model(m, recipe, seed=seed)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(48, 32, generator=g)
        loss = (m(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in m.parameters()]


def test_same_seed_reproduces_training_bit_for_bit():
    a, pa = train("nvfp4", 1)
    b, pb = train("nvfp4", 1)
    c, _ = train("nvfp4", 2)
    assert a == b and all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert a != c


def test_rng_state_resume_matches_uninterrupted():
    torch.manual_seed(0)
    m = lowprec.convert_model(nn.Sequential(nn.Linear(32, 32)), "ue5m3", seed=3)
    x, c = torch.randn(16, 32), torch.randn(16, 32)
    (m(x) * c).sum().backward()
    state = lowprec.rng_state(m)
    m[0].weight.grad = None
    (m(x) * c).sum().backward()
    g_next = m[0].weight.grad.clone()
    lowprec.load_rng_state(m, state)
    m[0].weight.grad = None
    (m(x) * c).sum().backward()
    assert torch.equal(g_next, m[0].weight.grad)


def test_transformer_encoder_converts_and_trains():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    enc, rep = lowprec.convert_model(enc, "nvfp4", return_report=True)
    assert len(rep.converted) == 4                # linear1, linear2 per layer
    assert list(rep.skipped) == ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
    assert "functionally" in rep.skipped["layers.0.self_attn.out_proj"]
    x = torch.randn(2, 16, 64)
    enc(x).sum().backward()
    assert enc.layers[0].linear1.weight.grad is not None


transformers = pytest.importorskip("transformers", reason="transformers is the host of the LLaMA/GPT-2/BERT models")


def _hf_models():
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    return {
        "llama": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, max_position_embeddings=64)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)),
        "bert": lambda: BertModel(BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)),
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_transformers_models(arch):
    torch.manual_seed(0)
    model = _hf_models()[arch]().eval()
    ref = copy.deepcopy(model)
    ids = torch.randint(0, 128, (2, 16))
    out_ref = ref(ids)[0]
    model, rep = lowprec.convert_model(model, "nvfp4", module_filter_fn=lambda m, n: "lm_head" not in n,
                                       return_report=True)
    assert len(rep.converted) >= 8, rep.summary()
    out = model(ids)[0]
    assert out.shape == out_ref.shape and torch.isfinite(out).all()
    rel = (out - out_ref).norm() / out_ref.norm()
    assert 0 < rel < 0.5
    out.float().pow(2).mean().backward()
    sd = model.state_dict()      # the original keys, plus each converted layer's SR stream
    assert [k for k in sd if not k.endswith(("sr_seed", "sr_offset"))] == list(ref.state_dict())
    back = lowprec.revert_model(model)
    assert list(back.state_dict()) == list(ref.state_dict())
    assert torch.equal(back(ids)[0], out_ref)


def test_gpt2_conv1d_is_wrapped_with_its_own_layout():
    from transformers.pytorch_utils import Conv1D
    torch.manual_seed(0)
    c = Conv1D(96, 32)                 # nf=96 outputs, nx=32 inputs, weight (32, 96)
    ref = copy.deepcopy(c)
    q = lowprec.convert_model(nn.Sequential(c), "bf16")[0]
    assert q.weight is c.weight and q.weight_layout == "in_out"
    x = torch.randn(4, 32)
    assert torch.allclose(q(x), ref(x), atol=0.05)
    assert type(lowprec.revert_model(nn.Sequential(q))[0]) is Conv1D


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    m = lowprec.convert_model(nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)), "nvfp4", seed=1)
    m2 = copy.deepcopy(m)
    x = torch.randn(32, 64)
    c = torch.randn(32, 64)
    y_eager = m(x)
    (y_eager * c).sum().backward()
    compiled = torch.compile(m2, fullgraph=True, backend="aot_eager")
    y_comp = compiled(x)
    (y_comp * c).sum().backward()
    assert torch.equal(y_eager, y_comp)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert int(m[0].sr_offset) == int(m2[0].sr_offset) > 0
    y2 = compiled(x)                                  # the offset advanced: no recompile, new bits
    assert torch.isfinite(y2).all()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    import subprocess
    script = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    out = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DDP == single" in out.stdout


@pytest.mark.slow
def test_ddp_with_all_reduced_tensor_amax_matches_single_process(tmp_path):
    """A tensor-scaled recipe (nvfp4, nearest): each rank's own amax gives gradients 14% off one
    process; Recipe(sync_tensor_amax=True) all-reduces the amax and matches it (within 1e-5)."""
    import re
    import subprocess
    script = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    diffs = {}
    for name in ("nvfp4_local_amax", "nvfp4_synced_amax"):
        (tmp_path / name).mkdir()
        out = subprocess.run([sys.executable, script, str(tmp_path / name), name], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        diffs[name] = float(re.search(r"one process ([0-9.e+-]+)", out.stdout).group(1))
    assert diffs["nvfp4_local_amax"] > 1e-2 and diffs["nvfp4_synced_amax"] < 1e-5, diffs


@pytest.mark.parametrize("config", ["nvfp4", "ue5m3"])
def test_resume_from_state_dict_is_bit_identical(config, tmp_path):
    """torch.save(model.state_dict()) after k steps, load into a freshly converted model and
    continue: the same weights, bit for bit, as the run that never stopped (before, the SR
    offset was not in the state_dict and the resumed run drew the first step's bits again)."""
    def fresh():
        return lowprec.convert_model(mlp(), config, seed=3)

    def step(m, opt, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(32, 64, generator=g)
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    ref = fresh()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i in range(4):
        step(ref, opt, i)
    first = fresh()
    opt1 = torch.optim.SGD(first.parameters(), lr=0.1)
    for i in range(2):
        step(first, opt1, i)
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed = lowprec.convert_model(mlp(), config, seed=99)          # even a different seed is restored
    resumed.load_state_dict(ckpt["model"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.1)
    opt2.load_state_dict(ckpt["opt"])
    for i in range(2, 4):
        step(resumed, opt2, i)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), ref.state_dict().values()))
