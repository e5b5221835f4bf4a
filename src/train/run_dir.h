// run_dir.h — the output directory of a training run, before the first step: never clobbering an
// earlier run (refused, or moved aside with overwrite), the checkpoint a resume starts from (the
// newest complete one, chosen once by rank 0), and the metrics lines a resume keeps.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "hybridmoe/train.h"

namespace hybridmoe::detail {

/// True when `out` holds a run: metrics.jsonl, summary.json or a checkpoints directory.
bool holds_run(const std::string& out);

/// Makes `cfg.out` ready for a fresh run (cfg.resume false): an `out` that holds a run is refused
/// with an error naming it, unless cfg.overwrite, which renames it to out.old-N (the first free N)
/// and says so. Rank 0 acts; every rank raises the same error. Collective over the world.
void prepare_run_dir(const TrainConfig& cfg, const ParallelGroups& groups);

/// The checkpoint a resume continues from: find_resume_checkpoint() on rank 0 (which prints why
/// `latest` was passed over, if it was), the same directory on every rank. Raises an error on
/// every rank when no checkpoint under cfg.out passes its checks. Collective over the world.
std::string choose_resume_checkpoint(const TrainConfig& cfg, const ParallelGroups& groups);

/// The lines of a metrics.jsonl up to and including `step` (lines of skipped, non-finite steps
/// included), and the loss curve of those with a loss.
struct KeptMetrics {
  std::vector<std::string> lines;
  std::vector<std::pair<int64_t, double>> curve;
};
KeptMetrics read_metrics_until(const std::string& path, int64_t step);

}  // namespace hybridmoe::detail
