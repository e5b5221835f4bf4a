// verify.h — the proof that every parallel layout equals one process: a small model with an MoE
// layer is trained for a few optimizer steps under a layout and, on the same ranks, as a
// single-process reference of the same global batch; losses at every step and every parameter
// after the last step (experts gathered back to full shape) are compared.
#pragma once

#include <string>
#include <vector>

#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"

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
};

/// A gate setting to verify: a registered gate name, optionally its k and a capacity factor,
/// written "name[:k][@factor]", e.g. "topk" (dropless), "topk@1.0", "switch:1@1.25".
struct GateSpec {
  std::string name = "topk";
  int64_t top_k = 0;  ///< 0: VerifyOptions::top_k
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
};

/// Layouts without pipeline stages on `world_size` ranks whose ep divides `experts` and whose
/// etp divides `d_hidden`.
std::vector<ParallelConfig> verifiable_layouts(int64_t world_size, int64_t experts,
                                               int64_t d_hidden);

/// Runs one (layout, gate) pair on the first layout.world_size() ranks of `world` (others return
/// at once with an empty row). Collective over those ranks. `run_id` keeps group names apart.
VerifyRow verify_layout(dist::World& world, const ParallelConfig& layout, const GateSpec& gate,
                        const VerifyOptions& options, int64_t run_id);

}  // namespace hybridmoe
