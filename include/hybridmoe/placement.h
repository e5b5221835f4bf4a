// placement.h — where the experts of a distributed MoE layer live: the expert layout (fixed
// ep × etp, or Tutel's adaptive layout over the stage), how the adaptive degree r is chosen
// (AdaptiveR: a value, auto, or every step), and ExpertPlacement, the one computation of the shard
// count S, the valid r, the local experts and the storage ep from (W, E, layout, ep, etp) that
// the layer, the planner, the configuration check, the trainer, verify and bench all read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hybridmoe {

/// How the experts of a distributed MoE layer are placed over the W = tp * dp ranks of a stage.
/// Text form (configuration keys, messages): "fixed" or "adaptive".
///
/// Example:
///   parse_expert_layout("adaptive");     // ExpertLayout::kAdaptive
///   to_string(ExpertLayout::kFixed);     // "fixed"
///   parse_expert_layout("tiled");        // error: expert_layout: expected one of "fixed",
///                                        // "adaptive", got "tiled"
enum class ExpertLayout {
  kFixed,     ///< experts split over the ep ranks, each expert's hidden width over etp
  kAdaptive,  ///< Tutel's adaptive parallelism over the stage (ep = etp = 1), degree r per call
};
std::string to_string(ExpertLayout layout);
/// Parses "fixed" or "adaptive"; anything else is an error naming the text and both names.
ExpertLayout parse_expert_layout(const std::string& text);

/// How the adaptive layout's degree r is chosen for each step: one value r >= 0 for every step,
/// "auto" (`hmoe train` times every valid r every adaptive_recheck_every steps and keeps the
/// fastest) or "every-step" (the valid r in turn, one per step: `hmoe verify`'s proof that r may
/// change between steps). Whether a value is valid depends on the placement
/// (ExpertPlacement::valid_r). Text form: "2", "auto", "every-step".
///
/// Example:
///   AdaptiveR r = AdaptiveR::parse("2");     // r.is_value(), r.value() == 2
///   AdaptiveR a = AdaptiveR::parse("auto");  // a.kind() == AdaptiveR::Kind::kAuto
///   a.to_string();                           // "auto"
///   AdaptiveR() == AdaptiveR::value(1);      // true: the default is r = 1
///   AdaptiveR::parse("-1");                  // error naming "-1" and the accepted forms
class AdaptiveR {
 public:
  enum class Kind {
    kValue,      ///< the same r at every step
    kAuto,       ///< timed and chosen by the trainer
    kEveryStep,  ///< every valid r in turn, one per step
  };
  /// r = 1.
  AdaptiveR() = default;
  /// One r for every step; r must be >= 0.
  static AdaptiveR value(int64_t r);
  static AdaptiveR automatic();
  static AdaptiveR every_step();
  /// "auto", "every-step" or an integer >= 0 (nothing else, no trailing characters); an error
  /// names the text and the accepted forms.
  static AdaptiveR parse(const std::string& text);

  Kind kind() const { return kind_; }
  bool is_value() const { return kind_ == Kind::kValue; }
  /// The r of a kValue; an error for the other kinds.
  int64_t value() const;
  /// "2", "auto" or "every-step" (parse() reads it back).
  std::string to_string() const;

  bool operator==(const AdaptiveR& o) const { return kind_ == o.kind_ && r_ == o.r_; }
  bool operator!=(const AdaptiveR& o) const { return !(*this == o); }

 private:
  AdaptiveR(Kind kind, int64_t r) : kind_(kind), r_(r) {}
  Kind kind_ = Kind::kValue;
  int64_t r_ = 1;  ///< the value of a kValue, 0 otherwise
};

/// Where the experts of one MoE layer live on a pipeline stage of W ranks. Computed once by
/// expert_placement() and read by the layer (its storage and checks), the planner, the
/// configuration check, the trainer (the r that auto times), verify and bench.
///
/// Adaptive layout (Tutel): with E < W each expert's hidden width is sliced over a shard group of
/// S = W / E consecutive ranks (stage rank i holds slice i % S of expert i / S); with E >= W each
/// rank holds E / W whole experts (S = 1). The valid degrees are r ∈ {0} ∪ divisors(S); the
/// experts are spread over storage_ep = min(E, W) groups of ranks.
/// Fixed layout: the stage is read as edp × ep × etp (etp fastest, parallel.h); ep rank j holds
/// experts [j L, (j + 1) L), L = E / ep, and etp rank q hidden slice q of etp (S = etp); no r.
///
/// Example:
///   auto p = expert_placement(ExpertLayout::kAdaptive, /*stage_size=*/8, /*num_experts=*/4);
///   // p.shards == 2, p.local_experts == 1, p.storage_ep == 4, p.valid_r == {0, 1, 2}
///   p.first_local_expert(5);  // 2: stage rank 5 holds hidden slice p.hidden_slice(5) == 1 of
///                             // expert 2
///   auto f = expert_placement(ExpertLayout::kFixed, 4, 8, /*ep=*/2, /*etp=*/2);
///   // f.shards == 2, f.local_experts == 4, f.valid_r empty; f.first_local_expert(2) == 4
struct ExpertPlacement {
  ExpertLayout layout = ExpertLayout::kFixed;
  int64_t stage_size = 1;        ///< W: ranks of one pipeline stage (tp * dp)
  int64_t num_experts = 1;       ///< E
  int64_t ep = 1;                ///< expert parallel degree (the adaptive layout needs 1)
  int64_t etp = 1;               ///< expert tensor parallel degree (the adaptive layout needs 1)
  int64_t shards = 1;            ///< S: ranks holding the hidden slices of one expert
  int64_t local_experts = 1;     ///< L: experts of which one rank stores weights (whole or a slice)
  int64_t storage_ep = 1;        ///< groups of ranks the experts are spread over: ep, or min(E, W)
  std::vector<int64_t> valid_r;  ///< adaptive: {0} ∪ divisors(S), ascending; fixed: empty
  /// "" when E, W, ep and etp can hold this layout, else why not (the hidden width is checked
  /// apart, by check_hidden).
  std::string problem;

  bool is_adaptive() const { return layout == ExpertLayout::kAdaptive; }
  bool fits() const { return problem.empty(); }
  /// Whether r is one of valid_r (never, for the fixed layout).
  bool is_valid_r(int64_t r) const;
  /// valid_r as text: "0, 1, 2".
  std::string valid_r_text() const;
  /// "" when an expert hidden width of `hidden` splits into S equal slices, else why not.
  std::string check_hidden(int64_t hidden) const;
  /// The first global expert whose weights stage rank `stage_rank` (0 <= it < W) holds.
  int64_t first_local_expert(int64_t stage_rank) const;
  /// Which of the S hidden slices of its experts stage rank `stage_rank` holds.
  int64_t hidden_slice(int64_t stage_rank) const;
};

/// The placement of E = num_experts experts on a stage of W = stage_size ranks with the given
/// layout and (fixed layout) degrees ep and etp. Sizes must be >= 1 (an error naming them
/// otherwise); relations that do not hold (ep not dividing E, E and W not dividing one another,
/// ...) are described in ExpertPlacement::problem, not raised, so that planners and checks can
/// ask about any layout.
ExpertPlacement expert_placement(ExpertLayout layout, int64_t stage_size, int64_t num_experts,
                                 int64_t ep = 1, int64_t etp = 1);

}  // namespace hybridmoe
