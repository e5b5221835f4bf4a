// grouped_mlp.cpp — the grouped expert MLP: forward with grouped GEMMs into preallocated buffers,
// backward written out by hand (dx; dw1, db1, dw2, db2, and dw3, db3 for SwiGLU), as pieces that
// the plain autograd function here and the chunked one of dispatch/overlap.cpp share.
#include "grouped_mlp.h"

#include "kernels/cpu/grouped_gemm.h"

namespace hybridmoe::detail {

using kernels::grouped_mm;
using kernels::grouped_mm_tn;
using kernels::segment_sum;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

torch::Tensor activate(const torch::Tensor& a, const torch::Tensor& g, Activation act) {
  switch (act) {
    case Activation::kGelu:
      return torch::gelu(a);
    case Activation::kRelu:
      return torch::relu(a);
    case Activation::kSwiGLU:
      return torch::silu(a) * g;
  }
  C10_THROW_ERROR(Error, c10::str("unknown activation"));
}

torch::Tensor mlp_forward(const torch::Tensor& x, const ExpertWeights& w,
                          const std::vector<int64_t>& counts, Activation act,
                          MlpActivations* keep) {
  const int64_t n = x.size(0), d = x.size(1), h = w.w1.size(2);
  // 1. First projection(s) into preallocated buffers: a = x w1 + b1 (g = x w3 + b3 for SwiGLU).
  auto a = torch::empty({n, h}, x.options());
  grouped_mm(x, w.w1, counts, false, w.b1, a);
  torch::Tensor g;
  if (act == Activation::kSwiGLU) {
    g = torch::empty({n, h}, x.options());
    grouped_mm(x, w.w3, counts, false, w.b3, g);
  }
  // 2. The activation (SwiGLU's product in place in silu's output), 3. the second projection:
  //    y = hidden w2 + b2.
  auto hidden = act == Activation::kSwiGLU ? at::silu(a).mul_(g) : activate(a, g, act);
  auto y = torch::empty({n, d}, x.options());
  grouped_mm(hidden, w.w2, counts, false, w.b2, y);
  if (keep != nullptr) *keep = MlpActivations{a, g, hidden};
  return y;
}

torch::Tensor mlp_backward_input(const torch::Tensor& dy, const torch::Tensor& a,
                                 const torch::Tensor& g, const ExpertWeights& w,
                                 const std::vector<int64_t>& counts, Activation act,
                                 torch::Tensor* da, torch::Tensor* dg) {
  const int64_t n = dy.size(0), d = dy.size(1), h = w.w1.size(2);
  // 1. Second projection: dhidden = dy w2^T.
  auto dhidden = torch::empty({n, h}, dy.options());
  grouped_mm(dy, w.w2, counts, /*trans_b=*/true, {}, dhidden);
  // 2. Through the activation, in place where it can be: dhidden's buffer becomes da (sparing a
  //    fresh [n, h] buffer and its page faults); SwiGLU's dg = dhidden silu(a) takes the one
  //    buffer it needs (silu's output), then da = silu'(a) (dhidden g) in dhidden's.
  if (act == Activation::kSwiGLU) {
    *dg = at::silu(a).mul_(dhidden);
    *da = at::silu_backward_out(dhidden, dhidden.mul_(g), a);
  } else if (act == Activation::kGelu) {
    *da = at::gelu_backward_out(dhidden, dhidden, a);
  } else {
    *da = at::threshold_backward_out(dhidden, dhidden, a, 0);
  }
  // 3. First projection(s): dx = da w1^T (+ dg w3^T).
  auto dx = torch::empty({n, d}, dy.options());
  grouped_mm(*da, w.w1, counts, true, {}, dx);
  if (act == Activation::kSwiGLU) grouped_mm(*dg, w.w3, counts, true, {}, dx, /*accumulate=*/true);
  return dx;
}

ExpertWeights mlp_backward_weights(const torch::Tensor& x, const torch::Tensor& hidden,
                                   const torch::Tensor& dy, const torch::Tensor& da,
                                   const torch::Tensor& dg, const std::vector<int64_t>& counts,
                                   const ExpertWeights& w) {
  ExpertWeights dw;
  dw.w2 = grouped_mm_tn(hidden, dy, counts);
  if (w.b2.defined()) dw.b2 = segment_sum(dy, counts);
  dw.w1 = grouped_mm_tn(x, da, counts);
  if (w.b1.defined()) dw.b1 = segment_sum(da, counts);
  if (dg.defined()) {
    dw.w3 = grouped_mm_tn(x, dg, counts);
    if (w.b3.defined()) dw.b3 = segment_sum(dg, counts);
  }
  return dw;
}

std::vector<torch::Tensor> saved_list(const torch::Tensor& x, const MlpActivations& keep,
                                      const ExpertWeights& w) {
  return {x, keep.a, keep.g, keep.hidden, w.w1, w.b1, w.w2, w.b2, w.w3, w.b3};
}

MlpSaved saved_from(const std::vector<torch::Tensor>& s) {
  TORCH_CHECK(s.size() == 10, "grouped MLP: 10 saved tensors expected, got ", s.size());
  return {s[0], {s[1], s[2], s[3]}, {s[4], s[5], s[6], s[7], s[8], s[9]}};
}

namespace {

using Opt = OptTensor;

class GroupedMLPFunction : public torch::autograd::Function<GroupedMLPFunction> {
 public:
  // x: [A, d] → [A, d]. See grouped_mlp(). Optional tensors are passed as c10::optional so that
  // absent ones are not autograd inputs.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& w1, const Opt& b1, const torch::Tensor& w2,
                               const Opt& b2, const Opt& w3, const Opt& b3,
                               std::vector<int64_t> counts, int64_t activation) {
    const ExpertWeights w{w1, value_of(b1), w2, value_of(b2), value_of(w3), value_of(b3)};
    auto x = x_in.contiguous();
    MlpActivations keep;
    auto y = mlp_forward(x, w, counts, static_cast<Activation>(activation), &keep);
    ctx->save_for_backward(saved_list(x, keep, w));
    ctx->saved_data["counts"] = c10::IValue(counts);
    ctx->saved_data["activation"] = activation;
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const MlpSaved s = saved_from(ctx->get_saved_variables());
    const auto counts = ctx->saved_data["counts"].toIntVector();
    const auto act = static_cast<Activation>(ctx->saved_data["activation"].toInt());
    auto dy = grads[0].contiguous();
    torch::Tensor da, dg;
    auto dx = mlp_backward_input(dy, s.keep.a, s.keep.g, s.w, counts, act, &da, &dg);
    const ExpertWeights dw = mlp_backward_weights(s.x, s.keep.hidden, dy, da, dg, counts, s.w);
    return {dx, dw.w1, dw.b1, dw.w2, dw.b2, dw.w3, dw.b3, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor grouped_mlp(const torch::Tensor& x, const ExpertWeights& w,
                          const std::vector<int64_t>& counts, Activation activation) {
  TORCH_CHECK(w.w1.defined() && w.w2.defined() && w.w1.dim() == 3,
              "grouped_mlp: w1 must be [experts, d, h], got ",
              w.w1.defined() ? w.w1.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(x.dim() == 2 && x.size(1) == w.w1.size(1), "grouped_mlp: x must be [A, ",
              w.w1.size(1), "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == w.w1.scalar_type(), "grouped_mlp: x dtype ", x.scalar_type(),
              " differs from the expert weights' dtype ", w.w1.scalar_type());
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == w.w1.size(0), "grouped_mlp: ", counts.size(),
              " segment sizes for ", w.w1.size(0), " experts");
  TORCH_CHECK(activation != Activation::kSwiGLU || w.w3.defined(), "grouped_mlp: SwiGLU needs w3");
  auto opt = optional_of;
  return GroupedMLPFunction::apply(x, w.w1, opt(w.b1), w.w2, opt(w.b2), opt(w.w3), opt(w.b3),
                                   counts, static_cast<int64_t>(activation));
}

torch::Tensor expert_mlp_plain(const torch::Tensor& x, const torch::Tensor& w1,
                               const torch::Tensor& b1, const torch::Tensor& w2,
                               const torch::Tensor& b2, const torch::Tensor& w3,
                               const torch::Tensor& b3, Activation activation) {
  auto a = x.mm(w1);
  if (b1.defined()) a = a + b1;
  torch::Tensor g;
  if (activation == Activation::kSwiGLU) {
    g = x.mm(w3);
    if (b3.defined()) g = g + b3;
  }
  auto y = activate(a, g, activation).mm(w2);
  if (b2.defined()) y = y + b2;
  return y;
}

}  // namespace hybridmoe::detail
