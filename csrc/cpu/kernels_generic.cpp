// The "generic" level: the vector-layer kernels (vec/generic.h) built for the baseline target,
// for CPUs without AVX2 and for float64 on every level.
#include "kernel_table.h"

#include <cstdint>

#include "vec/generic.h"

namespace simplecnn::cpu {
namespace generic {
#include "direct_kernel.h"
}  // namespace generic

const CpuKernels& generic_kernels() {
  static const CpuKernels kernels = [] {
    CpuKernels k{"generic"};
    k.wide_level = "generic";  // none: the direct kernel runs
    k.direct = generic::direct_kernels<float, 2, 3>();
    return k;
  }();
  return kernels;
}

const DirectKernels<double>& generic_direct_kernels_f64() {
  static const DirectKernels<double> kernels = generic::direct_kernels<double, 2, 3>();
  return kernels;
}

}  // namespace simplecnn::cpu
