// topk_gate.cpp — the top-k gate ("topk"): softmax or sigmoid scores (Mixtral / Qwen-MoE / OLMoE,
// DeepSeek-V3), FastMoE's softmax-over-the-k variant, DeepSeek-V3's selection bias (loaded, or
// the auxiliary-loss-free balancing bias), group-limited selection and routed scaling.
#include <mutex>

#include "hybridmoe/gates.h"
#include "router/route_util.h"

namespace hybridmoe {

TopKGateImpl::TopKGateImpl(int64_t d_model, int64_t num_experts, GateOptions options)
    : LinearGateImpl(d_model, num_experts, std::move(options)) {
  const auto& o = options_;
  TORCH_CHECK(o.bias_update_rate() >= 0, "topk gate: bias_update_rate must be >= 0, got ",
              o.bias_update_rate());
  TORCH_CHECK(o.routed_scaling_factor() > 0, "topk gate: routed_scaling_factor must be > 0, got ",
              o.routed_scaling_factor());
  TORCH_CHECK(o.n_group() >= 1 && num_experts % o.n_group() == 0,
              "topk gate: n_group must be >= 1 and divide the ", num_experts, " experts, got ",
              o.n_group());
  if (o.n_group() > 1) {
    const int64_t per_group = num_experts / o.n_group();
    TORCH_CHECK(per_group >= 2,
                "topk gate: group-limited selection scores a group by its two "
                "best experts, so each of the n_group=",
                o.n_group(), " groups needs >= 2 of the ", num_experts, " experts");
    TORCH_CHECK(o.topk_group() >= 1 && o.topk_group() <= o.n_group(),
                "topk gate: topk_group must be in [1, n_group=", o.n_group(), "], got ",
                o.topk_group());
    TORCH_CHECK(o.top_k() <= o.topk_group() * per_group, "topk gate: top_k=", o.top_k(),
                " is more than the ", o.topk_group() * per_group,
                " experts of the topk_group=", o.topk_group(), " kept groups");
  }
  TORCH_CHECK(o.score_function() == ScoreFunction::kSoftmax || !rules_.softmax_over_topk,
              "topk gate: softmax_over_topk needs score_function=softmax, got ",
              to_string(o.score_function()));
  expert_bias = register_buffer("expert_bias", torch::zeros({num_experts}));
  step_load = register_buffer("step_load", torch::zeros({num_experts}, torch::kInt64));
}

torch::Tensor TopKGateImpl::limit_to_groups(const torch::Tensor& select) const {
  const int64_t G = options_.n_group(), T = select.size(0), E = num_experts_;
  // 1. A group's score: the sum of its two best selection scores; 2. keep the topk_group best
  //    groups (ties to the lower group); 3. the other groups' scores become 0.
  auto grouped = select.view({T, G, E / G});
  auto group_score = std::get<0>(grouped.topk(2, -1)).sum(-1);               // [T, G]
  auto kept = std::get<1>(stable_topk(group_score, options_.topk_group()));  // [T, kg]
  auto mask = torch::zeros({T, G}, select.options().dtype(torch::kBool)).scatter_(1, kept, true);
  return select.masked_fill(~mask.unsqueeze(-1).expand({T, G, E / G}).reshape({T, E}), 0.0);
}

RouterOutput TopKGateImpl::route(const torch::Tensor& x) {
  RouterOutput out;
  const auto& o = options_;
  const bool sigmoid = o.score_function() == ScoreFunction::kSigmoid;
  // 1. Router logits and scores in the router dtype; `probs` (the balance loss, statistics) is
  //    the softmax, or the sigmoid scores normalized over the experts.
  auto logits = logits_of(x, "topk");
  auto scores = sigmoid ? torch::sigmoid(logits) : torch::softmax(logits, -1);
  auto probs = sigmoid ? scores / scores.sum(-1, /*keepdim=*/true) : scores;
  // 2. Selection scores: the logits when the order is all that matters (both score functions
  //    are monotone, and exact ties stay exact); the scores plus the bias with the loss-free or
  //    a loaded bias, or when groups compare sums of scores.
  const bool use_bias = o.bias_update_rate() > 0 || o.selection_bias();
  torch::Tensor select;
  if (!use_bias && o.n_group() == 1) {
    select = logits.detach();
  } else {
    select = (rules_.softmax_over_topk ? logits : scores).detach();
    if (use_bias) select = select + expert_bias.to(select.scalar_type()).unsqueeze(0);
    if (o.n_group() > 1) select = limit_to_groups(select);
  }
  // 3. Choices and weights (the unbiased scores), losses, capacity and the assignments (the
  //    routed scaling is applied there, after any normalization).
  torch::Tensor topk_i;
  if (!sigmoid) {
    topk_i = detail::topk_route(*this, rules_, logits, probs, select, out);
  } else {
    topk_i = std::get<1>(stable_topk(select, o.top_k()));
    auto topk_w = scores.gather(1, topk_i);
    if (rules_.weight_normalization == WeightNormalization::kBeforeCapacity)
      topk_w = topk_w / (topk_w.sum(-1, /*keepdim=*/true) + 1e-20);
    detail::finish_topk(*this, rules_, logits, probs, topk_i, topk_w, out);
  }
  // 4. Load counters for the bias update.
  if (o.bias_update_rate() > 0 && is_training()) {
    torch::NoGradGuard no_grad;
    auto counts = torch::bincount(topk_i.reshape({-1}), {}, num_experts_).to(step_load.device());
    // Micro-batches may route side by side (route_is_reentrant): whole counts add exactly in any
    // order, but not at once.
    static std::mutex load_mutex;
    std::lock_guard<std::mutex> lock(load_mutex);
    step_load.add_(counts);
  }
  return out;
}

void TopKGateImpl::after_step() {
  if (options_.bias_update_rate() <= 0) return;
  torch::NoGradGuard no_grad;
  auto load = step_load.to(torch::kFloat64);
  if (load.sum().item<double>() > 0) {
    auto error = load.mean() - load;  // > 0: under-loaded expert, raise its bias
    expert_bias.add_((error.sign() * options_.bias_update_rate()).to(expert_bias.dtype()));
  }
  step_load.zero_();
}

}  // namespace hybridmoe
