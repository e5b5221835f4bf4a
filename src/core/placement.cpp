// placement.cpp — see placement.h: the expert layout's names, the adaptive degree r as a typed
// value (value, auto, every step) and expert_placement(), the one computation of where a layer's
// experts live (S, valid r, local experts, storage ep) for every layout.
#include "hybridmoe/placement.h"

#include <algorithm>
#include <sstream>

#include "core/enum_names.h"

namespace hybridmoe {

namespace {

const detail::EnumNames<ExpertLayout> kExpertLayoutNames{
    "expert_layout", {{ExpertLayout::kFixed, "fixed"}, {ExpertLayout::kAdaptive, "adaptive"}}};

constexpr const char* kAuto = "auto";
constexpr const char* kEveryStep = "every-step";

}  // namespace

std::string to_string(ExpertLayout layout) {
  return kExpertLayoutNames.name_of(layout);
}

ExpertLayout parse_expert_layout(const std::string& text) {
  return kExpertLayoutNames.parse(text);
}

// ---- AdaptiveR ----------------------------------------------------------------------------------

AdaptiveR AdaptiveR::value(int64_t r) {
  TORCH_CHECK(r >= 0, "adaptive_r: expected an integer >= 0, got ", r);
  return AdaptiveR(Kind::kValue, r);
}

AdaptiveR AdaptiveR::automatic() {
  return AdaptiveR(Kind::kAuto, 0);
}

AdaptiveR AdaptiveR::every_step() {
  return AdaptiveR(Kind::kEveryStep, 0);
}

AdaptiveR AdaptiveR::parse(const std::string& text) {
  if (text == kAuto) return automatic();
  if (text == kEveryStep) return every_step();
  size_t used = 0;
  int64_t r = -1;
  try {
    r = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  TORCH_CHECK(!text.empty() && used == text.size() && r >= 0, "adaptive_r: expected ", kAuto, ", ",
              kEveryStep, " or an integer >= 0, got \"", text, "\"");
  return value(r);
}

int64_t AdaptiveR::value() const {
  TORCH_CHECK(is_value(), "adaptive_r: \"", to_string(), "\" is not one value of r");
  return r_;
}

std::string AdaptiveR::to_string() const {
  switch (kind_) {
    case Kind::kValue:
      return std::to_string(r_);
    case Kind::kAuto:
      return kAuto;
    case Kind::kEveryStep:
      return kEveryStep;
  }
  return "?";
}

// ---- ExpertPlacement ----------------------------------------------------------------------------

bool ExpertPlacement::is_valid_r(int64_t r) const {
  return std::find(valid_r.begin(), valid_r.end(), r) != valid_r.end();
}

std::string ExpertPlacement::valid_r_text() const {
  std::ostringstream out;
  for (size_t i = 0; i < valid_r.size(); ++i) out << (i ? ", " : "") << valid_r[i];
  return out.str();
}

std::string ExpertPlacement::check_hidden(int64_t hidden) const {
  if (hidden >= 1 && hidden % shards == 0) return "";
  std::ostringstream why;
  why << "the expert hidden width " << hidden << " does not split into S = " << shards
      << " equal slices (" << (is_adaptive() ? "ranks per expert" : "etp") << ")";
  return why.str();
}

int64_t ExpertPlacement::first_local_expert(int64_t stage_rank) const {
  TORCH_CHECK(stage_rank >= 0 && stage_rank < stage_size, "ExpertPlacement: stage rank ",
              stage_rank, " is outside the stage of ", stage_size, " ranks");
  if (is_adaptive())
    return num_experts >= stage_size ? stage_rank * local_experts : stage_rank / shards;
  return (stage_rank / etp) % ep * local_experts;
}

int64_t ExpertPlacement::hidden_slice(int64_t stage_rank) const {
  TORCH_CHECK(stage_rank >= 0 && stage_rank < stage_size, "ExpertPlacement: stage rank ",
              stage_rank, " is outside the stage of ", stage_size, " ranks");
  return stage_rank % shards;
}

ExpertPlacement expert_placement(ExpertLayout layout, int64_t stage_size, int64_t num_experts,
                                 int64_t ep, int64_t etp) {
  TORCH_CHECK(stage_size >= 1 && num_experts >= 1 && ep >= 1 && etp >= 1,
              "expert_placement: expected a stage size, a number of experts, ep and etp >= 1, "
              "got W = ",
              stage_size, ", E = ", num_experts, ", ep = ", ep, ", etp = ", etp);
  ExpertPlacement p;
  p.layout = layout;
  p.stage_size = stage_size;
  p.num_experts = num_experts;
  p.ep = ep;
  p.etp = etp;
  const int64_t W = stage_size, E = num_experts;
  std::ostringstream why;
  if (layout == ExpertLayout::kFixed) {
    p.shards = etp;
    p.local_experts = E / ep;
    p.storage_ep = ep;
    if (E % ep != 0) {
      why << "ep = " << ep << " must divide the " << E << " experts";
    } else if (W % (ep * etp) != 0) {
      why << "ep * etp = " << ep * etp << " must divide the stage's " << W << " ranks";
    }
  } else {
    p.shards = E < W ? W / E : 1;
    p.local_experts = std::max<int64_t>(1, E / W);
    p.storage_ep = std::min(E, W);
    p.valid_r.push_back(0);
    for (int64_t r = 1; r <= p.shards; ++r)
      if (p.shards % r == 0) p.valid_r.push_back(r);
    if (ep != 1 || etp != 1) {
      why << "the adaptive layout places the experts over the stage's " << W
          << " ranks itself: it needs ep = 1 and etp = 1, got ep = " << ep << ", etp = " << etp;
    } else if ((E >= W ? E % W : W % E) != 0) {
      why << "the adaptive layout needs one of the " << E << " experts and the stage's " << W
          << " ranks to divide the other";
    }
  }
  p.problem = why.str();
  return p;
}

}  // namespace hybridmoe
