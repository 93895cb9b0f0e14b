"""Philox: the reference equals Triton's tl.randint4x (run by the interpreter on CPU)."""

import numpy as np
import pytest
import torch

from lowprec.reference.philox import randint4x, random_bytes

triton = pytest.importorskip("triton", reason="triton is the oracle for Philox (pip install triton)")
import triton.language as tl  # noqa: E402


@triton.jit
def _randint4x_kernel(out_ptr, counters_ptr, seed, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    c = tl.load(counters_ptr + idx, mask=mask, other=0)
    r0, r1, r2, r3 = tl.randint4x(seed, c)
    tl.store(out_ptr + idx * 4 + 0, r0.to(tl.int64, bitcast=False) & 0xFFFFFFFF, mask=mask)
    tl.store(out_ptr + idx * 4 + 1, r1.to(tl.int64, bitcast=False) & 0xFFFFFFFF, mask=mask)
    tl.store(out_ptr + idx * 4 + 2, r2.to(tl.int64, bitcast=False) & 0xFFFFFFFF, mask=mask)
    tl.store(out_ptr + idx * 4 + 3, r3.to(tl.int64, bitcast=False) & 0xFFFFFFFF, mask=mask)


def triton_randint4x(seed: int, counters: torch.Tensor) -> torch.Tensor:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    c = counters.to(device)
    out = torch.zeros(c.numel() * 4, dtype=torch.int64, device=device)
    _randint4x_kernel[(triton.cdiv(c.numel(), 64),)](out, c, seed, c.numel(), BLOCK=64)
    return out.reshape(-1, 4).cpu()


SEEDS = [0, 1, 42, 0x7FFFFFFF, 0xFFFFFFFF, 0x123456789, (1 << 62) + 12345, -1, -987654321]


@pytest.mark.parametrize("seed", SEEDS)
def test_randint4x_matches_triton(seed):
    counters = torch.tensor([0, 1, 2, 15, 16, 1000, 0xFFFFFFFF, 1 << 32, (1 << 32) + 7,
                             (1 << 40) + 3, (1 << 62) + 99], dtype=torch.int64)
    counters = torch.cat([counters, torch.randint(0, 1 << 62, (53,), generator=torch.Generator().manual_seed(seed & 0xFFFF))])
    ref = torch.stack(randint4x(seed, counters), dim=-1)
    got = triton_randint4x(seed, counters)
    assert torch.equal(ref, got)


def test_known_answer_vector():
    """Philox4x32-10 known-answer vector (Random123 kat_vectors: ctr 0, key 0)."""
    words = randint4x(0, torch.zeros(1, dtype=torch.int64))
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_random_bytes_layout():
    seed, offset = 7, 5
    b = random_bytes(seed, offset, 40)
    words = torch.stack(randint4x(seed, torch.arange(offset, offset + 3)), -1).numpy().astype("<u4")
    expected = np.frombuffer(words.tobytes(), dtype=np.uint8)[:40]
    assert b.dtype == torch.uint8
    assert np.array_equal(b.numpy(), expected)


def test_random_bytes_reproducible_and_offset_shifts_stream():
    a = random_bytes(3, 0, 64)
    assert torch.equal(a, random_bytes(3, 0, 64))
    assert torch.equal(a[16:], random_bytes(3, 1, 48))
    assert not torch.equal(a, random_bytes(4, 0, 64))


def test_bytes_are_uniform():
    b = random_bytes(11, 0, 1 << 18).to(torch.int64)
    counts = torch.bincount(b, minlength=256).double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 400  # 255 dof: mean 255, sd ~22.6
