"""A real text corpus that needs no download: the English docstrings of Python's own
standard library (the modules listed below ship with every CPython 3.10+)."""

from __future__ import annotations

import ast
import sysconfig
from functools import lru_cache
from pathlib import Path

import torch

STDLIB_MODULES = (
    "argparse", "asyncio/events", "calendar", "collections/__init__", "configparser", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email/message", "enum", "fractions",
    "functools", "gettext", "heapq", "http/client", "imaplib", "inspect", "ipaddress", "logging/__init__",
    "mailbox", "multiprocessing/pool", "optparse", "os", "pathlib", "pickle", "pydoc", "random",
    "shutil", "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "turtle", "typing", "unittest/case", "urllib/request", "uuid",
    "warnings", "weakref", "zipfile",
)


@lru_cache(maxsize=1)
def stdlib_docstrings() -> str:
    """All docstrings of the modules above, joined by blank lines (deterministic order)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in STDLIB_MODULES:
        for path in (lib / f"{name}.py", lib / name / "__init__.py"):
            if path.is_file():
                break
        else:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    parts.append(doc.strip())
    if not parts:
        raise RuntimeError(f"no stdlib sources found under {lib}; the built-in corpus needs CPython's Lib/")
    return "\n\n".join(parts)


def byte_tokens(text: str) -> torch.Tensor:
    """Byte-level tokens (vocabulary 256) of the text, as int64."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)


def bigram_log_counts(text: str) -> torch.Tensor:
    """256x256 matrix log(1 + count of byte bigram (a, b)): a heavy-tailed real-data tensor."""
    t = byte_tokens(text)
    counts = torch.bincount(t[:-1] * 256 + t[1:], minlength=256 * 256).reshape(256, 256)
    return torch.log1p(counts.float())
