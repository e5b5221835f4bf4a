// report.h — internal to the trainer: the end-of-run files summary.json and report.html.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "hybridmoe/train.h"

namespace hybridmoe::detail {

/// What the report draws besides the result.
struct ReportData {
  std::vector<std::pair<int64_t, double>> loss_curve;  ///< (step, loss)
  /// Expert load fractions per MoE layer (rows) and expert (columns), over the whole run.
  std::vector<std::vector<double>> layer_load;
  /// Expert load fractions per task, per MoE layer: task → layer → expert.
  std::map<std::string, std::vector<std::vector<double>>> task_load;
  int64_t dropped = 0;
};

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
