// The CPU kernel of simplecnn::_fused_backward: the gradients of the fused op, one image at a
// time, with nothing full-size allocated and nothing kept from the forward pass but its inputs.
//
// Per image:
// 1. Stage the input rows (as the forward does) and recompute, with the forward's register-
//    blocked micro-kernel, which window position each pooled output sends its gradient to
//    (stock max-pool + ReLU routing, direct_kernel.h: store_window_indices).
// 2. Per output channel, expand the pooled gradient into the two conv rows under each pooled
//    row (zeros except at the chosen positions): a [2 x 2*Wo] strip per pooled row.
// 3. Weight gradient: correlate the strips with the staged input rows; bias gradient: sum them;
//    input gradient: scatter the strips through the weights into a staged-rows buffer, written
//    out at the end.
// Weight and bias gradients are summed per thread and reduced at the end.
#include "../conv3x3_relu_maxpool2d.h"
#include "backward_grad.h"
#include "kernel_table.h"
#include "staging.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

namespace simplecnn {
namespace cpu {
namespace {

// direct_row's target for the recompute: window indices into [c_out][ho][wo].
struct IndexTarget {
  int8_t* index;
  int64_t plane, wo, py;
  StorageType storage;
  template <typename acc_t>
  void prepare(ChunkArgs<acc_t>& args, int64_t co0, int64_t x) {
    args.index = index + co0 * plane + py * wo + x / 2;
    args.index_ch_stride = plane;
    args.storage = storage;
  }
  template <typename acc_t>
  void finish(const ChunkArgs<acc_t>&, int64_t, int, int64_t) {}
};

using Grads =
    std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>;

// One backward call: the recompute and strips (steps 1-2), then either the fused gradients
// (step 3) or the full-size pre-activation gradient for a library's conv backward.
template <typename scalar_t, typename acc_t>
class FusedBackward {
 public:
  FusedBackward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias)
      : grad_out_(grad_out), input_(input), kernels_(cpu_kernels()),
        direct_(direct_kernels<acc_t>(kernels_)), grad_(grad_kernels<acc_t>(kernels_)),
        g_(input, weight, direct_), N_(input.size(0)), H_(input.size(2)), Ho_(input.size(2) / 2),
        Wo_(g_.wo),
        // Strips cover conv columns [0, 2*Wo) rounded up to whole vectors; the staged rows are
        // wide enough for those reads (padded_w >= round_up(2*Wo, chunk_cols) + 2).
        strip_w_(ceil_div(2 * Wo_, kStripAlign) * kStripAlign),
        strip_stride_(strip_w_ + 2 * kStripMargin), strips_per_channel_(Ho_ * 2 * strip_stride_),
        packed_(pack_direct_weights<scalar_t, acc_t>(weight, g_)),
        bias_(read_bias<scalar_t, acc_t>(bias, weight.size(0))) {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    weights_.resize(g_.c_out * g_.c_in * 9);  // [c_out][c_in][9] for the gradient loops
    for (int64_t co = 0; co < g_.c_out; ++co)
      for (int64_t ci = 0; ci < g_.c_in; ++ci)
        for (int64_t k = 0; k < 9; ++k)
          weights_[(co * g_.c_in + ci) * 9 + k] = static_cast<acc_t>(
              w[co * weight.stride(0) + ci * weight.stride(1) + (k / 3) * weight.stride(2) +
                (k % 3) * weight.stride(3)]);
  }

  // The input, weight and bias gradients output_mask asks for (step 3, fused).
  Grads grads(std::array<bool, 3> mask) {
    at::Tensor grad_input;
    if (mask[0]) {  // every element is written below
      grad_input = at::empty(input_.sizes(),
                             input_.options().memory_format(input_.suggest_memory_format()));
    }
    // Per-thread sums of the weight and bias gradients: [threads][c_out * c_in * 9 + c_out].
    const int64_t threads = at::get_num_threads();
    const int64_t sums_size = weight_size() + g_.c_out;
    std::vector<acc_t> sums(threads * sums_size, acc_t(0));

    at::parallel_for(0, N_, 1, [&](int64_t begin, int64_t end) {
      acc_t* my_sums = sums.data() + at::get_thread_num() * sums_size;
      Workspace ws(*this);
      std::vector<acc_t> grad_rows(mask[0] ? staged_rows() * grad_row_stride() : 0);
      for (int64_t n = begin; n < end; ++n) {
        fill_image_strips(n, ws, my_sums + weight_size());
        std::fill(grad_rows.begin(), grad_rows.end(), acc_t(0));
        add_image_grads(ws, mask, grad_rows.data(), my_sums);
        if (mask[0]) store_grad_input(grad_rows.data(), n, grad_input);
      }
    });

    for (int64_t t = 1; t < threads; ++t)
      for (int64_t i = 0; i < sums_size; ++i) sums[i] += sums[t * sums_size + i];
    std::optional<at::Tensor> grad_weight, grad_bias;
    if (mask[1]) grad_weight = to_tensor(sums.data(), {g_.c_out, g_.c_in, 3, 3});
    if (mask[2]) grad_bias = to_tensor(sums.data() + weight_size(), {g_.c_out});
    return {mask[0] ? std::optional<at::Tensor>(grad_input) : std::nullopt, grad_weight, grad_bias};
  }

  // The gradient of the conv output (before bias and ReLU), full-size: the strips written out.
  at::Tensor conv_grad() {
    at::Tensor out = at::empty({N_, g_.c_out, H_, g_.w},
                               input_.options().memory_format(input_.suggest_memory_format()));
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t oN = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
    at::parallel_for(0, N_, 1, [&](int64_t begin, int64_t end) {
      Workspace ws(*this);
      std::vector<acc_t> unused_bias_sums(g_.c_out);
      for (int64_t n = begin; n < end; ++n) {
        fill_image_strips(n, ws, unused_bias_sums.data());
        for (int64_t co = 0; co < g_.c_out; ++co) {
          const acc_t* strips = channel_strips(ws, co);
          for (int64_t y = 0; y < H_; ++y)  // rows and columns past 2*Ho, 2*Wo get nothing
            for (int64_t x = 0; x < g_.w; ++x)
              o[n * oN + co * oC + y * oH + x * oW] = (y < 2 * Ho_ && x < 2 * Wo_)
                                                          ? static_cast<scalar_t>(
                                                                strips[y * strip_stride_ + x])
                                                          : scalar_t(0);
        }
      }
    });
    return out;
  }

 private:
  int64_t staged_rows() const { return 2 * Ho_ + 2; }
  int64_t weight_size() const { return g_.c_out * g_.c_in * 9; }
  // The staged input gradient: [row][c_in][grad_w], columns -1 .. 2*Wo (and up to W) rounded
  // up to whole vectors.
  int64_t grad_w() const {
    return ceil_div(std::max(2 * Wo_ + 2, g_.w + 2), kStripAlign) * kStripAlign;
  }
  int64_t grad_row_stride() const { return g_.c_in * grad_w(); }

  // Per-thread buffers.
  struct Workspace {
    explicit Workspace(const FusedBackward& b)
        : rows(b.staged_rows() * b.g_.row_stride), partial(2 * b.g_.c_out * b.g_.chunk_cols),
          strips(b.g_.c_out * b.strips_per_channel_ + 2 * kStripMargin, acc_t(0)),
          index(b.g_.c_out * b.Ho_ * b.Wo_), grad_row(b.Wo_) {}
    std::vector<acc_t> rows, partial, strips;
    std::vector<int8_t> index;
    std::vector<acc_t> grad_row;
  };

  const acc_t* channel_strips(const Workspace& ws, int64_t co) const {
    return ws.strips.data() + kStripMargin + co * strips_per_channel_;
  }

  // Steps 1-2 for image n: stage its rows, recompute the window indices, fill every channel's
  // strips, add each channel's flowing gradient to bias_sums[co].
  void fill_image_strips(int64_t n, Workspace& ws, acc_t* bias_sums) {
    const int64_t plane = Ho_ * Wo_;
    stage_rows<scalar_t, acc_t>(kernels_, input_, n, -1, staged_rows(), g_.padded_w,
                                ws.rows.data());
    for (int64_t py = 0; py < Ho_; ++py) {
      IndexTarget target{ws.index.data(), plane, Wo_, py, storage_type<scalar_t>()};
      direct_row(g_, direct_, ws.rows.data() + 2 * py * g_.row_stride, packed_.data(), bias_.data(),
                 ws.partial.data(), target);
    }
    const scalar_t* go = grad_out_.const_data_ptr<scalar_t>();
    const int64_t gN = grad_out_.stride(0), gC = grad_out_.stride(1), gH = grad_out_.stride(2),
                  gW = grad_out_.stride(3);
    for (int64_t co = 0; co < g_.c_out; ++co) {
      acc_t sum = 0;
      for (int64_t py = 0; py < Ho_; ++py) {
        const scalar_t* grad = go + n * gN + co * gC + py * gH;
        for (int64_t px = 0; px < Wo_; ++px) ws.grad_row[px] = static_cast<acc_t>(grad[px * gW]);
        const int8_t* k = ws.index.data() + co * plane + py * Wo_;
        acc_t* strip = ws.strips.data() + kStripMargin + co * strips_per_channel_ +
                       py * 2 * strip_stride_;
        sum += grad_.fill_strips(ws.grad_row.data(), k, Wo_, strip, strip_stride_, strip_w_);
      }
      bias_sums[co] += sum;
    }
  }

  // Step 3 for the image whose strips `ws` holds, as far as `mask` asks: the input gradient
  // added to `grad_rows` (staged as grad_w() describes), the weight gradient to `weight_sums`
  // ([c_out][c_in][9]).
  void add_image_grads(const Workspace& ws, std::array<bool, 3> mask, acc_t* grad_rows,
                       acc_t* weight_sums) const {
    const int64_t gw = grad_w(), grad_stride = grad_row_stride();
    // Input channel outer, output channel inner: one input channel's staged rows (and its
    // gradient rows) stay in L1 while the strips stream through in order.
    for (int64_t ci = 0; ci < g_.c_in; ++ci)
      for (int64_t co = 0; co < g_.c_out; ++co) {
        const int64_t pair = (co * g_.c_in + ci) * 9;
        const ChannelGradArgs<acc_t> args{ws.rows.data() + ci * g_.padded_w,
                                          g_.row_stride,
                                          grad_rows + ci * gw,
                                          grad_stride,
                                          gw,
                                          channel_strips(ws, co),
                                          strip_stride_,
                                          strip_w_,
                                          Ho_,
                                          weights_.data() + pair,
                                          weight_sums + pair};
        if (mask[1]) grad_.weight(args);
        if (mask[0]) grad_.input(args);
      }
  }

  // Image n of grad_input from the staged gradient rows: staged row r, column c hold input
  // row r - 1, column c - 1.
  void store_grad_input(const acc_t* grad_rows, int64_t n, const at::Tensor& grad_input) const {
    const int64_t gw = grad_w(), grad_stride = grad_row_stride();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>() + n * grad_input.stride(0);
    for (int64_t ci = 0; ci < g_.c_in; ++ci)
      for (int64_t y = 0; y < H_; ++y)  // H <= 2 * Ho + 1 = staged_rows - 1
        for (int64_t x = 0; x < g_.w; ++x)
          gi[ci * grad_input.stride(1) + y * grad_input.stride(2) + x * grad_input.stride(3)] =
              static_cast<scalar_t>(grad_rows[(y + 1) * grad_stride + ci * gw + x + 1]);
  }

  // `values` in a new tensor of the input's dtype and `sizes` (contiguous).
  at::Tensor to_tensor(const acc_t* values, at::IntArrayRef sizes) const {
    at::Tensor t = at::empty(sizes, input_.options());
    scalar_t* dst = t.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) dst[i] = static_cast<scalar_t>(values[i]);
    return t;
  }

  const at::Tensor& grad_out_;
  const at::Tensor& input_;
  const CpuKernels& kernels_;  // the level's, read once per call
  const DirectKernels<acc_t>& direct_;
  const GradKernels<acc_t>& grad_;
  const DirectGeometry g_;
  const int64_t N_, H_, Ho_, Wo_, strip_w_, strip_stride_, strips_per_channel_;
  const std::vector<acc_t> packed_, bias_;
  std::vector<acc_t> weights_;
};

}  // namespace
}  // namespace cpu

// The checks both backward ops share.
static void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& input,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_inputs(input, weight, bias);
  // The sizes by value: a temporary tensor's sizes() would dangle after this statement.
  const std::vector<int64_t> expected{input.size(0), weight.size(0), input.size(2) / 2,
                                      input.size(3) / 2};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected),
              "conv3x3_relu_maxpool2d backward: expected grad_output of shape ", expected, ", got ",
              grad_out.sizes());
  TORCH_CHECK(
      grad_out.scalar_type() == input.scalar_type() && grad_out.device() == input.device(),
      "conv3x3_relu_maxpool2d backward: grad_output must have the input's dtype and device");
}

#define SIMPLECNN_DISPATCH_CPU(NAME, ...)                                                    \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), NAME, [&] { \
    using acc_t = at::opmath_type<scalar_t>;                                                 \
    __VA_ARGS__                                                                              \
  })

at::Tensor conv_grad_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                         const at::Tensor& weight, const std::optional<at::Tensor>& bias);

cpu::Grads fused_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                              const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              std::array<bool, 3> output_mask) {
  check_backward_inputs(grad_out, input, weight, bias);
  // With an infinite or NaN input or weight, the gradients' NaN pattern depends on which
  // products of zero and infinity are formed: the strips here cover whole vectors of conv
  // columns, the stock conv backward exactly the image. Such calls take the stock conv backward
  // on the conv-output gradient, which gives the stock pattern.
  if (!cpu::all_finite(input) || !cpu::all_finite(weight)) {
    const at::Tensor grad_conv = conv_grad_cpu(grad_out, input, weight, bias);
    const auto [gi, gw, gb] = at::convolution_backward(
        grad_conv, input, weight, at::OptionalIntArrayRef(weight.sizes().slice(0, 1)), {1, 1},
        {1, 1}, {1, 1}, false, {0, 0}, 1, output_mask);
    const auto defined = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    return {defined(gi), defined(gw), bias.has_value() ? defined(gb) : std::nullopt};
  }
  cpu::Grads grads;
  SIMPLECNN_DISPATCH_CPU("conv3x3_relu_maxpool2d_backward_cpu", {
    grads = cpu::FusedBackward<scalar_t, acc_t>(grad_out, input, weight, bias).grads(output_mask);
  });
  return grads;
}

at::Tensor conv_grad_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                         const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_backward_inputs(grad_out, input, weight, bias);
  at::Tensor out;
  SIMPLECNN_DISPATCH_CPU("conv3x3_relu_maxpool2d_conv_grad_cpu", {
    out = cpu::FusedBackward<scalar_t, acc_t>(grad_out, input, weight, bias).conv_grad();
  });
  return out;
}

}  // namespace simplecnn

TORCH_LIBRARY_IMPL(simplecnn, CPU, m) {
  m.impl("_fused_backward", &simplecnn::fused_backward_cpu);
  m.impl("_conv_grad", &simplecnn::conv_grad_cpu);
}
