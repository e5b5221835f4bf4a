// dispatcher.h — the token dispatcher: the one seam between routing and the experts of the MoE
// layer. Whatever the layout, the layer's forward reads
//
//   mine    = dispatcher.local_tokens(tokens)        this rank's block of the tokens to route
//   routing = gate.route(mine)                       1. route
//   d       = dispatcher.dispatch(mine, routing, c)  2. dispatch: the local experts' rows
//   y       = dispatcher.run_experts(d, experts)     3. experts
//   out     = dispatcher.combine(y, d)               4. combine: back to token order, weighted
//
// Implementations (src/dispatch/): local (one process), all-to-all over the layout's slice, ep
// and etp groups (the fixed expert layout), adaptive (Tutel's degree r over the stage), and the
// chunked overlap, a decorator over either exchanging one that pipelines its token exchange with
// the experts in D chunks. A new layout is a new dispatcher, not a new forward path. Every
// communication step is an autograd function paired with its conjugate (exchange.h,
// collectives.h), so each dispatcher is differentiable end to end.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/detail/dispatch.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/placement.h"

namespace hybridmoe {

struct MoEOptions;
struct ParallelGroups;
class GroupedExpertsImpl;

/// How the expert-parallel token exchange of a distributed MoE layer moves its rows (the
/// dispatch all-to-all, the combine's reverse one, and their backward). Text form (options,
/// configuration keys, flags): "flat" or "hierarchical".
///
/// Example:
///   parse_a2a_algorithm("hierarchical");  // A2AAlgorithm::kHierarchical
///   to_string(A2AAlgorithm::kFlat);       // "flat"
///   parse_a2a_algorithm("2d");            // error: a2a_algorithm: expected one of "flat",
///                                         // "hierarchical", got "2d"
enum class A2AAlgorithm {
  kFlat,          ///< one all-to-all over the group: a message per pair of ranks
  kHierarchical,  ///< Tutel's 2DH: inside each node, one message per node pair, inside again
};
std::string to_string(A2AAlgorithm algorithm);
/// Parses "flat" or "hierarchical"; anything else is an error naming the text and both names.
A2AAlgorithm parse_a2a_algorithm(const std::string& text);

/// What MoEOptions::a2a_algorithm = `requested` runs over a token exchange group (its world
/// `ranks` in group-rank order; `name` for errors) on nodes of ranks_per_node consecutive world
/// ranks: kHierarchical when requested and the group spans more than one node with more than one
/// member on each, else kFlat (there both are the same exchange). A requested kHierarchical over
/// a group whose nodes hold different numbers of its members is refused, naming the setting and
/// the group.
///
/// Example:
///   exchange_algorithm(A2AAlgorithm::kHierarchical, {0, 1, 2, 3}, 2, "ep");  // kHierarchical
///   exchange_algorithm(A2AAlgorithm::kHierarchical, {0, 2}, 2, "ep");        // kFlat
A2AAlgorithm exchange_algorithm(A2AAlgorithm requested, const std::vector<int64_t>& ranks,
                                int64_t ranks_per_node, const std::string& name);

/// Per-call settings of MoEImpl::forward_with.
struct MoECallOptions {
  /// The adaptive degree r of this call; nullopt: MoEOptions::adaptive_r.
  TORCH_ARG(c10::optional<int64_t>, adaptive_r) = c10::nullopt;
};

/// What a dispatcher keeps between dispatch and combine (each dispatcher derives its own).
struct DispatchHandle {
  virtual ~DispatchHandle() = default;
};

/// What dispatch hands to the experts and, through `handle`, to combine.
struct DispatchedRows {
  torch::Tensor rows;           ///< [R, d_model]: the local experts' rows, expert-major
  std::vector<int64_t> counts;  ///< [L]: rows per local expert (sums to R)
  /// This call's expert weights when they are not the experts module's own (the adaptive
  /// layout's gathered slices); w1 undefined: the module's.
  ExpertWeights weights;
  Activation activation = Activation::kGelu;  ///< the grouped MLP's, with `weights`
  /// [E] int64: the assignments this rank routed to each global expert (statistics).
  torch::Tensor routed_per_expert;
  /// The experts replicated for this call, ascending (replicate.h; empty without replication):
  /// their rows are the last ones, after the L local experts', with `weights` holding them.
  std::vector<int64_t> replicated;
  /// Rows the experts compute on this rank when that is not rows.size(0): the chunked overlap
  /// exchanges inside run_experts (with etp > 1 it counts the rows before the etp gather);
  /// -1: rows.size(0).
  int64_t computed_rows = -1;
  std::shared_ptr<DispatchHandle> handle;
};

/// The seam between routing and the experts; see the file comment for the flow.
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  /// This rank's block of `tokens` to route (the slice group's share of replicated tokens).
  /// tokens: [T, d] → [T_mine, d].
  virtual torch::Tensor local_tokens(const torch::Tensor& tokens) { return tokens; }
  /// The weight of this rank's auxiliary loss (1 / slice size: the slices' mean when summed).
  virtual double aux_scale() const { return 1.0; }
  /// The local experts' rows of this rank's routed tokens. mine: [T_mine, d].
  virtual DispatchedRows dispatch(const torch::Tensor& mine, const RouterOutput& routing,
                                  const MoECallOptions& call) = 0;
  /// The experts on the dispatched rows: the call's weights through the grouped MLP when the
  /// dispatch brought them, else the experts module. Returns [R, d].
  virtual torch::Tensor run_experts(DispatchedRows& d, ExpertsBase& experts);
  /// The experts' output back to the token order of local_tokens' input, weighted by the
  /// router and re-assembled over the slice group. y: [R, d] → [T, d].
  virtual torch::Tensor combine(const torch::Tensor& y, DispatchedRows& d) = 0;
};

/// The dispatcher of a layer with these options: local without groups; with groups the
/// adaptive or the all-to-all one by options.expert_layout() (the replicating one when
/// options.replicate() is not off: refused where it cannot run, naming the setting), wrapped in the
/// chunked overlap when options.a2a_overlap_degree() > 1; its token exchange uses
/// options.a2a_algorithm() where that exchange crosses nodes (refused where it cannot run, naming
/// both settings). `grouped` (the layer's grouped experts,
/// or null with user expert modules) gives the overlap its weights. `placement`: the layer's
/// (placement.h), which the adaptive dispatcher takes its S, local experts and valid r from.
std::unique_ptr<TokenDispatcher> make_token_dispatcher(const MoEOptions& options,
                                                       const ExpertPlacement& placement,
                                                       std::shared_ptr<const ParallelGroups> groups,
                                                       std::shared_ptr<GroupedExpertsImpl> grouped);

}  // namespace hybridmoe
