"""Fake (meta) implementations of the lowprec._C ops, for torch.compile and opcheck."""

import torch


def _fake_blocks(xb, rand, scale_table, iparams, fparams, s_enc, rounding, seed, offset, inline_rng):
    n = xb.shape[0]
    scale_dtype = torch.float32 if iparams[5] == 2 else torch.uint8
    return (xb.new_empty(xb.shape, dtype=torch.uint8), xb.new_empty((n,), dtype=scale_dtype),
            xb.new_empty((n,), dtype=torch.float32))


def _fake_fake_blocks(xb, rand, scale_table, iparams, fparams, s_enc, rounding, seed, offset, inline_rng):
    n = xb.shape[0]
    return xb.new_empty(xb.shape), xb.new_empty((n,)), xb.new_empty((n,))


torch.library.register_fake("lowprec::quantize_blocks")(_fake_blocks)
torch.library.register_fake("lowprec::fake_quantize_blocks")(_fake_fake_blocks)
torch.library.register_fake("lowprec::dequantize_blocks")(
    lambda codes, s_eff, table: codes.new_empty(codes.shape, dtype=torch.float32))
def _panel_shapes(x, geometry):
    """Stored code and scale-grid shapes of the panel kernels (csrc/cpu/panels.h)."""
    bt, m, n = x.shape
    mode, bs = geometry
    bm, gw = (1 if mode == 0 else bs), (1 if mode == 1 else bs)
    mp, np_ = -(-m // bm) * bm, -(-n // gw) * gw
    if mode == 1:
        return (bt * n, mp), (bt * n, mp // bm)
    rows = bt * m if mode == 0 else bt * mp
    return (rows, np_), ((bt * m, np_ // gw) if mode == 0 else (bt * (mp // bm), np_ // gw))


@torch.library.register_fake("lowprec::quantize_panels")
def _fake_quantize_panels(x, scale_table, iparams, fparams, geometry, amax, rounding, seed, offset, pack):
    codes, grid = _panel_shapes(x, geometry)
    if pack:
        codes = (codes[0], codes[1] // 2)
    scale_dtype = torch.float32 if iparams[5] == 2 else torch.uint8
    return (x.new_empty(codes, dtype=torch.uint8), x.new_empty(grid, dtype=scale_dtype),
            x.new_empty((), dtype=torch.float32))


@torch.library.register_fake("lowprec::fake_quantize_panels")
def _fake_fake_quantize_panels(x, scale_table, iparams, fparams, geometry, amax, rounding, seed, offset, with_scales):
    per_element = x.shape if with_scales else (0,)
    return (x.new_empty(x.shape, dtype=torch.float32), x.new_empty(per_element, dtype=torch.float32),
            x.new_empty(per_element, dtype=torch.float32), x.new_empty((), dtype=torch.float32))


torch.library.register_fake("lowprec::dequantize_panels")(
    lambda codes, scales, scale_table, elem_table, tensor_scale, geometry, packed:
    codes.new_empty(tuple(geometry[:3]), dtype=torch.float32))  # geometry[5], if given: division
torch.library.register_fake("lowprec::random_bytes")(
    lambda seed, offset, numel, device: torch.empty((numel,), dtype=torch.uint8, device=device))
torch.library.register_fake("lowprec::hadamard_panels")(lambda x, n, signs, inverse, mode: torch.empty_like(x))
torch.library.register_fake("lowprec::nm_mask")(lambda scores, n, m: torch.empty_like(scores, dtype=torch.bool))


@torch.library.register_fake("lowprec::compress_24")
def _fake_compress(w, mask):
    return (w.new_empty((*w.shape[:-1], w.shape[-1] // 2)),
            w.new_empty((*w.shape[:-1], w.shape[-1] // 8), dtype=torch.uint8))


torch.library.register_fake("lowprec::masked_adam_step_")(lambda w, g, m, v, mask, mode, scalars: None)
torch.library.register_fake("lowprec::galore_update_")(lambda w, a, b, coef, c_wd: None)
torch.library.register_fake("lowprec::galore_adam_fp32_")(lambda r, m, v, scalars: torch.empty_like(r))


@torch.library.register_fake("lowprec::galore_adam_lowbit")
def _fake_galore_lowbit(r, m_codes, m_scales, s_codes, s_scales, elem_table, scale_table, iparams, fparams, scalars,
                        block, pass_, m_tensor_scale, s_tensor_scale, m_s_enc, s_s_enc, seed, m_offset, s_offset):
    if pass_ == 0:
        return [r.new_empty((2,))]
    return [torch.empty_like(r), torch.empty_like(m_codes), torch.empty_like(m_scales), torch.empty_like(s_codes),
            torch.empty_like(s_scales), r.new_empty((2,))]
