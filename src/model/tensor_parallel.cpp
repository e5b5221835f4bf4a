// tensor_parallel.cpp — see tensor_parallel.h: column- and row-parallel linear layers.
#include "hybridmoe/tensor_parallel.h"

#include "hybridmoe/collectives.h"

namespace hybridmoe {

namespace {

// The tp size and rank of a layer; 1 and 0 without groups.
std::pair<int64_t, int64_t> tp_of(const std::shared_ptr<const ParallelGroups>& groups) {
  if (!groups) return {1, 0};
  return {groups->tp.size(), groups->tp.rank};
}

// Copies a gathered (weight, bias) into a one-process layer's parameters.
template <typename Layer>
void copy_gathered(Layer& full, const std::pair<torch::Tensor, torch::Tensor>& wb) {
  torch::NoGradGuard no_grad;
  full.weight.copy_(wb.first);
  if (full.bias.defined()) full.bias.copy_(wb.second);
}

}  // namespace

ColumnParallelLinearImpl::ColumnParallelLinearImpl(TensorParallelLinearOptions options_,
                                                   std::shared_ptr<const ParallelGroups> groups)
    : options(std::move(options_)), groups_(std::move(groups)) {
  std::tie(tp_, tp_rank_) = tp_of(groups_);
  TORCH_CHECK(options.out_features() % tp_ == 0,
              "ColumnParallelLinear: out_features=", options.out_features(),
              " must be divisible by tp=", tp_);
  const int64_t rows = options.fused() * options.out_features() / tp_;
  weight = register_parameter("weight",
                              torch::randn({rows, options.in_features()}) * options.init_std());
  if (options.bias()) bias = register_parameter("bias", torch::zeros({rows}));
}

torch::Tensor ColumnParallelLinearImpl::forward(const torch::Tensor& x) {
  auto in = tp_ > 1 ? dist::copy_to_group(x, groups_->tp) : x;
  return torch::nn::functional::linear(in, weight, bias);
}

void ColumnParallelLinearImpl::load_shard_from(const torch::Tensor& full_weight,
                                               const torch::Tensor& full_bias) {
  const int64_t out = options.out_features(), part = out / tp_;
  TORCH_CHECK(full_weight.dim() == 2 && full_weight.size(0) == options.fused() * out &&
                  full_weight.size(1) == options.in_features(),
              "ColumnParallelLinear::load_shard_from: expected a full weight [",
              options.fused() * out, ", ", options.in_features(), "], got ", full_weight.sizes());
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> w, b;
  for (int64_t f = 0; f < options.fused(); ++f) {
    w.push_back(full_weight.narrow(0, f * out + tp_rank_ * part, part));
    if (bias.defined()) b.push_back(full_bias.narrow(0, f * out + tp_rank_ * part, part));
  }
  weight.copy_(torch::cat(w));
  if (bias.defined()) bias.copy_(torch::cat(b));
}

void ColumnParallelLinearImpl::gather_into(ColumnParallelLinearImpl& full) {
  copy_gathered(full, gather_full());
}

std::vector<std::string> ColumnParallelLinearImpl::tp_shard_names() const {
  if (tp_ == 1) return {};
  if (bias.defined()) return {"weight", "bias"};
  return {"weight"};
}

std::pair<torch::Tensor, torch::Tensor> ColumnParallelLinearImpl::gather_full() {
  torch::NoGradGuard no_grad;
  if (tp_ == 1) return {weight.detach().clone(), bias.defined() ? bias.detach().clone() : bias};
  const int64_t part = options.out_features() / tp_;
  // 1. Every rank's shard, rank-major: [tp * fused * part, ...].
  auto all_w = dist::all_gather_rows(weight.detach().contiguous(), groups_->tp);
  torch::Tensor all_b;
  if (bias.defined()) all_b = dist::all_gather_rows(bias.detach().contiguous(), groups_->tp);
  // 2. Re-order to fused-block-major: block f = parts (r = 0..tp-1) of block f.
  std::vector<torch::Tensor> w, b;
  for (int64_t f = 0; f < options.fused(); ++f)
    for (int64_t r = 0; r < tp_; ++r) {
      const int64_t start = (r * options.fused() + f) * part;
      w.push_back(all_w.narrow(0, start, part));
      if (bias.defined()) b.push_back(all_b.narrow(0, start, part));
    }
  return {torch::cat(w), bias.defined() ? torch::cat(b) : torch::Tensor()};
}

RowParallelLinearImpl::RowParallelLinearImpl(TensorParallelLinearOptions options_,
                                             std::shared_ptr<const ParallelGroups> groups)
    : options(std::move(options_)), groups_(std::move(groups)) {
  std::tie(tp_, tp_rank_) = tp_of(groups_);
  TORCH_CHECK(options.fused() == 1, "RowParallelLinear: fused must be 1, got ", options.fused());
  TORCH_CHECK(options.in_features() % tp_ == 0,
              "RowParallelLinear: in_features=", options.in_features(),
              " must be divisible by tp=", tp_);
  weight = register_parameter(
      "weight",
      torch::randn({options.out_features(), options.in_features() / tp_}) * options.init_std());
  if (options.bias()) bias = register_parameter("bias", torch::zeros({options.out_features()}));
}

torch::Tensor RowParallelLinearImpl::forward(const torch::Tensor& x) {
  auto partial = torch::nn::functional::linear(x, weight);
  auto y = tp_ > 1 ? dist::all_reduce_sum(partial, groups_->tp) : partial;
  return bias.defined() ? y + bias : y;
}

void RowParallelLinearImpl::load_shard_from(const torch::Tensor& full_weight,
                                            const torch::Tensor& full_bias) {
  TORCH_CHECK(full_weight.dim() == 2 && full_weight.size(0) == options.out_features() &&
                  full_weight.size(1) == options.in_features(),
              "RowParallelLinear::load_shard_from: expected a full weight [",
              options.out_features(), ", ", options.in_features(), "], got ", full_weight.sizes());
  torch::NoGradGuard no_grad;
  const int64_t part = options.in_features() / tp_;
  weight.copy_(full_weight.narrow(1, tp_rank_ * part, part));
  if (bias.defined()) bias.copy_(full_bias);
}

void RowParallelLinearImpl::gather_into(RowParallelLinearImpl& full) {
  copy_gathered(full, gather_full());
}

std::vector<std::string> RowParallelLinearImpl::tp_shard_names() const {
  if (tp_ == 1) return {};
  return {"weight"};  // the bias is whole, added once after the sum
}

std::pair<torch::Tensor, torch::Tensor> RowParallelLinearImpl::gather_full() {
  torch::NoGradGuard no_grad;
  auto b = bias.defined() ? bias.detach().clone() : bias;
  if (tp_ == 1) return {weight.detach().clone(), b};
  auto cols = dist::all_gather_rows(weight.detach().t().contiguous(), groups_->tp);
  return {cols.t().contiguous(), b};
}

}  // namespace hybridmoe
