"""Hugging Face save / load / export with the real transformers package, on tiny models built
from configs: the conversion travels in config.json and comes back with one call, and every
export that claims to be transformers-loadable is, with identical logits.

Before, save_pretrained silently lost the recipe (the reloaded model was a plain one), and the
default SLoRB export (SparseWithLowRank) loaded into transformers with 14 missing keys
initialised randomly (logits off by 0.97), with only a warning."""

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lowprec  # noqa: E402
from lowprec import sparse  # noqa: E402


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def _train(model, steps=2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
    return model


CONFIGS = {"nvfp4": "nvfp4", "ue5m3": "ue5m3", "ast_slorb": sparse.ASTConfig(slorb_k=8, mask_interval=1),
           "cast": sparse.CASTConfig(), "sparse_nvfp4": sparse.SparseFP4Config(sparse.SRSTEConfig(), "nvfp4"),
           "recipe_map": {"*.mlp.*": "nvfp4", "*.self_attn.o_proj": None, "*": "mxfp8"}}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_pretrained_then_load_pretrained_is_the_same_model(name, tmp_path):
    model = _train(lowprec.convert_model(_llama(), CONFIGS[name], module_filter_fn=lambda m, n: "lm_head" not in n,
                                         seed=7))
    model.save_pretrained(tmp_path)
    saved = json.load(open(os.path.join(tmp_path, "config.json")))
    assert saved["lowprec"]["seed"] == 7 and saved["lowprec"]["converted"]
    loaded = lowprec.load_pretrained(str(tmp_path))
    assert type(loaded) is type(model)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, loaded(input_ids=IDS).logits)
    # and training continues on the same stochastic-rounding stream
    _train(model, 1), _train(loaded, 1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_load_pretrained_refuses_a_plain_model(tmp_path):
    _llama().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no lowprec conversion"):
        lowprec.load_pretrained(str(tmp_path))


def test_a_reverted_model_saves_as_plain(tmp_path):
    model = lowprec.revert_model(lowprec.convert_model(_llama(), "nvfp4"))
    model.save_pretrained(tmp_path)
    assert json.load(open(os.path.join(tmp_path, "config.json"))).get("lowprec") is None


def test_slorb_export_must_choose_what_happens_to_the_side_path():
    model = _train(lowprec.convert_model(_llama(), sparse.ASTConfig(slorb_k=8)))
    with pytest.raises(ValueError, match="low_rank='keep'"):
        sparse.export(model)


@pytest.mark.parametrize("low_rank", ["fold", "drop"])
def test_fold_and_drop_exports_load_with_transformers_alone(low_rank, tmp_path):
    model = _train(lowprec.convert_model(_llama(), sparse.ASTConfig(slorb_k=8)))
    out = sparse.export(model, low_rank=low_rank).eval()
    out.save_pretrained(tmp_path)
    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=IDS).logits, out(input_ids=IDS).logits)
    layers = dict(plain.named_modules())
    for name, mod in sparse.sparse_linears(out):
        assert sparse.fraction_nm(layers[name].weight.detach()) == 1.0, name     # "drop": exactly 2:4
    if low_rank == "fold":                       # the function of the trained model, up to rounding
        with torch.no_grad():
            torch.testing.assert_close(out(input_ids=IDS).logits, model.eval()(input_ids=IDS).logits,
                                       rtol=1e-4, atol=1e-4)
        assert not sparse.sparse_linears(out)    # dense weights: nothing claims to be 2:4


def test_keep_export_loads_with_lowprec_and_keeps_24_and_the_function(tmp_path):
    model = _train(lowprec.convert_model(_llama(), sparse.ASTConfig(slorb_k=8)))
    out = sparse.export(model, low_rank="keep").eval()
    out.save_pretrained(tmp_path)
    loaded = lowprec.load_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, out(input_ids=IDS).logits)
    side = [m for m in loaded.modules() if isinstance(m, sparse.SparseWithLowRank)]
    assert side and all(sparse.fraction_nm(m.sparse.weight.detach()) == 1.0 for m in side)


@pytest.mark.parametrize("config", [sparse.SRSTEConfig(), sparse.CASTConfig()], ids=["srste", "cast"])
def test_exports_without_side_paths_load_with_transformers_alone(config, tmp_path):
    model = _train(lowprec.convert_model(_llama(), config))
    out = sparse.export(model).eval()
    out.save_pretrained(tmp_path)
    assert json.load(open(os.path.join(tmp_path, "config.json"))).get("lowprec") is None
    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=IDS).logits, out(input_ids=IDS).logits)
    layers = dict(plain.named_modules())
    names = [n for n, _ in sparse.sparse_linears(out)]
    assert names and all(sparse.fraction_nm(layers[n].weight.detach()) == 1.0 for n in names)
