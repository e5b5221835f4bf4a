// replicate_policy.cpp — which experts a step replicates and where their rows go (replicate.h):
// the options' parsing, the placement of a replicated expert's rows (replica_rows), the cost model
// of one step's expert compute and exchanges for a set of replicated experts, and the policies
// (the N hottest; FasterMoE's greedy rule on the cost model). Pure host code.
#include <algorithm>
#include <numeric>

#include "hybridmoe/collectives.h"
#include "hybridmoe/cpu_runtime.h"
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

ReplicateFigures on_this_host(ReplicateFigures figures, int64_t ranks_per_node, bool on_device) {
  TORCH_CHECK(ranks_per_node >= 1, "on_this_host: ranks_per_node must be >= 1, got ",
              ranks_per_node);
  if (figures.cores_per_rank() > 0) return figures;
  return figures.cores_per_rank(
      on_device ? 1.0 : static_cast<double>(usable_cores()) / static_cast<double>(ranks_per_node));
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

ReplicatePlacement parse_replicate_placement(const std::string& text) {
  if (text == "source") return ReplicatePlacement::kSource;
  TORCH_CHECK(text == "spread", "replicate placement: expected \"source\" or \"spread\", got \"",
              text, "\"");
  return ReplicatePlacement::kSpread;
}

std::string to_string(ReplicatePlacement placement) {
  return placement == ReplicatePlacement::kSource ? "source" : "spread";
}

std::vector<std::vector<int64_t>> replica_rows(const std::vector<int64_t>& rows_per_rank,
                                               ReplicatePlacement placement) {
  const auto P = static_cast<int64_t>(rows_per_rank.size());
  std::vector<std::vector<int64_t>> a(P, std::vector<int64_t>(P, 0));
  for (int64_t j = 0; j < P; ++j) {
    TORCH_CHECK(rows_per_rank[j] >= 0, "replica_rows: rank ", j, " has ", rows_per_rank[j],
                " rows, expected >= 0");
    a[j][j] = rows_per_rank[j];
  }
  if (placement == ReplicatePlacement::kSource) return a;
  // 1. Each rank's share, and what it keeps of its own rows.
  const auto share =
      dist::even_split(std::accumulate(rows_per_rank.begin(), rows_per_rank.end(), int64_t{0}), P);
  std::vector<int64_t> surplus(P), deficit(P);
  for (int64_t j = 0; j < P; ++j) {
    a[j][j] = std::min(rows_per_rank[j], share[j]);
    surplus[j] = rows_per_rank[j] - a[j][j];
    deficit[j] = share[j] - a[j][j];
  }
  // 2. The surplus rows fill the deficits, both in ascending rank order.
  for (int64_t j = 0, k = 0; j < P; ++j)
    while (surplus[j] > 0) {
      while (deficit[k] == 0) ++k;  // the totals match: a deficit remains while a surplus does
      const int64_t n = std::min(surplus[j], deficit[k]);
      a[j][k] += n;
      surplus[j] -= n;
      deficit[k] -= n;
    }
  return a;
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
                      const ReplicateFigures& figures, ReplicatePlacement placement) {
  const auto P = static_cast<int64_t>(counts.size());
  TORCH_CHECK(P >= 1, "replicate_cost: the counts of at least one rank are needed");
  const auto E = static_cast<int64_t>(counts[0].size());
  TORCH_CHECK(E % P == 0, "replicate_cost: ", E, " experts over ", P, " ranks");
  const int64_t L = E / P;
  TORCH_CHECK(shape.etp >= 1, "replicate_cost: etp must be >= 1, got ", shape.etp);
  std::vector<char> is_rep(E, 0);
  for (auto e : replicated) is_rep.at(e) = 1;
  // 1. Rows each rank computes, and the rows it sends and receives in one all-to-all.
  std::vector<double> rows(P, 0.0), sent(P, 0.0), recv(P, 0.0);
  auto move = [&](int64_t from, int64_t to, double n) {
    rows[to] += n;
    if (from != to) sent[from] += n, recv[to] += n;
  };
  for (int64_t e = 0; e < E; ++e) {
    if (!is_rep[e]) {
      for (int64_t j = 0; j < P; ++j) move(j, e / L, static_cast<double>(counts[j][e]));
      continue;
    }
    std::vector<int64_t> routed(P);
    for (int64_t j = 0; j < P; ++j) routed[j] = counts[j][e];
    const auto a = replica_rows(routed, placement);
    for (int64_t j = 0; j < P; ++j)
      for (int64_t k = 0; k < P; ++k) move(j, k, static_cast<double>(a[j][k]));
  }
  // The etp ranks of a group share its rows' traffic.
  const double row_bytes =
      static_cast<double>(shape.d_model * shape.element_bytes) / static_cast<double>(shape.etp);
  double busiest = 0.0, total = 0.0, traffic = 0.0;
  for (int64_t j = 0; j < P; ++j) {
    busiest = std::max(busiest, rows[j]);
    total += rows[j];
    traffic = std::max(traffic, std::max(sent[j], recv[j]) * row_bytes);
  }
  // 2. Forward GEMMs of a row (2 d h per matrix), backward twice that, for the most loaded rank;
  //    ranks sharing cores take at least all their rows over their cores.
  const double share = figures.cores_per_rank() > 0 ? std::min(1.0, figures.cores_per_rank()) : 1.0;
  const double gemm_rows = std::max(busiest, total / (static_cast<double>(P) * share));
  const double row_flops =
      2.0 * static_cast<double>(shape.d_model * shape.hidden * shape.matmuls) * 3.0;
  double t = gemm_rows * row_flops / figures.gemm_flops();
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
    double best = replicate_cost(counts, chosen, shape, options.figures(), options.placement());
    for (auto e : order) {
      auto next = chosen;
      next.push_back(e);
      std::sort(next.begin(), next.end());
      const double t = replicate_cost(counts, next, shape, options.figures(), options.placement());
      if (!(t < best)) break;
      best = t;
      chosen = std::move(next);
    }
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

}  // namespace hybridmoe
