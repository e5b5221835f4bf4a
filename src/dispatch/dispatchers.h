// dispatchers.h — the token dispatchers behind make_token_dispatcher (dispatcher.h). Internal.
//   LocalDispatcher        one process: plan → permute; combine = unpermute.
//   ExchangingDispatcher   a dispatcher whose rows travel: prepare() (local work and count
//                          exchanges) → the token exchange → the experts → its mirror →
//                          finish() (local). Its plain exchange is an all-to-all over a group,
//                          expert-major reordering, and with etp > 1 an all-gather of the rows
//                          over etp (reduce-scatter of the partial outputs back).
//   AllToAllDispatcher     the fixed layout: slices over tp, experts over ep (and etp).
//   ReplicatingDispatcher  the fixed layout with hot experts' weights gathered to every ep rank
//                          (each etp rank its slice) as extra local experts, their rows computed
//                          where the placement says (replicate.h).
//   AdaptiveDispatcher     Tutel's adaptive layout: the call's degree r over the stage.
//   OverlapDispatcher      wraps an ExchangingDispatcher: the same prepare / finish, with the
//                          exchange and the experts pipelined in D chunks (overlap.h).
#pragma once

#include <memory>
#include <vector>

#include "hybridmoe/detail/exchange.h"
#include "hybridmoe/dispatcher.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/replicate.h"

namespace hybridmoe::detail {

class LocalDispatcher : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  DispatchedRows dispatch(const torch::Tensor& mine, const RouterOutput& routing,
                          const MoECallOptions& call) override;
  torch::Tensor combine(const torch::Tensor& y, DispatchedRows& d) override;

 private:
  int64_t num_experts_;
};

/// How the rows of one call travel: this rank's rows in destination-slot order (slot j * L + e:
/// rank j of `group`, its local expert e), the rows per slot both ways, and the group. A group of
/// size <= 1 means no exchange: send_rows are already the local experts' rows (send_counts then
/// has one entry per local expert).
struct TokenExchange {
  torch::Tensor send_rows;                    // [A, d]
  std::vector<int64_t> send_counts;           // [P * L] rows of send_rows per slot
  std::vector<int64_t> recv_counts;           // [P * L] rows from rank j for local expert e
  dist::Group group;                          // the rows travel over it
  dist::Group etp;                            // the experts' hidden width is split over it
  ExpertWeights weights;                      // the call's weights (w1 undefined: the module's)
  Activation activation = Activation::kGelu;  // the grouped MLP's, with `weights`
  std::shared_ptr<DispatchHandle> finish;     // what finish() needs (the subclass's)
  std::vector<int64_t> replicated;            // experts replicated for the call (replicate.h)
  bool exchanges() const { return group.size() > 1; }
};

class ExchangingDispatcher : public TokenDispatcher {
 public:
  explicit ExchangingDispatcher(std::shared_ptr<const ParallelGroups> groups);
  /// Each rank of the slice (tp) group takes its block of the replicated tokens.
  torch::Tensor local_tokens(const torch::Tensor& tokens) override;
  double aux_scale() const override;
  /// Local work before the exchange: route-ordered rows into slot order, counts exchanged.
  virtual TokenExchange prepare(const torch::Tensor& mine, const RouterOutput& routing,
                                const MoECallOptions& call, torch::Tensor* routed_per_expert) = 0;
  /// Local work after the mirror exchange: returned rows (in send_rows' order) → token order.
  /// returned: [A, d] → [T, d].
  virtual torch::Tensor finish(const torch::Tensor& returned, DispatchHandle& handle) = 0;

  DispatchedRows dispatch(const torch::Tensor& mine, const RouterOutput& routing,
                          const MoECallOptions& call) override;
  torch::Tensor combine(const torch::Tensor& y, DispatchedRows& d) override;
  /// The all-to-all of dispatch() / combine() (flat by default): the factory sets kHierarchical
  /// after checking that the exchange group fills its nodes evenly (exchange_algorithm()).
  void use_a2a_algorithm(A2AAlgorithm algorithm) { a2a_ = algorithm; }

 protected:
  /// The slices' tokens back into the replicated tokens. y: [T_mine, d] → [T, d].
  torch::Tensor gather_slices(const torch::Tensor& y, const std::vector<int64_t>& slice_rows);

  std::shared_ptr<const ParallelGroups> groups_;
  std::vector<int64_t> slice_rows_;  // of the current call (set by local_tokens)
  A2AAlgorithm a2a_ = A2AAlgorithm::kFlat;
};

class AllToAllDispatcher : public ExchangingDispatcher {
 public:
  AllToAllDispatcher(const MoEOptions& options, std::shared_ptr<const ParallelGroups> groups);
  TokenExchange prepare(const torch::Tensor& mine, const RouterOutput& routing,
                        const MoECallOptions& call, torch::Tensor* routed_per_expert) override;
  torch::Tensor finish(const torch::Tensor& returned, DispatchHandle& handle) override;

 protected:
  int64_t num_experts_;
};

/// The fixed layout with hot-expert replication (replicate.h): prepare() makes each rank L + R
/// experts (its own, then the replicas of the policy's R experts, whose weights it gathers) and
/// sends each replicated expert's rows to replica slots where the placement says; the exchange,
/// the etp gather and their mirrors are the base's (or the chunked overlap's); finish() puts the
/// returned rows back into route order.
class ReplicatingDispatcher : public AllToAllDispatcher {
 public:
  ReplicatingDispatcher(const MoEOptions& options, std::shared_ptr<const ParallelGroups> groups,
                        std::shared_ptr<GroupedExpertsImpl> grouped);
  TokenExchange prepare(const torch::Tensor& mine, const RouterOutput& routing,
                        const MoECallOptions& call, torch::Tensor* routed_per_expert) override;
  torch::Tensor finish(const torch::Tensor& returned, DispatchHandle& handle) override;

 private:
  /// The replicated experts' weights (this rank's etp slice), all-gathered over ep from their
  /// owners ([R, ...] per tensor).
  ExpertWeights gather_replicas(const std::vector<int64_t>& replicated, int64_t first_local);

  ReplicateOptions replicate_;
  std::shared_ptr<GroupedExpertsImpl> grouped_;
  int64_t d_model_;
};

class AdaptiveDispatcher : public ExchangingDispatcher {
 public:
  AdaptiveDispatcher(const MoEOptions& options, const ExpertPlacement& placement,
                     std::shared_ptr<const ParallelGroups> groups,
                     std::shared_ptr<GroupedExpertsImpl> grouped);
  TokenExchange prepare(const torch::Tensor& mine, const RouterOutput& routing,
                        const MoECallOptions& call, torch::Tensor* routed_per_expert) override;
  torch::Tensor finish(const torch::Tensor& returned, DispatchHandle& handle) override;

 private:
  ExpertPlacement placement_;  ///< the layer's: S, local experts, valid r
  int64_t d_model_;
  bool bias_;
  std::shared_ptr<GroupedExpertsImpl> grouped_;
};

class OverlapDispatcher : public TokenDispatcher {
 public:
  OverlapDispatcher(std::unique_ptr<ExchangingDispatcher> inner,
                    std::shared_ptr<GroupedExpertsImpl> grouped, Activation activation,
                    int64_t degree);
  torch::Tensor local_tokens(const torch::Tensor& tokens) override;
  double aux_scale() const override;
  DispatchedRows dispatch(const torch::Tensor& mine, const RouterOutput& routing,
                          const MoECallOptions& call) override;
  torch::Tensor run_experts(DispatchedRows& d, ExpertsBase& experts) override;
  torch::Tensor combine(const torch::Tensor& y, DispatchedRows& d) override;

 private:
  std::unique_ptr<ExchangingDispatcher> inner_;
  std::shared_ptr<GroupedExpertsImpl> grouped_;
  Activation activation_;
  int64_t degree_;
};

}  // namespace hybridmoe::detail
