"""Philox4x32-10, exactly as Triton's ``tl.randint4x`` computes it, vectorized in torch.

For a key (k0, k1) and counter (c0, c1, c2, c3) of 32-bit words, ten rounds of
  c0' = hi(B * c2) ^ c1 ^ k0,  c2' = hi(A * c0) ^ c3 ^ k1,  c1' = lo(B * c2),  c3' = lo(A * c0)
  k0 += 0x9E3779B9,  k1 += 0xBB67AE85
with A = 0xD2511F53, B = 0xCD9E8D57.  docs/numerics.md: key = (seed & 0xFFFFFFFF, seed >> 32),
counter = (n & 0xFFFFFFFF, n >> 32, 0, 0) for n = offset + i // 16; the four outputs,
little-endian, are 16 bytes and element i takes byte i % 16.

All arithmetic is on int64 tensors holding 32-bit values; 32x32-bit products are split
into 16-bit halves so that nothing overflows int64 on any device.
"""

from __future__ import annotations

import torch

from .checks import int64_bits

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
N_ROUNDS = 10
MASK32 = 0xFFFFFFFF


def _mul_hi_lo(const: int, x: torch.Tensor):
    """(hi, lo) 32-bit words of const * x for a 32-bit constant and int64 tensor x < 2**32."""
    x_lo = x & 0xFFFF
    x_hi = x >> 16
    p_lo = x_lo * const            # < 2**48
    p_hi = x_hi * const            # < 2**48
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    hi = ((p_hi + (p_lo >> 16)) >> 16) & MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, n_rounds: int = N_ROUNDS):
    """Philox4x32 on int64 tensors holding uint32 words; key words are python ints."""
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def _split_seed(seed: int):
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # int64 seeds are read as their uint64 bits
    return seed & MASK32, (seed >> 32) & MASK32


def randint4x(seed: int, counters: torch.Tensor):
    """The four uint32 outputs (as int64 tensors) of Triton's ``randint4x(seed, counters)``."""
    n = counters.to(torch.int64)
    k0, k1 = _split_seed(seed)
    c0 = n & MASK32
    c1 = (n >> 32) & MASK32
    zero = torch.zeros_like(c0)
    return philox4x32(c0, c1, zero, zero, k0, k1)


def random_bytes(seed: int, offset: int, numel: int, device=None) -> torch.Tensor:
    """uint8 tensor of ``numel`` random bytes: byte i = byte (i % 16) of randint4x(seed, offset + i // 16)."""
    n_counters = (numel + 15) // 16
    counters = torch.arange(n_counters, dtype=torch.int64, device=device) + int64_bits(offset)   # wraps mod 2**64
    words = torch.stack(randint4x(seed, counters), dim=-1)          # (n, 4) uint32 in int64
    shifts = torch.arange(4, dtype=torch.int64, device=device) * 8
    bytes_ = (words.unsqueeze(-1) >> shifts) & 0xFF                    # (n, 4, 4) little-endian
    return bytes_.reshape(-1)[:numel].to(torch.uint8)
