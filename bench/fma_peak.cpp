// The CPU's float32 FMA peak per instruction-set level, for the benchmark's "fraction of peak":
// every thread runs 12 independent chains of FMAs (enough to cover the FMA latency on both FMA
// units), with AVX2 and, where the CPU has AVX-512F, with AVX-512 (on some CPUs no faster: their
// 512-bit FMAs run as two 256-bit halves); where it has AVX512_BF16, the same with vdpbf16ps
// (two bfloat16 products per float32 lane: the bfloat16 peak, "avx512_bf16"). One line per
// level, "<level> <GFLOP/s> ...", the total over the threads. Built and run by bench/measure.py:
//   g++ -O2 -fopenmp bench/fma_peak.cpp -o fma_peak && OMP_NUM_THREADS=2 ./fma_peak
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>

constexpr int kChains = 12;

// One function per level, each compiled for its instruction set: kChains independent chains
// acc = STEP(acc) of V vectors (starting from different values, opaque to the optimiser so it
// cannot fold them into fewer), then the first lane of their sum. ASM_V: the register class
// of V in asm ("x": xmm/ymm 0-15, "v": any of the 32 zmm).
#define FMA_CHAINS(NAME, TARGET, V, SET1, ADD, FIRST_LANE, ASM_V, STEP)                     \
  __attribute__((target(TARGET))) static float NAME(long iterations) {                      \
    V acc[kChains];                                                                         \
    for (int i = 0; i < kChains; ++i) {                                                     \
      acc[i] = SET1(0.10f + 0.01f * i);                                                     \
      asm("" : "+" ASM_V(acc[i]));                                                          \
    }                                                                                       \
    for (long it = 0; it < iterations; ++it) {                                              \
      _Pragma("GCC unroll 12") for (int i = 0; i < kChains; ++i) { acc[i] = STEP(acc[i]); } \
    }                                                                                       \
    V sum = acc[0];                                                                         \
    for (int i = 1; i < kChains; ++i) sum = ADD(sum, acc[i]);                               \
    return FIRST_LANE(sum);                                                                 \
  }

// float32 FMAs: acc * 0.999999 + 1e-7 (bounded, no denormals).
#define FMA_STEP_256(a) _mm256_fmadd_ps(a, _mm256_set1_ps(0.999999f), _mm256_set1_ps(1e-7f))
#define FMA_STEP_512(a) _mm512_fmadd_ps(a, _mm512_set1_ps(0.999999f), _mm512_set1_ps(1e-7f))
// vdpbf16ps: acc + 1.0 * 1.0 + 1e-3 * 1e-3 per lane (pairs of bfloat16 bits 0x3f80, 0x3a83).
#define DOT_STEP_BF16(a)                                       \
  _mm512_dpbf16_ps(a, (__m512bh)_mm512_set1_epi32(0x3a833f80), \
                   (__m512bh)_mm512_set1_epi32(0x3a833f80))

FMA_CHAINS(fma_chains_avx2, "avx2,fma", __m256, _mm256_set1_ps, _mm256_add_ps, _mm256_cvtss_f32,
           "x", FMA_STEP_256)
FMA_CHAINS(fma_chains_avx512, "avx512f", __m512, _mm512_set1_ps, _mm512_add_ps, _mm512_cvtss_f32,
           "v", FMA_STEP_512)
FMA_CHAINS(dot_chains_avx512_bf16, "avx512f,avx512bf16", __m512, _mm512_set1_ps, _mm512_add_ps,
           _mm512_cvtss_f32, "v", DOT_STEP_BF16)

// Prints the GFLOP/s of `chains` (one call per thread, each `iterations` long, `lanes` products
// per instruction) on every thread at once: the best of 5 runs, as a peak is, on a machine shared
// with others.
static void measure(const char* level, float (*chains)(long), int lanes) {
  const long iterations = 100000000;
  float sink = chains(iterations / 20);  // warm up (clock ramp, the upper halves powered up)
  double best = 0;
  int threads = 1;
  for (int run = 0; run < 5; ++run) {
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
    {
#pragma omp single
      threads = omp_get_num_threads();
      sink += chains(iterations);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double flops = 2.0 * lanes * kChains * double(iterations) * threads;
    if (flops / seconds > best) best = flops / seconds;
  }
  std::printf("%s %.1f GFLOP/s on %d threads (checksum %g)\n", level, best / 1e9, threads, sink);
}

int main() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    measure("avx2", fma_chains_avx2, 8);
  }
  if (__builtin_cpu_supports("avx512f")) {
    measure("avx512", fma_chains_avx512, 16);
  }
  if (__builtin_cpu_supports("avx512bf16")) {
    measure("avx512_bf16", dot_chains_avx512_bf16, 32);
  }
}
