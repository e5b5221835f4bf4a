// planner.cpp — see plan.h: enumerates every layout a model can run on a world, ranks them by the
// cost model's predicted step time (layouts over the memory limit last or dropped), prints the
// ranking (table, JSON), and maps a layout onto the trainer's configuration keys.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "hybridmoe/plan.h"
#include "hybridmoe/train.h"

namespace hybridmoe::plan {

namespace {

// The expert layouts of a stage layout, as (layout, r): the fixed experts and, on ep = etp = 1
// (adaptive mode places the experts itself) with W > 1, the adaptive layout at every valid r
// without r = 1 when S = 1 (that is the fixed ep = W layout).
std::vector<Layout> expert_layouts(const ModelSpec& m, const ParallelConfig& p, bool adaptive) {
  Layout fixed;
  fixed.par = p;
  std::vector<Layout> out = {fixed};
  if (!adaptive || m.moe_layers() == 0) return out;
  Layout a = fixed;
  a.expert_layout = ExpertLayout::kAdaptive;
  const ExpertPlacement placement = a.placement(m);
  if (!placement.fits() || p.stage_size() < 2) return out;
  for (int64_t r : placement.valid_r) {
    if (r == 1 && placement.shards == 1) continue;
    a.adaptive_r = r;
    out.push_back(a);
  }
  return out;
}

// Whether the layout has a token all-to-all for the overlap degree to split.
bool has_token_a2a(const ModelSpec& m, const Layout& l) {
  if (m.moe_layers() == 0) return false;
  return l.is_adaptive() ? (l.adaptive_r >= 1 && l.par.stage_size() > 1) : l.par.ep > 1;
}

// Whether ZeRO 1 has anything to shard: dp > 1, or fixed experts replicated over edp > 1.
bool zero_shards(const Layout& l) {
  return l.par.dp > 1 || (!l.is_adaptive() && l.par.edp() > 1);
}

std::string json_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

}  // namespace

std::vector<Layout> enumerate_layouts(const ModelSpec& m, int64_t world, const PlanOptions& o) {
  TORCH_CHECK(world >= 1, "enumerate_layouts: world must be >= 1, got ", world);
  std::vector<Layout> out;
  for (const auto& p : valid_parallel_configs(world)) {
    for (int64_t zero : o.zero_stages) {
      for (const Layout& experts : expert_layouts(m, p, o.adaptive)) {
        if (zero == 1 && !zero_shards(experts)) continue;
        std::vector<int64_t> degrees = {1};
        if (has_token_a2a(m, experts)) degrees = o.overlap_degrees;
        for (int64_t D : degrees) {
          for (int64_t M = 1; M <= std::max<int64_t>(1, o.max_micro_batches); M *= 2) {
            Layout l = experts;
            l.zero = zero;
            l.overlap = D;
            l.micro_batches = M;
            if (check_layout(m, l).empty()) out.push_back(l);
          }
        }
      }
    }
  }
  return out;
}

std::vector<Estimate> rank_layouts(const ModelSpec& m, const ClusterSpec& cluster,
                                   const MachineSpec& machine, const PlanOptions& o) {
  TORCH_CHECK(!o.a2a_algorithms.empty(),
              "rank_layouts: expected at least one all-to-all algorithm to weigh, got none");
  auto weighs = [&](A2AAlgorithm a) {
    return std::find(o.a2a_algorithms.begin(), o.a2a_algorithms.end(), a) != o.a2a_algorithms.end();
  };
  const bool flat = weighs(A2AAlgorithm::kFlat);
  const bool hierarchical = weighs(A2AAlgorithm::kHierarchical);
  std::vector<Estimate> out;
  for (const auto& l : enumerate_layouts(m, cluster.world, o)) {
    // 1. Flat, the layer's exchange wherever the hierarchical one cannot run.
    Estimate e = estimate(m, cluster, machine, l);
    // 2. Hierarchical where the layer runs it: kept when faster, or when flat is not weighed.
    if (hierarchical && check_hierarchical(m, cluster, l).empty()) {
      Layout h = l;
      h.a2a_algorithm = A2AAlgorithm::kHierarchical;
      Estimate eh = estimate(m, cluster, machine, h);
      if (!flat || eh.step_s < e.step_s) e = eh;
    }
    if (e.fits || o.keep_unfit) out.push_back(e);
  }
  // Fitting layouts first, each part by predicted time; ties keep the enumeration order.
  std::stable_sort(out.begin(), out.end(), [](const Estimate& a, const Estimate& b) {
    if (a.fits != b.fits) return a.fits;
    return a.step_s < b.step_s;
  });
  return out;
}

std::string to_json(const std::vector<Estimate>& ranking) {
  std::ostringstream s;
  s << "{\"layouts\": [";
  for (size_t i = 0; i < ranking.size(); ++i) {
    const auto& e = ranking[i];
    const auto& l = e.layout;
    s << (i ? ", " : "") << "{\"tp\": " << l.par.tp << ", \"dp\": " << l.par.dp
      << ", \"pp\": " << l.par.pp << ", \"ep\": " << l.par.ep << ", \"etp\": " << l.par.etp
      << ", \"zero\": " << l.zero << ", \"adaptive_r\": " << json_adaptive_r(l)
      << ", \"overlap\": " << l.overlap << ", \"micro_batches\": " << l.micro_batches
      << ", \"a2a_algorithm\": \"" << to_string(l.a2a_algorithm) << "\""
      << ", \"predicted_step_ms\": " << json_number(e.step_s * 1e3)
      << ", \"peak_mem_mb\": " << json_number(e.memory.total() / (1024.0 * 1024.0))
      << ", \"fits\": " << (e.fits ? "true" : "false") << "}";
  }
  s << "]}";
  return s.str();
}

std::string to_table(const std::vector<Estimate>& ranking, int64_t rows) {
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof(line), "%4s  %-37s %-12s %9s %9s %8s %8s %8s %8s %9s\n", "rank",
                "layout", "a2a", "step_ms", "compute", "comm", "hidden", "bubble", "sync",
                "mem_mb");
  s << line;
  const size_t n = rows > 0 ? std::min<size_t>(ranking.size(), rows) : ranking.size();
  for (size_t i = 0; i < n; ++i) {
    const auto& e = ranking[i];
    std::snprintf(line, sizeof(line),
                  "%4zu  %-37s %-12s %9.3f %9.3f %8.3f %8.3f %8.3f %8.3f %9.2f%s\n", i + 1,
                  e.layout.to_string().c_str(), to_string(e.layout.a2a_algorithm).c_str(),
                  e.step_s * 1e3, e.compute_s * 1e3, e.comm_s * 1e3, e.hidden_s * 1e3,
                  e.bubble_s * 1e3, e.grad_sync_s * 1e3, e.memory.total() / (1024.0 * 1024.0),
                  e.fits ? "" : "  (does not fit)");
    s << line;
  }
  return s.str();
}

Layout layout_of(const TrainConfig& c) {
  Layout l;
  l.par = ParallelConfig{c.tp, c.dp, c.pp, c.ep, c.etp};
  l.zero = c.zero_stage;
  if (c.expert_layout == ExpertLayout::kAdaptive) {
    TORCH_CHECK(c.adaptive_r.is_value(), "layout_of: adaptive_r = ", c.adaptive_r.to_string(),
                " is no one layout; expected an integer r");
    l.expert_layout = ExpertLayout::kAdaptive;
    l.adaptive_r = c.adaptive_r.value();
  }
  l.overlap = c.a2a_overlap_degree;
  l.micro_batches = c.micro_batches;
  l.a2a_algorithm = c.a2a_algorithm;
  return l;
}

std::string apply_layout(TrainConfig& config, const Layout& l) {
  config.tp = l.par.tp;
  config.dp = l.par.dp;
  config.pp = l.par.pp;
  config.ep = l.par.ep;
  config.etp = l.par.etp;
  config.nproc = l.par.world_size();
  config.micro_batches = l.micro_batches;
  // 1. The keys a layout sets where it departs from their defaults (the others keep their value).
  if (l.zero != 0) config.zero_stage = l.zero;
  if (l.is_adaptive()) {
    config.expert_layout = ExpertLayout::kAdaptive;
    config.adaptive_r = AdaptiveR::value(l.adaptive_r);
  }
  if (l.overlap != 1) config.a2a_overlap_degree = l.overlap;
  if (l.a2a_algorithm != A2AAlgorithm::kFlat) config.a2a_algorithm = l.a2a_algorithm;
  // 2. Whatever else the trainer refuses.
  return check_config(config);
}

int64_t json_adaptive_r(const Layout& layout) {
  return layout.is_adaptive() ? layout.adaptive_r : -1;
}

AutoLayout apply_auto_layout(TrainConfig& config, const MachineSpec& machine) {
  ClusterSpec cluster;
  cluster.world = config.nproc;
  const auto ranking = rank_layouts(ModelSpec::from_train_config(config), cluster, machine);
  for (size_t i = 0; i < ranking.size(); ++i) {
    TrainConfig candidate = config;
    if (!apply_layout(candidate, ranking[i].layout).empty()) continue;
    config = candidate;
    return AutoLayout{ranking[i], i, ranking.size()};
  }
  C10_THROW_ERROR(Error,
                  c10::str("config key `layout` = \"auto\": none of the planner's ", ranking.size(),
                           " layouts on nproc = ", config.nproc,
                           " ranks can run this configuration (d_model ", config.d_model, ", ",
                           config.num_experts, " experts, batch_size ", config.batch_size, ")"));
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  TORCH_CHECK(a.size() == b.size() && a.size() >= 2,
              "spearman: expected two series of the same length >= 2, got ", a.size(), " and ",
              b.size());
  auto ranks = [](const std::vector<double>& v) {
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](size_t i, size_t j) { return v[i] < v[j]; });
    std::vector<double> r(v.size());
    for (size_t i = 0; i < idx.size();) {
      size_t j = i;
      while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
      for (size_t t = i; t <= j; ++t) r[idx[t]] = (static_cast<double>(i + j) / 2.0) + 1.0;
      i = j + 1;
    }
    return r;
  };
  const auto ra = ranks(a), rb = ranks(b);
  const double n = static_cast<double>(a.size());
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / n;
  const double mb = std::accumulate(rb.begin(), rb.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0.0;
}

}  // namespace hybridmoe::plan
