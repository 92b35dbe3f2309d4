// The backward pass's per-channel gradient loops (backward_grad.h: ChannelGradArgs), written
// once against the vector layer and stamped out per instruction set by kernels_*.cpp, which
// include this file inside their ISA's namespace after its Vec (no #include here, as in
// direct_kernel.h).
namespace backward {

// The strips of one pooled row from its gradient (`grad`, wo contiguous values) and window
// indices: conv row 2*py (strip) and 2*py + 1 (strip + stride) get the gradient at the window
// position the index names, zeros elsewhere, up to strip_w. Returns the sum of the gradient that
// flows (the bias gradient's share). Without branches: the positions are data-dependent.
template <typename T>
T fill_strips(const T* grad, const int8_t* index, int64_t wo, T* strip, int64_t stride,
              int64_t strip_w) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int L = VT::size;
  const V zero = VT::zero();
  V sum = zero;
  int64_t px = 0;
  for (; px + L <= wo; px += L) {
    const V k = VT::load_int8(index + px), g = VT::load(grad + px);
    // v[p]: the gradient where the index is p, else 0 (a select: no 0 * inf = NaN).
    V v[4];
    for (int p = 0; p < 4; ++p) v[p] = VT::select(VT::equal(k, VT::set1(T(p))), g, zero);
    sum = VT::add(sum, VT::add(VT::add(v[0], v[1]), VT::add(v[2], v[3])));
    // Positions (r, 0) and (r, 1) interleaved into conv columns 2*px, 2*px + 1 of row r.
    for (int r = 0; r < 2; ++r) {
      V low, high;
      VT::interleave(v[2 * r], v[2 * r + 1], low, high);
      VT::store(strip + r * stride + 2 * px, low);
      VT::store(strip + r * stride + 2 * px + L, high);
    }
  }
  T total = VT::sum(sum);
  for (; px < wo; ++px) {  // the last columns
    const int8_t k = index[px];
    const T v = k >= 0 ? grad[px] : T(0);
    strip[2 * px] = k == 0 ? v : T(0);
    strip[2 * px + 1] = k == 1 ? v : T(0);
    strip[stride + 2 * px] = k == 2 ? v : T(0);
    strip[stride + 2 * px + 1] = k == 3 ? v : T(0);
    total += v;
  }
  for (int64_t x = 2 * wo; x < strip_w; ++x) strip[x] = strip[stride + x] = T(0);
  return total;
}

// grad_weight[ky*3+kx] += sum over conv positions of strip * input(shifted by ky, kx).
template <typename T>
void grad_weight(const ChannelGradArgs<T>& a) {
  using VT = Vec<T>;
  using V = typename VT::V;
  V acc[9];
#pragma GCC unroll 9
  for (int k = 0; k < 9; ++k) acc[k] = VT::zero();
  for (int64_t py = 0; py < a.ho; ++py) {
    const T* top = a.strips + py * 2 * a.strip_stride;  // conv row 2*py
    const T* bottom = top + a.strip_stride;             // conv row 2*py + 1
    const T* row0 = a.rows + 2 * py * a.row_stride;     // input row 2*py - 1
    for (int64_t x = 0; x < a.strip_w; x += VT::size) {
      const V g0 = VT::load(top + x), g1 = VT::load(bottom + x);
      // Input row j (0..3 below row0) meets conv row 2*py through ky = j and conv row
      // 2*py + 1 through ky = j - 1: each loaded segment feeds both.
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const T* row = row0 + j * a.row_stride + x;
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx) {
          const V v = VT::load(row + kx);
          if (j < 3) acc[j * 3 + kx] = VT::fmadd(g0, v, acc[j * 3 + kx]);
          if (j > 0) acc[(j - 1) * 3 + kx] = VT::fmadd(g1, v, acc[(j - 1) * 3 + kx]);
        }
      }
    }
  }
#pragma GCC unroll 9
  for (int k = 0; k < 9; ++k) a.grad_weight[k] += VT::sum(acc[k]);
}

// grad_rows += the strips scattered through the weights (a transposed convolution): staged
// column c gets strip[c - kx] * weight[..][kx], for every column c < grad_w.
template <typename T>
void grad_input(const ChannelGradArgs<T>& a) {
  using VT = Vec<T>;
  using V = typename VT::V;
  V w[9];
#pragma GCC unroll 9
  for (int k = 0; k < 9; ++k) w[k] = VT::set1(a.weight[k]);
  for (int64_t py = 0; py < a.ho; ++py) {
    const T* top = a.strips + py * 2 * a.strip_stride;
    const T* bottom = top + a.strip_stride;
    T* row0 = a.grad_rows + 2 * py * a.grad_row_stride;  // input row 2*py - 1
    for (int64_t c = 0; c < a.grad_w; c += VT::size) {
      // Staged column c takes strip column c - kx: three shifted reads per strip row (the
      // margins hold zeros), summed in registers, then one read-modify-write per output row.
      const V t0 = VT::load(top + c), t1 = VT::load(top + c - 1), t2 = VT::load(top + c - 2);
      const V b0 = VT::load(bottom + c), b1 = VT::load(bottom + c - 1),
              b2 = VT::load(bottom + c - 2);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {  // input row 2*py - 1 + j: ky = j for t, ky = j - 1 for b
        T* out = row0 + j * a.grad_row_stride + c;
        V v = VT::load(out);
        if (j < 3) {
          v = VT::fmadd(w[j * 3 + 0], t0, v);
          v = VT::fmadd(w[j * 3 + 1], t1, v);
          v = VT::fmadd(w[j * 3 + 2], t2, v);
        }
        if (j > 0) {
          v = VT::fmadd(w[(j - 1) * 3 + 0], b0, v);
          v = VT::fmadd(w[(j - 1) * 3 + 1], b1, v);
          v = VT::fmadd(w[(j - 1) * 3 + 2], b2, v);
        }
        VT::store(out, v);
      }
    }
  }
}

}  // namespace backward
