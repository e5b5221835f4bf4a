// moe.h — the MoE layer: route → dispatch → experts → combine, the same four steps for every
// layout (the token dispatcher, dispatcher.h, is where layouts differ). It replaces a
// transformer's MLP, dropless (grouped GEMM over variable expert batches) or with a capacity.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/detail/dispatch.h"
#include "hybridmoe/dispatcher.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/placement.h"
#include "hybridmoe/replicate.h"

namespace hybridmoe {

struct ParallelGroups;  // parallel.h: a distributed layer's groups (this header stays c10d-free)

/// Options of the MoE layer. Gate settings live in `gate`; the most used ones are forwarded
/// (top_k, capacity_factor, normalize_top_k_weights, gate_type, convention) and stored there,
/// the one source of truth. gate(...) after a forwarding setter keeps that setting only if the
/// new GateOptions agree: otherwise it is an error naming both values (no silent overwrite).
///
/// Example:
///   MoE moe(MoEOptions(512, 8).top_k(2).d_hidden(2048).capacity_factor(1.25));
///   MoEOutput out = moe(x);            // x: [batch, seq, 512]
///   auto loss = task_loss(out.output) + out.aux_loss;
///   MoE ds(MoEOptions(512, 8).top_k(3).capacity_factor(1.0).convention(Convention::kDeepSpeed));
struct MoEOptions {
  MoEOptions(int64_t d_model, int64_t num_experts) : d_model_(d_model), num_experts_(num_experts) {}
  MoEOptions& top_k(int64_t k) {
    gate_.top_k(k);
    forwarded_ |= kForwardedTopK;
    return *this;
  }
  int64_t top_k() const { return gate_.top_k(); }
  /// 0 means dropless; < 0 Tutel's dynamic capacity (GateOptions::capacity_factor).
  MoEOptions& capacity_factor(double f) {
    gate_.capacity_factor(f);
    forwarded_ |= kForwardedCapacityFactor;
    return *this;
  }
  double capacity_factor() const { return gate_.capacity_factor(); }
  MoEOptions& normalize_top_k_weights(bool v) {
    gate_.normalize_top_k_weights(v);
    forwarded_ |= kForwardedNormalization;
    return *this;
  }
  bool normalize_top_k_weights() const { return gate_.normalize_top_k_weights(); }
  MoEOptions& gate_type(const std::string& name) {
    gate_.type(name);
    forwarded_ |= kForwardedType;
    return *this;
  }
  /// A peer's routing convention for the gate (routing_rules.h).
  MoEOptions& convention(Convention c) {
    gate_.convention(c);
    forwarded_ |= kForwardedConvention;
    return *this;
  }
  /// The gate and its options (type, top_k, capacity, losses, routing rules). Refuses options
  /// that disagree with a setting forwarded earlier (top_k(...) then gate(GateOptions()) with
  /// another k is an error naming both).
  MoEOptions& gate(const GateOptions& g);
  const GateOptions& gate() const { return gate_; }
  GateOptions& gate() { return gate_; }

  /// The hidden width in force (d_hidden, or 4 * d_model when 0).
  int64_t hidden() const { return d_hidden_ > 0 ? d_hidden_ : 4 * d_model_; }

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  /// Hidden width of each expert; 0 means 4 * d_model.
  TORCH_ARG(int64_t, d_hidden) = 0;
  TORCH_ARG(Activation, activation) = Activation::kGelu;
  /// Biases in the experts.
  TORCH_ARG(bool, bias) = true;
  /// Shared experts (DeepSeek, Qwen2-MoE): a dense MLP of this hidden width (the routed experts'
  /// activation and bias) run on every token and added to the routed output; 0: none. On a
  /// distributed layer with tp > 1 its hidden width is split over the stage's tp group as the
  /// dense MLP's is (Megatron: w1/w3/b1/b3 columns and w2 rows [r*h/tp, (r+1)*h/tp) on tp rank r,
  /// b2 on tp rank 0; tp must divide it); its gradients are reduced over dp.
  TORCH_ARG(int64_t, shared_expert_hidden) = 0;
  /// Scale the shared experts' output by sigmoid(x · g), g a learned [1, d_model] gate
  /// (Qwen2-MoE's shared_expert_gate); false: added as it is (DeepSeek).
  TORCH_ARG(bool, shared_expert_gate) = false;
  /// A user module per expert instead of the built-in grouped MLP (FastMoE's `expert=`).
  TORCH_ARG(ExpertFactory, expert) = nullptr;
  /// Expert placement of a distributed layer: kFixed (the layout's ep × etp × edp) or
  /// kAdaptive (Tutel's adaptive parallelism over the W = tp * dp ranks of the stage; needs
  /// ep = etp = 1 and the built-in grouped experts). Adaptive storage: with E < W each expert's
  /// hidden width is sliced over its shard group of S = W / E ranks; with E >= W each rank
  /// holds E / W whole experts (S = 1). See placement.h and moe_adaptive.cpp.
  TORCH_ARG(ExpertLayout, expert_layout) = ExpertLayout::kFixed;
  /// Adaptive layout only: the degree r in {0} ∪ divisors(S) used by forward(). r = 0: every
  /// rank all-gathers every expert and runs its own tokens (no token all-to-all); r >= 1: tokens
  /// go to their expert's shard group, where the weight slices are all-gathered in sub-groups
  /// of S / r ranks and each token block is run by r ranks whose partial outputs are summed.
  TORCH_ARG(int64_t, adaptive_r) = 1;
  /// Fixed layout with ep > 1 (any etp), or the adaptive layout at r >= 1: the dispatched rows
  /// are exchanged and computed in D chunks so that the all-to-alls of neighbouring chunks run
  /// while the experts compute (forward and backward). 1 = off; r = 0 has no token exchange to
  /// chunk. Results are those of D = 1. See overlap.h.
  TORCH_ARG(int64_t, a2a_overlap_degree) = 1;
  /// Hot-expert replication (FasterMoE's shadowing, replicate.h): each call, the policy's experts
  /// have their weights all-gathered from their owner to every ep rank and their rows computed
  /// where they were routed (no all-to-all for them); their gradients are reduce-scattered back
  /// to the owner. Off by default. Needs the fixed layout with ep > 1, etp = 1 and the built-in
  /// grouped experts (refused otherwise, naming the setting); any a2a_overlap_degree.
  TORCH_ARG(ReplicateOptions, replicate) = ReplicateOptions();
  /// How the token exchange moves rows between nodes (nodes: ParallelGroups::ranks_per_node
  /// consecutive world ranks). kFlat: one all-to-all. kHierarchical (Tutel's 2DH all-to-all,
  /// hybridmoe/detail/hierarchical_all_to_all.h): rows first move inside each node, then one
  /// message per node pair crosses, in forward and backward; the results are the flat ones bit
  /// for bit. It applies to the exchange group (ep in the fixed layout, the stage in the adaptive
  /// one) when that group spans more than one node with more than one member on each; a group
  /// inside one node, or with one member per node, runs flat, because there both algorithms are
  /// the same exchange (the two-level one reduces to its inner or its outer round). Refused,
  /// naming both settings: a group that spans nodes holding different numbers of its members,
  /// a2a_overlap_degree > 1 (the chunked exchange is flat), replicate other than off, and a
  /// single-process layer (no exchange).
  TORCH_ARG(A2AAlgorithm, a2a_algorithm) = A2AAlgorithm::kFlat;

 private:
  static constexpr unsigned kForwardedTopK = 1u, kForwardedCapacityFactor = 2u,
                            kForwardedNormalization = 4u, kForwardedType = 8u,
                            kForwardedConvention = 16u;
  GateOptions gate_;
  unsigned forwarded_ = 0;  ///< which forwarding setters were called
};

/// What the layer returns: the output in the input's shape, the auxiliary loss to add to the
/// training loss (balance + z-loss, coefficients applied), and routing statistics, with every
/// choice of the routed tokens in stats.choices (expert, combine weight, capacity slot, kept).
///
/// Example:
///   MoEOutput out = moe(x);
///   auto kept_fraction = out.stats.choices.kept.to(torch::kFloat64).mean();
struct MoEOutput {
  torch::Tensor output;    // same shape as the input
  torch::Tensor aux_loss;  // []
  RoutingStats stats;
};

/// A Mixture-of-Experts layer, on one process or distributed over the groups of a layout.
///
/// Distributed (construct with ParallelGroups): the input is replicated over the slice (tp)
/// group; each rank routes its 1/tp block of tokens; rows go to their experts' ranks by an
/// all-to-all over the ep group (rank j of ep holds experts [j*L, (j+1)*L), L = E / ep); with
/// etp > 1 each expert's hidden width is split over the etp group (rows all-gathered before the
/// experts, partial outputs reduce-scattered after); then the reverse all-to-all, the combine, and
/// an all-gather over the slice group. The gate is replicated over the stage; gate gradients are
/// summed over the stage, expert gradients over edp (see GroupedDataParallel).
/// `aux_loss` is this rank's share: summed over the slice group it is the mean of the slices'
/// auxiliary losses.
///
/// Example:
///   auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(config, *world));
///   MoE moe(MoEOptions(512, 8).top_k(2), groups);
///   MoEOutput out = moe(x);            // x: [tokens, 512], the same on every rank of tp
class MoEImpl : public torch::nn::Module {
 public:
  explicit MoEImpl(MoEOptions options);
  MoEImpl(MoEOptions options, std::shared_ptr<const ParallelGroups> groups);
  /// x: [T, d_model] or [B, S, d_model], floating point.
  MoEOutput forward(const torch::Tensor& x);
  /// forward() with per-call settings (e.g. the adaptive degree r of this call only). Every rank
  /// of the stage must pass the same settings.
  MoEOutput forward_with(const torch::Tensor& x, const MoECallOptions& call);

  /// One process, tokens routed in consecutive groups of group_sizes[g] tokens (GShard's groups):
  /// capacity and balance loss per group, aux_loss the mean over groups. This is what a
  /// distributed layout computes, with one group per rank's slice. x: [T, d_model].
  MoEOutput forward_grouped(const torch::Tensor& x, const std::vector<int64_t>& group_sizes);

  /// The same computation as forward() through sequential_moe_reference (the test oracle).
  MoEOutput forward_reference(const torch::Tensor& x);

  /// Copies this rank's shard of a single-process layer with the same options: the gate, the
  /// local experts' slices (experts [ep_rank*L, ...), hidden [etp_rank*h/etp, ...)) and the
  /// shared expert's tp slice (hidden [tp_rank*h/tp, ...); its gate whole).
  void load_shard_from(MoEImpl& full);
  /// The expert parameters gathered back to their full shape ([E, d, h], ...) over ep and etp.
  /// Collective over the stage's ep and etp groups. b2 is taken from etp rank 0.
  std::map<std::string, torch::Tensor> gather_full_expert_parameters();
  /// The gradients of the expert parameters gathered to their full shape exactly as
  /// gather_full_expert_parameters() gathers the parameters (fixed or adaptive layout); a
  /// parameter without a gradient contributes zeros. Collective like it. On one process: the
  /// gradients themselves. Example (after backward):
  ///   auto g = moe->gather_full_expert_gradients();   // g["w1"]: [E, d, h]
  std::map<std::string, torch::Tensor> gather_full_expert_gradients();
  /// Fills the shared expert and its gate of `full` (a single-process layer with the same options)
  /// from this layer: the tp slices all-gathered back to the full hidden width, b2 from tp rank
  /// 0. Collective over the stage's tp group; valid on every rank. Example:
  ///   mine->gather_full_shared_expert(*full);   // full->shared_expert->w1: [1, d, h]
  void gather_full_shared_expert(MoEImpl& full);
  /// Over how many tp ranks the shared expert's hidden width is split (1: whole on every rank).
  int64_t shared_expert_tp() const { return shared_tp_; }

  bool is_distributed() const { return groups_ != nullptr; }
  const ParallelGroups* groups() const { return groups_.get(); }
  int64_t num_local_experts() const { return placement_.local_experts; }
  /// First global expert index held by this rank.
  int64_t first_local_expert() const { return placement_.first_local_expert(stage_rank()); }

  /// Whether the experts use the adaptive layout (MoEOptions::expert_layout == kAdaptive).
  bool is_adaptive() const { return options.expert_layout() == ExpertLayout::kAdaptive; }
  /// Where the experts live on this layer's stage (one process: a stage of one rank): the shard
  /// count S, the valid adaptive r, the local experts. Example (adaptive, 2 experts, 4 ranks):
  ///   moe->placement().shards;   // 2
  ///   moe->placement().valid_r;  // {0, 1, 2}
  const ExpertPlacement& placement() const { return placement_; }
  /// Sets the degree r used by later forward() calls; refuses r outside placement().valid_r.
  void set_adaptive_r(int64_t r);

  MoEOptions options;
  Gate gate{nullptr};
  std::shared_ptr<ExpertsBase> experts;
  /// The grouped experts, or nullptr when user modules are in use.
  GroupedExperts grouped{nullptr};
  /// The shared expert (one dense MLP as a grouped MLP of one expert), or nullptr; with tp > 1
  /// this rank's hidden slice (w1 [1, d, h/tp], w2 [1, h/tp, d], b2 on tp rank 0 only).
  GroupedExperts shared_expert{nullptr};
  /// [1, d_model]: the shared expert's sigmoid gate, or undefined.
  torch::Tensor shared_gate;

 private:
  /// Computes placement_ for a stage of `stage_size` ranks (checks num_experts first).
  void place(int64_t stage_size, int64_t ep, int64_t etp);
  /// Builds the gate, the experts (this rank's share) and the token dispatcher of the layout.
  void build(int64_t local_experts, int64_t first_expert, int64_t hidden, bool add_output_bias);
  /// Builds the shared expert (this rank's tp slice) and its gate, when the options ask for one.
  void build_shared_expert();
  /// The shared expert's output on every token (gated when asked); undefined without one. With
  /// tp > 1: Megatron's f, this rank's hidden slice, Megatron's g (the partial outputs summed).
  /// tokens: [T, d_model], the layer's whole input (replicated over tp) → [T, d_model].
  torch::Tensor shared_output(const torch::Tensor& tokens);
  /// Checks the adaptive options at construction and builds this rank's expert storage.
  void build_adaptive();
  /// Raises an error listing the valid values unless r is a valid adaptive degree.
  void check_adaptive_r(int64_t r) const;
  void load_adaptive_shard_from(MoEImpl& full);
  std::map<std::string, torch::Tensor> gather_adaptive_expert_parameters();
  /// counts: [E] tokens per expert when a plan has them; undefined: counted from the routing.
  MoEOutput finish(const torch::Tensor& out, const torch::Tensor& x, const RouterOutput& routing,
                   double aux_scale, const torch::Tensor& counts);
  torch::Tensor flatten_input(const torch::Tensor& x) const;
  RoutingStats make_stats(const RouterOutput& routing, const torch::Tensor& counts) const;

  std::shared_ptr<const ParallelGroups> groups_;
  /// The shared expert's split: tp size and this rank's tp index (1 and 0 when whole).
  int64_t shared_tp_ = 1, shared_tp_rank_ = 0;
  /// Where the experts live (computed once, at construction, from the options and the groups).
  ExpertPlacement placement_;
  /// This rank's index in its stage (0 on one process).
  int64_t stage_rank() const;
  /// Where the rows go between routing and the experts, and back (dispatcher.h).
  std::shared_ptr<TokenDispatcher> dispatcher_;
};
TORCH_MODULE(MoE);

}  // namespace hybridmoe
