// measure.cpp — see plan.h: runs the planner's top layouts with the trainer for a few steps on
// the ranks at hand and reports predicted against measured step time.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "hybridmoe/collectives.h"
#include "hybridmoe/plan.h"
#include "hybridmoe/train.h"

namespace hybridmoe::plan {

namespace fs = std::filesystem;

std::vector<Measurement> measure_layouts(const TrainConfig& base,
                                         const std::vector<Estimate>& ranking,
                                         const MeasureOptions& o, dist::World& world,
                                         std::vector<std::string>* skipped) {
  TORCH_CHECK(o.steps >= 3, "measure_layouts: need >= 3 steps (the first is not timed), got ",
              o.steps);
  TORCH_CHECK(o.rounds >= 1, "measure_layouts: need >= 1 round, got ", o.rounds);
  TORCH_CHECK(o.count >= 1, "measure_layouts: need >= 1 layout, got ", o.count);
  using Clock = std::chrono::steady_clock;
  // 1. The layouts the trainer can run, with their configurations.
  std::vector<size_t> runnable;
  std::vector<TrainConfig> runnable_configs;
  std::vector<std::string> why_not(ranking.size());
  for (size_t i = 0; i < ranking.size(); ++i) {
    if (!o.spread && !o.include_base && static_cast<int64_t>(runnable.size()) == o.count) break;
    TrainConfig c = base;
    std::string why = apply_layout(c, ranking[i].layout);
    if (why.empty() && c.nproc != world.size())
      why = "needs " + std::to_string(c.nproc) + " ranks, " + std::to_string(world.size()) +
            " at hand";
    why_not[i] = why;
    if (!why.empty()) continue;
    c.steps = o.steps;
    c.stop_after = 0;
    c.warmup_steps = 0;
    c.eval = false;
    c.progress = false;
    c.resume = false;
    c.checkpoint_every = 0;
    c.log_every = o.steps;
    c.stats_every = o.steps;
    c.train_lines = std::min<int64_t>(c.train_lines, 2000);
    runnable.push_back(i);
    runnable_configs.push_back(c);
  }
  // 2. The chosen ones: the first `count`, or `count` evenly spaced (first and last included).
  std::vector<size_t> pick;
  const size_t n = runnable.size(), k = std::min<size_t>(n, static_cast<size_t>(o.count));
  for (size_t j = 0; j < k; ++j) pick.push_back(o.spread && k > 1 ? j * (n - 1) / (k - 1) : j);
  if (o.include_base) {
    // The base configuration's layout, in its place among the picks (once).
    const Layout own = layout_of(base);
    size_t at = ranking.size();
    for (size_t i = 0; i < ranking.size() && at == ranking.size(); ++i)
      if (ranking[i].layout == own) at = i;
    TORCH_CHECK(at < ranking.size(), "measure_layouts: the configuration's layout ",
                own.to_string(), " is not in the ranking (not enumerated, or over the memory)");
    const auto j = std::find(runnable.begin(), runnable.end(), at);
    TORCH_CHECK(j != runnable.end(), "measure_layouts: the trainer cannot run the configuration's ",
                "layout ", own.to_string(), ": ", why_not[at]);
    pick.push_back(static_cast<size_t>(j - runnable.begin()));
    std::sort(pick.begin(), pick.end());
    pick.erase(std::unique(pick.begin(), pick.end()), pick.end());
  }
  std::vector<Measurement> out;
  std::vector<TrainConfig> configs;
  for (size_t j : pick) {
    const size_t i = runnable[j];
    Measurement m;
    m.layout = ranking[i].layout;
    m.predicted_ms = ranking[i].step_s * 1e3;
    m.predicted_rank = static_cast<int64_t>(i);
    out.push_back(m);
    configs.push_back(runnable_configs[j]);
  }
  const size_t last = out.empty() ? 0 : static_cast<size_t>(out.back().predicted_rank);
  if (skipped)
    for (size_t i = 0; i < last && i < ranking.size(); ++i)
      if (!why_not[i].empty())
        skipped->push_back(ranking[i].layout.to_string() + ": " + why_not[i]);
  // 2. Rounds over the layouts (interleaved, so that each sees the same machine noise); a
  //    layout's time is its fastest round's median step time after the first step.
  const std::string tag = "hmoe-plan-" + std::to_string(world.env().master_port) + "-";
  for (int64_t round = 0; round < o.rounds; ++round) {
    for (size_t i = 0; i < out.size(); ++i) {
      TrainConfig c = configs[i];
      const fs::path dir = fs::temp_directory_path() / (tag + std::to_string(i));
      c.out = dir.string();
      std::vector<Clock::time_point> marks;
      train(c, world, [&](int64_t, double) { marks.push_back(Clock::now()); });
      std::vector<double> dt;
      for (size_t s = 1; s < marks.size(); ++s)
        dt.push_back(std::chrono::duration<double, std::milli>(marks[s] - marks[s - 1]).count());
      std::sort(dt.begin(), dt.end());
      double median = dt.empty() ? 0.0 : dt[dt.size() / 2];
      // Every rank takes the mean of the ranks' medians.
      if (world.size() > 1) {
        median = dist::sum_over_ranks(median, world.group()) / static_cast<double>(world.size());
        dist::barrier(world.group());
      }
      if (world.rank() == 0) {
        std::error_code ec;
        fs::remove_all(dir, ec);
      }
      out[i].measured_ms = round == 0 ? median : std::min(out[i].measured_ms, median);
    }
  }
  return out;
}

}  // namespace hybridmoe::plan
