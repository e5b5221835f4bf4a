// moefy.cpp — see model.h: turning the dense MLPs of a GPT into MoE layers (FastMoE's fmoefy),
// with optional sparse upcycling (every expert starts as a copy of the replaced MLP).
#include "hybridmoe/model.h"

namespace hybridmoe {

namespace {

// Fills the experts of `moe` with copies of a dense MLP: fc1 [h, d] + b1 [h], fc2 [d, h] + b2
// [d] (full, unsharded). Local experts take the etp slice of the hidden width.
void upcycle_experts(MoEImpl& moe, const torch::Tensor& w_fc1, const torch::Tensor& b_fc1,
                     const torch::Tensor& w_fc2, const torch::Tensor& b_fc2) {
  TORCH_CHECK(moe.grouped, "moefy: upcycling needs the built-in grouped experts");
  const auto& p = moe.placement();  // the fixed layout: S = etp hidden slices
  const int64_t q = p.hidden_slice(moe.groups() ? moe.groups()->stage.rank : 0);
  const int64_t h = w_fc1.size(0) / p.shards, L = p.local_experts;
  torch::NoGradGuard no_grad;
  auto& ex = *moe.grouped;
  // Expert weights are used as x @ w1 ([d, h]) and h @ w2 ([h, d]).
  auto w1 = w_fc1.t().narrow(1, q * h, h);
  auto w2 = w_fc2.t().narrow(0, q * h, h);
  ex.w1.copy_(w1.unsqueeze(0).expand({L, w1.size(0), w1.size(1)}));
  ex.w2.copy_(w2.unsqueeze(0).expand({L, w2.size(0), w2.size(1)}));
  if (ex.b1.defined()) ex.b1.copy_(b_fc1.narrow(0, q * h, h).unsqueeze(0).expand({L, h}));
  if (ex.b2.defined()) ex.b2.copy_(b_fc2.unsqueeze(0).expand({L, b_fc2.size(0)}));
}

}  // namespace

void moefy(GPTImpl& model, MoEOptions options, bool upcycle, int64_t every) {
  TORCH_CHECK(every >= 1, "moefy: every must be >= 1, got ", every);
  const int64_t d = model.options.d_model();
  MoEOptions mo(d, options.num_experts());
  mo.gate(options.gate())
      .activation(options.activation())
      .bias(options.bias())
      .expert(options.expert())
      .d_hidden(options.d_hidden())
      .expert_layout(options.expert_layout())
      .adaptive_r(options.adaptive_r())
      .a2a_overlap_degree(options.a2a_overlap_degree())
      .replicate(options.replicate())
      .a2a_algorithm(options.a2a_algorithm());
  if (upcycle) {
    TORCH_CHECK(options.expert_layout() == ExpertLayout::kFixed,
                "moefy: upcycling copies the MLP into experts of the fixed layout; expected "
                "expert_layout \"fixed\", got \"",
                to_string(options.expert_layout()),
                "\" (upcycle first, then load into an adaptive model)");
    TORCH_CHECK(!options.expert(), "moefy: upcycling needs the built-in experts, not user modules");
    TORCH_CHECK(options.activation() == Activation::kGelu,
                "moefy: upcycling copies a gelu MLP; expected activation gelu, got ",
                to_string(options.activation()));
    TORCH_CHECK(options.d_hidden() == 0 || options.d_hidden() == model.options.mlp_hidden(),
                "moefy: upcycled experts have the MLP's width ", model.options.mlp_hidden(),
                ", got d_hidden=", options.d_hidden());
    mo.d_hidden(model.options.mlp_hidden()).bias(true);
  }
  auto groups = model.groups_ptr();
  for (size_t i = 0; i < model.block_list.size(); ++i) {
    auto& block = *model.block_list[i];
    const int64_t global = model.block_range().first + static_cast<int64_t>(i);
    if ((global + 1) % every != 0 || !block.mlp) continue;
    // 1. A new MoE layer with this model's groups.
    MoE moe = groups ? MoE(mo, groups) : MoE(mo);
    moe->to(block.mlp->fc1->weight.device(), block.mlp->fc1->weight.scalar_type());
    // 2. Upcycle: the full dense weights (gathered over tp) into every expert.
    if (upcycle) {
      auto [w1, b1] = block.mlp->fc1->gather_full();
      auto [w2, b2] = block.mlp->fc2->gather_full();
      upcycle_experts(*moe, w1, b1, w2, b2);
    }
    // 3. Swap it in.
    block.set_moe(moe);
  }
  model.options.moe_every(every)
      .num_experts(mo.num_experts())
      .gate(mo.gate())
      .expert_hidden(mo.d_hidden())
      .expert_layout(mo.expert_layout())
      .adaptive_r(mo.adaptive_r())
      .a2a_overlap_degree(mo.a2a_overlap_degree())
      .replicate(mo.replicate())
      .a2a_algorithm(mo.a2a_algorithm());
}

}  // namespace hybridmoe
