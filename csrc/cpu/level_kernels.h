// One level's kernel table (kernel_table.h: CpuKernels) from its stamped-out kernels. Included
// by kernels_*.cpp inside their ISA's namespace after the kernel headers (no #include here, as
// in direct_kernel.h).
//
// MaxCO: output channels per direct-kernel call, at most (2 conv rows x MaxCO channels x 2
// vectors of columns in registers). Rows: tiles per Winograd GEMM call, at most.
template <int MaxCO, int Rows>
CpuKernels level_kernels(const char* name) {
  CpuKernels k{name};
  k.direct = direct_kernels<float, 2, MaxCO>();
  k.window_gemm = implicit_gemm::window_gemm<>;
  k.transpose = implicit_gemm::transpose;
  k.winograd_tiles = winograd::compute_tiles<Rows>;
  k.winograd_gemm_rows = Rows;
  k.transform_weights = winograd::transform_weights;
  k.grad.fill_strips = backward::fill_strips<float>;
  k.grad.weight = backward::grad_weight<float>;
  k.grad.input = backward::grad_input<float>;
  constexpr int half = static_cast<int>(StorageType::kHalf);
  constexpr int bfloat16 = static_cast<int>(StorageType::kBFloat16);
  k.to_float[half] = convert::to_float<StorageType::kHalf>;
  k.to_float[bfloat16] = convert::to_float<StorageType::kBFloat16>;
  k.from_float[half] = convert::from_float<StorageType::kHalf>;
  k.from_float[bfloat16] = convert::from_float<StorageType::kBFloat16>;
  return k;
}
