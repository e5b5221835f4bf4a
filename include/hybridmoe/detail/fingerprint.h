// fingerprint.h — the configuration fingerprint of `hmoe train`: when the ranks meet, each
// contributes a hash of its effective configuration (every key that must agree) and of the
// binary's version; a mismatch stops every rank before the first step with an error naming the
// keys that differ and, for each value, the ranks that hold it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "hybridmoe/dist.h"
#include "hybridmoe/train.h"

namespace hybridmoe {

/// (name, value text) pairs: what the fingerprint covers.
using ConfigEntries = std::vector<std::pair<std::string, std::string>>;

/// The configuration keys that may differ across ranks: progress, log_every and stats_every,
/// which only rank 0 reads, for its own progress lines and metrics.
const std::vector<std::string>& per_rank_config_keys();

/// What a rank's fingerprint covers: every key of train_config_keys() except
/// per_rank_config_keys(), in that order, with get_config_value's text, then "hmoe_version"
/// (hybridmoe::kVersion) and "libtorch_version" (the LibTorch it was built against).
ConfigEntries fingerprint_entries(const TrainConfig& config);

/// The 64-bit FNV-1a hash of the entries (the same in every process and build).
uint64_t config_fingerprint(const ConfigEntries& entries);

/// "" if the entries of every rank agree (per_rank[r]: rank r's), else the error text naming
/// each key that differs and, for each distinct value (rank 0's first), the ranks that hold it:
///   "configuration differs across ranks: seed = 1234 on ranks 0,2 but 99 on rank 1; steps = ..."
/// A key that some rank lacks counts as the value "(missing)".
std::string describe_config_differences(const std::vector<ConfigEntries>& per_rank);

/// Checks that every rank of `world` trains with the same configuration and binary. Collective
/// over the world: one all-gather of one int64 (the fingerprint) when they agree; on a mismatch
/// the entries are exchanged over the world's store and every rank raises the error of
/// describe_config_differences (rank 0 only after every rank has read the entries, so that its
/// store outlives the exchange). Returns at once in a world of one.
///
/// Example:
///   check_config_agreement(config, *world);  // first thing of train()
void check_config_agreement(const TrainConfig& config, dist::World& world);

}  // namespace hybridmoe
