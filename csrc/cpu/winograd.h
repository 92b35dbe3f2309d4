// Winograd F(2x2, 3x3) and F(4x4, 3x3) for wide layers: the interface of its kernels
// (winograd_kernel.h, one per instruction-set level in the kernel table).
//
// A tile of m x m conv outputs (m = 2: one 2x2 pool window; m = 4: 2x2 windows) comes from the
// (m+2) x (m+2) input tile under it as Y = A^T [ U (.) V ] A, with V = B^T d B per input
// channel, U = G g G^T per (output, input) channel and the elementwise products summed over
// input channels: (m+2)^2 small GEMMs, one per tile position. Per (c_in, c_out) pair and pool
// window that is 16 multiplies for F(2x2) and 9 for F(4x4), against the direct 36.
//
// Rounding: the products are of transformed values (sums and differences of up to 36 inputs
// and 9 weights, scaled by up to 25 and 1/36), so the float32 error, in units of
// eps * sum |w| |x|, is larger than the direct one: on random data about the direct error for
// F(2x2) and about 8x it for F(4x4) (~1.5e-6 of sum |w| |x|); on adversarial data (mixed-scale
// channels, one dominant tap) up to 3x and 70x it (README "Precision", bench/precision.py).
// SIMPLECNN_CPU_WINOGRAD=2x2 keeps to F(2x2); =0 turns Winograd off.
//
// The transforms subtract values, so inf - inf can give NaN where the direct sum gives +-inf.
// A call therefore reports any non-finite transformed value (or a non-finite conv value), and
// the caller recomputes all of the call's windows with direct sums (the implicit GEMM):
// results, NaN and Inf included, stay those of the stock path.
#pragma once

#include <cstdint>

namespace simplecnn::cpu {

constexpr int kWinogradCoBlock = 16;  // output channels per GEMM micro-kernel call
constexpr int kWinogradCiAlign = 16;  // input channels are padded to a multiple of this (zmm)

// One call computes the pooled (or, unpooled, the ReLU'd conv) outputs of `images` x `rows` x
// `cols` tiles of m x m conv outputs: tile rows [ty0, ty0 + rows) of `images` consecutive images,
// all tile columns. Tile t is image t / (rows * cols), tile row (t / cols) % rows, tile column t %
// cols; its input tile starts m * (its row within the call) rows and m * (its column) columns into
// the image's staged input.
struct WinogradTilesArgs {
  int m;  // conv outputs per tile side: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3)
  // Channels-last scratch [image][row][column][ci_padded], per image from input row m*ty0 - 1
  // and input column -1; zeros outside the image and in the padding channels.
  const float* in;
  int64_t in_image_stride;  // floats per staged image
  int64_t in_row_stride;    // floats per staged row
  int64_t ci_padded;        // multiple of kWinogradCiAlign
  int64_t images, rows, cols;
  int64_t co_padded;         // multiple of kWinogradCoBlock
  int64_t co_begin, co_end;  // the output channels of this call, multiples of kWinogradCoBlock
  const float* u;            // transformed weights [(m+2)^2][co_padded / 16][ci_padded][16]
  const float* bias;         // co_padded values
  float* v;                  // work space [(m+2)^2][tiles][ci_padded]
  float* products;           // work space [(m+2)^2][tiles][co_padded]
  // Result for channels [co_begin, co_end): [tiles][(m/2)^2 windows, row by row][co_padded],
  // relu(max of the window + bias); unpooled (`pool` false), [tiles][m*m conv outputs, row by
  // row][co_padded], relu(conv + bias).
  float* out;
  bool pool;
};

// The kernels (kernel_table.h: CpuKernels::winograd_tiles, transform_weights):
// - winograd_tiles(args) computes the tiles; false when it met a non-finite value (nothing
//   usable in `out`).
// - transform_weights(m, g, channels, u, position_stride, stream): the weight transform
//   U = G g G^T of F(m x m, 3x3), in double, of kWinogradCoBlock output channels and `channels`
//   input channels: g[ci][tap][16] in; out, rounded to float once,
//   u[position * position_stride + ci * 16 + channel] for the (m+2)^2 tile positions. With
//   `stream`, the lines bypass the caches (u and position_stride 64-byte aligned): for a U of
//   megabytes, read back once per group of tiles, caching it on the way only evicts the GEMMs'
//   data (measured 5-9% faster at 256 -> 256 and 256 -> 512 channels, 4% slower at 64 -> 128).

}  // namespace simplecnn::cpu
