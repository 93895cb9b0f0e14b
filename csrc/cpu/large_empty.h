// Output tensors of the memory-bound CPU kernels. A fresh multi-MiB output costs one page
// fault per 4 KiB page on first touch, which can take longer than the kernel itself; asking
// for transparent huge pages on the untouched buffer (Linux, THP in "madvise" or "always"
// mode) makes that one fault per 2 MiB. It only advises the kernel about this one buffer: the
// values, the allocator and every other allocation are unchanged, and it is a no-op elsewhere.
#pragma once
#include "aten.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lowprec {

inline at::Tensor large_empty(c10::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);   // advice only
#endif
  return t;
}

}  // namespace lowprec
