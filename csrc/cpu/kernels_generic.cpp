// The "generic" level: the vector-layer kernels (vec/generic.h) built for the baseline target,
// for CPUs without AVX2 and for float64 on every level (the direct kernel). The backward
// loops are the drivers' portable ones.
#include "kernel_table.h"

#include <cstdint>

#include "vec/generic.h"

namespace simplecnn::cpu {
namespace generic {
#include "direct_kernel.h"
#include "implicit_gemm_kernel.h"
#include "winograd_kernel.h"
}  // namespace generic

const CpuKernels& generic_kernels() {
  static const CpuKernels kernels = [] {
    CpuKernels k{"generic"};
    k.direct = generic::direct_kernels<float, 2, 3>();
    k.wide_level = "generic";
    k.window_gemm = generic::implicit_gemm::window_gemm;
    k.transpose = generic::implicit_gemm::transpose;
    k.winograd_tiles = generic::winograd::compute_tiles<6>;
    k.winograd_gemm_rows = 6;
    k.transform_weights = generic::winograd::transform_weights;
    return k;
  }();
  return kernels;
}

const DirectKernels<double>& generic_direct_kernels_f64() {
  static const DirectKernels<double> kernels = generic::direct_kernels<double, 2, 3>();
  return kernels;
}

}  // namespace simplecnn::cpu
