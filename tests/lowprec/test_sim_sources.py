"""`lowprec simulate` on the user's own model and data: a transformers config (file or folder,
with the folder's tokenizer), a factory from the current directory, text folders, training
length in tokens, and clear errors for data the model cannot read."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from lowprec.sim.sources import TokenCorpus, build_model, check_fit, load_corpus, read_texts
from lowprec.sim.model import TinyLMConfig

transformers = pytest.importorskip("transformers")


def llama_config(path, vocab=256):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    cfg.save_pretrained(str(path))
    return path


def test_model_from_a_config_file_or_folder(tmp_path):
    folder = llama_config(tmp_path / "llama")
    tiny = TinyLMConfig(seq_len=32)
    for source in (str(folder), str(folder / "config.json")):
        torch.manual_seed(0)
        m = build_model(source, tiny)
        logits = m(torch.randint(0, 256, (2, 32)))
        assert logits.shape == (2, 32, 256)
        names = [n for n, _ in m.named_modules()]
        assert any(n.endswith("self_attn.q_proj") for n in names) and any(n.endswith("lm_head") for n in names)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        build_model(str(folder), TinyLMConfig(seq_len=128))
    with pytest.raises(ValueError, match="--model takes"):
        build_model("no_such_thing", tiny)


def test_data_folders_tokenizers_and_checks(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text("hello world " * 200)
    (tmp_path / "data" / "sub" / "b.md").write_text("# title\n" + "text " * 300)
    (tmp_path / "data" / "blob.bin").write_bytes(b"\0\1\2" * 100)
    texts = read_texts([str(tmp_path / "data")])
    assert [p.split("/")[-1] for p, _ in texts] == ["a.txt", "b.md"]        # sorted, binary skipped
    corpus = load_corpus([str(tmp_path / "data")], "builtin")
    assert isinstance(corpus, TokenCorpus) and "2 files" in corpus.description and "bytes" in corpus.description
    total = len(corpus.train) + len(corpus.val)
    assert len(corpus.val) == int(total * 0.1)
    small = build_model(str(llama_config(tmp_path / "small", vocab=100)), TinyLMConfig(seq_len=32))
    with pytest.raises(ValueError, match="vocabulary of 100"):
        check_fit(corpus, small, 32)
    with pytest.raises(FileNotFoundError):
        read_texts([str(tmp_path / "missing")])
    # a tokenizer saved next to the config is used for the data
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "text": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = llama_config(tmp_path / "with_tok", vocab=16)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))
    corpus = load_corpus([str(tmp_path / "data")], str(folder))
    assert int(max(corpus.train.max(), corpus.val.max())) <= 3 and "bytes" not in corpus.description


@pytest.mark.slow
def test_simulate_a_config_and_a_factory_on_user_data(tmp_path):
    llama_config(tmp_path / "llama")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 400)
    (tmp_path / "factory.py").write_text(textwrap.dedent("""
        from lowprec.sim.model import TinyLM, TinyLMConfig
        def build():
            return TinyLM(TinyLMConfig(d_model=32, n_layers=1, d_ff=64, seq_len=32))
    """))
    for model, extra in ((str(tmp_path / "llama"), ["--tokens", "2048"]), ("factory:build", ["--steps", "3"])):
        out = subprocess.run([sys.executable, "-m", "lowprec.cli", "simulate", "--model", model, "--data",
                              str(tmp_path / "data"), "--recipes", "bf16", "nvfp4", "--seq-len", "32",
                              "--batch-size", "8", "--timing-steps", "1", "--no-progress", "--out",
                              str(tmp_path / "out"), *extra], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        saved = json.loads((tmp_path / "out" / "simulate.json").read_text())
        assert {r["recipe"] for r in saved["summary"]} == {"bf16", "nvfp4"}
        assert "1 files" in out.stdout
    assert saved["config"]["train"]["steps"] == 3
    bad = subprocess.run([sys.executable, "-m", "lowprec.cli", "simulate", "--sparse", "ast", "--model", "x:y"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "apply to the recipe comparison" in bad.stderr
