// Winograd F(2x2, 3x3) for wide layers: the interface of the AVX2 kernel.
//
// The 2x2 window of one pooled output is one Winograd output tile: its four conv values come
// from the 4x4 input tile under it as Y = A^T [ U (.) V ] A, with V = B^T d B per input channel,
// U = G g G^T per (output, input) channel and the elementwise products summed over input channels
// (16 small GEMMs, one per tile position). That is 16 multiplies per (c_in, c_out) pair and
// window instead of the direct 36, so wide layers run ~2x faster than any direct kernel can.
//
// Rounding: the products are of transformed values (sums and differences of up to 4 inputs and
// 9 weights), so the float32 error bound, in units of eps * sum |w| |x|, is a few times the
// direct one. On random data the error is the stock path's; with mixed-scale channels and one
// dominant filter tap it was measured up to 43 such units against at most 18 for stock oneDNN
// (README "Precision"). SIMPLECNN_CPU_WINOGRAD=0 turns the path off.
//
// The transforms subtract values, so inf - inf can give NaN where the direct sum gives +-inf.
// A call therefore reports any non-finite transformed value (or a non-finite conv value), and
// the caller recomputes those pooled rows with the direct kernel: results, NaN and Inf
// included, stay those of the stock path.
#pragma once

#include <cstdint>

namespace simplecnn::cpu {

constexpr int kWinogradCoBlock = 16;  // output channels per GEMM micro-kernel (2 x 8 floats)
constexpr int kWinogradCiAlign = 8;   // input channels are padded to a multiple of this

// One call computes the pooled outputs of `images` x `rows` x `cols` windows ("tiles"): rows
// [py0, py0 + rows) of `images` consecutive images, all pooled columns. Tile t is image
// t / (rows * cols), pooled row (t / cols) % rows, pooled column t % cols.
struct WinogradTilesArgs {
  // Channels-last scratch [image][row][column][ci_padded], per image from input row 2*py0 - 1
  // and input column -1; zeros outside the image and in the padding channels.
  const float* in;
  int64_t in_image_stride;  // floats per staged image
  int64_t in_row_stride;    // floats per staged row
  int64_t ci_padded;        // multiple of kWinogradCiAlign
  int64_t images, rows, cols;
  int64_t co_padded;  // multiple of kWinogradCoBlock
  const float* u;     // transformed weights [16][co_padded / 16][ci_padded][16]
  const float* bias;  // co_padded values
  float* v;           // work space [16][tiles][ci_padded]
  float* m;           // work space [16][tiles][co_padded]
  float* pooled;      // result [tiles][co_padded]: relu(max of the window's conv values + bias)
};

// Computes the tiles; false when it met a non-finite value (nothing usable in `pooled`).
bool winograd_tiles_avx2(const WinogradTilesArgs& args);

// The weight transform U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], in double, of
// one input channel for kWinogradCoBlock output channels at once: g[tap][channel] in,
// u[tile position][channel] out (rounded to float once).
void transform_weights_avx2(const float* g, float (&u)[16][kWinogradCoBlock]);

}  // namespace simplecnn::cpu
