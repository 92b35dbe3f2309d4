// The "generic" level: the vector-layer kernels (vec/generic.h) built for the baseline target,
// for CPUs without AVX2 and for float64 on every level (the direct kernel and the backward
// loops).
#include "kernel_table.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "vec/generic.h"

namespace simplecnn::cpu {
namespace generic {
#include "backward_kernel.h"
#include "convert_kernel.h"
#include "direct_kernel.h"
#include "implicit_gemm_kernel.h"
#include "winograd_kernel.h"
// After the kernels it tables.
#include "level_kernels.h"
}  // namespace generic

const CpuKernels& generic_kernels() {
  // The AVX2 level's blocking, for 8-lane vectors.
  static const CpuKernels kernels = generic::level_kernels<3, 6>("generic");
  return kernels;
}

const DirectKernels<double>& generic_direct_kernels_f64() {
  static const DirectKernels<double> kernels = generic::direct_kernels<double, 2, 3>();
  return kernels;
}

const GradKernels<double>& generic_grad_kernels_f64() {
  static const GradKernels<double> kernels{generic::backward::fill_strips<double>,
                                           generic::backward::grad_weight<double>,
                                           generic::backward::grad_input<double>};
  return kernels;
}

}  // namespace simplecnn::cpu
