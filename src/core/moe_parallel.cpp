// moe_parallel.cpp — the MoE layer distributed over a layout's groups (the fixed expert layout):
// which experts and hidden slices this rank holds (ep, etp), sharding from and gathering to the
// single-process layer. Its forward is the layer's one flow (moe.cpp) with the all-to-all token
// dispatcher (dispatch/alltoall_dispatcher.cpp); the adaptive layout's storage lives in
// moe_adaptive.cpp.
#include "hybridmoe/collectives.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/parallel.h"
#include "model/copy_parameters.h"

namespace hybridmoe {

MoEImpl::MoEImpl(MoEOptions options_, std::shared_ptr<const ParallelGroups> groups)
    : options(std::move(options_)), groups_(std::move(groups)) {
  TORCH_CHECK(groups_,
              "MoE: the parallel groups are null (use the one-argument constructor for "
              "a single process)");
  const auto& g = *groups_;
  place(g.stage.size(), g.ep.size(), g.etp.size());
  if (is_adaptive()) {
    build_adaptive();
    return;
  }
  const int64_t E = options.num_experts(), ep = g.ep.size(), etp = g.etp.size();
  const int64_t D = options.a2a_overlap_degree();
  TORCH_CHECK(D >= 1, "MoE: a2a_overlap_degree must be >= 1, got ", D);
  TORCH_CHECK(D == 1 || (ep > 1 && !options.expert()), "MoE: a2a_overlap_degree=", D,
              " pipelines the expert-parallel all-to-all with the built-in grouped experts; it "
              "needs ep > 1 and no user expert modules, got ep=",
              ep, " etp=", etp, options.expert() ? " with user expert modules" : "");
  TORCH_CHECK(E % ep == 0, "MoE: num_experts=", E, " must be divisible by ep=", ep);
  TORCH_CHECK(options.hidden() % etp == 0, "MoE: d_hidden=", options.hidden(),
              " must be divisible by etp=", etp);
  TORCH_CHECK(etp == 1 || !options.expert(),
              "MoE: user expert modules cannot be split over etp=", etp,
              "; use etp=1 or the built-in grouped experts");
  TORCH_CHECK(etp == 1 || etp == g.slice.size(), "MoE: etp must be 1 or tp=", g.slice.size(),
              ", got ", etp);
  const int64_t me = stage_rank();
  build(placement_.local_experts, placement_.first_local_expert(me), options.hidden() / etp,
        /*add_output_bias=*/placement_.hidden_slice(me) == 0);
}

void MoEImpl::load_shard_from(MoEImpl& full) {
  TORCH_CHECK(!full.is_distributed(), "MoE::load_shard_from: the source must be single-process");
  TORCH_CHECK(full.options.num_experts() == options.num_experts() &&
                  full.options.d_model() == options.d_model() &&
                  full.options.hidden() == options.hidden(),
              "MoE::load_shard_from: the source layer has other sizes");
  torch::NoGradGuard no_grad;
  detail::copy_state(*gate, *full.gate);  // weights and the selection bias
  TORCH_CHECK(static_cast<bool>(full.shared_expert) == static_cast<bool>(shared_expert) &&
                  full.shared_gate.defined() == shared_gate.defined(),
              "MoE::load_shard_from: the source layer's shared expert differs");
  if (shared_expert) {
    // This rank's tp slice of the hidden width (all of it when tp = 1); b2 whole where held.
    const int64_t hs = options.shared_expert_hidden() / shared_tp_, q = shared_tp_rank_;
    auto src_shared = full.shared_expert->named_parameters();
    for (auto& kv : shared_expert->named_parameters()) {
      const auto& name = kv.key();
      auto s = src_shared[name];
      if (name == "w1" || name == "w3") s = s.narrow(2, q * hs, hs);
      if (name == "b1" || name == "b3" || name == "w2") s = s.narrow(1, q * hs, hs);
      TORCH_CHECK(s.sizes() == kv.value().sizes(), "MoE::load_shard_from: shared expert ", name,
                  " slice ", s.sizes(), " vs local ", kv.value().sizes());
      kv.value().copy_(s);
    }
    if (shared_gate.defined()) shared_gate.copy_(full.shared_gate);
  }
  if (groups_ && is_adaptive()) {
    load_adaptive_shard_from(full);
    return;
  }
  const int64_t L = num_local_experts(), e0 = first_local_expert();
  const int64_t h = options.hidden() / placement_.shards, q = placement_.hidden_slice(stage_rank());
  auto src = full.experts->named_parameters();
  for (auto& kv : experts->named_parameters()) {
    TORCH_CHECK(src.contains(kv.key()), "MoE::load_shard_from: source has no ", kv.key());
    auto s = src[kv.key()].narrow(0, e0, L);
    const auto& name = kv.key();
    if (grouped && (name == "w1" || name == "w3")) s = s.narrow(2, q * h, h);
    if (grouped && (name == "b1" || name == "b3")) s = s.narrow(1, q * h, h);
    if (grouped && name == "w2") s = s.narrow(1, q * h, h);
    TORCH_CHECK(s.sizes() == kv.value().sizes(), "MoE::load_shard_from: ", name, " slice ",
                s.sizes(), " vs local ", kv.value().sizes());
    kv.value().copy_(s);
  }
}

std::map<std::string, torch::Tensor> MoEImpl::gather_full_expert_parameters() {
  if (groups_ && is_adaptive()) return gather_adaptive_expert_parameters();
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> full;
  const bool dist_on = groups_ != nullptr;
  for (auto& kv : experts->named_parameters()) {
    auto t = kv.value().detach();
    // 1. Over ep: experts are the first dimension.
    if (dist_on && groups_->ep.size() > 1) t = dist::all_gather_rows(t.contiguous(), groups_->ep);
    // 2. Over etp: the hidden dimension (w1/w3: dim 2, w2: dim 1, b1/b3: dim 1).
    const auto& name = kv.key();
    if (dist_on && groups_->etp.size() > 1 && grouped && name != "b2") {
      const int64_t dim = (name == "w1" || name == "w3") ? 2 : 1;
      auto moved = t.movedim(dim, 0).contiguous();
      t = dist::all_gather_rows(moved, groups_->etp).movedim(0, dim).contiguous();
    }
    full[name] = t;
  }
  return full;
}

void MoEImpl::gather_full_shared_expert(MoEImpl& full) {
  TORCH_CHECK(!full.is_distributed(),
              "MoE::gather_full_shared_expert: the target must be single-process");
  TORCH_CHECK(static_cast<bool>(full.shared_expert) == static_cast<bool>(shared_expert) &&
                  full.shared_gate.defined() == shared_gate.defined() &&
                  full.options.shared_expert_hidden() == options.shared_expert_hidden(),
              "MoE::gather_full_shared_expert: the target layer's shared expert differs");
  if (!shared_expert) return;
  torch::NoGradGuard no_grad;
  if (shared_gate.defined()) full.shared_gate.copy_(shared_gate);
  auto dst = full.shared_expert->named_parameters();
  if (shared_tp_ == 1) {
    for (auto& kv : shared_expert->named_parameters()) dst[kv.key()].copy_(kv.value());
    return;
  }
  // 1. The hidden slices, all-gathered over tp along the hidden dimension (w1/w3: dim 2, w2 and
  //    b1/b3: dim 1), in tp rank order.
  const auto& tp = groups_->tp;
  const std::vector<int64_t> rows(shared_tp_, options.shared_expert_hidden() / shared_tp_);
  for (auto& kv : shared_expert->named_parameters()) {
    const auto& name = kv.key();
    if (name == "b2") continue;
    const int64_t dim = (name == "w1" || name == "w3") ? 2 : 1;
    auto moved = kv.value().detach().movedim(dim, 0).contiguous();
    dst[name].copy_(dist::all_gather_rows(moved, tp, rows).movedim(0, dim));
  }
  // 2. The output bias, held by tp rank 0.
  if (dst.contains("b2")) {
    if (shared_tp_rank_ == 0) dst["b2"].copy_(shared_expert->b2);
    std::vector<torch::Tensor> bias = {dst["b2"]};
    dist::broadcast_(bias, 0, tp);
  }
}

}  // namespace hybridmoe
