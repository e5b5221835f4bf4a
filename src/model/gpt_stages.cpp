// gpt_stages.cpp — see model.h: the parts of the GPT that span ranks as a whole: inference through
// the pipeline stages, the tied embedding's gradient over its two copies, and gathering the whole
// model from every rank's shard.
#include "hybridmoe/collectives.h"
#include "hybridmoe/gates.h"
#include "hybridmoe/model.h"
#include "model/copy_parameters.h"

namespace hybridmoe {

GPTOutput GPTImpl::forward_pipelined(const torch::Tensor& tokens,
                                     const std::vector<int64_t>& group_sizes) {
  TORCH_CHECK(!torch::GradMode::is_enabled(), "GPT: forward() of a model with pp=", stages_,
              " pipeline stages is for inference: call it under torch::NoGradGuard, and train "
              "with run_pipeline() over forward_stage()");
  const auto& pp = groups_->pp;
  const int64_t B = tokens.size(0), S = tokens.size(1), d = options.d_model();
  const auto like = parameters().front().options();
  // 1. Through the stages in order: receive, run, send.
  torch::Tensor input = tokens;
  if (!is_first_stage()) input = dist::recv({B, S, d}, like, stage_ - 1, 0, pp);
  StageOutput r = forward_stage(input, group_sizes);
  if (!is_last_stage()) dist::send_async(r.output, stage_ + 1, 0, pp).wait();
  // 2. The last stage's logits to every stage.
  std::vector<torch::Tensor> logits = {
      is_last_stage() ? r.output.contiguous() : torch::empty({B, S, options.vocab_size()}, like)};
  dist::broadcast_(logits, stages_ - 1, pp);
  // 3. Statistics of every MoE layer of the model: this stage's layers at their model-wide
  //    index, zero counts for the others (so that sums over the world count each layer once).
  GPTOutput out;
  out.logits = logits[0];
  out.aux_loss = r.aux_loss;
  const int64_t first = first_moe_layer(), local = static_cast<int64_t>(r.moe_stats.size());
  for (int64_t l = 0; l < num_moe_layers(); ++l) {
    if (l >= first && l < first + local) {
      out.moe_stats.push_back(r.moe_stats[l - first]);
    } else {
      RoutingStats empty;
      empty.tokens_per_expert = torch::zeros({options.num_experts()}, torch::kInt64);
      out.moe_stats.push_back(empty);
    }
  }
  return out;
}

void GPTImpl::reduce_tied_gradients() {
  if (stages_ <= 1 || !options.tie_embeddings()) return;
  // Every stage takes part (the middle ones with zeros) so that the group's members agree.
  torch::Tensor g;
  if (tok_emb) {
    if (!tok_emb->weight.grad().defined())
      tok_emb->weight.mutable_grad() = torch::zeros_like(tok_emb->weight);
    g = tok_emb->weight.grad();
  } else {
    g = torch::zeros({options.vocab_size(), options.d_model()}, parameters().front().options());
  }
  std::vector<torch::Tensor> grads = {g};
  dist::all_reduce_coalesced_(grads, groups_->pp);
}

void GPTImpl::after_step() {
  // 1. The loads this rank counted since the last step, summed over the stage's ranks (each
  //    routes its own tokens), so every replica of a gate sees the global load.
  std::vector<torch::Tensor> loads;
  for (auto& layer : moe_layers())
    if (auto* topk = dynamic_cast<TopKGateImpl*>(layer->gate.get()))
      if (topk->step_load.defined()) loads.push_back(topk->step_load);
  if (groups_ && groups_->stage.size() > 1 && !loads.empty())
    dist::all_reduce_coalesced_(loads, groups_->stage);
  // 2. Each gate's own update.
  for (auto& layer : moe_layers()) layer->gate->after_step();
}

void GPTImpl::gather_full(GPTImpl& full) {
  TORCH_CHECK(full.groups_ == nullptr, "GPT::gather_full: the target must be single-process");
  TORCH_CHECK(static_cast<int64_t>(full.block_list.size()) == options.n_layers(),
              "GPT::gather_full: the target has ", full.block_list.size(), " blocks, this model ",
              options.n_layers());
  torch::NoGradGuard no_grad;
  using detail::copy_parameters;
  // 1. With stages, every stage fills what it holds into a zeroed model; step 3 sums them.
  if (stages_ > 1) {
    for (auto& p : full.parameters()) p.zero_();
    for (auto& b : full.buffers()) b.zero_();
  }
  if (is_first_stage()) {
    copy_parameters(*full.tok_emb,
                    *tok_emb);  // a tied head's copy on the last stage is equal: counted once
    if (pos_emb) copy_parameters(*full.pos_emb, *pos_emb);
  }
  if (is_last_stage()) {
    copy_parameters(*full.ln_f, *ln_f);
    if (lm_head) copy_parameters(*full.lm_head, *lm_head);
  }
  // 2. This stage's blocks, gathered over the stage's tp / ep / etp groups.
  for (size_t j = 0; j < block_list.size(); ++j) {
    auto& b = *block_list[j];
    auto& f = *full.block_list[range_.first + static_cast<int64_t>(j)];
    copy_parameters(*f.ln1, *b.ln1);
    copy_parameters(*f.ln2, *b.ln2);
    if (b.mla) b.mla->gather_full(*f.mla);
    if (b.attn) b.attn->gather_full(*f.attn);
    if (b.moe) {
      auto experts = b.moe->gather_full_expert_parameters();
      auto params = f.moe->experts->named_parameters();
      for (auto& kv : params) {
        auto it = experts.find(kv.key());
        if (it != experts.end()) kv.value().copy_(it->second);
      }
      // The experts' output bias lives on etp rank 0 only.
      if (groups_ && groups_->etp.size() > 1 && params.contains("b2")) {
        std::vector<torch::Tensor> bias = {params["b2"]};
        dist::broadcast_(bias, 0, groups_->etp);
      }
      detail::copy_state(*f.moe->gate, *b.moe->gate);  // the selection bias too
      // The shared expert (its hidden slices gathered over tp) and its gate.
      b.moe->gather_full_shared_expert(*f.moe);
    } else {
      b.mlp->gather_full(*f.mlp);
    }
  }
  // 3. The stages' parts summed over pp.
  if (stages_ > 1) {
    auto params = full.parameters();
    dist::all_reduce_coalesced_(params, groups_->pp);
    std::vector<torch::Tensor> state;  // the gates' buffers (each held by one stage)
    for (auto& b : full.buffers())
      if (b.is_floating_point()) state.push_back(b);
    if (!state.empty()) dist::all_reduce_coalesced_(state, groups_->pp);
  }
}

}  // namespace hybridmoe
