// adaptive_weights.h — the weight movements of the adaptive expert layout (moe_adaptive.cpp
// stores the slices, adaptive_dispatcher.cpp gathers them per call): gathers inside spans of
// consecutive stage ranks, and hidden-sliced weights joined back into whole experts. Internal.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/dist.h"

namespace hybridmoe::detail {

/// Concatenates, in stage-rank order, the rows of the `span` consecutive stage ranks starting at
/// `first` (every rank passes its own span; spans partition the stage and have the same size).
/// rows_per_rank: rows of every stage rank. Backward: each rank's rows of the summed gradient.
/// x: [rows_per_rank[me], ...] → [sum over the span, ...].
torch::Tensor gather_in_span(const torch::Tensor& x, const std::vector<int64_t>& rows_per_rank,
                             int64_t first, int64_t span, const dist::Group& stage);

/// Hidden-sliced weights gathered as blocks of `c` slices per expert → whole experts.
/// join_columns: t [n, d, hs] → [n / c, d, c * hs]; join_rows: t [n, hs, ...] → [n / c, c * hs,
/// ...].
torch::Tensor join_columns(const torch::Tensor& t, int64_t c);
torch::Tensor join_rows(const torch::Tensor& t, int64_t c);

}  // namespace hybridmoe::detail
