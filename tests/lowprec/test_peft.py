"""PEFT (the real package) with converted models, in both orders: a quantized frozen base and
high-precision adapters.

Before, ``get_peft_model(convert_model(m, "nvfp4"), LoraConfig(...))`` failed ("Target module
QuantLinear is not supported"), and ``convert_model(peft_model, ...)`` quantized the LoRA
adapters themselves and left new sparse parameters (SLoRB, CAST scales) trainable on a
frozen base."""

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import lowprec  # noqa: E402
from lowprec import sparse  # noqa: E402
from lowprec.conv1d import QuantConv1D  # noqa: E402

TARGETS = ["q_proj", "v_proj", "up_proj"]


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


def _lora(r=16):
    return peft.LoraConfig(r=r, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 16), generator=g)
    return ids


def _adapters(model):
    return {n: m for n, m in model.named_modules() if n.split(".")[-2:-1] in (["lora_A"], ["lora_B"])}


def _check_quantized_base_and_fp_adapters(model):
    lora_layers = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(lora_layers) == 2 * len(TARGETS)
    for layer in lora_layers:
        assert isinstance(layer.base_layer, lowprec.QuantLinear)
        assert not layer.base_layer.weight.requires_grad
    adapters = _adapters(model)
    assert adapters and all(type(m) is nn.Linear for m in adapters.values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def _train_step(model):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = _batch()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads) and all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    opt.step()
    return loss.item()


def test_lora_on_a_converted_model():
    base = lowprec.convert_model(_llama(), "nvfp4")
    ids = _batch()
    with torch.no_grad():
        before = base.eval()(input_ids=ids).logits
    model = peft.get_peft_model(base, _lora())
    _check_quantized_base_and_fp_adapters(model)
    with torch.no_grad():            # B = 0 at init: the wrapped model is the converted model
        assert torch.equal(model.eval()(input_ids=ids).logits, before)
    model.train()
    assert torch.isfinite(torch.tensor(_train_step(model)))


def test_converting_a_peft_model_keeps_adapters_in_high_precision():
    model = peft.get_peft_model(_llama(), _lora())
    model, report = lowprec.convert_model(model, "nvfp4", return_report=True)
    _check_quantized_base_and_fp_adapters(model)
    adapter_reasons = {n: why for n, why in report.skipped.items() if "lora_" in n}
    assert len(adapter_reasons) == 2 * 2 * len(TARGETS)          # lora_A and lora_B of each layer
    assert all("PEFT adapter" in why for why in adapter_reasons.values())
    assert _train_step(model.train()) > 0


@pytest.mark.parametrize("config", [sparse.ASTConfig(slorb_k=8), sparse.CASTConfig(), sparse.SRSTEConfig()],
                         ids=["ast_slorb", "cast", "srste"])
def test_sparse_conversion_of_a_peft_model_leaves_the_base_frozen(config):
    model = peft.get_peft_model(_llama(), _lora())
    model = lowprec.convert_model(model, config)
    bases = [m.base_layer for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert bases and all(type(b) is not nn.Linear for b in bases)             # the base layers are sparse
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), [n for n in trainable if "lora_" not in n]


def test_lora_merge_into_a_converted_gpt2_conv1d_uses_its_orientation():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=1, n_head=4, n_positions=32)
    model = lowprec.convert_model(transformers.GPT2LMHeadModel(cfg), "nvfp4")
    attn = model.transformer.h[0].attn
    assert isinstance(attn.c_proj, QuantConv1D)             # 64 -> 64: square, so a wrong merge would not raise
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules=["c_proj"], fan_in_fan_out=True))
    layer = model.base_model.model.transformer.h[0].attn.c_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    w0 = layer.base_layer.weight.detach().clone()
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    merged = model.merge_and_unload()
    c_proj = merged.transformer.h[0].attn.c_proj
    assert isinstance(c_proj, QuantConv1D)
    torch.testing.assert_close(c_proj.weight.detach(), w0 + delta.t(), rtol=0, atol=1e-6)
