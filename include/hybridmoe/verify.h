// verify.h — the proof that every parallel layout equals one process: a small model with an MoE
// layer is trained for a few optimizer steps under a layout and, on the same ranks, as a
// single-process reference of the same global batch; losses at every step and every parameter
// after the last step (experts gathered back to full shape) are compared.
#pragma once

#include <string>
#include <vector>

#include <c10/util/Optional.h>

#include "hybridmoe/dispatcher.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/model_presets.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/pipeline.h"
#include "hybridmoe/placement.h"
#include "hybridmoe/recompute.h"
#include "hybridmoe/replicate.h"
#include "hybridmoe/routing_rules.h"

namespace hybridmoe {

/// What `hmoe verify` runs.
struct VerifyOptions {
  int64_t steps = 3;
  torch::ScalarType dtype = torch::kFloat64;
  int64_t tokens_per_rank = 6;  ///< tokens of one data-parallel rank per step
  int64_t d_model = 8;
  int64_t d_hidden = 24;
  int64_t experts = 8;
  int64_t top_k = 2;
  double lr = 1e-2;
  uint64_t seed = 1234;
  /// Relative tolerance of losses and parameters; <= 0 picks 1e-9 (float64) or 1e-4 (float32).
  double tolerance = 0.0;
  /// Expert layout of the MoE: kFixed (the layout's ep × etp) or kAdaptive (needs ep = etp = 1;
  /// see adaptive_r_values()).
  ExpertLayout expert_layout = ExpertLayout::kFixed;
  /// With kAdaptive: one degree r for every step (AdaptiveR::value(r)), or r changing every step
  /// through the valid values (AdaptiveR::every_step()). auto is not a verify setting.
  AdaptiveR adaptive_r;
  /// Pipeline layouts (pp > 1): micro-batches per step (0: pp + 1, so that 1F1B has warm-up,
  /// steady and cool-down phases) and their schedule.
  int64_t micro_batches = 0;
  PipelineSchedule schedule = PipelineSchedule::kOneFOneB;
  /// 1: the layout's optimizer is ZeroAdamW with ZeRO-1 (state sharded by tag group, gradients
  /// reduce-scattered, tiled step) instead of the replicated Adam; 0: replicated.
  int64_t zero_stage = 0;
  /// Set: every layout (pp = 1 too) is proven on this family's model (model_presets.h) at verify
  /// size — its architecture and router, kVerifyFamilyHeads heads, 2 blocks per stage, experts
  /// and d_hidden as above — instead of the MoE layer (and GPT for pp > 1).
  c10::optional<ModelFamily> model;
  /// GPT and family runs: the layout's model recomputes activations in backward (kBlock or kMoE,
  /// replaying its forward collectives); the reference does not.
  Recompute recompute = Recompute::kNone;
  /// The layout's MoE layers replicate hot experts (replicate.h; its placement too); the
  /// reference does not. Needs ep > 1 (the layer refuses others, naming the setting).
  ReplicateOptions replicate;
  /// The layout's MoE layers exchange tokens with this algorithm (MoEOptions::a2a_algorithm:
  /// hierarchical where the exchange group spans nodes); the reference has no exchange.
  A2AAlgorithm a2a_algorithm = A2AAlgorithm::kFlat;
  /// Ranks per node of the layout's groups (nodes: consecutive world ranks); 0: the launcher's
  /// LOCAL_WORLD_SIZE. One host can play several nodes this way.
  int64_t ranks_per_node = 0;
};

/// max |a - b| / max(max |b|, 1e-30): the relative error of a against the reference b, in float64
/// (0 for two empty tensors, 1 for a non-empty a against an empty b). The error measure of every
/// float comparison of verify and of the tests.
///
/// Example:
///   double err = relative_error(layout_grad, reference_grad);   // pass if err <= 1e-12
double relative_error(const torch::Tensor& a, const torch::Tensor& b);

/// The valid adaptive degrees r of the MoE of `layout` with `experts` experts of hidden width
/// d_hidden (ExpertPlacement::valid_r: {0} ∪ divisors of S, S = stage size / experts or 1);
/// empty when the adaptive layout does not fit (ep or etp > 1, pp > 1, neither of experts and
/// stage size dividing the other, or S not dividing d_hidden).
std::vector<int64_t> adaptive_r_values(const ParallelConfig& layout, int64_t experts,
                                       int64_t d_hidden);

/// A gate setting to verify: a registered gate name, optionally "+convention" (routing_rules.h),
/// or a convention name that is not a gate name (the "topk" gate with that peer's rules),
/// optionally its k and a capacity factor, written "name[:k][@factor]", e.g. "topk"
/// (dropless), "topk@1.0", "switch:1@1.25", "deepspeed:3@1.0", "tutel@1.25",
/// "topk+gshard@1.0", "cosine+tutel@1.0". "gshard" is the gshard gate.
struct GateSpec {
  std::string name = "topk";
  Convention convention = Convention::kNone;  ///< set when the spec names a convention
  int64_t top_k = 0;                          ///< 0: VerifyOptions::top_k
  double capacity_factor = 0.0;
  std::string to_string() const;
  static GateSpec parse(const std::string& text);
};

/// One verified (layout, gate) pair.
struct VerifyRow {
  ParallelConfig layout;
  std::string gate;
  double loss_rel_err = 0.0;   ///< max over steps
  double param_rel_err = 0.0;  ///< max over parameters and ranks
  bool pass = false;
  std::string error;  ///< set when the run raised an error
  /// VerifyOptions::expert_layout and adaptive_r of the run.
  ExpertLayout expert_layout = ExpertLayout::kFixed;
  AdaptiveR adaptive_r;
  std::string model = "moe";  ///< "moe" (fc → MoE → fc) or "gpt" (pipeline layouts)
  std::string schedule;       ///< pipeline layouts: "1f1b" or "gpipe"
  int64_t micro_batches = 1;
  int64_t zero_stage = 0;                      ///< the ZeRO stage the layout's optimizer ran with
  std::string replicate = "off";               ///< VerifyOptions::replicate of the run
  std::string replicate_placement = "source";  ///< and its placement
  /// The algorithm the layout's token exchange ran (VerifyOptions::a2a_algorithm where the
  /// exchange group spans nodes with more than one rank on each, else "flat").
  std::string a2a_algorithm = "flat";
};

/// Layouts on `world_size` ranks whose ep divides `experts` and whose etp divides `d_hidden`;
/// pipeline layouts (pp > 1) also need tp to divide the GPT's kVerifyHeads heads.
std::vector<ParallelConfig> verifiable_layouts(int64_t world_size, int64_t experts,
                                               int64_t d_hidden);

/// Attention heads of the GPT that pipeline layouts are verified on.
constexpr int64_t kVerifyHeads = 4;
/// Attention heads of a family's model in verify (so that every tp up to 8 divides them).
constexpr int64_t kVerifyFamilyHeads = 8;

/// Runs one (layout, gate) pair on the first layout.world_size() ranks of `world` (others return
/// at once with an empty row). Collective over those ranks. `run_id` keeps group names apart.
VerifyRow verify_layout(dist::World& world, const ParallelConfig& layout, const GateSpec& gate,
                        const VerifyOptions& options, int64_t run_id);

/// The same proof on a small GPT (2 blocks per stage, the second an MoE block; tied embedding;
/// width options.d_model, kVerifyHeads heads) or on options.model's family, trained through the
/// pipeline schedule with micro-batches: every layout, pipeline stages included. verify_layout()
/// sends pp > 1 and family runs here.
VerifyRow verify_gpt_layout(dist::World& world, const ParallelConfig& layout, const GateSpec& gate,
                            const VerifyOptions& options, int64_t run_id);

}  // namespace hybridmoe
