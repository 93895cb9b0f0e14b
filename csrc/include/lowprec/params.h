// The format parameter lists that Python passes to every kernel (lowprec/_backends/blocked.py,
// format_params) turned into a BlockFormat: host code only (c10 types).
#pragma once
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include "lowprec/formats.h"

namespace lowprec {

inline BlockFormat block_format_from(c10::IntArrayRef ip, c10::ArrayRef<double> fp) {
  TORCH_CHECK(ip.size() == 16 && fp.size() == 4, "lowprec: bad format parameter lists");
  BlockFormat f;
  f.elem = Minifloat{int(ip[0]), int(ip[1]), int(ip[2]), float(fp[0]), int(ip[3])};
  f.elem_emax = int(ip[4]);
  f.scale_kind = int(ip[5]);
  f.scale = Minifloat{int(ip[6]), int(ip[7]), int(ip[8]), float(fp[1]), int(ip[9])};
  // the largest scale of the non-minifloat kinds (ScaleFormat.max), which tensor_encode_scale reads
  if (f.scale_kind == kE8M0) f.scale.max = exp2i(127);
  if (f.scale_kind == kFp32Scale) f.scale.max = 3.4028234663852886e38f;
  f.rule = int(ip[10]);
  f.scale_rounding = int(ip[11]);
  f.tensor_scale = int(ip[12]);
  f.division = int(ip[13]);
  TORCH_CHECK(f.division == kIeee || f.division == kReciprocal, "lowprec: division is 0 (ieee) or 1 (reciprocal)");
  f.four_over_six = int(ip[14]);
  TORCH_CHECK(f.four_over_six >= kFourOverSixOff && f.four_over_six <= kFourOverSixMae,
              "lowprec: four_over_six is 0 (off), 1 (mse) or 2 (mae)");
  f.scale_statistic = int(ip[15]);
  TORCH_CHECK(f.scale_statistic == kStatAmax || f.scale_statistic == kStatGaussian,
              "lowprec: scale_statistic is 0 (amax) or 1 (gaussian)");
  f.gaussian_kappa = float(fp[2]);
  f.pre_scale = float(fp[3]);
  TORCH_CHECK(f.rule >= kFloor && f.rule <= kRfloor, "lowprec: unknown scale rule");
  return f;
}

}  // namespace lowprec
