// bench_recompute.h — `hmoe bench recompute --nproc N`: one training step of a GPT with MoE
// layers on N local ranks under each recompute mode (none, moe, block), with and without the
// communication cache (DeepSpeed-TED's communication-aware checkpointing): all-to-all calls and
// bytes per step, all collectives per step, the activation memory kept between forward and
// backward, and the step time, side by side in one run.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::bench {

struct RecomputeBenchArgs {
  int64_t batch = 4;  ///< sequences per data-parallel rank
  int64_t seq = 64;
  int64_t d_model = 256;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t experts = 8;
  int64_t top_k = 2;
  int64_t moe_every = 1;
  int warmup = 1;
  int iters = 3;
};

/// Runs on every rank of `world` (collective); the record is complete on rank 0. Variants are
/// timed interleaved, step by step after a barrier; a step's time is the median over iterations
/// of the slowest rank; counts and bytes are rank 0's (every rank of a symmetric layout makes
/// the same calls); activation memory is the mean over ranks of the heap growth from before the
/// forward to its end (glibc's mallinfo2).
nlohmann::json run_recompute_bench(const RecomputeBenchArgs& args, const ParallelConfig& layout,
                                   dist::World& world);

}  // namespace hybridmoe::bench
