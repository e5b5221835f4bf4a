// zero_moments.cpp — ZeroAdamW's optimizer state per parameter (zero.h): the moments of every
// parameter gathered from their owners in full parameter shape, and the reverse (each rank keeps
// the elements it owns). Layout-independent, so a checkpoint can move between layouts.
#include "hybridmoe/collectives.h"
#include "optim/zero_space.h"

namespace hybridmoe {

namespace {

// Flat offset of every optimizer parameter inside its space (-1 if in another space).
std::vector<int64_t> offsets_in(const zero_detail::Space& s, size_t n_params) {
  std::vector<int64_t> begin(n_params, -1);
  for (size_t j = 0; j < s.params.size(); ++j) begin[s.params[j]] = s.begin[j];
  return begin;
}

}  // namespace

ZeroAdamW::NamedTensors ZeroAdamW::gather_moments() const {
  torch::NoGradGuard no_grad;
  NamedTensors out;
  int64_t step = 0;
  for (const auto& s : impl_->spaces) {
    step = std::max(step, s.step);
    const auto begin = offsets_in(s, impl_->params.size());
    const bool has_master = s.master.defined();
    // 1. This rank's owned runs placed into zeroed full-size flat buffers.
    const auto opts = torch::TensorOptions().dtype(s.compute);
    std::vector<torch::Tensor> full = {torch::zeros({s.numel}, opts),
                                       torch::zeros({s.numel}, opts)};
    if (has_master) full.push_back(torch::zeros({s.numel}, torch::kFloat32));
    if (s.exp_avg.defined())
      for (const auto& p : s.pieces) {
        const int64_t at = begin[p.param] + p.param_offset;
        full[0].narrow(0, at, p.length).copy_(s.exp_avg.narrow(0, p.shard_offset, p.length));
        full[1].narrow(0, at, p.length).copy_(s.exp_avg_sq.narrow(0, p.shard_offset, p.length));
        if (has_master)
          full[2].narrow(0, at, p.length).copy_(s.master.narrow(0, p.shard_offset, p.length));
      }
    // 2. Every element has one owner in the group: the sum over the group is the whole state.
    if (s.sharded) dist::all_reduce_coalesced_(full, s.group);
    // 3. Cut into parameters.
    for (int64_t i : s.params) {
      const auto& param = impl_->params[i];
      const auto shape = param.tensor.sizes();
      const int64_t n = param.tensor.numel();
      out.emplace_back(param.name + ".exp_avg", full[0].narrow(0, begin[i], n).view(shape));
      out.emplace_back(param.name + ".exp_avg_sq", full[1].narrow(0, begin[i], n).view(shape));
      if (has_master)
        out.emplace_back(param.name + ".master", full[2].narrow(0, begin[i], n).view(shape));
    }
  }
  out.emplace_back("step", torch::tensor({step}, torch::kInt64));
  return out;
}

void ZeroAdamW::load_moments(const NamedTensors& moments) {
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> by_name(moments.begin(), moments.end());
  auto find = [&](const std::string& name, const zero_detail::Param& param) {
    auto it = by_name.find(name);
    TORCH_CHECK(it != by_name.end(), "ZeroAdamW::load_moments: no entry `", name, "`");
    TORCH_CHECK(it->second.sizes() == param.tensor.sizes(), "ZeroAdamW::load_moments: `", name,
                "` has shape ", it->second.sizes(), ", the parameter ", param.tensor.sizes());
    return it->second.reshape({-1});
  };
  auto step_it = by_name.find("step");
  TORCH_CHECK(step_it != by_name.end() && step_it->second.numel() == 1,
              "ZeroAdamW::load_moments: no `step` entry");
  const int64_t step = step_it->second.item<int64_t>();
  for (auto& s : impl_->spaces) {
    const auto begin = offsets_in(s, impl_->params.size());
    const auto opts = torch::TensorOptions().dtype(s.compute);
    s.exp_avg = torch::zeros({s.owned}, opts);
    s.exp_avg_sq = torch::zeros({s.owned}, opts);
    for (const auto& p : s.pieces) {
      const auto& param = impl_->params[p.param];
      s.exp_avg.narrow(0, p.shard_offset, p.length)
          .copy_(find(param.name + ".exp_avg", param).narrow(0, p.param_offset, p.length));
      s.exp_avg_sq.narrow(0, p.shard_offset, p.length)
          .copy_(find(param.name + ".exp_avg_sq", param).narrow(0, p.param_offset, p.length));
      if (s.master.defined()) {
        auto it = by_name.find(param.name + ".master");
        auto src = it != by_name.end() ? it->second.reshape({-1})
                                       : param.tensor.detach().reshape({-1}).to(torch::kFloat32);
        s.master.narrow(0, p.shard_offset, p.length).copy_(src.narrow(0, p.param_offset, p.length));
      }
    }
    TORCH_CHECK((s.exp_avg_sq >= 0).all().item<bool>(),
                "ZeroAdamW::load_moments: negative second moments in space ", s.name);
    s.step = step;
  }
}

}  // namespace hybridmoe
