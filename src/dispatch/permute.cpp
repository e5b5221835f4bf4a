// permute.cpp — the dispatch plan and the two paired row movements:
// gather_rows (dispatch) and scatter_add_rows (combine), each the other's backward.
#include <algorithm>

#include "hybridmoe/detail/compat.h"
#include "hybridmoe/detail/dispatch.h"
#include "kernels/cpu/counting_sort.h"
#include "kernels/cpu/row_scatter.h"

namespace hybridmoe {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

// rows = x[index]. Backward: dx = scatter_add_rows(drows, index, N).
class GatherRows : public torch::autograd::Function<GatherRows> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& index) {
    ctx->saved_data["num_rows"] = x.size(0);
    ctx->save_for_backward({index});
    return x.index_select(0, index);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto index = ctx->get_saved_variables()[0];
    const auto n = ctx->saved_data["num_rows"].toInt();
    return {scatter_add_rows(grads[0], index, n), torch::Tensor()};
  }
};

// out[index[i]] += y[i]. Backward: dy = gather_rows(dout, index).
class ScatterAddRows : public torch::autograd::Function<ScatterAddRows> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y,
                               const torch::Tensor& index, int64_t num_rows) {
    ctx->save_for_backward({index});
    if (kernels::row_scatter_supported(y))
      return kernels::scatter_add_rows_cpu(y, index, num_rows, torch::Tensor());
    auto sizes = y.sizes().vec();
    sizes[0] = num_rows;
    return torch::zeros(sizes, y.options()).index_add_(0, index, y);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto index = ctx->get_saved_variables()[0];
    return {gather_rows(grads[0], index), torch::Tensor(), torch::Tensor()};
  }
};

// The combine: out[index[i]] += weight[i] * y[i]. Backward: dy[i] = weight[i] * dout[index[i]],
// dweight[i] = <dout[index[i]], y[i]>. One pass each way on the CPU (row_scatter.h).
class WeightedScatterAddRows : public torch::autograd::Function<WeightedScatterAddRows> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y,
                               const torch::Tensor& weight, const torch::Tensor& index,
                               int64_t num_rows) {
    ctx->save_for_backward({y, weight, index});
    if (kernels::row_scatter_supported(y))
      return kernels::scatter_add_rows_cpu(y, index, num_rows, weight);
    auto sizes = y.sizes().vec();
    sizes[0] = num_rows;
    return torch::zeros(sizes, y.options()).index_add_(0, index, y * weight.unsqueeze(1));
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    auto y = saved[0], weight = saved[1], index = saved[2];
    torch::Tensor dy, dweight;
    if (kernels::row_scatter_supported(y) && kernels::row_scatter_supported(grads[0])) {
      std::tie(dy, dweight) =
          kernels::weighted_gather_rows_backward_cpu(grads[0], index, y, weight);
    } else {
      auto g = grads[0].index_select(0, index);
      dy = g * weight.unsqueeze(1);
      dweight = (g * y).sum(1);
    }
    return {dy, dweight, torch::Tensor(), torch::Tensor()};
  }
};

void check_index(const torch::Tensor& index, const char* what) {
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == torch::kInt64, what,
              ": index must be a 1-D int64 tensor, got ", index.sizes(), " ", index.scalar_type());
}

}  // namespace

torch::Tensor gather_rows(const torch::Tensor& x, const torch::Tensor& index) {
  check_index(index, "gather_rows");
  TORCH_CHECK(x.dim() >= 1, "gather_rows: x must have at least one dimension");
  return GatherRows::apply(x, index);
}

torch::Tensor scatter_add_rows(const torch::Tensor& y, const torch::Tensor& index,
                               int64_t num_rows) {
  check_index(index, "scatter_add_rows");
  TORCH_CHECK(y.dim() >= 1 && y.size(0) == index.size(0), "scatter_add_rows: y must have ",
              index.size(0), " rows, got ", y.sizes());
  TORCH_CHECK(num_rows >= 0, "scatter_add_rows: num_rows must be >= 0, got ", num_rows);
  return ScatterAddRows::apply(y, index, num_rows);
}

DispatchPlan make_plan(const RouterOutput& routing, int64_t num_tokens, int64_t num_experts) {
  const auto& e = routing.expert_index;
  const auto& t = routing.token_index;
  TORCH_CHECK(e.defined() && t.defined() && routing.weight.defined(),
              "make_plan: the routing result is incomplete");
  TORCH_CHECK(e.dim() == 1 && t.sizes() == e.sizes() && routing.weight.sizes() == e.sizes(),
              "make_plan: token_index, expert_index and weight must be [A] alike, got ", t.sizes(),
              ", ", e.sizes(), ", ", routing.weight.sizes());
  TORCH_CHECK(num_experts > 0, "make_plan: num_experts must be positive, got ", num_experts);
  DispatchPlan plan;
  plan.num_tokens = num_tokens;
  if (kernels::counting_sort_supported(e) && kernels::counting_sort_supported(t)) {
    // On the CPU: the token range checked, then one counting pass gives the stable order by expert
    // (rows of an expert keep the router's order) and the counts, with no sort of all entries.
    if (t.numel() > 0) {
      const auto tc = t.contiguous();
      const auto [lo, hi] =
          std::minmax_element(tc.data_ptr<int64_t>(), tc.data_ptr<int64_t>() + tc.numel());
      TORCH_CHECK(*lo >= 0 && *hi < num_tokens, "make_plan: token index out of range [0, ",
                  num_tokens, "): saw [", *lo, ", ", *hi, "]");
    }
    auto sorted = kernels::counting_argsort(e, num_experts, "make_plan: expert");
    plan.order = sorted.order;
    plan.counts_host = std::move(sorted.counts);
    plan.offsets_host = std::move(sorted.offsets);
    plan.counts = torch::tensor(plan.counts_host, torch::kInt64);
  } else {
    // 1. Stable sort of the assignments by expert: rows of an expert keep the router's order.
    plan.order = compat::stable_argsort(e);
    // 2. Counts (on the device), and with them the index ranges checked below, brought to the
    //    host in one transfer (one synchronisation on a GPU). The clamp keeps bincount defined
    //    for an out-of-range index, which the range check then refuses.
    const bool any = e.numel() > 0;
    plan.counts = torch::bincount(any ? e.clamp(0, num_experts - 1) : e, {}, num_experts);
    auto bounds = any ? torch::stack({e.min(), e.max(), t.min(), t.max()}).to(plan.counts.dtype())
                      : torch::zeros({4}, plan.counts.options());
    auto host = torch::cat({bounds, plan.counts}).to(torch::kCPU).contiguous();
    const int64_t* b = host.data_ptr<int64_t>();
    if (any) {
      TORCH_CHECK(b[0] >= 0 && b[1] < num_experts, "make_plan: expert index out of range [0, ",
                  num_experts, "): saw [", b[0], ", ", b[1], "]");
      TORCH_CHECK(b[2] >= 0 && b[3] < num_tokens, "make_plan: token index out of range [0, ",
                  num_tokens, "): saw [", b[2], ", ", b[3], "]");
    }
    plan.counts_host.assign(b + 4, b + 4 + num_experts);
    plan.offsets_host.assign(num_experts + 1, 0);
    for (int64_t i = 0; i < num_experts; ++i)
      plan.offsets_host[i + 1] = plan.offsets_host[i] + plan.counts_host[i];
  }
  plan.sorted_token = t.index_select(0, plan.order);
  plan.sorted_weight = routing.weight.index_select(0, plan.order);
  return plan;
}

torch::Tensor permute(const torch::Tensor& x, const DispatchPlan& plan) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) == plan.num_tokens, "permute: x must be [", plan.num_tokens,
              ", d], got ", x.sizes());
  return gather_rows(x, plan.sorted_token);
}

torch::Tensor unpermute(const torch::Tensor& y, const DispatchPlan& plan, bool weighted) {
  TORCH_CHECK(y.dim() == 2 && y.size(0) == plan.num_rows(), "unpermute: y must be [",
              plan.num_rows(), ", d], got ", y.sizes());
  if (!weighted) return scatter_add_rows(y, plan.sorted_token, plan.num_tokens);
  return WeightedScatterAddRows::apply(y, plan.sorted_weight.to(y.scalar_type()), plan.sorted_token,
                                       plan.num_tokens);
}

}  // namespace hybridmoe
