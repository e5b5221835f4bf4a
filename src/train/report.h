// report.h — internal to the trainer: the end-of-run files summary.json and report.html, and the
// figures they show (the per-step imbalance, the expert load on the held-out tasks).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "hybridmoe/train.h"

namespace hybridmoe::detail {

/// What the report draws besides the result.
/// Routing imbalance: max / mean tokens per expert (the worst MoE layer) and per rank (the rows
/// each rank's experts computed); 1 is balanced, 0 means no tokens.
/// And the time the ranks spent blocked in the token exchange (waiting, mostly, for the slowest
/// rank to send): the slowest rank's and the mean, in milliseconds.
struct StepImbalance {
  double expert = 0.0, rank = 0.0;
  double wait_max_ms = 0.0, wait_mean_ms = 0.0;
  /// The ranks' peak resident memory over the step's passes (MB); unknown where a rank could not
  /// measure it.
  bool memory_known = false;
  double memory_max_mb = 0.0, memory_mean_mb = 0.0;
};
/// The imbalance of one step. load: [layers * E] tokens per (layer, expert), summed over ranks;
/// rank_rows: [world size] rows each rank's experts computed; rank_wait_s: [world size] seconds
/// each rank was blocked in the token exchange; rank_peak_mb: [world size] each rank's peak
/// resident memory, < 0 where unknown.
StepImbalance step_imbalance(const std::vector<double>& load, int64_t layers, int64_t E,
                             const std::vector<double>& rank_rows,
                             const std::vector<double>& rank_wait_s,
                             const std::vector<double>& rank_peak_mb);
/// `"imbalance": {"expert": x, "rank": y, "exchange_wait_ms": {"max": a, "mean": b},
/// "peak_rss_mb": {"max": c, "mean": d}}` (peak_rss_mb null where unknown).
std::string imbalance_json(const StepImbalance& s);
/// A run's imbalance: the mean and the worst over its steps.
struct Imbalance {
  int64_t steps = 0;
  double expert_sum = 0.0, rank_sum = 0.0, expert_max = 0.0, rank_max = 0.0;
  double wait_max_ms_sum = 0.0;  ///< the slowest rank's exchange wait, summed over steps
  double memory_max_mb = 0.0;    ///< the largest peak of any rank in any step (0: unknown)
  void add(const StepImbalance& s);
};

struct ReportData {
  std::vector<std::pair<int64_t, double>> loss_curve;  ///< (step, loss)
  /// Expert load fractions per MoE layer (rows) and expert (columns), over the whole run.
  std::vector<std::vector<double>> layer_load;
  /// Expert load fractions per task, per MoE layer: task → layer → expert.
  std::map<std::string, std::vector<std::vector<double>>> task_load;
  int64_t dropped = 0;
  Imbalance imbalance;
  /// The fraction of the run's expert rows each rank computed (world size entries).
  std::vector<double> rank_rows;
  /// The fraction of the steps in which each expert of rank 0's stage was replicated, per MoE
  /// layer of that stage (hot-expert replication; all zeros without it).
  std::vector<std::vector<double>> replicated;
};

/// "m:ss" of a duration in seconds (rounded), e.g. format_duration(75.4) == "1:15".
std::string format_duration(double seconds);
/// [layers * E] values as per-layer rows of fractions of their row's sum (rows summing to 0: 0).
std::vector<std::vector<double>> fractions(const std::vector<double>& flat, int64_t layers,
                                           int64_t E);

/// The expert load per MoE layer on each task's held-out lines: task → layer → fractions of the
/// layer's assignments (the model's forward in eval mode, train mode restored). Collective over
/// groups.world.
std::map<std::string, std::vector<std::vector<double>>> load_by_task(
    GPTImpl& model, const std::vector<TaskSample>& samples, const ParallelGroups& groups);

/// JSON text of a string.
std::string json_string(const std::string& s);
/// JSON array of numbers.
std::string json_numbers(const std::vector<double>& v);

/// Writes out/summary.json.
void write_summary(const std::string& out, const TrainConfig& config, const TrainResult& result,
                   const ReportData& data);
/// Writes out/report.html (inline SVG, no network).
void write_report(const std::string& out, const TrainConfig& config, const TrainResult& result,
                  const ReportData& data);

}  // namespace hybridmoe::detail
