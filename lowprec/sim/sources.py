"""The user's own model and data for the simulator.

Model (``--model``):
- ``builtin``: the byte-level TinyLM (``lowprec.sim.model``), sized by the width/depth flags;
- a transformers config: a ``.json`` file, or a folder holding ``config.json``; the model is
  built from the config with fresh weights (``AutoModelForCausalLM.from_config``), nothing is
  downloaded; a tokenizer saved in the same folder is used for the data;
- ``package.module:factory``: ``factory()`` returns a causal LM taking token ids (batch, seq)
  and returning logits (or an output with ``.logits``); the module is found on sys.path or in
  the current directory.

Data (``--data``): text files or folders of them (every file that decodes as text, sorted by
path), tokenized with the model's tokenizer when it has one, byte-level otherwise; the last 10%
of the tokens is the held-out split. Default: the built-in corpus of Python stdlib docstrings.

Output heads (a last name part ``head`` or ``lm_head``) stay in high precision, as the FP4
recipes in the literature keep them.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .corpus import byte_tokens
from .data import ByteCorpus
from .model import TinyLM, TinyLMConfig


def keep_heads_high_precision(module: nn.Module, name: str) -> bool:
    """convert_model filter: every layer but the output head."""
    return name.split(".")[-1] not in ("head", "lm_head")


class LogitsOnly(nn.Module):
    """A transformers causal LM as ids -> logits (the simulator's model interface)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids) if _is_transformers(self.model) else self.model(ids)
        return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)


def _is_transformers(model) -> bool:
    return type(model).__module__.startswith("transformers.")


def _config_path(source: str) -> Optional[Path]:
    p = Path(source)
    if p.is_dir() and (p / "config.json").is_file():
        return p / "config.json"
    if p.is_file() and p.suffix == ".json":
        return p
    return None


def build_model(source: str, tiny: TinyLMConfig) -> nn.Module:
    """The model ``source`` names, with fresh weights from the current torch seed."""
    if source == "builtin":
        return TinyLM(tiny)
    cfg_path = _config_path(source)
    if cfg_path is not None:
        from transformers import AutoConfig, AutoModelForCausalLM
        config = AutoConfig.for_model(**json.loads(cfg_path.read_text()))
        max_pos = getattr(config, "max_position_embeddings", None)
        if max_pos is not None and max_pos < tiny.seq_len:
            raise ValueError(f"{source}: max_position_embeddings {max_pos} < --seq-len {tiny.seq_len}")
        return LogitsOnly(AutoModelForCausalLM.from_config(config))
    if ":" in source:
        mod_name, fn_name = source.split(":", 1)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        model = getattr(importlib.import_module(mod_name), fn_name)()
        if not isinstance(model, nn.Module):
            raise TypeError(f"{source} must return an nn.Module (ids -> logits), got {type(model).__name__}")
        return model if isinstance(model, TinyLM) else LogitsOnly(model)
    raise ValueError(f"--model takes 'builtin', a transformers config (.json or a folder with config.json) or "
                     f"'package.module:factory', got {source!r}")


def model_vocab(model: nn.Module) -> Optional[int]:
    inner = model.model if isinstance(model, LogitsOnly) else model
    if isinstance(inner, TinyLM):
        return inner.cfg.vocab
    cfg = getattr(inner, "config", None)
    return getattr(cfg, "vocab_size", None)


def load_tokenizer(source: str):
    """The tokenizer saved next to a transformers config, or None (byte-level tokens)."""
    cfg_path = _config_path(source)
    if cfg_path is None or cfg_path.name != "config.json":
        return None
    folder = cfg_path.parent
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def read_texts(paths: Sequence[str]) -> list:
    """(path, text) of every text file under ``paths`` (files, or folders walked), sorted."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"--data: {p} does not exist")
    out = []
    for f in files:
        raw = f.read_bytes()
        if b"\0" in raw[:4096]:
            continue                                     # binary
        out.append((str(f), raw.decode("utf-8", errors="replace")))
    if not out:
        raise ValueError(f"--data: no text files in {list(paths)}")
    return out


class TokenCorpus(ByteCorpus):
    """Train / held-out split of a token stream; ``batch`` as ByteCorpus."""

    def __init__(self, tokens: torch.Tensor, description: str, val_fraction: float = 0.1):
        n_val = int(len(tokens) * val_fraction)
        self.train, self.val = tokens[:-n_val], tokens[-n_val:]
        self.description = description

    @classmethod
    def from_files(cls, paths: Sequence[str], tokenizer=None, val_fraction: float = 0.1) -> "TokenCorpus":
        texts = read_texts(paths)
        joined = "\n\n".join(t for _, t in texts)
        if tokenizer is None:
            tokens, kind = byte_tokens(joined), "bytes"
        else:
            tokens, kind = torch.tensor(tokenizer(joined)["input_ids"], dtype=torch.int64), type(tokenizer).__name__
        return cls(tokens, f"{len(texts)} files, {len(tokens)} tokens ({kind})", val_fraction)


def load_corpus(data: Optional[Sequence[str]], source: str):
    """The corpus for ``--data`` (None: the built-in one)."""
    if not data:
        return ByteCorpus()
    return TokenCorpus.from_files(data, load_tokenizer(source))


def check_fit(corpus, model: nn.Module, seq_len: int) -> None:
    """Refuse data the model cannot read, or too little of it for one window per split."""
    vocab = model_vocab(model)
    top = int(max(corpus.train.max(), corpus.val.max()))
    if vocab is not None and top >= vocab:
        raise ValueError(f"the data has token id {top}, beyond the model's vocabulary of {vocab} "
                         "(byte-level data needs a vocabulary of at least 256)")
    for split in ("train", "val"):
        if len(getattr(corpus, split)) <= seq_len + 1:
            raise ValueError(f"the {split} split has {len(getattr(corpus, split))} tokens, too few for "
                             f"windows of {seq_len}")
