// Geometry of the fused CPU quantizers: x seen as [Bt, M, N] (contiguous), blocked in one of
// three ways, each covered by "panels" of bm rows whose columns fall in groups of gw:
//   rows  (1D blocks along N):   bm = 1,  gw = bs;  stored [Bt, M, Np],  scales [Bt, M, nb]
//   cols  (1D blocks along M):   bm = bs, gw = 1;   stored [Bt, N, Mp],  scales [Bt, N, mb]
//   tiles (bs x bs over M, N):   bm = bs, gw = bs;  stored [Bt, Mp, Np], scales [Bt, mb, nb]
// Np, Mp are N, M rounded up to the block (zero padding). In every mode one block is one
// (panel, column group) pair, so a panel's block scales form one vector over its columns.
#pragma once
#include <stdint.h>

#include <algorithm>
#include <numeric>

namespace lowprec {

enum PanelMode : int { kRows = 0, kCols = 1, kTiles = 2 };

// Elements per work item: its scratch rows (x, scales, codes) stay in L1.
constexpr int64_t kItemElements = 2048;

struct PanelGeometry {
  int64_t Bt, M, N;
  int mode, bs;
  int64_t bm, gw;          // panel height, column group width
  int64_t panels, groups;  // per batch: ceil(M / bm), ceil(N / gw)
  int64_t cw, chunks;      // columns per work item (a multiple of gw and of 16), items per panel
  int64_t ld;              // scratch row length: cw rounded up to 16

  PanelGeometry(int64_t Bt_, int64_t M_, int64_t N_, int mode_, int bs_)
      : Bt(Bt_), M(M_), N(N_), mode(mode_), bs(bs_) {
    bm = mode == kRows ? 1 : bs;
    gw = mode == kCols ? 1 : bs;
    panels = (M + bm - 1) / bm;
    groups = (N + gw - 1) / gw;
    const int64_t padded_cols = groups * gw;
    const int64_t unit = gw % 16 == 0 ? gw : std::lcm<int64_t>(gw, 16);
    const int64_t target = std::max<int64_t>(unit, (kItemElements / bm) / unit * unit);
    cw = std::max(unit, std::min(target, (padded_cols + unit - 1) / unit * unit));   // >= unit: an empty
    // tensor (padded_cols = 0) gets zero chunks, never a division by zero
    chunks = (padded_cols + cw - 1) / cw;
    ld = (cw + 15) / 16 * 16;
  }

  int64_t items() const { return Bt * panels * chunks; }
  int64_t padded_M() const { return panels * bm; }
  int64_t padded_N() const { return groups * gw; }
  // Stored code array [rows, cols] before nibble packing, and the scale grid [rows, cols].
  int64_t stored_rows() const { return mode == kCols ? Bt * N : Bt * (mode == kRows ? M : padded_M()); }
  int64_t stored_cols() const { return mode == kCols ? padded_M() : padded_N(); }
  int64_t scale_rows() const { return mode == kCols ? Bt * N : Bt * (mode == kRows ? M : panels); }
  int64_t scale_cols() const { return mode == kCols ? panels : groups; }
};

}  // namespace lowprec
