// The CUDA kernel of simplecnn::_fused_forward (backend "cuda").
//
// A block of 128 threads owns one image's tile of 8 x 16 pooled outputs for kCoPerThread output
// channels. Per chunk of input channels it stages the input tile with its 1-pixel halo
// (2*8+2 rows x 2*16+2 columns) and the chunk's weights in shared memory, with coalesced loads
// along the input rows; each thread then computes the four conv values of its pooled window for
// all kCoPerThread channels in registers, rounded as the stock conv rounds them (cuDNN, then
// `add_` of the bias: with round_before_bias the sums start from zero and are rounded to the
// dtype before the bias is added, so a float16 sum >= 65520 is Inf whatever the bias; else they
// start from the bias), and finally takes the max over the window (NaN-propagating, as the stock
// max-pool), applies ReLU once and stores the pooled values. The conv output never reaches global
// memory. Unpooled (Pool false: conv3x3_relu2d), the same windows cover the conv output and each
// thread stores its four conv values after ReLU.
//
// Any input and output strides are read directly (channels_last input is staged through the
// same strided loads, less coalesced; no contiguous copy is made). float, half and bfloat16
// accumulate in float, double in double.
#include "fused_forward_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace simplecnn::cuda {
namespace {

constexpr int kTileH = 8;   // pooled rows per block
constexpr int kTileW = 16;  // pooled columns per block
constexpr int kThreads = kTileH * kTileW;
constexpr int kInRows = 2 * kTileH + 2;  // input rows of the tile, halo included
constexpr int kInCols = 2 * kTileW + 2;
constexpr int kCoPerThread = 8;  // output channels per block (every thread does all of them)
constexpr int kCiChunk = 4;      // input channels staged per shared-memory round

// The stock max-pool's max and ReLU, as the CPU vector layer's max_keep_nan and relu_keep_nan
// (csrc/cpu/vec/); these are the only device-side copies. Unlike the CPU's, this ReLU turns -0
// into +0.
template <typename acc_t>
__device__ __forceinline__ acc_t max_keep_nan(acc_t a, acc_t b) {
  return (a != a || a > b) ? a : b;  // NaN wins, as in the stock max-pool
}

template <typename acc_t>
__device__ __forceinline__ acc_t relu_keep_nan(acc_t a) {
  return (a != a || a > acc_t(0)) ? a : acc_t(0);  // NaN passes, as in the stock ReLU
}

// Ho x Wo pool windows: the pooled output's size, or unpooled the windows covering the output.
template <typename scalar_t, typename acc_t, bool Pool>
__global__ void __launch_bounds__(kThreads)
    fused_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                         const scalar_t* __restrict__ b, scalar_t* __restrict__ out, int64_t C_in,
                         int64_t H, int64_t W, int64_t C_out, int64_t Ho, int64_t Wo,
                         int64_t tiles_w, int64_t tiles_per_image, int64_t sxn, int64_t sxc,
                         int64_t sxh, int64_t sxw, int64_t swo, int64_t swi, int64_t swh,
                         int64_t sww, int64_t sb, int64_t son, int64_t soc, int64_t soh,
                         int64_t sow, bool round_before_bias) {
  __shared__ acc_t tile[kCiChunk][kInRows][kInCols];
  __shared__ acc_t weights[kCiChunk][kCoPerThread][9];

  const int64_t n = blockIdx.x / tiles_per_image;
  const int64_t t = blockIdx.x % tiles_per_image;
  const int64_t py0 = (t / tiles_w) * kTileH, px0 = (t % tiles_w) * kTileW;
  const int64_t co0 = int64_t(blockIdx.y) * kCoPerThread;
  const int ty = threadIdx.x / kTileW, tx = threadIdx.x % kTileW;
  const int64_t y0 = 2 * py0 - 1, x0 = 2 * px0 - 1;  // input position of tile[.][0][0]

  acc_t acc[kCoPerThread][4];  // [channel][window position a*2+b]
#pragma unroll
  for (int j = 0; j < kCoPerThread; ++j) {
    const acc_t bias = (b != nullptr && co0 + j < C_out && !round_before_bias)
                           ? acc_t(b[(co0 + j) * sb])
                           : acc_t(0);
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[j][q] = bias;
  }

  const scalar_t* x_img = x + n * sxn;
  for (int64_t ci0 = 0; ci0 < C_in; ci0 += kCiChunk) {
    __syncthreads();  // the previous chunk is consumed
    // Stage the chunk's input tile: consecutive threads take consecutive columns.
    for (int i = threadIdx.x; i < kCiChunk * kInRows * kInCols; i += kThreads) {
      const int c = i / (kInRows * kInCols), r = (i / kInCols) % kInRows, col = i % kInCols;
      const int64_t ci = ci0 + c, y = y0 + r, xx = x0 + col;
      acc_t v = acc_t(0);  // zero padding outside the image, and past the last channel
      if (ci < C_in && y >= 0 && y < H && xx >= 0 && xx < W) {
        v = acc_t(x_img[ci * sxc + y * sxh + xx * sxw]);
      }
      tile[c][r][col] = v;
    }
    for (int i = threadIdx.x; i < kCiChunk * kCoPerThread * 9; i += kThreads) {
      const int c = i / (kCoPerThread * 9), j = (i / 9) % kCoPerThread, k = i % 9;
      const int64_t ci = ci0 + c, co = co0 + j;
      weights[c][j][k] = (ci < C_in && co < C_out)
                             ? acc_t(w[co * swo + ci * swi + (k / 3) * swh + (k % 3) * sww])
                             : acc_t(0);
    }
    __syncthreads();

#pragma unroll
    for (int c = 0; c < kCiChunk; ++c) {
      acc_t patch[4][4];  // the thread's 4x4 input patch under its window
#pragma unroll
      for (int dy = 0; dy < 4; ++dy)
#pragma unroll
        for (int dx = 0; dx < 4; ++dx) patch[dy][dx] = tile[c][2 * ty + dy][2 * tx + dx];
#pragma unroll
      for (int j = 0; j < kCoPerThread; ++j) {
        const acc_t* wj = weights[c][j];  // same address in every thread: a broadcast
#pragma unroll
        for (int ky = 0; ky < 3; ++ky)
#pragma unroll
          for (int kx = 0; kx < 3; ++kx) {
            const acc_t wv = wj[ky * 3 + kx];
            acc[j][0] += wv * patch[ky][kx];
            acc[j][1] += wv * patch[ky][kx + 1];
            acc[j][2] += wv * patch[ky + 1][kx];
            acc[j][3] += wv * patch[ky + 1][kx + 1];
          }
      }
    }
  }

  const int64_t py = py0 + ty, px = px0 + tx;
  if (py >= Ho || px >= Wo) return;
  if (round_before_bias) {  // the conv rounded to the dtype, plus the bias, rounded again
#pragma unroll
    for (int j = 0; j < kCoPerThread; ++j) {
      const acc_t bias = (b != nullptr && co0 + j < C_out) ? acc_t(b[(co0 + j) * sb]) : acc_t(0);
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[j][q] = acc_t(scalar_t(acc_t(scalar_t(acc[j][q])) + bias));
    }
  }
  if constexpr (!Pool) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t y = 2 * py + q / 2, xx = 2 * px + q % 2;
      if (y >= H || xx >= W) continue;  // odd sizes: the last windows are partly outside
      scalar_t* o = out + n * son + y * soh + xx * sow;
#pragma unroll
      for (int j = 0; j < kCoPerThread; ++j) {
        if (co0 + j >= C_out) break;
        o[(co0 + j) * soc] = scalar_t(relu_keep_nan(acc[j][q]));
      }
    }
    return;
  }
  scalar_t* o = out + n * son + py * soh + px * sow;
#pragma unroll
  for (int j = 0; j < kCoPerThread; ++j) {
    if (co0 + j >= C_out) break;
    const acc_t m = max_keep_nan(max_keep_nan(acc[j][0], acc[j][1]),
                                 max_keep_nan(acc[j][2], acc[j][3]));
    o[(co0 + j) * soc] = scalar_t(relu_keep_nan(m));  // ReLU once, after the max
  }
}

}  // namespace

bool has_kernel_image() {
  // Every instantiation is compiled for the same architectures: one stands for all.
  cudaFuncAttributes attributes;
  const cudaError_t error = cudaFuncGetAttributes(&attributes,
                                                  fused_forward_kernel<float, float, true>);
  if (error == cudaErrorNoKernelImageForDevice || error == cudaErrorInvalidDeviceFunction) {
    (void)cudaGetLastError();  // not sticky: cleared, so later CUDA calls do not report it
    return false;
  }
  C10_CUDA_CHECK(error);  // anything else (a driver too old for the PTX, ...) is an error
  return true;
}

void launch_fused_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& out, bool pool,
                          bool round_before_bias) {
  const int64_t N = input.size(0), C_in = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t C_out = weight.size(0);
  const int64_t Ho = pool ? out.size(2) : (H + 1) / 2, Wo = pool ? out.size(3) : (W + 1) / 2;
  const int64_t tiles_w = (Wo + kTileW - 1) / kTileW;
  const int64_t tiles_per_image = ((Ho + kTileH - 1) / kTileH) * tiles_w;
  const int64_t blocks = N * tiles_per_image;
  const int64_t co_blocks = (C_out + kCoPerThread - 1) / kCoPerThread;
  // CUDA's grid limits: 2^31 - 1 blocks in x, 65535 in y.
  const char* op = pool ? "conv3x3_relu_maxpool2d" : "conv3x3_relu2d";
  TORCH_CHECK(blocks <= 0x7fffffff, op, ": input too large for one launch (", blocks, " blocks)");
  TORCH_CHECK(co_blocks <= 65535, op, ": the CUDA kernel takes at most ", 65535 * kCoPerThread,
              " output channels, got weight with C_out=", C_out);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(co_blocks));
  // The current stream, so CUDA graphs and torch.compile(mode="reduce-overhead") see the work.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "conv3x3_relu_maxpool2d_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        auto kernel = pool ? fused_forward_kernel<scalar_t, acc_t, true>
                           : fused_forward_kernel<scalar_t, acc_t, false>;
        kernel<<<grid, kThreads, 0, stream>>>(
            input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr,
            out.mutable_data_ptr<scalar_t>(), C_in, H, W, C_out, Ho, Wo, tiles_w, tiles_per_image,
            input.stride(0), input.stride(1), input.stride(2), input.stride(3), weight.stride(0),
            weight.stride(1), weight.stride(2), weight.stride(3),
            bias.has_value() ? bias->stride(0) : 0, out.stride(0), out.stride(1), out.stride(2),
            out.stride(3), round_before_bias);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace simplecnn::cuda
