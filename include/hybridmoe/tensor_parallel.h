// tensor_parallel.h — Megatron-style tensor-parallel linear layers for the dense parts of a model:
// a column-parallel linear (output features split over the tp group) and a row-parallel linear
// (input features split, partial outputs summed over tp). Without groups (or with tp = 1) both are
// ordinary linear layers, so the same model code runs on one process.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/group_kind.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe {

// TensorParallelShards (the interface of modules with parameters split over tp) is in
// group_kind.h.

/// Options of ColumnParallelLinear and RowParallelLinear.
///
/// Example:
///   ColumnParallelLinear qkv(TensorParallelLinearOptions(64, 64).fused(3), groups);
struct TensorParallelLinearOptions {
  TensorParallelLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  /// Output features of one fused block (the full layer has fused * out_features outputs).
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  /// Column-parallel only: the output is `fused` blocks (e.g. q, k, v), each split over tp, so a
  /// rank holds [block 0 part r; block 1 part r; ...].
  TORCH_ARG(int64_t, fused) = 1;
  /// Standard deviation of the normal initialization of the weight (biases start at zero).
  TORCH_ARG(double, init_std) = 0.02;
};

/// y = x W^T + b with W's rows (output features) split over the tp group. Forward applies
/// Megatron's f (identity; its backward all-reduces the input gradient over tp).
/// weight: [fused * out / tp, in], bias: [fused * out / tp] (a shard, tagged dp).
///
/// Example:
///   ColumnParallelLinear fc1(TensorParallelLinearOptions(64, 256), groups);
///   auto h = fc1(x);                       // x: [..., 64] → [..., 256 / tp]
class ColumnParallelLinearImpl : public torch::nn::Module, public TensorParallelShards {
 public:
  ColumnParallelLinearImpl(TensorParallelLinearOptions options,
                           std::shared_ptr<const ParallelGroups> groups = nullptr);
  /// x: [..., in] (replicated over tp) → [..., fused * out / tp].
  torch::Tensor forward(const torch::Tensor& x);
  /// Copies this rank's shard of a full weight [fused * out, in] and bias [fused * out].
  void load_shard_from(const torch::Tensor& full_weight, const torch::Tensor& full_bias);
  /// The full weight [fused * out, in] and bias, all-gathered over tp (collective over tp).
  std::pair<torch::Tensor, torch::Tensor> gather_full();
  /// Fills `full` (the same layer on one process) with gather_full() (collective over tp).
  void gather_into(ColumnParallelLinearImpl& full);
  std::vector<std::string> tp_shard_names() const override;

  TensorParallelLinearOptions options;
  torch::Tensor weight, bias;

 private:
  std::shared_ptr<const ParallelGroups> groups_;
  int64_t tp_ = 1, tp_rank_ = 0;
};
TORCH_MODULE(ColumnParallelLinear);

/// y = sum over tp of x_r W_r^T, + b: W's columns (input features) split over tp; the partial
/// products are summed by Megatron's g (all-reduce forward, identity backward); the bias is
/// replicated and added once after the sum.
/// weight: [out, in / tp], bias: [out] (replicated).
///
/// Example:
///   RowParallelLinear fc2(TensorParallelLinearOptions(256, 64), groups);
///   auto y = fc2(h);                       // h: [..., 256 / tp] → [..., 64], same on every tp
///   rank
class RowParallelLinearImpl : public torch::nn::Module, public TensorParallelShards {
 public:
  RowParallelLinearImpl(TensorParallelLinearOptions options,
                        std::shared_ptr<const ParallelGroups> groups = nullptr);
  /// x: [..., in / tp] → [..., out] (replicated over tp).
  torch::Tensor forward(const torch::Tensor& x);
  /// Copies this rank's shard of a full weight [out, in] and the bias [out].
  void load_shard_from(const torch::Tensor& full_weight, const torch::Tensor& full_bias);
  /// The full weight [out, in] and bias, all-gathered over tp (collective over tp).
  std::pair<torch::Tensor, torch::Tensor> gather_full();
  /// Fills `full` (the same layer on one process) with gather_full() (collective over tp).
  void gather_into(RowParallelLinearImpl& full);
  std::vector<std::string> tp_shard_names() const override;

  TensorParallelLinearOptions options;
  torch::Tensor weight, bias;

 private:
  std::shared_ptr<const ParallelGroups> groups_;
  int64_t tp_ = 1, tp_rank_ = 0;
};
TORCH_MODULE(RowParallelLinear);

}  // namespace hybridmoe
