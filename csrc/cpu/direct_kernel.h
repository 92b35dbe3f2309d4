// The direct micro-kernel, written once against the vector layer (vec/README.md) and stamped
// out per instruction set by kernels_*.cpp, which include this file inside their ISA's
// namespace after its Vec. See pooled_chunk.h for what one call computes.
//
// No #include here: everything this file uses is included by kernels_*.cpp before their
// `#pragma GCC target`, so no inline function of a shared header is compiled for an ISA.

// The window index the stock path's gradient takes (ChunkArgs::index) for Vec::size windows at
// once, from the four conv values of each window in max-pool order, stored as int8. Stock
// max-pool keeps the first of equal maxima and moves to every NaN it meets (so the last NaN
// wins); ReLU's gradient is zero where the max <= 0. The values are rounded to the storage
// dtype first: two that round to one number are a tie there.
template <typename T>
inline void store_window_indices(typename Vec<T>::V (&v)[4], StorageType storage, int8_t* dst,
                                 int n) {
  using VT = Vec<T>;
  for (int p = 0; p < 4; ++p) v[p] = VT::round_to(v[p], storage);
  typename VT::V best = v[0], index = VT::zero();
  for (int p = 1; p < 4; ++p) {
    const auto take = VT::either(VT::greater(v[p], best), VT::is_nan(v[p]));
    best = VT::select(take, v[p], best);
    index = VT::select(take, VT::set1(T(p)), index);
  }
  const auto flows = VT::either(VT::greater(best, VT::zero()), VT::is_nan(best));
  VT::store_int8(dst, VT::select(flows, index, VT::set1(T(-1))), n);
}

// What the kernel multiplies: one input channel per step, T values and weights, one FMA per
// product (every level). The avx512_bf16 level also stamps the kernel out over Bf16Pairs
// (vec/avx512.h): two bfloat16 channels per step, one vdpbf16ps per two products. An input has
// Elem (the staged values' and packed weights' type), `channels` (Elems per column, per step),
// load (a vector), broadcast (one value, or pair, as madd's broadcast operand) and madd. Also
// the implicit GEMM's (implicit_gemm_kernel.h, included after this file).
template <typename T>
struct OneChannel {
  using Elem = T;
  static constexpr int channels = 1;
  using X = typename Vec<T>::V;
  static X load(const T* p) { return Vec<T>::load(p); }
  static typename Vec<T>::Broadcast broadcast(const T* p) { return Vec<T>::broadcast(p); }
  static X madd(typename Vec<T>::Broadcast w, X x, X acc) { return Vec<T>::fmadd(w, x, acc); }
};

// Stores the first n lanes of v at element `at` of the call's output: `out`, or `out_16bit`
// (rounded to float16 / bfloat16, convert_kernel.h) where the call has one (ChunkArgs).
template <typename T, typename Args>
inline void store_output(const Args& a, int64_t at, typename Vec<T>::V v, int n) {
  using VT = Vec<T>;
  if constexpr (std::is_same_v<T, float>) {
    if (a.out_16bit != nullptr)
      return convert::store_16bit_first<VT>(a.out_16bit + at, v, n, a.storage);
  }
  if (n == VT::size) return VT::store(a.out + at, v);
  VT::store_first(a.out + at, v, n);
}

// Register blocking: for each input channel, the 4 input rows under one pooled row feed 2 conv
// rows x CO output channels x NV vectors of conv columns, 2 * CO * NV accumulators. Each input
// segment is loaded once per kx and feeds up to 2 * CO weights, each weight NV FMAs. AVX2:
// 2 x 3 x 2 = 12 of the 16 ymm registers; AVX-512: 2 x 6 x 2 = 24 of the 32 zmm. (Per channel
// pair with Bf16Pairs: the same loop, vdpbf16ps for FMA.)
// Pool false: conv3x3_relu2d's kernel, which stores both conv rows (a template parameter, not
// a flag: the other epilogue's code changed GCC's register allocation of the pooled loop).
template <typename T, int CO, int NV, bool Pool, typename In>
void direct_chunk(const ChunkArgs<T, typename In::Elem>& a) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int L = VT::size, COLS = NV * L, P = In::channels;
  V acc[2][CO][NV];  // [conv row][channel][vector of columns]
  // The loops over channels and vectors are unrolled at once (pragmas) so that GCC sees
  // constant indices and keeps `acc` in registers; left to its later unroller it keeps the
  // array on the stack.
#pragma GCC unroll 8
  for (int co = 0; co < CO; ++co) {
#pragma GCC unroll 2
    for (int h = 0; h < NV; ++h) {
      // Starting from the bias adds it to each conv value before the max, as the stock conv
      // does, so an infinite bias gives the stock NaN/Inf results.
      if (a.first) {
        acc[0][co][h] = acc[1][co][h] = VT::set1(a.bias[co]);
      } else {  // partial is [2][CO][COLS]
        acc[0][co][h] = VT::load(a.partial + (0 * CO + co) * COLS + h * L);
        acc[1][co][h] = VT::load(a.partial + (1 * CO + co) * COLS + h * L);
      }
    }
  }

  const typename In::Elem* in = a.in;
  const typename In::Elem* w = a.weight;
  for (int64_t ci = 0; ci < a.c_in; ++ci, in += a.in_ch_stride, w += 9 * CO * P) {
    // Opaque to GCC: otherwise it precomputes every weight address of the unrolled loop
    // and runs out of registers (8 stack accesses per channel at AVX2, 2 channels).
    asm("" : "+r"(w));
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {  // input row r feeds conv row 0 (ky = r) and 1 (ky = r - 1)
      const typename In::Elem* row = in + r * a.in_row_stride;
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
        typename In::X x[NV];
#pragma GCC unroll 2
        for (int h = 0; h < NV; ++h) x[h] = In::load(row + (kx + h * L) * P);
        if (r < 3) {
#pragma GCC unroll 8
          for (int co = 0; co < CO; ++co) {
            const auto wv = In::broadcast(w + ((r * 3 + kx) * CO + co) * P);
#pragma GCC unroll 2
            for (int h = 0; h < NV; ++h) acc[0][co][h] = In::madd(wv, x[h], acc[0][co][h]);
          }
        }
        if (r > 0) {
#pragma GCC unroll 8
          for (int co = 0; co < CO; ++co) {
            const auto wv = In::broadcast(w + (((r - 1) * 3 + kx) * CO + co) * P);
#pragma GCC unroll 2
            for (int h = 0; h < NV; ++h) acc[1][co][h] = In::madd(wv, x[h], acc[1][co][h]);
          }
        }
      }
    }
  }

  if (!a.last) {
#pragma GCC unroll 8
    for (int co = 0; co < CO; ++co) {
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) {
        VT::store(a.partial + (0 * CO + co) * COLS + h * L, acc[0][co][h]);
        VT::store(a.partial + (1 * CO + co) * COLS + h * L, acc[1][co][h]);
      }
    }
    return;
  }
  if constexpr (!Pool) {  // both conv rows, ReLU'd; the second row first, so that with
                          // out_row_stride 0 (one row left at an odd height) the first stays
#pragma GCC unroll 8
    for (int co = 0; co < CO; ++co) {
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) {
        const int n = a.n_out - h * L < L ? a.n_out - h * L : L;
        if (n <= 0) break;
        const int64_t at = co * a.out_ch_stride + h * L;
        store_output<T>(a, at + a.out_row_stride, VT::relu_keep_nan(acc[1][co][h]), n);
        store_output<T>(a, at, VT::relu_keep_nan(acc[0][co][h]), n);
      }
    }
    return;
  }
  // Pooling: vectors h and h + 1 (or h twice, for an odd last one) hold 2L conv columns, whose
  // even and odd columns are the left and right of L pooled columns.
#pragma GCC unroll 8
  for (int co = 0; co < CO; ++co) {
#pragma GCC unroll 2
    for (int h = 0; h < NV; h += 2) {
      const int h1 = h + 1 < NV ? h + 1 : h, first = h * L / 2;
      const int n = a.n_out - first < L ? a.n_out - first : L;
      if (n <= 0) break;
      if (a.index != nullptr) {
        V v[4];
        VT::even_odd(acc[0][co][h], acc[0][co][h1], v[0], v[1]);
        VT::even_odd(acc[1][co][h], acc[1][co][h1], v[2], v[3]);
        store_window_indices<T>(v, a.storage, a.index + co * a.index_ch_stride + first, n);
        continue;
      }
      // Vertical max of the two conv rows, then horizontal max of column pairs; ReLU once per
      // pooled value: max(relu(c)) == relu(max(c)).
      V even, odd;
      VT::even_odd(VT::max_keep_nan(acc[0][co][h], acc[1][co][h]),
                   VT::max_keep_nan(acc[0][co][h1], acc[1][co][h1]), even, odd);
      const V pooled = VT::relu_keep_nan(VT::max_keep_nan(even, odd));
      const int64_t at = co * a.out_ch_stride + first;
      // Streamed only where a vector is a whole cache line (AVX-512): halves written at
      // different times leave partial lines to the write-combining buffers.
      if (sizeof(V) == 64 && n == L && a.stream_out &&
          reinterpret_cast<uintptr_t>(a.out + at) % sizeof(V) == 0) {
        VT::stream(a.out + at, pooled);
      } else {
        store_output<T>(a, at, pooled, n);
      }
    }
  }
}

// Fills k.chunk[0 .. CO) and k.unpooled[0 .. CO) with the kernels for blocks of 1..CO output
// channels.
template <typename T, int NV, int CO, typename In>
void fill_direct_kernels(DirectKernels<T, typename In::Elem>& k) {
  if constexpr (CO > 0) {
    k.chunk[CO - 1] = direct_chunk<T, CO, NV, true, In>;
    k.unpooled[CO - 1] = direct_chunk<T, CO, NV, false, In>;
    fill_direct_kernels<T, NV, CO - 1, In>(k);
  }
}

// The direct kernels of one ISA: NV vectors of conv columns, blocks of up to MaxCO channels,
// multiplying In (OneChannel<T> or Bf16Pairs).
template <typename T, int NV, int MaxCO, typename In = OneChannel<T>>
DirectKernels<T, typename In::Elem> direct_kernels() {
  static_assert(MaxCO <= kMaxCoBlock && NV * Vec<T>::size <= kMaxChunkCols);
  // The backward reads staged rows up to its strips' width, whole kStripAlign vectors: the
  // staged rows are that wide when chunks are whole multiples of it.
  static_assert(NV * Vec<T>::size % kStripAlign == 0);
  DirectKernels<T, typename In::Elem> k;
  k.chunk_cols = NV * Vec<T>::size;
  k.max_co_block = MaxCO;
  k.channels_per_step = In::channels;
  fill_direct_kernels<T, NV, MaxCO, In>(k);
  return k;
}
