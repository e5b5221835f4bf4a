// replicate_policy.cpp — which experts a step replicates (replicate.h): the option's parsing, the
// cost model of one step's expert compute and exchanges for a set of replicated experts, and
// the policies (the N hottest; FasterMoE's greedy rule on the cost model). Pure host code.
#include <algorithm>
#include <numeric>

#include "hybridmoe/plan.h"
#include "hybridmoe/replicate.h"

namespace hybridmoe {

ReplicateFigures figures_of(const plan::MachineSpec& machine, bool inter_node) {
  const auto& links = inter_node ? machine.inter : machine.intra;
  const auto& a2a = links[static_cast<int>(plan::Collective::kAllToAll)];
  const auto& gather = links[static_cast<int>(plan::Collective::kAllGather)];
  return ReplicateFigures()
      .gemm_flops(machine.gemm_flops)
      .a2a_latency_s(a2a.latency_s)
      .a2a_bytes_per_s(a2a.bytes_per_s)
      .gather_latency_s(gather.latency_s)
      .gather_bytes_per_s(gather.bytes_per_s);
}

ReplicateOptions parse_replicate(const std::string& text) {
  if (text == "off") return ReplicateOptions();
  if (text == "auto") return ReplicateOptions().mode(ReplicateMode::kAuto);
  size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  TORCH_CHECK(!text.empty() && used == text.size() && n >= 1,
              "replicate: expected \"off\", \"auto\" or a positive number of experts, got \"", text,
              "\"");
  return ReplicateOptions().mode(ReplicateMode::kHottest).hottest(n);
}

std::string to_string(const ReplicateOptions& options) {
  switch (options.mode()) {
    case ReplicateMode::kOff:
      return "off";
    case ReplicateMode::kAuto:
      return "auto";
    case ReplicateMode::kHottest:
      break;
  }
  return std::to_string(options.hottest());
}

namespace {

// Experts by descending total count, ties to the lower index. counts: [P][E].
std::vector<int64_t> by_heat(const std::vector<std::vector<int64_t>>& counts) {
  const int64_t E = counts.empty() ? 0 : static_cast<int64_t>(counts[0].size());
  std::vector<int64_t> total(E, 0);
  for (const auto& row : counts)
    for (int64_t e = 0; e < E; ++e) total[e] += row[e];
  std::vector<int64_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return total[a] > total[b]; });
  return order;
}

}  // namespace

double replicate_cost(const std::vector<std::vector<int64_t>>& counts,
                      const std::vector<int64_t>& replicated, const ReplicateShape& shape,
                      const ReplicateFigures& figures) {
  const auto P = static_cast<int64_t>(counts.size());
  TORCH_CHECK(P >= 1, "replicate_cost: the counts of at least one rank are needed");
  const auto E = static_cast<int64_t>(counts[0].size());
  TORCH_CHECK(E % P == 0, "replicate_cost: ", E, " experts over ", P, " ranks");
  const int64_t L = E / P;
  std::vector<char> is_rep(E, 0);
  for (auto e : replicated) is_rep.at(e) = 1;
  // 1. Rows each rank computes, and the bytes it sends and receives in one all-to-all.
  std::vector<double> rows(P, 0.0), sent(P, 0.0), recv(P, 0.0);
  for (int64_t j = 0; j < P; ++j)
    for (int64_t e = 0; e < E; ++e) {
      const auto n = static_cast<double>(counts[j][e]);
      const int64_t owner = e / L;
      if (is_rep[e]) {
        rows[j] += n;  // computed where it was routed
        continue;
      }
      rows[owner] += n;
      if (owner != j) sent[j] += n, recv[owner] += n;
    }
  const double row_bytes = static_cast<double>(shape.d_model * shape.element_bytes);
  double busiest = 0.0, traffic = 0.0;
  for (int64_t j = 0; j < P; ++j) {
    busiest = std::max(busiest, rows[j]);
    traffic = std::max(traffic, std::max(sent[j], recv[j]) * row_bytes);
  }
  // 2. Forward GEMMs of a row (2 d h per matrix), backward twice that.
  const double row_flops =
      2.0 * static_cast<double>(shape.d_model * shape.hidden * shape.matmuls) * 3.0;
  double t = busiest * row_flops / figures.gemm_flops();
  if (P > 1)
    t += 4.0 * (static_cast<double>(P - 1) * figures.a2a_latency_s() +
                traffic / figures.a2a_bytes_per_s());
  // 3. The replicated weights: a ring all-gather forward, a reduce-scatter of their gradients.
  if (!replicated.empty() && P > 1) {
    const double bytes = static_cast<double>(replicated.size()) *
                         static_cast<double>(shape.expert_params * shape.element_bytes);
    t += 2.0 * (static_cast<double>(P - 1) * figures.gather_latency_s() +
                static_cast<double>(P - 1) / static_cast<double>(P) * bytes /
                    figures.gather_bytes_per_s());
  }
  return t;
}

std::vector<int64_t> choose_replicated(const std::vector<std::vector<int64_t>>& counts,
                                       const ReplicateOptions& options,
                                       const ReplicateShape& shape) {
  if (options.mode() == ReplicateMode::kOff || counts.empty()) return {};
  const auto order = by_heat(counts);
  std::vector<int64_t> chosen;
  if (options.mode() == ReplicateMode::kHottest) {
    const auto n = std::min<int64_t>(options.hottest(), static_cast<int64_t>(order.size()));
    chosen.assign(order.begin(), order.begin() + n);
  } else {
    // FasterMoE: the next hottest while the modelled time decreases.
    double best = replicate_cost(counts, chosen, shape, options.figures());
    for (auto e : order) {
      auto next = chosen;
      next.push_back(e);
      std::sort(next.begin(), next.end());
      const double t = replicate_cost(counts, next, shape, options.figures());
      if (!(t < best)) break;
      best = t;
      chosen = std::move(next);
    }
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

}  // namespace hybridmoe
