// grouped_mlp.cpp — the fused grouped expert MLP: forward with grouped GEMMs into preallocated
// buffers, backward written out by hand (dx, dw1, db1, dw2, db2, and dw3, db3 for SwiGLU).
#include "grouped_mlp.h"

#include "kernels/cpu/grouped_gemm.h"

namespace hybridmoe::detail {

using kernels::grouped_mm;
using kernels::grouped_mm_tn;
using kernels::segment_sum;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

class GroupedMLPFunction : public torch::autograd::Function<GroupedMLPFunction> {
 public:
  // x: [A, d] → [A, d]. See grouped_mlp().
  // Optional tensors are passed as c10::optional so that absent ones are not autograd inputs.
  using Opt = c10::optional<torch::Tensor>;
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& w1, const Opt& b1_opt, const torch::Tensor& w2,
                               const Opt& b2_opt, const Opt& w3_opt, const Opt& b3_opt,
                               std::vector<int64_t> counts, int64_t activation) {
    auto get = [](const Opt& t) { return t.has_value() ? *t : torch::Tensor(); };
    const auto b1 = get(b1_opt), b2 = get(b2_opt), w3 = get(w3_opt), b3 = get(b3_opt);
    auto x = x_in.contiguous();
    const int64_t A = x.size(0), d = x.size(1), h = w1.size(2);
    const auto act = static_cast<Activation>(activation);
    // 1. First projection(s): a = x w1 + b1 (and g = x w3 + b3 for SwiGLU).
    auto a = torch::empty({A, h}, x.options());
    grouped_mm(x, w1, counts, false, b1, a);
    torch::Tensor g, hidden;
    if (act == Activation::kSwiGLU) {
      g = torch::empty({A, h}, x.options());
      grouped_mm(x, w3, counts, false, b3, g);
      hidden = torch::silu(a) * g;
    } else if (act == Activation::kGelu) {
      hidden = torch::gelu(a);
    } else {
      hidden = torch::relu(a);
    }
    // 2. Second projection: y = hidden w2 + b2.
    auto y = torch::empty({A, d}, x.options());
    grouped_mm(hidden, w2, counts, false, b2, y);
    ctx->save_for_backward({x, a, g, hidden, w1, w2, w3});
    ctx->saved_data["counts"] = c10::IValue(counts);
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["has_b1"] = b1.defined();
    ctx->saved_data["has_b2"] = b2.defined();
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    auto x = saved[0], a = saved[1], g = saved[2], hidden = saved[3];
    auto w1 = saved[4], w2 = saved[5], w3 = saved[6];
    auto counts = ctx->saved_data["counts"].toIntVector();
    const auto act = static_cast<Activation>(ctx->saved_data["activation"].toInt());
    const bool has_b1 = ctx->saved_data["has_b1"].toBool();
    const bool has_b2 = ctx->saved_data["has_b2"].toBool();
    auto dy = grads[0].contiguous();
    const int64_t A = x.size(0), d = x.size(1), h = w1.size(2);
    // 1. Second projection: dw2 = hidden^T dy, db2 = sum dy, dhidden = dy w2^T.
    auto dw2 = grouped_mm_tn(hidden, dy, counts);
    auto db2 = has_b2 ? segment_sum(dy, counts) : torch::Tensor();
    auto dhidden = torch::empty({A, h}, dy.options());
    grouped_mm(dy, w2, counts, /*trans_b=*/true, {}, dhidden);
    // 2. Through the activation (GELU and ReLU in place: dhidden's buffer becomes da, which
    //    spares a fresh [A, h] buffer and its page faults).
    torch::Tensor da, dg;
    if (act == Activation::kSwiGLU) {
      dg = dhidden * torch::silu(a);
      da = at::silu_backward(dhidden * g, a);
    } else if (act == Activation::kGelu) {
      da = at::gelu_backward_out(dhidden, dhidden, a);
    } else {
      da = at::threshold_backward_out(dhidden, dhidden, a, 0);
    }
    // 3. First projection(s): dw1 = x^T da, db1 = sum da, dx = da w1^T (+ dg w3^T).
    auto dw1 = grouped_mm_tn(x, da, counts);
    auto db1 = has_b1 ? segment_sum(da, counts) : torch::Tensor();
    auto dx = torch::empty({A, d}, dy.options());
    grouped_mm(da, w1, counts, true, {}, dx);
    torch::Tensor dw3, db3;
    if (act == Activation::kSwiGLU) {
      dw3 = grouped_mm_tn(x, dg, counts);
      db3 = has_b1 ? segment_sum(dg, counts) : torch::Tensor();
      grouped_mm(dg, w3, counts, true, {}, dx, /*accumulate=*/true);
    }
    return {dx, dw1, db1, dw2, db2, dw3, db3, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor activate(const torch::Tensor& a, const torch::Tensor& g, Activation act) {
  switch (act) {
    case Activation::kGelu:
      return torch::gelu(a);
    case Activation::kRelu:
      return torch::relu(a);
    case Activation::kSwiGLU:
      return torch::silu(a) * g;
  }
  TORCH_CHECK(false, "unknown activation");
}

torch::Tensor grouped_mlp(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                          const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& w3,
                          const torch::Tensor& b3, const std::vector<int64_t>& counts,
                          Activation activation) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == w1.size(1), "grouped_mlp: x must be [A, ", w1.size(1),
              "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == w1.scalar_type(), "grouped_mlp: x dtype ", x.scalar_type(),
              " differs from the expert weights' dtype ", w1.scalar_type());
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == w1.size(0), "grouped_mlp: ", counts.size(),
              " segment sizes for ", w1.size(0), " experts");
  TORCH_CHECK(activation != Activation::kSwiGLU || w3.defined(), "grouped_mlp: SwiGLU needs w3");
  using Opt = c10::optional<torch::Tensor>;
  auto opt = [](const torch::Tensor& t) { return t.defined() ? Opt(t) : Opt(); };
  return GroupedMLPFunction::apply(x, w1, opt(b1), w2, opt(b2), opt(w3), opt(b3), counts,
                                   static_cast<int64_t>(activation));
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
