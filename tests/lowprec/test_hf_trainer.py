"""Hugging Face Trainer with converted models (the real transformers package, tiny Llama):
a run interrupted at a checkpoint and resumed with ``resume_from_checkpoint`` ends bit for
bit where the uninterrupted run ends, and ``gradient_checkpointing_enable()`` gives the
gradients of the plain run.

Before, the stochastic-rounding offsets were not in the checkpoint, so the resumed nvfp4 run
drew other bits (weights 1.2e-3 apart after two steps), and a checkpointed recompute drew new
bits and counted AST steps twice."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import lowprec  # noqa: E402
from lowprec import sparse  # noqa: E402

pytestmark = pytest.mark.slow


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16, seq=16):
        g = torch.Generator().manual_seed(2)
        self.ids = torch.randint(0, 128, (n, seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(out, max_steps, **kw):
    return transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        save_strategy="steps", save_steps=2, logging_strategy="no", report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, **kw)


CONFIGS = {"nvfp4": "nvfp4", "ast_slorb": sparse.ASTConfig(slorb_k=8, mask_interval=1),
           "sparse_nvfp4": sparse.SparseFP4Config(sparse.ASTConfig(mask_interval=1), "nvfp4")}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trainer_resume_is_bit_identical(name, tmp_path):
    def model():
        return lowprec.convert_model(_llama(), CONFIGS[name], module_filter_fn=lambda m, n: "lm_head" not in n)

    straight = model()
    transformers.Trainer(model=straight, args=_args(tmp_path / "a", 4), train_dataset=Tokens()).train()

    interrupted = model()                 # the same run, stopped after its step-2 checkpoint
    transformers.Trainer(model=interrupted, args=_args(tmp_path / "b", 4, **{"save_total_limit": None}),
                         train_dataset=Tokens()).train()
    ckpt = tmp_path / "b" / "checkpoint-2"
    assert ckpt.exists()
    del interrupted

    resumed = model()
    transformers.Trainer(model=resumed, args=_args(tmp_path / "c", 4), train_dataset=Tokens()).train(
        resume_from_checkpoint=str(ckpt))
    a, c = straight.state_dict(), resumed.state_dict()
    assert any(k.endswith("sr_offset") for k in a) or any(k.endswith(".step") for k in a)
    for k in a:
        assert torch.equal(a[k], c[k]), k


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradient_checkpointing_enable_gives_the_same_gradients(name):
    plain = lowprec.convert_model(_llama(), CONFIGS[name])
    ckpt = copy.deepcopy(plain)
    ckpt.gradient_checkpointing_enable()
    assert ckpt.is_gradient_checkpointing
    ids = Tokens().ids[:4]
    for step in range(3):
        grads = []
        for m in (plain, ckpt):
            m.train()
            m.zero_grad(set_to_none=True)
            m(input_ids=ids, labels=ids).loss.backward()
            grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
            with torch.no_grad():
                for p in m.parameters():
                    if p.grad is not None:
                        p.sub_(0.01 * p.grad)
        assert grads[0].keys() == grads[1].keys()
        for n in grads[0]:
            assert torch.equal(grads[0][n], grads[1][n]), (step, n)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, ckpt.state_dict()[k]), k


@pytest.mark.parametrize("name", ["nvfp4", "ast_slorb"])
def test_a_killed_trainer_run_resumes_bit_identically(name, tmp_path):
    """The run is SIGKILLed in another process after its step-2 checkpoint; resuming from that
    checkpoint ends where the uninterrupted run ends."""
    import os
    import signal
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "hf_kill_worker.py")
    out = subprocess.run([sys.executable, worker, str(tmp_path / "killed"), name], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == -signal.SIGKILL, out.stdout[-2000:] + out.stderr[-3000:]
    assert "killing the run" in out.stdout
    ckpt = tmp_path / "killed" / "checkpoint-2"
    assert ckpt.exists() and not (tmp_path / "killed" / "checkpoint-4").exists()

    def model():
        return lowprec.convert_model(_llama(), CONFIGS[name], module_filter_fn=lambda m, n: "lm_head" not in n)

    straight = model()
    transformers.Trainer(model=straight, args=_args(tmp_path / "a", 4), train_dataset=Tokens()).train()
    resumed = model()
    transformers.Trainer(model=resumed, args=_args(tmp_path / "c", 4), train_dataset=Tokens()).train(
        resume_from_checkpoint=str(ckpt))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
