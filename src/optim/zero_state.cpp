// zero_state.cpp — saving and loading ZeroAdamW's shard of the optimizer state (zero.h): named
// tensors per space with a layout record and a checksum, and the checks that refuse a shard of
// another layout or rank and a corrupted one, naming the entry.
#include <cstring>
#include <set>
#include <sstream>

#include "optim/zero_space.h"

namespace hybridmoe {

namespace zero_detail {

uint64_t checksum(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a offset basis
  constexpr uint64_t kPrime = 1099511628211ULL;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    auto c = t.contiguous().cpu();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, bytes + i, 8);
      h = (h ^ w) * kPrime;
    }
    for (; i < n; ++i) h = (h ^ bytes[i]) * kPrime;
    h = (h ^ n) * kPrime;  // tensor boundaries count
  }
  return h;
}

}  // namespace zero_detail

namespace {

using zero_detail::Space;

/// The layout record of a space: {zero stage, group size, group rank, space size, owned, bucket}.
torch::Tensor layout_of(const Space& s, int64_t stage) {
  return torch::tensor({stage, s.group.size(), s.group.rank, s.numel, s.owned, s.bucket_elems},
                       torch::kInt64);
}

std::string layout_text(const torch::Tensor& l) {
  auto v = l.to(torch::kInt64).contiguous();
  const auto* d = v.data_ptr<int64_t>();
  std::ostringstream out;
  out << "zero stage " << d[0] << ", group rank " << d[2] << " of " << d[1] << ", " << d[3]
      << " elements in the space, " << d[4] << " owned, buckets of " << d[5];
  return out.str();
}

/// The named tensors of one space, checksum last.
std::vector<std::pair<std::string, torch::Tensor>> space_state(const Space& s, int64_t stage) {
  const std::string pre = "zero." + s.name + ".";
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.emplace_back(pre + "layout", layout_of(s, stage));
  out.emplace_back(pre + "step", torch::tensor({s.step}, torch::kInt64));
  out.emplace_back(pre + "exp_avg", s.exp_avg);
  out.emplace_back(pre + "exp_avg_sq", s.exp_avg_sq);
  if (s.master.defined()) out.emplace_back(pre + "master", s.master);
  std::vector<torch::Tensor> parts;
  for (const auto& kv : out) parts.push_back(kv.second);
  const uint64_t sum = zero_detail::checksum(parts);
  int64_t as_int;
  std::memcpy(&as_int, &sum, 8);
  out.emplace_back(pre + "checksum", torch::tensor({as_int}, torch::kInt64));
  return out;
}

}  // namespace

ZeroAdamW::NamedTensors ZeroAdamW::state() const {
  NamedTensors out;
  for (const auto& s : impl_->spaces)
    for (auto& kv : space_state(s, impl_->options.zero_stage())) out.push_back(std::move(kv));
  return out;
}

void ZeroAdamW::load_state(const NamedTensors& state) {
  const char* op = "ZeroAdamW::load_state";
  auto& m = *impl_;
  std::map<std::string, torch::Tensor> given;
  for (const auto& [name, t] : state) {
    TORCH_CHECK(given.emplace(name, t).second, op, ": entry '", name, "' appears twice");
    TORCH_CHECK(t.defined(), op, ": entry '", name, "' is an undefined tensor");
  }
  // 1. Every expected entry, with this optimizer's shape and dtype; no unknown entries.
  std::set<std::string> expected;
  for (const auto& s : m.spaces) {
    for (const auto& [name, mine] : space_state(s, m.options.zero_stage())) {
      expected.insert(name);
      auto it = given.find(name);
      TORCH_CHECK(it != given.end(), op, ": entry '", name,
                  "' is missing (the shard was written by an optimizer over other parameters, or "
                  "is incomplete)");
      const auto& t = it->second;
      TORCH_CHECK(t.sizes() == mine.sizes() && t.scalar_type() == mine.scalar_type(), op,
                  ": entry '", name, "' is ", t.scalar_type(), " ", t.sizes(), ", expected ",
                  mine.scalar_type(), " ", mine.sizes(), " (a shard of another layout or rank, ",
                  "or a corrupted one)");
      if (name.size() > 7 && name.compare(name.size() - 7, 7, ".layout") == 0)
        TORCH_CHECK(torch::equal(t.cpu(), mine), op, ": entry '", name, "' describes ",
                    layout_text(t), "; this rank's optimizer has ", layout_text(mine),
                    " (the shard belongs to another layout or rank)");
    }
  }
  for (const auto& [name, t] : given)
    TORCH_CHECK(expected.count(name), op, ": unknown entry '", name,
                "' (not a state of this optimizer's spaces)");
  // 2. Integrity of each space: checksum, then the values' invariants.
  for (const auto& s : m.spaces) {
    const std::string pre = "zero." + s.name + ".";
    std::vector<torch::Tensor> parts;
    for (const char* k : {"layout", "step", "exp_avg", "exp_avg_sq", "master"})
      if (given.count(pre + k)) parts.push_back(given.at(pre + k));
    const uint64_t sum = zero_detail::checksum(parts);
    int64_t as_int;
    std::memcpy(&as_int, &sum, 8);
    const int64_t stored = given.at(pre + "checksum").cpu().item<int64_t>();
    TORCH_CHECK(stored == as_int, op, ": entry '", pre,
                "checksum' does not match the space's tensors (stored ", stored, ", computed ",
                as_int, "): the shard is corrupted");
    const int64_t step = given.at(pre + "step").cpu().item<int64_t>();
    TORCH_CHECK(step >= 0, op, ": entry '", pre, "step' should be >= 0, got ", step);
    const auto& v = given.at(pre + "exp_avg_sq");
    TORCH_CHECK(
        v.numel() == 0 || (torch::isfinite(v).all().item<bool>() && v.min().item<double>() >= 0.0),
        op, ": entry '", pre, "exp_avg_sq' holds negative or non-finite values");
    TORCH_CHECK(torch::isfinite(given.at(pre + "exp_avg")).all().item<bool>(), op, ": entry '", pre,
                "exp_avg' holds non-finite values");
  }
  // 3. Everything checked: load.
  torch::NoGradGuard no_grad;
  for (auto& s : m.spaces) {
    const std::string pre = "zero." + s.name + ".";
    s.step = given.at(pre + "step").cpu().item<int64_t>();
    s.exp_avg.copy_(given.at(pre + "exp_avg"));
    s.exp_avg_sq.copy_(given.at(pre + "exp_avg_sq"));
    if (s.master.defined()) s.master.copy_(given.at(pre + "master"));
  }
}

}  // namespace hybridmoe
