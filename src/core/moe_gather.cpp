// moe_gather.cpp — the expert gradients of a distributed MoE layer gathered to their full shape
// ([E, d, h], ...), by the very collectives that gather the parameters: each expert parameter's
// data is swapped for (a copy of) its gradient while gather_full_expert_parameters() runs, then
// restored, so both gathers follow one layout rule (fixed or adaptive) written in one place.
#include <utility>
#include <vector>

#include "hybridmoe/moe.h"

namespace hybridmoe {

namespace {

// Restores the swapped parameter data on every exit path, errors included.
class DataSwap {
 public:
  DataSwap() = default;
  DataSwap(const DataSwap&) = delete;
  DataSwap& operator=(const DataSwap&) = delete;
  ~DataSwap() {
    for (auto& kv : saved_) kv.first.set_data(kv.second);
  }
  /// Gives `param` the values of `replacement` (same shape and dtype) until destruction.
  void swap_in(torch::Tensor param, const torch::Tensor& replacement) {
    saved_.emplace_back(param, param.data());
    param.set_data(replacement);
  }

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> saved_;
};

}  // namespace

std::map<std::string, torch::Tensor> MoEImpl::gather_full_expert_gradients() {
  DataSwap swap;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : experts->parameters()) {
      auto g = p.grad().defined() ? p.grad().detach().clone() : torch::zeros_like(p);
      swap.swap_in(p, g);
    }
  }
  return gather_full_expert_parameters();
}

}  // namespace hybridmoe
