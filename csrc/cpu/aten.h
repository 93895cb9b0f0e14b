// The part of ATen the CPU kernels use: tensors, parallel_for and a few factory ops.
// Each kernel file includes only this (not <torch/types.h> or <torch/library.h>, which
// cost about 20 s of compile time per file); the ops are registered in ops.cpp.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
