// Block Walsh-Hadamard transform on the CPU, 16 lanes at a time, with no copy for either axis.
// x is [Bt, M, N] (contiguous fp32); mode rows transforms chunks of n along N, mode cols chunks
// of n along M (a tensor transformed along a middle or leading axis, as the wgrad operands
// are). Every element goes through the reference's exact operations in its order
// (lowprec/reference/hadamard.py): signs first when forward (x -> H_n (s * x)); stages h = 1, 2, 4, ...:
// (a, b) -> (a + b, a - b); then * fp32(1 / sqrt(n)); signs last when inverse. So the results
// are bit-identical to it. Rows: stages h < 16 pair lanes of one vector (partner lane l ^ h),
// the others pair whole vectors; cols: every stage pairs whole vectors (rows of a column tile).
#include "aten.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "simd.h"

namespace lowprec {

namespace {

using namespace simd;

enum HadamardMode : int { kAlongRows = 0, kAlongCols = 1 };

struct HadamardJob {
  const float* x;
  float* out;
  int64_t Bt, M, N, n;
  const float* signs;   // [n] or null
  float tiled_signs[W]; // signs repeated over a vector when n < 16
  float norm;
  bool inverse;
};

template <int H>
LOWPREC_INLINE vf lane_butterfly(vf v) {
  constexpr vi iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  vf p;
  if constexpr (H == 1) p = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  if constexpr (H == 2) p = __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  if constexpr (H == 4) p = __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  if constexpr (H == 8) p = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  // lane l holds a (l & H == 0: a + b, b = p) or b (a - b, a = p)
  return (iota & H) ? p - v : v + p;
}

// Stages h = 1 .. min(8, n / 2) inside one vector (chunks of n < 16 side by side, or the first
// 16 elements' worth of a longer chunk).
LOWPREC_INLINE vf lane_stages(vf v, int64_t n) {
  if (n > 1) v = lane_butterfly<1>(v);
  if (n > 2) v = lane_butterfly<2>(v);
  if (n > 4) v = lane_butterfly<4>(v);
  if (n > 8) v = lane_butterfly<8>(v);
  return v;
}

// Scalar transform of one chunk (the tail of a rows job whose length is not a multiple of 16).
void scalar_chunk(const HadamardJob& j, const float* src, float* v) {
  const int64_t n = j.n;
  for (int64_t k = 0; k < n; ++k) v[k] = (j.signs && !j.inverse) ? src[k] * j.signs[k] : src[k];
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t k = i; k < i + h; ++k) {
        const float a = v[k], b = v[k + h];
        v[k] = a + b;
        v[k + h] = a - b;
      }
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    v[k] *= j.norm;
    if (j.signs && j.inverse) v[k] *= j.signs[k];
  }
}

// Rows: units of max(n, 16) consecutive elements of the flat array, [u0, u1).
LOWPREC_ISA_CLONES void rows_units(const HadamardJob& j, int64_t u0, int64_t u1) {
  const int64_t n = j.n, unit = std::max<int64_t>(n, W);
  const bool pre = j.signs && !j.inverse, post = j.signs && j.inverse;
  const vf norm = splat(j.norm);
  for (int64_t u = u0; u < u1; ++u) {
    const float* src = j.x + u * unit;
    float* v = j.out + u * unit;
    if (n <= W) {   // the whole unit in one register
      vf a = load(src);
      if (pre) a = a * load(j.tiled_signs);
      a = lane_stages(a, n) * norm;
      if (post) a = a * load(j.tiled_signs);
      store(v, a);
      continue;
    }
    for (int64_t k = 0; k < n; k += W) {
      vf a = load(src + k);
      if (pre) a = a * load(j.signs + k);
      store(v + k, lane_stages(a, n));
    }
    for (int64_t h = W; h < n; h *= 2) {
      const bool last = 2 * h == n;
      for (int64_t i = 0; i < n; i += 2 * h) {
        for (int64_t k = i; k < i + h; k += W) {
          const vf a = load(v + k), b = load(v + k + h);
          vf s = a + b, d = a - b;
          if (last) {
            s = s * norm;
            d = d * norm;
            if (post) {
              s = s * load(j.signs + k);
              d = d * load(j.signs + k + h);
            }
          }
          store(v + k, s);
          store(v + k + h, d);
        }
      }
    }
  }
}

// Cols: items (batch, chunk of n rows, tile of 16 columns) [i0, i1), through a scratch [n][16].
LOWPREC_ISA_CLONES void cols_items(const HadamardJob& j, int64_t i0, int64_t i1, float* buf) {
  const int64_t n = j.n, N = j.N, tiles = (N + W - 1) / W, chunks = j.M / n;
  const vf norm = splat(j.norm);
  for (int64_t it = i0; it < i1; ++it) {
    const int64_t t = it % tiles, c = (it / tiles) % chunks, b = it / (tiles * chunks);
    const int64_t c0 = t * W, w = std::min<int64_t>(W, N - c0);
    const int64_t base = (b * j.M + c * n) * N + c0;
    for (int64_t r = 0; r < n; ++r) {
      vf a;
      if (w == W) {
        a = load(j.x + base + r * N);
      } else {
        float tmp[W] = {};
        memcpy(tmp, j.x + base + r * N, w * sizeof(float));
        a = load(tmp);
      }
      if (j.signs && !j.inverse) a = a * j.signs[r];
      store(buf + r * W, a);
    }
    for (int64_t h = 1; h < n; h *= 2) {
      for (int64_t i = 0; i < n; i += 2 * h) {
        for (int64_t r = i; r < i + h; ++r) {
          const vf a = load(buf + r * W), bv = load(buf + (r + h) * W);
          store(buf + r * W, a + bv);
          store(buf + (r + h) * W, a - bv);
        }
      }
    }
    for (int64_t r = 0; r < n; ++r) {
      vf a = load(buf + r * W) * norm;
      if (j.signs && j.inverse) a = a * j.signs[r];
      if (w == W) {
        store(j.out + base + r * N, a);
      } else {
        float tmp[W];
        store(tmp, a);
        memcpy(j.out + base + r * N, tmp, w * sizeof(float));
      }
    }
  }
}

}  // namespace

// x fp32 contiguous [Bt, M, N]; mode 0: chunks of n along N, 1: along M -> transformed x.
at::Tensor hadamard_panels_cpu(const at::Tensor& x, int64_t n, const c10::optional<at::Tensor>& signs, bool inverse,
                               int64_t mode) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 3 && x.is_contiguous(),
              "lowprec::hadamard_panels: a contiguous fp32 CPU tensor [Bt, M, N]");
  TORCH_CHECK(mode == kAlongRows || mode == kAlongCols, "lowprec::hadamard_panels: mode is 0 (along N) or 1 (along M)");
  const int64_t len = mode == kAlongRows ? x.size(2) : x.size(1);
  TORCH_CHECK(n >= 1 && (n & (n - 1)) == 0 && len % n == 0,
              "lowprec::hadamard_panels: n must be a power of two dividing the transformed dim (", len, ")");
  HadamardJob j{x.data_ptr<float>(), nullptr, x.size(0), x.size(1), x.size(2), n, nullptr, {}, 0.0f, inverse};
  if (signs.has_value() && signs->defined()) {
    TORCH_CHECK(signs->scalar_type() == at::kFloat && signs->numel() == n && signs->is_contiguous(),
                "lowprec::hadamard_panels: signs fp32 [n]");
    j.signs = signs->data_ptr<float>();
    for (int l = 0; l < W; ++l) j.tiled_signs[l] = j.signs[l % n];
  }
  j.norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  auto out = at::empty_like(x);
  j.out = out.data_ptr<float>();
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  if (mode == kAlongRows) {
    const int64_t unit = std::max<int64_t>(n, W), units = numel / unit;
    at::parallel_for(0, units, std::max<int64_t>(1, 16384 / unit), [&](int64_t u0, int64_t u1) { rows_units(j, u0, u1); });
    std::vector<float> v(n);
    for (int64_t c = units * unit / n; c < numel / n; ++c) {   // n < 16 and a tail of < 16 elements
      scalar_chunk(j, j.x + c * n, v.data());
      memcpy(j.out + c * n, v.data(), n * sizeof(float));
    }
  } else {
    const int64_t items = j.Bt * (j.M / n) * ((j.N + W - 1) / W);
    at::parallel_for(0, items, std::max<int64_t>(1, 16384 / (n * W)), [&](int64_t i0, int64_t i1) {
      std::vector<float> buf(n * W);
      cols_items(j, i0, i1, buf.data());
    });
  }
  return out;
}

}  // namespace lowprec
